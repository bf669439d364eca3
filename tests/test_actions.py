"""The stop-file (what the daemon writes, what gradwatch.trainer reads) and TensorBoard alert flags."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from gradwatch.alerts import AlertEvent
from gradwatch.daemon.writers import MAX_MORE_REASONS, FlagWriter, StopFileWriter, stop_path
from gradwatch.trainer import StopFile, should_stop


def event(
    kind="firing", severity="critical", run="td3/seed-1", tag="grad_norm", step=200, value=130486.0, **kw
):
    return AlertEvent(
        rule=kw.pop("rule", "gradient_explosion"),
        run=run,
        tag=tag,
        kind=kind,
        severity=severity,
        previous=kw.pop("previous", None),
        step=step,
        value=value,
        wall_time=1.0,
        threshold=kw.pop("threshold", 50000.0),
        starts_at=2.0,
        ends_at=None,
        annotations={"summary": "grad_norm = 130,486", "recommendation": "Enable gradient clipping."},
        **kw,
    )


def test_a_critical_alert_writes_the_stop_file_atomically_in_the_run_directory(tmp_path):
    writer = StopFileWriter(str(tmp_path))
    path = writer.handle(event(), None)
    assert path == str(tmp_path / "td3" / "seed-1" / "gradwatch-stop.json")
    doc = json.loads(Path(path).read_text())
    assert doc == {
        "alert": "gradient_explosion",
        "severity": "critical",
        "run": "td3/seed-1",
        "tag": "grad_norm",
        "step": 200,
        "value": 130486.0,
        "threshold": 50000.0,
        "time": doc["time"],
        "message": "grad_norm = 130,486 Enable gradient clipping.",
        "more": [],
    }
    assert doc["time"].endswith("Z")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    # written as temp + rename: nothing else is left in the directory
    assert os.listdir(os.path.dirname(path)) == ["gradwatch-stop.json"]


@pytest.mark.parametrize(
    ("rule_stop", "default", "severity", "writes"),
    [
        (None, "critical", "warning", False),
        (None, "critical", "critical", True),
        (None, "warning", "warning", True),
        (None, None, "critical", False),  # stop_file.severity: never
        ("warning", "critical", "warning", True),  # the rule's `stop:` wins
        ("never", "warning", "critical", False),
        ("critical", "info", "warning", False),
    ],
)
def test_which_severity_stops(tmp_path, rule_stop, default, severity, writes):
    writer = StopFileWriter(str(tmp_path), default_severity=default)
    assert (writer.handle(event(severity=severity), rule_stop) is not None) is writes


def test_resolutions_and_de_escalations_never_write(tmp_path):
    writer = StopFileWriter(str(tmp_path))
    assert writer.handle(event("resolved"), None) is None
    assert writer.handle(event("deescalated", previous="critical"), "warning") is None
    assert writer.handle(event("escalated", previous="warning"), None) is not None


def test_path_templates(tmp_path):
    assert stop_path("{run_dir}/gradwatch-stop.json", "/logs", "a/b") == "/logs/a/b/gradwatch-stop.json"
    assert stop_path("/stop/{run}.json", "/logs", "a/b") == "/stop/a__b.json"
    assert stop_path("/stop/{run}.json", "/logs", ".") == "/stop/_root.json"
    assert stop_path("{logdir}/STOP", "/logs", "a") == "/logs/STOP"
    writer = StopFileWriter(str(tmp_path / "logs"), template=str(tmp_path / "stop" / "{run}.json"))
    assert writer.handle(event(), None) == str(tmp_path / "stop" / "td3__seed-1.json")


def test_the_first_reason_is_never_lost_and_replays_are_not_recorded_twice(tmp_path):
    writer = StopFileWriter(str(tmp_path))
    path = writer.handle(event(), None)
    writer.handle(event(tag="other_grad_norm", step=300, value=math.inf), None)
    writer.handle(event(), None)  # the same transition again (replayed after a restart)
    writer.handle(event(tag="other_grad_norm", step=300, value=math.inf), None)
    doc = json.loads(Path(path).read_text())
    assert (doc["tag"], doc["step"]) == ("grad_norm", 200)
    assert [(m["tag"], m["step"], m["value"]) for m in doc["more"]] == [("other_grad_norm", 300, "Infinity")]
    for i in range(MAX_MORE_REASONS + 5):
        writer.handle(event(tag=f"t{i}", step=400 + i), None)
    doc = json.loads(Path(path).read_text())
    assert (doc["tag"], doc["step"]) == ("grad_norm", 200)
    assert len(doc["more"]) == MAX_MORE_REASONS


def test_a_human_touched_file_is_replaced_by_a_reason(tmp_path):
    path = tmp_path / "r" / "gradwatch-stop.json"
    path.parent.mkdir()
    path.write_text("")
    StopFileWriter(str(tmp_path)).handle(event(run="r"), None)
    assert json.loads(path.read_text())["alert"] == "gradient_explosion"


def test_an_unwritable_stop_file_is_logged_not_raised(tmp_path, caplog):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    writer = StopFileWriter(str(tmp_path), template=str(tmp_path / "blocker" / "{run}.json"))
    with caplog.at_level("ERROR", logger="gradwatch.actions"):
        assert writer.handle(event(), None) is None
    assert writer.errors == 1


def test_what_the_daemon_writes_is_what_the_trainer_reads(tmp_path):
    writer = StopFileWriter(str(tmp_path))
    path = writer.handle(event(value=math.nan, threshold=None, rule="gradient_nonfinite"), None)
    writer.handle(event(step=300, value=826256.0), None)
    reason = should_stop(path)
    assert reason is not None and reason.problem is None
    assert (reason.alert, reason.severity, reason.run, reason.tag, reason.step) == (
        "gradient_nonfinite",
        "critical",
        "td3/seed-1",
        "grad_norm",
        200,
    )
    assert math.isnan(reason.value) and reason.threshold is None
    assert reason.message == "grad_norm = 130,486 Enable gradient clipping."
    assert [(m.alert, m.step, m.value, m.threshold) for m in reason.more] == [
        ("gradient_explosion", 300, 826256.0, 50000.0)
    ]
    assert "gradwatch asked this run to stop" in str(reason)
    assert StopFile(path).check() == reason


def test_tensorboard_flags_are_scalars_tensorboard_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = FlagWriter(str(tmp_path))
    flags.handle(event("firing", "warning", run="a/b", step=100), ("info", "warning", "critical"))
    flags.handle(event("escalated", "critical", run="a/b", step=200, previous="warning"))
    flags.handle(event("resolved", "critical", run="a/b", step=300))
    acc = EventAccumulator(str(tmp_path / "_gradwatch" / "a" / "b"))
    acc.Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert series == {
        "alerts/gradient_explosion/info": [(100, 0.0)],
        "alerts/gradient_explosion/warning": [(100, 1.0), (200, 0.0), (300, 0.0)],
        "alerts/gradient_explosion/critical": [(100, 0.0), (200, 1.0), (300, 0.0)],
    }


def test_a_run_whose_name_is_not_utf8_gets_its_stop_file_and_flags(tmp_path):
    """Names are bytes on Linux: run-\\xff reaches the directory fds as the same bytes."""
    run = os.fsdecode(b"run-\xff")
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"run-\xff"))
    path = StopFileWriter(str(tmp_path)).handle(event(run=run), None)
    assert os.fsencode(path) == os.fsencode(tmp_path) + b"/run-\xff/gradwatch-stop.json"
    assert json.loads(Path(path).read_bytes())["run"] == run
    flags = FlagWriter(str(tmp_path))
    flags.handle(event(run=run))
    assert flags.errors == 0 and os.listdir(os.fsencode(tmp_path / "_gradwatch" / run))
