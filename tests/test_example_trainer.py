"""examples/actor_critic.py, run as a user would: a subprocess writing real event files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import pytest
from conftest import require_module
from daemon_support import Daemon, watch_args

from gradwatch.events.logdir import LogdirReader, ProblemLog, read_logdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "actor_critic.py")
GRAD_TAGS = {f"gradients/{n}_norm" for n in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")}
OTHER_TAGS = {"loss/critic", "loss/actor", "q/mean"}
DEADLINE = 60.0  # seconds; generous for a loaded CI machine, the runs take a few


def start(args: list[str], block: tuple[str, ...] = ()) -> subprocess.Popen:
    """The example in a subprocess; ``block`` makes those modules unimportable, as if not installed."""
    if block:
        code = (
            f"import sys, runpy; sys.modules.update(dict.fromkeys({list(block)!r})); "
            f"sys.argv = [{EXAMPLE!r}] + {args!r}; runpy.run_path({EXAMPLE!r}, run_name='__main__')"
        )
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, EXAMPLE, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"example did not finish within {DEADLINE} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err


def run(args: list[str], block: tuple[str, ...] = ()) -> tuple[int, str, str]:
    return finish(start(args, block))


def series(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the one run, checking the files were closed cleanly."""
    problems = ProblemLog()
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for run_name, tag, step, _, value in read_logdir(logdir, problems):
        assert run_name == "td3"
        out[tag].append((step, value))
    assert problems.counts == {}, "event files not flushed and closed cleanly"
    return {tag: sorted(points) for tag, points in out.items()}


def first_above(points: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, value in points if value > level), None)


def daemon_reason(tag: str, step: int, value: float, run: str = "td3") -> dict:
    """A stop-file document shaped like the daemon's, for the tests that need no daemon."""
    return {
        "alert": "gradient_explosion",
        "severity": "critical",
        "run": run,
        "tag": tag,
        "step": step,
        "value": value,
        "threshold": 50000.0,
        "time": "2025-11-26T10:00:00.000Z",
        "message": f"{tag} = {value:.0f} at step {step} on run {run} (critical: above 50000) "
        "Stop training, enable gradient clipping, lower the learning rate.",
        "more": [],
    }


