"""The daemon's status snapshot: what /metrics, health, readiness and the demo may read.

The daemon thread builds a new :class:`Status` once per loop iteration (and
after each commit during a catch-up) and replaces the previous one with a
single assignment (:class:`StatusBoard`). Readers on other threads get an immutable value made of
plain tuples, so they never iterate a dict the daemon thread is changing and
never need to know the daemon's attributes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from gradwatch.alerts import DEESCALATED, ESCALATED, FIRING, REPEAT, RESOLVED, Alert, AlertEvent
from gradwatch.rules import Rule, Series
from gradwatch.severity import Severity

TRANSITION_KINDS = (FIRING, ESCALATED, DEESCALATED, RESOLVED, REPEAT)

SeriesRow = tuple[str, str, int, float, float]  # run, tag, step, wall_time, value
AlertRow = tuple[str, str, str, str]  # rule, run, tag, severity
TransitionKey = tuple[str, str, str]  # rule, severity (the new one), kind
OutboxRow = tuple[str, int, int, int, int]  # channel, sent, failed, queued, dropped


@dataclass(frozen=True)
class Status:
    """One consistent look at the daemon; every field is a plain value or a tuple of them."""

    ready: bool = False
    rules: int = 0
    runs: int = 0
    files: int = 0
    series: tuple[SeriesRow, ...] = ()  # tracked series: rule-matched plus metrics.export_tags
    series_watched: int = 0  # series at least one rule evaluates
    alerts: tuple[AlertRow, ...] = ()  # firing now
    transitions: tuple[tuple[TransitionKey, int], ...] = ()  # every possible one, counted since start
    problems: tuple[tuple[str, int], ...] = ()  # read problems by kind since start
    outbox: tuple[OutboxRow, ...] = ()
    records: int = 0
    points: int = 0
    reload_ok: bool = True
    reload_time: float = field(default_factory=time.time)  # of the last successful (re)load
    state_save_error: str | None = None  # SQLite's message while commits fail
    state_save_errors: int = 0
    changes: int = 0  # bumped by each rare change (transition, readiness, reload): no stale cached /metrics


def series_rows(series: Iterable[Series]) -> tuple[SeriesRow, ...]:
    return tuple((s.run, s.tag, s.step, s.wall_time, s.value) for s in series)


def alert_rows(firing: Iterable[Alert]) -> tuple[AlertRow, ...]:
    return tuple((a.rule, a.run, a.tag, Severity.of_rank(a.rank, "warning")) for a in firing)


def possible_transitions(rule: Rule) -> Iterator[TransitionKey]:
    """(rule, severity, kind) combinations a rule can produce; exported at 0 so increase() sees the first."""
    ranks = sorted(rank for rank, _, _ in rule.levels)
    for rank, severity, _ in rule.levels:
        for kind in TRANSITION_KINDS:
            if kind == ESCALATED and rank == ranks[0]:
                continue  # nothing lower to escalate from
            if kind == DEESCALATED and rank == ranks[-1]:
                continue
            yield (rule.name, severity, kind)


def transition_rows(
    rules: Iterable[Rule], counts: dict[TransitionKey, int]
) -> tuple[tuple[TransitionKey, int], ...]:
    """Counted transitions plus every one the loaded rules can produce, at 0."""
    rows = dict.fromkeys((k for r in rules for k in possible_transitions(r)), 0)
    rows.update(counts)
    return tuple(sorted(rows.items()))


def outbox_rows(stats: dict[str, dict[str, int]]) -> tuple[OutboxRow, ...]:
    return tuple(
        (ch, st.get("sent", 0), st.get("failed", 0), st.get("queued", 0), st.get("dropped", 0))
        for ch, st in sorted(stats.items())
    )


class StatusBoard:
    """Builds the daemon's :class:`Status` and holds the current one. Only the daemon thread calls
    the methods; other threads read ``status`` (one attribute: the old snapshot or the new)."""

    def __init__(self, rules: int) -> None:
        self.status = Status(rules=rules)
        self._transitions: dict[TransitionKey, int] = {}
        self._changes = 0  # rare changes (transition, readiness, reload): Status.changes
        self._series: tuple[int, tuple[SeriesRow, ...], int] = (-1, (), 0)  # version, rows, watched

    def count(self, events: Iterable[AlertEvent]) -> None:
        """Transitions decided (counted when decided, whatever the commit)."""
        for e in events:
            key = (e.rule, e.severity, e.kind)
            self._transitions[key] = self._transitions.get(key, 0) + 1
            self._changes += 1  # /metrics serves no body cached from before a transition

    def changed(self) -> None:
        """A rare change the next snapshot carries (readiness): no cached /metrics from before it."""
        self._changes += 1

    def reloaded(self, ok: bool, rules: int) -> None:
        self._changes += 1
        previous = self.status
        reload_time = time.time() if ok else previous.reload_time
        self.status = dataclasses.replace(
            previous, reload_ok=ok, reload_time=reload_time, rules=rules, changes=self._changes
        )

    def publish(
        self,
        *,
        series_version: int,
        series: Callable[[], Iterable[Series]],
        rules: list[Rule],
        firing: Iterable[Alert],
        problems: dict[str, int],
        outbox: dict[str, dict[str, int]],
        **plain: object,  # ready, runs, files, records, points, state_save_error, state_save_errors
    ) -> None:
        """Replace the snapshot; the series rows are rebuilt only when ``series_version`` moved."""
        if self._series[0] != series_version:
            current = list(series())
            self._series = (series_version, series_rows(current), sum(1 for s in current if s.rules))
        _, rows, watched = self._series
        previous = self.status
        self.status = Status(
            rules=len(rules),
            series=rows,
            series_watched=watched,
            alerts=alert_rows(firing),
            transitions=transition_rows(rules, self._transitions),
            problems=tuple(sorted(problems.items())),
            outbox=outbox_rows(outbox),
            reload_ok=previous.reload_ok,
            reload_time=previous.reload_time,
            changes=self._changes,
            **plain,  # type: ignore[arg-type]
        )
