"""The console notifier: one line per transition, coloured blocks only on a terminal, JSON lines."""

from __future__ import annotations

import io
import json
import os

import pytest

from gradwatch.alerts import AlertEvent
from gradwatch.notify.console import ConsoleNotifier

RED = "\033[1;31m"


def event(kind: str = "firing", severity: str = "critical", **kw) -> AlertEvent:
    fields = dict(
        rule="gradient_explosion",
        run="td3/seed-1",
        tag="gradients/actor_cnn_norm",
        kind=kind,
        severity=severity,
        previous=None,
        step=200,
        value=130486.0,
        wall_time=1.0,
        threshold=50000.0,
        starts_at=1_700_000_000.0,
        ends_at=None,
        labels={"alertname": "gradient_explosion", "severity": severity},
        annotations={
            "summary": "gradients/actor_cnn_norm = 130,486 at step 200",
            "recommendation": "Stop training, enable gradient clipping.",
        },
    )
    fields.update(kw)
    return AlertEvent(**fields)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def colour_env(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")


def test_one_line_per_transition_with_everything_a_human_needs():
    out = io.StringIO()
    ConsoleNotifier(out).send([event(), event("resolved", value=640.0, step=300)])
    first, second = out.getvalue().splitlines()
    for needle in (
        "FIRING CRITICAL",
        "gradient_explosion",
        "run=td3/seed-1",
        "tag=gradients/actor_cnn_norm",
        "step=200",
        "value=130,486",
        "threshold=50,000",
        "| gradients/actor_cnn_norm = 130,486 at step 200",
        "| Stop training, enable gradient clipping.",
    ):
        assert needle in first
    assert "\033" not in out.getvalue()  # not a terminal: no colour
    assert second.split(" ", 1)[1].startswith("RESOLVED CRITICAL gradient_explosion run=td3/seed-1")
    assert "value=640" in second and "Stop training" not in second  # no advice once resolved


def test_escalation_names_both_severities_and_catch_up_says_so():
    out = io.StringIO()
    console = ConsoleNotifier(out)
    console.send([event("escalated", previous="warning"), event(catchup=True)])
    escalated, summary = out.getvalue().splitlines()
    assert "ESCALATED WARNING -> CRITICAL gradient_explosion" in escalated
    assert "(active at start-up)" in summary


def test_colour_blocks_on_a_terminal():
    out = FakeTTY()
    ConsoleNotifier(out).send([event(), event("resolved")])
    text = out.getvalue()
    assert text.startswith(f"{RED}FIRING CRITICAL\033[0m  gradient_explosion\n")
    assert "  run td3/seed-1   tag gradients/actor_cnn_norm\n" in text
    assert "  step 200   value 130,486   threshold 50,000\n" in text
    assert "  -> Stop training, enable gradient clipping.\n" in text
    assert "\033[1;32mRESOLVED CRITICAL" in text


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_colour_when_the_terminal_or_the_user_says_so(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = FakeTTY()
    ConsoleNotifier(out).send([event()])
    assert "\033" not in out.getvalue()
    assert out.getvalue().startswith("FIRING CRITICAL  gradient_explosion\n")


def test_a_real_pseudo_terminal_gets_colour():
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            ConsoleNotifier(tty).send([event()])
        text = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert RED in text and "gradient_explosion" in text


def test_json_lines_for_log_pipelines():
    out = FakeTTY()  # JSON even on a terminal when asked for
    ConsoleNotifier(out, fmt="json").send(
        [event(value=float("nan")), event("resolved", ends_at=1_700_000_060.0)]
    )
    fired, resolved = (json.loads(line) for line in out.getvalue().splitlines())
    assert (fired["rule"], fired["kind"], fired["status"], fired["severity"], fired["step"]) == (
        "gradient_explosion",
        "firing",
        "firing",
        "critical",
        200,
    )
    assert fired["value"] == "NaN" and fired["threshold"] == 50000.0  # as check --json and export spell it
    assert fired["annotations"]["recommendation"].startswith("Stop training")
    assert fired["time"] == "2023-11-14T22:13:20.000Z"
    assert (resolved["status"], resolved["time"]) == ("resolved", "2023-11-14T22:14:20.000Z")
    assert AlertEvent.from_json(json.dumps({k: v for k, v in fired.items() if k not in ("status", "time")}))


def test_control_characters_in_names_cannot_forge_lines_or_colours():
    hostile = "run\r\x1b[2Kfake\nFIRING CRITICAL x"
    out = io.StringIO()
    e = event(
        run=hostile, tag="t\x1b[31m", annotations={"summary": f"{hostile} = 1", "recommendation": "a\nb"}
    )
    ConsoleNotifier(out).send([e])
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text
    assert "run=run\\x0d\\x1b[2Kfake\\x0aFIRING" in text
    block = FakeTTY()
    ConsoleNotifier(block, colour=False).send([e])
    assert "\x1b" not in block.getvalue() and "\r" not in block.getvalue()
    assert "run run\\x0d" in block.getvalue()
