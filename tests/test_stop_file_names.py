"""Each run has a stop-file of its own, also in one external stop directory.

Found in review: ``{run}`` spelled a run with "/" as "__", so the runs ``a/b`` and ``a__b``
shared ``/stop/a__b.json``, and an alert on the diverging ``a/b`` stopped the trainer of the
healthy ``a__b``. The names of runs that could not collide stay what trainers already use.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os

import pytest
from tensorboardX import SummaryWriter

from gradwatch.config import Config
from gradwatch.daemon import Daemon
from gradwatch.daemon.watcher import Changes
from gradwatch.trainer import StopFile, run_file_name, stop_file_path


def _runs(alphabet: str, longest: int) -> list[str]:
    """Every run name (a relative path: no empty, "." or ".." part) up to ``longest`` characters."""
    out = ["."]
    for n in range(1, longest + 1):
        for chars in itertools.product(alphabet, repeat=n):
            run = "".join(chars)
            if all(part not in ("", ".", "..") for part in run.split("/")):
                out.append(run)
    return out


# legal runs (every part at most NAME_MAX, 255 bytes) whose escaped names would be longer than 200 bytes
LONG_RUNS = ["x" * 246 + "__y", "%" * 99 + "__", "a_/" + "%" * 250, "é" * 126 + "__", "a/_" + "%" * 200]


def test_no_two_runs_share_a_stop_file_name():
    runs = [*_runs("a_/%", 6), "_root", "___", "___a", "%2F", "a%2Fb", "___%H", "%H", "%" * 255, *LONG_RUNS]
    names: dict[str, str] = {}
    for run in runs:
        name = run_file_name(run)
        assert "/" not in name and name not in ("", ".", ".."), run
        assert names.setdefault(name, run) == run, f"{run!r} and {names[name]!r} both map to {name!r}"


@pytest.mark.parametrize(
    "run", ["td3", "sweep/lr-0.01", "sweep/lr_0.01/seed_1", "_private", "a_b/c_d", "deep/er/run", "."]
)
def test_runs_that_could_not_collide_keep_their_names(run):
    before = run.replace("/", "__") if run != "." else "_root"  # the rule trainers already use
    assert run_file_name(run) == before
    assert stop_file_path("/logs", run, "/stop/{run}.json") == f"/stop/{before}.json"


@pytest.mark.parametrize(("run", "name"), [("a__b", "___a__b"), ("a_/b", "___a_%2Fb"), ("_root", "____root")])
def test_runs_that_could_collide_are_escaped_as_documented(run, name):
    assert run_file_name(run) == name


@pytest.mark.parametrize("run", LONG_RUNS)
def test_a_long_escaped_name_is_hashed_as_documented(run):
    """Escaping lengthens a name ("%" triples): over 200 bytes it is "___%H" and 32 hex digits."""
    digest = hashlib.sha256(run.encode()).hexdigest()[:32]
    assert run_file_name(run) == "___%H" + digest


def test_the_longest_escaped_name_kept_is_200_bytes():
    run = "a__" + "b" * 194  # escaped: "___" and 197 bytes
    assert run_file_name(run) == "___" + run
    assert run_file_name(run + "b").startswith("___%H")


def _write(logdir, run: str, step: int, value: float) -> None:
    with SummaryWriter(str(logdir / run), flush_secs=3600) as w:
        w.add_scalar("gradients/norm", value, step)


def _daemon(tmp_path, runs: tuple[str, ...]) -> tuple[Daemon, dict[str, StopFile]]:
    """A daemon writing stop-files to tmp_path/stop, caught up on ``runs``, and each run's trainer."""
    logdir = tmp_path / "logdir"
    (tmp_path / "stop").mkdir()
    template = str(tmp_path / "stop" / "{run}.json")
    for run in runs:
        _write(logdir, run, 1, 1.0)
    config = Config(logdir=str(logdir), state_dir=str(tmp_path / "state"), listen=None, stop_file=template)
    d = Daemon(config, out=io.StringIO())
    d.catch_up()
    return d, {run: StopFile(stop_file_path(str(logdir), run, template)) for run in runs}


def _diverge(tmp_path, d: Daemon, run: str) -> None:
    _write(tmp_path / "logdir", run, 2, 1e9)
    d.follower.rescan()
    d.follower.handle(Changes(frozenset(d.reader.readers)))
    assert d.checkpoint() is True


def _stopped_alone(tmp_path, run: str) -> None:
    """The daemon writes ``run``'s stop-file, and only that one, and the run's trainer reads it."""
    d, trainers = _daemon(tmp_path, (run,))
    try:
        _diverge(tmp_path, d, run)
        reason = trainers[run].check()
        assert reason is not None and reason.run == run
        assert os.listdir(tmp_path / "stop") == [os.path.basename(trainers[run].path)]
    finally:
        d.shutdown()


def test_a_run_whose_escaped_name_is_too_long_for_a_file_name_is_stopped(tmp_path):
    """Found in review: escaping made the legal run ``"x" * 246 + "__y"`` a 257-byte file name;
    the daemon could not write its stop-file and the trainer was never stopped."""
    run = "x" * 246 + "__y"
    _stopped_alone(tmp_path, run)


def test_a_diverging_run_does_not_stop_the_run_whose_name_collided(tmp_path):
    """The daemon writes the stop-file of ``a/b`` and the trainer of ``a__b``, checking the path
    ``stop_file_path`` gives it, is not told to stop (and the other way round)."""
    d, trainers = _daemon(tmp_path, ("a/b", "a__b"))
    assert trainers["a/b"].path != trainers["a__b"].path
    try:
        _diverge(tmp_path, d, "a/b")
        reason = trainers["a/b"].check()
        assert reason is not None and reason.run == "a/b"
        assert trainers["a__b"].check() is None
        assert sorted(os.listdir(tmp_path / "stop")) == [os.path.basename(trainers["a/b"].path)]
    finally:
        d.shutdown()


def test_a_deep_run_whose_plain_name_is_too_long_for_a_file_name_is_stopped(tmp_path):
    """Each part of a run's path fits a file name, but "/" spelled "__" joins them into one: over
    250 bytes (room for ".json" within NAME_MAX) the plain name could never be written, so it is
    hashed too; a plain name of 250 bytes, which could, keeps its name."""
    run = "/".join(["d" * 60] * 5)  # 5 x 60 bytes and 4 "__": 308 bytes
    assert run_file_name(run) == "___%H" + hashlib.sha256(run.encode()).hexdigest()[:32]
    deeper = "/".join(["e" * 49] * 5)  # 245 + 8 = 253 bytes
    assert run_file_name(deeper).startswith("___%H")
    fits = "e" * 242 + "/" + "e" * 6  # 242 + 2 + 6 = 250 bytes
    assert run_file_name(fits) == fits.replace("/", "__")
    _stopped_alone(tmp_path, run)