def write_stop_file(path: str, doc: dict) -> None:
    """As the daemon writes it: a temp file in the same directory, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".gradwatch-stop.")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def follow_until_exit(proc: subprocess.Popen, logdir: str) -> set[str]:
    """The tags that reach the disk while the run is going; returns when the run has ended."""
    reader, seen = LogdirReader(logdir), set()
    deadline = time.monotonic() + DEADLINE
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"the run did not stop within {DEADLINE} s; tags seen: {seen}"
        if os.path.isdir(logdir):
            reader.refresh()
            seen.update(tag for _, tag, _, _, _ in reader.read_all())
        time.sleep(0.05)
    return seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two torch runs side by side, watched by a real `gradwatch watch` with its default rules and
    stop-file: one healthy to the end, one exploding until the daemon's stop-file stops it."""
    require_module("torch")
    base = tmp_path_factory.mktemp("example")
    hot, calm = str(base / "logs" / "exploding"), str(base / "logs" / "healthy")
    (base / "logs").mkdir()
    daemon = Daemon(watch_args(str(base / "logs"), str(base / "state")), str(base))
    hot_proc = calm_proc = None
    try:
        daemon.wait_ready()
        calm_proc = start(["--logdir", calm, "--lr", "1e-5", "--steps", "500", "--log-every", "25", "-q"])
        hot_proc = start(["--logdir", hot, "--lr", "1e-2", "--steps", "1000000", "--log-every", "10",
                          "--step-delay", "0.002"])  # fmt: skip
        seen_live = follow_until_exit(hot_proc, hot)
        results = {"hot": finish(hot_proc), "calm": finish(calm_proc)}
    finally:
        for p in (hot_proc, calm_proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
        daemon.stop()
    for rc, out, err in results.values():
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert "backend torch, writer torch" in out
    with open(os.path.join(hot, "td3", "gradwatch-stop.json")) as f:
        reason = json.load(f)  # what the daemon wrote, whatever its format is today
    return {
        "hot": series(hot),
        "calm": series(calm),
        "hot_dir": hot,
        "calm_dir": calm,
        "hot_out": results["hot"][1],
        "seen_live": seen_live,
        "reason": reason,
        "calm_stop_file": os.path.exists(os.path.join(calm, "td3", "gradwatch-stop.json")),
    }


def test_exploding_run_logs_the_four_gradient_norms_and_crosses_both_thresholds(runs):
    hot = runs["hot"]
    assert set(hot) == GRAD_TAGS | OTHER_TAGS
    assert runs["seen_live"] >= GRAD_TAGS, "all four norms reach the disk while the run is going"
    steps = [s for s, _ in hot["gradients/actor_cnn_norm"]]
    assert steps == list(range(10, steps[-1] + 1, 10))
    for tag in hot:
        assert [s for s, _ in hot[tag]] == steps, tag
    exploded = hot[runs["reason"]["tag"]]  # the norm whose critical alert stopped the run
    warn, crit = first_above(exploded, 10_000), first_above(exploded, 50_000)
    assert warn is not None and crit is not None, exploded
    assert warn <= crit <= 500, "explodes within a few hundred steps"
    assert exploded[0][1] < 10_000, "it starts healthy and explodes, it does not start exploded"
    q = [v for _, v in hot["q/mean"]]
    assert abs(q[0]) < 10 and max(q) > 100, "Q-values run away with the gradients"


def test_exploding_run_stops_cleanly_on_the_daemons_stop_file(runs):
    out, reason = runs["hot_out"], runs["reason"]
    assert (reason["severity"], reason["run"]) == ("critical", "exploding/td3")
    headline = f"gradwatch asked this run to stop: critical alert {reason['alert']}: {reason['tag']} = "
    assert headline in out, out
    assert f"at step {reason['step']} " in out
    assert reason["message"].splitlines()[0] in out
    assert "stopped cleanly after step" in out
    stopped_after = int(out.split("stopped cleanly after step ")[1].split(";")[0])
    last_logged = runs["hot"]["gradients/actor_cnn_norm"][-1][0]
    assert reason["step"] <= last_logged <= stopped_after < 1_000_000
    assert not runs["calm_stop_file"], "the healthy run was left alone"
    # series() already checked that the event file was flushed and closed: nothing truncated


def test_healthy_run_stays_far_below_the_thresholds(runs):
    calm = runs["calm"]
    assert set(calm) == GRAD_TAGS | OTHER_TAGS
    assert [s for s, _ in calm["gradients/actor_cnn_norm"]] == list(range(25, 501, 25))
    assert all(math.isfinite(v) for tag in GRAD_TAGS for _, v in calm[tag])
    worst = max(v for tag in GRAD_TAGS for _, v in calm[tag])
    assert worst < 100, worst


def test_gradwatch_check_agrees(runs):
    """The packaged default rules see the explosion (CRITICAL, 2) and not the healthy run (OK, 0)."""
    for logdir, expected in ((runs["hot_dir"], 2), (runs["calm_dir"], 0)):
        proc = subprocess.run(
            [sys.executable, "-m", "gradwatch", "check", logdir],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert proc.returncode == expected, proc.stdout + proc.stderr


def test_a_stale_stop_file_stops_at_once_unless_cleared(tmp_path):
    logdir = str(tmp_path / "logs")
    os.makedirs(os.path.join(logdir, "td3"))
    stop = os.path.join(logdir, "td3", "gradwatch-stop.json")
    open(stop, "w").close()  # a human's `touch`
    args = ["--logdir", logdir, "--steps", "50", "--log-every", "10"]
    rc, out, err = run(args, block=("torch",))
    assert rc == 0, err
    assert f"stop-file {stop} exists but is empty (no reason given); stopping anyway" in out
    assert "stopped cleanly after step 0" in out
    assert os.path.exists(stop)
    assert series(logdir) == {}

    rc, out, err = run([*args, "--clear-stop-file"], block=("torch",))
    assert rc == 0, err
    assert f"removed stale stop-file {stop}" in out and "finished 50 steps" in out
    assert set(series(logdir)) == GRAD_TAGS | OTHER_TAGS


def test_custom_stop_file_path(tmp_path):
    logdir, stop = str(tmp_path / "logs"), str(tmp_path / "stop" / "td3.json")
    os.makedirs(os.path.dirname(stop))
    write_stop_file(stop, daemon_reason("gradients/actor_cnn_norm", 130, 130486.0))
    rc, out, _ = run(["--logdir", logdir, "--stop-file", stop], block=("torch",))
    assert rc == 0 and "critical alert gradient_explosion" in out and f"stop-file: {stop}" in out


def test_without_torch_it_simulates_and_writes_with_tensorboardx(tmp_path):
    logdir = str(tmp_path / "logs")
    rc, out, err = run(
        ["--logdir", logdir, "--lr", "1e-2", "--steps", "200", "--log-every", "10"], block=("torch",)
    )
    assert rc == 0, err
    assert "backend sim, writer tensorboardx" in out
    points = series(logdir)
    assert set(points) == GRAD_TAGS | OTHER_TAGS
    actor = points["gradients/actor_cnn_norm"]
    assert actor[0][1] < 10_000 and first_above(actor, 50_000) is not None


def test_without_torch_or_tensorboardx_it_uses_tensorboards_writer(tmp_path):
    logdir = str(tmp_path / "logs")
    rc, out, err = run(
        ["--logdir", logdir, "--steps", "30", "--log-every", "10"], block=("torch", "tensorboardX")
    )
    assert rc == 0, err
    assert "backend sim, writer tensorboard" in out
    points = series(logdir)
    assert set(points) == GRAD_TAGS | OTHER_TAGS
    assert [s for s, _ in points["gradients/critic_mlp_norm"]] == [10, 20, 30]


def test_healthy_simulation_stays_low(tmp_path):
    logdir = str(tmp_path / "logs")
    rc, _, err = run(["--logdir", logdir, "--steps", "10000", "--log-every", "100", "-q"], block=("torch",))
    assert rc == 0, err
    points = series(logdir)
    assert max(v for tag in GRAD_TAGS for _, v in points[tag]) < 100


def test_forcing_a_missing_backend_is_a_clear_error(tmp_path):
    rc, _, err = run(["--logdir", str(tmp_path), "--backend", "torch"], block=("torch",))
    assert rc == 2 and "actor_critic.py: " in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "-1"], "--steps must be >= 0"),
        (["--log-every", "0"], "--log-every must be >= 1"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--step-delay", "-1"], "--step-delay must be >= 0"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["--backend", "jax"], "argument --backend: invalid choice: 'jax'"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, args, message):
    rc, _, err = run(["--logdir", str(tmp_path), *args], block=("torch",))
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("writer", ["tensorboardx", "tensorboard"])
def test_an_unusable_logdir_is_a_clear_error(tmp_path, writer):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    rc, _, err = run(["--logdir", str(not_a_dir), "--writer", writer], block=("torch",))
    assert rc == 2 and f"actor_critic.py: {not_a_dir}/td3: Not a directory" in err and "Traceback" not in err
