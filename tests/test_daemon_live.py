"""``gradwatch watch`` live, end to end: a real tensorboardX writer and the daemon, both subprocesses.

One daemon watches one logdir for the whole module; every test writes its own runs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sqlite3
import time

import pytest
from daemon_support import Daemon, Writer, event_files, watch_args
from tensorboard.compat.proto import event_pb2, summary_pb2

from gradwatch.config.rulefiles import default_rules_path
from gradwatch.events.framing import frame
from gradwatch.events.logdir import FLAGS_DIR
from gradwatch.trainer import should_stop

SEED = [(100, 5191.0), (200, 130486.0), (300, 826256.0), (400, 2860755.0), (500, 7475702.0)]
HEALTHY = [(100, 130.0), (200, 118.0), (300, 109.0), (400, 101.0), (500, 97.0)]


TAG = "gradients/actor_cnn_norm"

PROBE_RULES = """
rules:
  - name: reload_probe
    match: {{tags: ["probe/value"]}}
    thresholds: {{warning: {level}}}
    stop: never
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    base = tmp_path_factory.mktemp("live")
    logdir = base / "logdir"
    logdir.mkdir()
    probe = base / "probe.yaml"
    probe.write_text(PROBE_RULES.format(level=100))
    config = base / "gradwatch.yaml"
    config.write_text(f"rules: [{default_rules_path()}, {probe}]\nforget_after: 1s\nrescan_interval: 2s\n")
    writer = Writer()
    daemon = Daemon(
        watch_args(logdir, base / "state", "--config", str(config), "--tensorboard-flags"), str(base)
    )
    env = type("Live", (), {})()
    env.logdir, env.probe, env.writer, env.daemon = logdir, probe, writer, daemon
    env.syncs = itertools.count(1)
    try:
        daemon.wait_ready()
        yield env
    finally:
        writer.stop()
        if daemon.proc.poll() is None:
            daemon.stop()


def sync(env) -> None:
    """Returns once the daemon has handled everything written before (inotify keeps the order)."""
    n = next(env.syncs)
    env.writer.write(env.logdir / f"zz-sync-{n}", n, {"sync/grad_norm": 1e9})
    env.daemon.wait_alert(run=f"zz-sync-{n}", rule="gradient_explosion")


def test_exploding_run_alerts_on_the_console_and_writes_the_stop_file(live):
    run_dir = live.logdir / "td3-exploding"
    for step, value in SEED:
        live.writer.write(run_dir, step, {TAG: value})
    fired = live.daemon.wait_alert(run="td3-exploding", rule="gradient_explosion")
    sync(live)

    assert fired["verb"] == "FIRING"
    assert fired["severity"] == "CRITICAL"
    assert (fired["tag"], fired["step"], fired["value"], fired["threshold"]) == (
        TAG,
        "200",
        "130,486",
        "50,000",
    )
    assert "enable gradient clipping" in fired["rest"]  # the recommendation
    mine = [a for a in live.daemon.alerts() if a["run"] == "td3-exploding"]
    # one line per transition, not one per point: critical from 200 on; the x10 growth within
    # 200 steps holds from 200 to 400 (x25, x159, x22) and ends at 500 (x9.0 since step 300)
    assert [(a["verb"], a["rule"], a["severity"], a["step"]) for a in mine] == [
        ("FIRING", "gradient_explosion", "CRITICAL", "200"),
        ("FIRING", "gradient_growth", "WARNING", "200"),
        ("RESOLVED", "gradient_growth", "WARNING", "500"),
    ]

    stop = run_dir / "gradwatch-stop.json"
    doc = json.loads(stop.read_text())
    assert {k: doc[k] for k in ("alert", "severity", "run", "tag", "step", "value", "threshold")} == {
        "alert": "gradient_explosion",
        "severity": "critical",
        "run": "td3-exploding",
        "tag": TAG,
        "step": 200,
        "value": 130486.0,
        "threshold": 50000.0,
    }
    assert doc["time"].endswith("Z") and "gradient clipping" in doc["message"]
    assert not [n for n in os.listdir(run_dir) if n.startswith(".gradwatch-stop")]  # temp file renamed

    # what the trainer sees: the same reason, through gradwatch.trainer
    reason = should_stop(stop)
    assert reason is not None
    assert (reason.alert, reason.severity, reason.step, reason.value, reason.threshold) == (
        "gradient_explosion",
        "critical",
        200,
        130486.0,
        50000.0,
    )


def test_tensorboard_alert_flags_are_readable_by_tensorboard(live):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # its own run, so that the test does not depend on the order tests run in
    run_dir = live.logdir / "flags"
    for step, value in SEED[:2]:
        live.writer.write(run_dir, step, {TAG: value})
    live.daemon.wait_alert(run="flags", rule="gradient_explosion")
    sync(live)
    flags = live.logdir / "_gradwatch" / "flags"
    acc = EventAccumulator(str(flags))
    acc.Reload()
    critical = [(e.step, e.value) for e in acc.Scalars("alerts/gradient_explosion/critical")]
    warning = [(e.step, e.value) for e in acc.Scalars("alerts/gradient_explosion/warning")]
    assert critical == [(200, 1.0)]
    assert warning == [(200, 0.0)]
    # never read back: no alert ever names a run under _gradwatch
    assert not [a for a in live.daemon.alerts() if a["run"].startswith("_gradwatch")]


