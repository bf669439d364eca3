"""The snippets README.md and docs/ tell users to copy, run as pasted (tests/snippets.py finds them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import Daemon, watch_args
from snippets import ROOT, fenced_blocks, snippet
from writers import write_scalars

from gradwatch.events.logdir import ProblemLog, read_logdir

BIN = os.path.dirname(sys.executable)  # the venv's bin: `gradwatch` as a user's shell finds it
TIMEOUT = 120


def shell_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", NO_COLOR="1", **extra)


def gradwatch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwatch", *args], capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT
    )


def logdir_with(tmp_path: Path, values: list[float], tag: str = "gradients/actor_cnn_norm") -> Path:
    """One run written by tensorboardX: ``values`` at steps 100, 200, ..."""
    logdir = tmp_path / "runs"
    write_scalars(
        "tensorboardX", str(logdir / "td3"), [(tag, 100 * (i + 1), v) for i, v in enumerate(values)]
    )
    return logdir


# ------------------------------------------------------------------ docs/commands.md: the CI step

CI_CASES = {
    # healthy: the step passes (the old snippet ended on a false `[ ... ] &&` and failed it)
    "ok": ([5191.0, 5480.0], 0, "gradwatch: OK"),
    "warning": ([5191.0, 20_000.0], 1, "gradwatch: WARNING: training is unstable (see above)"),
    "critical": ([5191.0, 130_486.0], 1, "gradwatch: CRITICAL: training diverged (see above)"),
    # a missing logdir is UNKNOWN (exit 3), not "training diverged"
    "missing": (None, 1, "gradwatch: UNKNOWN: nothing was checked (exit 3:"),
}


@pytest.mark.parametrize("case", list(CI_CASES))
def test_ci_step_under_bash_e(tmp_path, case):
    values, step_status, says = CI_CASES[case]
    logdir = logdir_with(tmp_path, values) if values else tmp_path / "no-such-logdir"
    p = subprocess.run(
        ["bash", "-e", "-c", snippet("docs/commands.md", "ci-check")],
        cwd=ROOT,  # the snippet says `--rules rules/`: run from a checkout
        env=shell_env(LOGDIR=str(logdir)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == step_status, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1].startswith(says), p.stdout + p.stderr


# ------------------------------------------------------------------ README: rules for other tag names


def test_readme_rules_for_other_tag_names(tmp_path):
    rules = tmp_path / "my-rules.yaml"
    rules.write_text(snippet("README.md", "my-rules"))
    p = gradwatch("rules", "check", str(rules))
    assert p.returncode == 0, p.stdout + p.stderr
    for tag in ("optim/total_norm", "actor/gnorm"):
        logdir = logdir_with(tmp_path / tag.replace("/", "_"), [5.0, 130_486.0], tag=tag)
        # the default rules do not see this tag (what the README warns about) ...
        p = gradwatch("check", str(logdir))
        assert p.returncode == 3 and "no series matched the rules" in p.stdout + p.stderr, p.stdout + p.stderr
        # ... the README's file does
        p = gradwatch("check", str(logdir), "--rules", str(rules))
        assert p.returncode == 2, p.stdout + p.stderr
        assert "gradient_explosion" in p.stdout


# ------------------------------------------------------------------ README: the trainer loop

EXPLODING_TRAIN_STEP = """
import time

def train_step(step):
    time.sleep(0.02)
    return 1000.0 * 1.5**min(step, 1000)  # above 50,000 (critical) from step 10
"""


@pytest.mark.slow
def test_readme_trainer_loop_stops_on_the_daemons_stop_file(tmp_path):
    """The README's loop, pasted after a train_step of our own, beside a real `gradwatch watch`."""
    logdir = tmp_path / "runs"  # the snippet's "runs", relative to where it runs
    logdir.mkdir()
    daemon = Daemon(watch_args(logdir, tmp_path / "state"), str(tmp_path))
    try:
        daemon.wait_ready()
        trainer = subprocess.run(
            [sys.executable, "-c", EXPLODING_TRAIN_STEP + snippet("README.md", "trainer")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        alert = daemon.wait_alert(rule="gradient_explosion")
    finally:
        daemon.stop()
    assert trainer.returncode == 0, trainer.stderr
    assert trainer.stdout.startswith("gradwatch asked this run to stop: critical alert gradient_explosion")
    assert "stop-file: runs/my-run/gradwatch-stop.json" in trainer.stdout
    assert alert["run"] == "my-run"
    # it stopped long before its 100,000 steps, and closed its event file cleanly
    problems = ProblemLog()
    steps = [step for _, _, step, _, _ in read_logdir(str(logdir), problems)]
    assert problems.counts == {} and 10 <= max(steps) < 100_000


# ------------------------------------------------------------------ docs/configuration.md

# machine-specific paths of the example, moved into the test's directory; nothing else is changed
CONFIG_PATHS = ("/data/runs", "/etc/gradwatch/rules", "/var/lib/gradwatch", "/run/secrets/webhook-url")


def test_configuration_examples_pass_config_check(tmp_path):
    (example,) = fenced_blocks("docs/configuration.md", "yaml")
    for path in CONFIG_PATHS:
        example = example.replace(path, f"{tmp_path}{path}")
    rules = tmp_path / "etc/gradwatch/rules"
    rules.mkdir(parents=True)
    (rules / "gradient_explosion.yaml").write_bytes((ROOT / "rules/gradient_explosion.yaml").read_bytes())
    secret = tmp_path / "run/secrets/webhook-url"
    secret.parent.mkdir(parents=True)
    secret.write_text("https://hooks.example.com/gradwatch\n")
    config = tmp_path / "gradwatch.yaml"
    config.write_text(example)
    env = shell_env(SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T0/B0/x")
    p = subprocess.run(
        [sys.executable, "-m", "gradwatch", "config", "check", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout and "3 notifiers" in p.stdout


# ------------------------------------------------------------------ README quick start and .ci/run


def test_ci_runs_the_readmes_test_command_with_torch_installed_first():
    (quick_start,) = [b for b in fenced_blocks("README.md", "bash") if "pytest" in b]
    readme_test = next(line for line in quick_start.splitlines() if "pytest" in line)
    ci = [line.replace(" -q ", " ") for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_test in ci, "CI must run the README's test command (quiet pip aside)"
    torch = next(i for i, line in enumerate(ci) if "pip install" in line and "torch==" in line)
    assert torch < ci.index(readme_test), "torch must be there before the suite runs"
    # and the README's command stays light: no torch in the test extra (tomllib needs Python 3.11)
    (test_extra,) = re.findall(r"^test = \[\n(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert '"torch' not in test_extra


# ------------------------------------------------------------------ docs/trainer.md


def test_trainer_stop_file_check_runs_as_documented(tmp_path):
    """The "Checking it" block, with the two names it expects the trainer to have."""
    code = snippet("docs/trainer.md", "check-stop-file")
    ns: dict = {"logdir": str(tmp_path / "runs"), "run": "td3"}
    exec(code, ns)  # the second assignment wins: the configured template
    assert ns["path"] == "/stop/td3.json" and ns["reason"] is None
    # with the default template and a stop-file there, both checks see it
    default = ns["stop_file_path"](ns["logdir"], "td3")
    os.makedirs(os.path.dirname(default))
    Path(default).write_text('{"alert": "gradient_explosion", "severity": "critical"}')
    assert ns["StopFile"](default).check().alert == "gradient_explosion"
    assert ns["should_stop"](default).severity == "critical"
