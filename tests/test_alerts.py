"""The alert lifecycle with a controllable clock: AlertBook behind the real Engine and real rules."""

from __future__ import annotations

import math

import pytest
import yaml

from gradwatch.alerts import Alert, AlertBook, AlertEvent
from gradwatch.config.rulefiles import parse_rules
from gradwatch.engine import Engine


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make(text: str, clock: Clock, live: bool = True) -> tuple[Engine, AlertBook]:
    problems: list = []
    rules = parse_rules(yaml.safe_load(text), "rules.yaml", problems)
    assert not problems, problems
    book = AlertBook(rules, clock=clock, live=live)
    return Engine(rules, book), book


def feed(engine: Engine, book: AlertBook, clock: Clock, points, run="r", tag="g") -> list[tuple]:
    """Observe (step, value) points one second apart; the transitions as (kind, severity, step, previous)."""
    out = []
    for step, value in points:
        clock.advance(1)
        engine.observe(run, tag, step, clock(), value)
        out += [(e.kind, e.severity, e.step, e.previous) for e in book.take_events()]
    return out


THRESHOLDS = """
rules:
  - name: grad
    match: {{tags: [g]}}
    thresholds: {{warning: 10, critical: 100}}
    {extra}
"""


def rule(extra: str = "") -> str:
    return THRESHOLDS.format(extra=extra)


def test_firing_escalation_deescalation_and_resolution():
    clock = Clock()
    engine, book = make(rule(), clock)
    got = feed(engine, book, clock, [(1, 5), (2, 50), (3, 60), (4, 500), (5, 50), (6, 5), (7, 5)])
    assert got == [
        ("firing", "warning", 2, None),
        ("escalated", "critical", 4, "warning"),
        ("deescalated", "warning", 5, "critical"),
        ("resolved", "warning", 6, None),
    ]


def test_event_fields_carry_what_a_human_and_a_receiver_need():
    clock = Clock()
    engine, book = make(
        rule('labels: {team: rl}\n    annotations: {recommendation: "clip at {threshold}"}'), clock
    )
    feed(engine, book, clock, [(7, 500)])
    clock.advance(5)
    engine.observe("r", "g", 8, clock(), 1.0)
    fired, resolved = book.alerts, book.take_events()
    assert not fired
    (e,) = resolved
    assert (e.rule, e.run, e.tag, e.kind, e.severity, e.step, e.value, e.threshold) == (
        "grad",
        "r",
        "g",
        "resolved",
        "critical",
        8,
        1.0,
        100.0,
    )
    assert e.labels == {"team": "rl", "alertname": "grad", "severity": "critical", "run": "r", "tag": "g"}
    assert e.annotations["recommendation"] == "clip at 100"
    assert e.ends_at == clock() and e.starts_at < e.ends_at
    assert e.status == "resolved" and e.seq == 2


def test_for_keeps_the_alert_pending_and_a_broken_streak_cancels_it_silently():
    clock = Clock()
    engine, book = make(rule("for: 3"), clock)
    assert feed(engine, book, clock, [(1, 50), (2, 50)]) == []
    assert [a.state for a in book.alerts.values()] == ["pending"]
    assert feed(engine, book, clock, [(3, 5)]) == []  # streak broken: never notified
    assert not book.alerts
    assert feed(engine, book, clock, [(4, 50), (5, 50), (6, 50)]) == [("firing", "warning", 6, None)]


def test_keep_firing_for_points_holds_through_dips_and_then_resolves():
    clock = Clock()
    engine, book = make(rule("keep_firing_for: 2"), clock)
    assert feed(engine, book, clock, [(1, 50)]) == [("firing", "warning", 1, None)]
    # two normal points are tolerated; a relapse restarts the count
    assert feed(engine, book, clock, [(2, 5), (3, 5), (4, 50), (5, 5), (6, 5)]) == []
    assert feed(engine, book, clock, [(7, 5)]) == [("resolved", "warning", 7, None)]


def test_keep_firing_for_seconds_resolves_on_the_tick_once_the_time_has_passed():
    clock = Clock()
    engine, book = make(rule("keep_firing_for: 30s"), clock)
    feed(engine, book, clock, [(1, 50)])
    book.take_events()
    assert feed(engine, book, clock, [(2, 5), (3, 5)]) == []
    clock.advance(20)
    book.tick(engine.all_series())
    assert book.take_events() == []
    clock.advance(10)
    book.tick(engine.all_series())
    assert [(e.kind, e.step) for e in book.take_events()] == [("resolved", 3)]


def test_repeat_interval_reminds_while_firing_and_stops_after_resolution():
    clock = Clock()
    engine, book = make(rule("repeat_interval: 5m"), clock)
    feed(engine, book, clock, [(1, 50)])
    clock.advance(299)
    book.tick(engine.all_series())
    assert book.take_events() == []
    clock.advance(1)
    book.tick(engine.all_series())
    assert [(e.kind, e.severity) for e in book.take_events()] == [("repeat", "warning")]
    clock.advance(300)
    book.tick(engine.all_series())
    assert [e.kind for e in book.take_events()] == ["repeat"]
    feed(engine, book, clock, [(2, 5)])
    clock.advance(600)
    book.tick(engine.all_series())
    assert book.take_events() == []


ABSENT = """
rules:
  - name: stalled
    match: {tags: [g]}
    absent_for: 60s
    severity: critical
"""