def test_healthy_run_raises_nothing(live):
    run_dir = live.logdir / "td3-healthy"
    for step, value in HEALTHY:
        live.writer.write(run_dir, step, {TAG: value, "gradients/critic_mlp_norm": value / 3})
    sync(live)
    assert not [a for a in live.daemon.alerts() if a["run"] == "td3-healthy"]
    assert not (run_dir / "gradwatch-stop.json").exists()


def test_restarted_writer_second_event_file_is_followed(live):
    run_dir = live.logdir / "restarted"
    live.writer.write(run_dir, 100, {TAG: 900.0})
    live.writer.restart(run_dir)
    live.writer.write(run_dir, 200, {TAG: 60000.0})
    fired = live.daemon.wait_alert(run="restarted", rule="gradient_explosion")
    assert (fired["severity"], fired["step"]) == ("CRITICAL", "200")
    assert len(event_files(run_dir)) == 2


def _event(step: int, value: float) -> bytes:
    ev = event_pb2.Event(
        wall_time=time.time(),
        step=step,
        summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=TAG, simple_value=value)]),
    )
    return frame(ev.SerializeToString())


def test_corrupt_file_is_logged_with_file_and_offset_and_the_rest_is_read(live):
    run_dir = live.logdir / "corrupt"
    run_dir.mkdir()
    path = run_dir / "events.out.tfevents.1.copied"
    head = frame(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    good = _event(100, 10.0)
    garbage = b"\x13\x37 not a record at all, a damaged block \xff\xfe" * 4
    path.write_bytes(head + good + garbage + _event(300, 77777.0))
    fired = live.daemon.wait_alert(run="corrupt", rule="gradient_explosion")
    assert (fired["step"], fired["value"]) == ("300", "77,777")
    offset = len(head) + len(good)
    assert f"{path}: offset {offset}: corrupt record" in live.daemon.err()
    # and the daemon goes on reading the file as it grows
    with open(path, "ab") as f:
        f.write(_event(400, 5.0))
    resolved = live.daemon.wait_alert(run="corrupt", rule="gradient_explosion", verb="RESOLVED")
    assert resolved["step"] == "400"


def test_deleted_run_is_forgotten_after_the_grace_period(live):
    run_dir = live.logdir / "deleted"
    live.writer.write(run_dir, 100, {TAG: 20000.0})
    live.daemon.wait_alert(run="deleted", rule="gradient_explosion", severity="WARNING")
    live.writer.close(run_dir)
    shutil.rmtree(run_dir)
    live.daemon.wait_err(r"run deleted has no event files any more")
    live.daemon.wait_err(r"run deleted disappeared 1s ago; forgot it and its 1 alert\(s\)")
    # receivers are told: the forgotten run's alert is resolved, not left open forever
    live.daemon.wait_alert(run="deleted", rule="gradient_explosion", verb="RESOLVED")
    # a new run under the same name starts afresh: its first alert is a new FIRING
    live.writer.write(run_dir, 7, {TAG: 20000.0})
    live.daemon.wait_alert(run="deleted", rule="gradient_explosion", severity="WARNING", step="7")
    assert [(a["verb"], a["step"]) for a in live.daemon.alerts() if a["run"] == "deleted"] == [
        ("FIRING", "100"),
        ("RESOLVED", "100"),
        ("FIRING", "7"),
    ]


def test_sighup_reloads_rules_and_keeps_the_old_ones_when_the_new_are_invalid(live):
    run_dir = live.logdir / "probe"
    live.writer.write(run_dir, 1, {"probe/value": 50.0})
    sync(live)
    assert not [a for a in live.daemon.alerts() if a["run"] == "probe"]

    live.probe.write_text(PROBE_RULES.format(level=10))
    live.daemon.signal(signal.SIGHUP)
    live.daemon.wait_err(r"reloaded: \d+ rules")
    live.writer.write(run_dir, 2, {"probe/value": 50.0})
    fired = live.daemon.wait_alert(run="probe", rule="reload_probe")
    assert (fired["severity"], fired["threshold"]) == ("WARNING", "10")

    live.probe.write_text(PROBE_RULES.format(level="ten"))
    live.daemon.signal(signal.SIGHUP)
    err = live.daemon.wait_err(r"reload failed, keeping the running configuration")
    assert f"{live.probe}:" in err.split("reload failed")[-1]  # file:line of the problem
    # still running, still with the old rules (threshold 10)
    live.writer.write(run_dir, 3, {"probe/value": 5.0})
    resolved = live.daemon.wait_alert(run="probe", rule="reload_probe", verb="RESOLVED")
    assert resolved["step"] == "3"


def test_sigterm_stops_gracefully_with_the_state_flushed(live):
    # stops the module's daemon: kept last in this file; checks every file there is, whatever ran before
    live.writer.write(live.logdir / "last", 1, {TAG: 1.0})
    sync(live)
    live.writer.stop()
    assert live.daemon.stop() == 0
    assert "INFO: stopped" in live.daemon.err()
    assert "Traceback" not in live.daemon.err()
    db = sqlite3.connect(live.logdir.parent / "state" / "gradwatch.db")
    offsets = dict(db.execute("SELECT path, offset FROM files"))
    db.close()
    runs = [d for d, _, _ in os.walk(live.logdir) if FLAGS_DIR not in d and event_files(d)]
    assert str(live.logdir / "last") in runs
    for run_dir in runs:
        for path in event_files(run_dir):
            assert offsets[path] == os.path.getsize(path), path
