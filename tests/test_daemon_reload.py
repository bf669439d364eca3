"""SIGHUP never kills the real daemon: whatever goes wrong while loading keeps the old config running."""

from __future__ import annotations

import signal

from daemon_support import Daemon, watch_args

PROBE_RULES = """
rules:
  - name: reload_probe
    match: {tags: ["probe/value"]}
    thresholds: {warning: 10}
    stop: never
"""


def test_sighup_with_a_rules_file_nested_5000_levels_keeps_the_old_rules(tmp_path, writer):
    rules = tmp_path / "probe.yaml"
    rules.write_text(PROBE_RULES)
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    d = Daemon(watch_args(logdir, tmp_path / "state", "--rules", str(rules)), str(tmp_path))
    d.wait_ready()

    # PyYAML composes nested flow sequences recursively: 5,000 levels is a RecursionError
    rules.write_text("rules: " + "[" * 5000 + "]" * 5000 + "\n")
    d.signal(signal.SIGHUP)
    err = d.wait_err(r"reload failed, keeping the running configuration")
    reason = err.split("reload failed")[-1]
    assert str(rules) in reason, reason  # the file that could not be loaded
    assert "Traceback" not in err

    # alive, and still evaluating with the old rule (warning above 10)
    writer.write(logdir / "run", 1, {"probe/value": 50.0})
    fired = d.wait_alert(run="run", rule="reload_probe")
    assert (fired["severity"], fired["threshold"]) == ("WARNING", "10")
    assert d.stop() == 0
