"""``gradwatch demo`` runs the real daemon on simulated runs and shows firing, resolved and the stop-file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from daemon_support import ROOT, parse_alert_lines

from gradwatch.cli import main


def test_demo_runs_to_completion_and_shows_the_whole_story(tmp_path):
    keep = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch", "demo", "--speed", "50", "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    alerts = {
        (a["verb"], a["severity"], a["rule"], a["run"], a["step"]) for a in parse_alert_lines(proc.stdout)
    }
    assert ("FIRING", "CRITICAL", "gradient_explosion", "td3-lr3e-3-exploding", "200") in alerts
    assert ("FIRING", "WARNING", "gradient_explosion", "td3-lr3e-4-spike", "200") in alerts
    assert ("RESOLVED", "WARNING", "gradient_explosion", "td3-lr3e-4-spike", "300") in alerts
    assert not [a for a in alerts if a[3] == "td3-lr1e-4-healthy"]
    assert "Stop-file written for the exploding run" in proc.stdout
    stop = json.loads((keep / "td3-lr3e-3-exploding" / "gradwatch-stop.json").read_text())
    assert (stop["alert"], stop["severity"], stop["step"], stop["value"]) == (
        "gradient_explosion",
        "critical",
        200,
        130486.0,
    )
    # the simulated trainer obeyed the stop-file: nothing after the step that fired
    from gradwatch.events.logdir import read_logdir

    steps = {step for run, _, step, _, _ in read_logdir(str(keep)) if run == "td3-lr3e-3-exploding"}
    assert max(steps) <= 300
    # it says plainly what happened, and growth levels read as factors
    stopped = f"td3-lr3e-3-exploding stopped after step {max(steps)}; unattended its gradients/actor_cnn_norm"
    assert f"{stopped} would have reached 7,475,702 at step 500.\n" in proc.stdout
    growth = [line for line in proc.stdout.splitlines() if " gradient_growth " in line]
    assert growth and all(" threshold=x10 " in line for line in growth), growth
    assert f"gradwatch check {keep}\n" in proc.stdout


def test_demo_keeps_the_logdir_it_names(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gradwatch", "demo", "--speed", "50"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    named = set(re.findall(r"/\S*gradwatch-demo-[^/\s:]+", proc.stdout))
    assert named, proc.stdout
    for path in named:  # every logdir path the demo printed still exists, with the runs in it
        assert os.path.isdir(path), path
        assert "td3-lr3e-3-exploding" in os.listdir(path)
    assert main(["check", named.pop()]) == 2  # and `gradwatch check` on it finds the explosion


def test_the_outcome_follows_the_stop_file_alone():
    """Review 24: a stop-file written at the last step (500) gave "was not stopped (no stop-file
    was written)" followed by "Stop-file written...": the sentence now says stopped."""
    from gradwatch.demo import SEED_STEPS, outcome

    last = SEED_STEPS[-1]
    assert "stopped after step 300" in outcome(300, stopped=True)
    assert "was stopped at its last step" in outcome(last, stopped=True)
    assert "no stop-file" not in outcome(last, stopped=True)
    assert "was not stopped (no stop-file was written)" in outcome(last, stopped=False)