def test_absence_fires_when_a_logging_series_stops_and_resolves_when_data_returns():
    clock = Clock()
    engine, book = make(ABSENT, clock)
    assert feed(engine, book, clock, [(1, 1.0), (2, 1.0)]) == []
    clock.advance(59)
    book.tick(engine.all_series())
    assert book.take_events() == []
    clock.advance(2)
    book.tick(engine.all_series())
    (e,) = book.take_events()
    assert (e.kind, e.severity, e.step, e.threshold) == ("firing", "critical", 2, 60.0)
    clock.advance(30)
    book.tick(engine.all_series())
    assert book.take_events() == []  # still stalled: no repeat without repeat_interval
    assert feed(engine, book, clock, [(3, 1.0)]) == [("resolved", "critical", 3, None)]
    book.tick(engine.all_series())
    assert book.take_events() == []


def test_absence_ignores_series_that_ended_long_before_the_daemon_started():
    clock = Clock()
    engine, book = make(ABSENT, clock)
    # history read at start-up: the last point is ten minutes old
    engine.observe("old", "g", 1, clock() - 600, 1.0)
    engine.observe("recent", "g", 1, clock() - 30, 1.0)
    clock.advance(120)
    book.tick(engine.all_series())
    assert [(e.run, e.kind) for e in book.take_events()] == [("recent", "firing")]


def test_catch_up_is_silent_and_summarises_what_is_still_firing():
    clock = Clock()
    engine, book = make(rule(), clock)
    book.suppress = True
    feed(engine, book, clock, [(1, 50), (2, 5), (3, 500)], run="a")
    feed(engine, book, clock, [(1, 50), (2, 5)], run="b")
    book.suppress = False
    assert book.take_events() == []
    summary = book.catchup_summary()
    assert [(e.run, e.kind, e.severity, e.step, e.catchup) for e in summary] == [
        ("a", "firing", "critical", 3, True)
    ]
    # and life goes on from that state
    assert feed(engine, book, clock, [(4, 5)], run="a") == [("resolved", "critical", 4, None)]


def test_reload_resolves_alerts_of_rules_that_are_gone():
    clock = Clock()
    engine, book = make(rule(), clock)
    feed(engine, book, clock, [(1, 50)])
    assert book.reload_rules([]) == ["grad"]
    assert [(e.rule, e.kind) for e in book.take_events()] == [("grad", "resolved")]
    assert not book.alerts


def test_alert_state_round_trips_through_its_persisted_form():
    clock = Clock()
    engine, book = make(rule("keep_firing_for: 3"), clock)
    feed(engine, book, clock, [(1, 500), (2, 5)])
    changes = book.take_changes()
    restored = AlertBook(book.rules.values(), clock=clock)
    restored.restore({k: v for k, v in changes.items() if v is not None})
    (a,) = restored.alerts.values()
    b = next(iter(book.alerts.values()))
    assert {k: getattr(a, k) for k in Alert.__slots__} == {k: getattr(b, k) for k in Alert.__slots__}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1.5e-300, 7475702.0])
def test_alert_event_json_round_trip(value):
    e = AlertEvent(
        rule="grad",
        run="r/1",
        tag="g",
        kind="firing",
        severity="critical",
        previous=None,
        step=5,
        value=value,
        wall_time=1.5,
        threshold=100.0,
        starts_at=2.0,
        ends_at=None,
        labels={"alertname": "grad", "severity": "critical", "run": "r/1", "tag": "g"},
        annotations={"summary": "s"},
    )
    back = AlertEvent.from_json(e.to_json())
    assert back.to_json() == e.to_json()
    assert (math.isnan(back.value) and math.isnan(value)) or back.value == value
    # one alert, one fingerprint, whatever its severity
    other = AlertEvent.from_json(e.to_json())
    other.labels = dict(other.labels, severity="warning")
    assert other.fingerprint == e.fingerprint


GROWTH = """
rules:
  - name: growth
    match: {tags: [g]}
    growth: {within_steps: 100, warning: 10}
    annotations: {summary: "x{ratio:.1f} to {value}"}
"""


def test_summary_and_timer_events_keep_the_growth_ratio_of_the_last_point():
    clock = Clock()
    engine, book = make(GROWTH, clock)
    book.suppress = True
    feed(engine, book, clock, [(0, 10.0), (50, 400.0)])
    book.suppress = False
    (e,) = book.catchup_summary()
    assert e.annotations["summary"] == "x40.0 to 400"


def test_a_deleted_run_resolves_its_firing_alerts_and_drops_pending_ones():
    clock = Clock()
    engine, book = make(rule("for: 2"), clock)
    feed(engine, book, clock, [(1, 500), (2, 500)], run="gone")
    feed(engine, book, clock, [(1, 500)], run="gone-too")  # pending: `for` not met yet
    book.take_events()
    assert sorted(a.state for a in book.alerts.values()) == ["firing", "pending"]
    assert book.drop_run("gone-too") == 1
    assert not book.take_events(), "a pending alert was never notified: nothing to resolve"
    assert book.drop_run("gone") == 1
    events = book.take_events()
    assert [(e.kind, e.run, e.severity) for e in events] == [("resolved", "gone", "critical")]
    assert events[0].annotations["resolution"] == "the run directory was deleted"
    assert events[0].ends_at == clock()
    assert not book.alerts
    assert book.drop_run("gone") == 0 and not book.take_events()
