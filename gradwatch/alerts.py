"""Alert lifecycle: inactive -> pending -> firing -> resolved.

One alert per (rule, run, tag). ``AlertEvent`` (gradwatch/alert_event.py, re-exported here) is
what every notifier, the outbox, the stop-file writer and the metrics see; ``AlertBook`` is the
lifecycle (pending for ``for``, firing, escalation and de-escalation,
``keep_firing_for`` against flapping, ``repeat_interval`` reminders, absence
on a timer, resolution).
"""

from __future__ import annotations

import time
from itertools import repeat, starmap
from typing import Any

import numpy as np

from gradwatch.alert_batches import RuleTransitions, reading_offsets, rule_transitions, settle
from gradwatch.alert_event import (
    ACTIVE,
    DEESCALATED,
    ESCALATED,
    FIRING,
    PENDING,
    REPEAT,
    RESOLVED,
    Alert,
    AlertEvent,
    alert_key,
)
from gradwatch.rules import Rule, RuleBatch, RuleState, Series
from gradwatch.severity import PENDING_RANK, Severity


class AlertBook:
    """Turns rule decisions into alert transitions (AlertEvents).

    It is the engine's sink. ``live`` changes one thing: absence is then
    decided by the clock (``tick``), so a point arriving resolves it instead
    of being judged as a gap. During catch-up (``suppress``) transitions
    update the states but emit nothing; ``catchup_summary()`` then reports
    what is still firing, once.
    """

    # A point at the rank an active alert already has only records the point in the alert (its step,
    # value, wall time, ratio; clear counters to 0): no transition, no clock read. The engine may
    # therefore call with the last point of such a run only (engine.py: Sink).
    collapses_steady_runs = True

    def __init__(self, rules: list[Rule], clock=time.time, live: bool = True) -> None:
        self.rules = {r.name: r for r in rules}
        self.clock = clock
        self.live = live
        self.suppress = False
        self.alerts: dict[str, Alert] = {}
        self.events: list[AlertEvent] = []
        # keys whose persisted state changed since the last ``take_changes``
        self.changed: set[str] = set()
        self.started_at = clock()

    # -- engine sink ---------------------------------------------------------
    def __call__(
        self, s: Series, i: int, rank: int, previous: int, step: int, wall_time: float, value: float
    ) -> None:
        rule = s.rules[i]
        state = s.states[i]
        if rule.kind == "absent" and self.live:
            rank = 0
            raw = 0
        else:
            raw = state.raw
        key = alert_key(rule.name, s.run, s.tag)
        alert = self.alerts.get(key)
        if rank and alert is not None and alert.state == ACTIVE and rank == alert.rank:
            # the common call of a catch-up: a point at the rank the alert fires at (what _decide
            # does then, without its other branches): no transition, no clock read
            alert.step = step
            alert.wall_time = wall_time
            alert.value = value
            alert.ratio = state.ratio
            alert.clear_points = 0
            alert.clear_since = None
            self.changed.add(key)
            s.ranks[i] = rank
            return
        alert = self._decide(s, i, rule, state, key, alert, rank, raw, step, wall_time, value)
        # The engine calls the sink while ``ranks[i]`` is non-zero: keep it at the alert's
        # severity while the alert fires, so points during keep_firing_for still arrive here,
        # and at PENDING_RANK while pending, so the point that breaks a ``for`` streak does.
        s.ranks[i] = 0 if alert is None else alert.rank if alert.state == ACTIVE else PENDING_RANK

    def batch_calls(
        self,
        s: Series,
        batches: list[RuleBatch],
        steps: np.ndarray,
        wall_times: np.ndarray,
        values: np.ndarray,
    ) -> bool:
        """Every per-point call of one series' batch at once (engine.py: Sink), when the alerts'
        transitions follow from the ranks alone (alert_batches.py) and nothing is emitted (catch-up):
        the same alerts, changed keys and clock readings. False: the engine makes the calls."""
        if not self.suppress:
            return False  # live: every transition is an event, built from its own point
        planned: list[tuple[int, str, Alert | None, RuleTransitions]] = []
        n = len(steps)
        for i, b in enumerate(batches):
            rank = s.ranks[i]
            if b.ranks is None and not rank:
                continue  # no call at any point
            rule = s.rules[i]
            if b.raws is not None or rule.keep_firing_for_seconds or rule.kind == "absent":
                return False  # pending, or the clock decides
            key = alert_key(rule.name, s.run, s.tag)
            alert = self.alerts.get(key)
            if not _batchable(alert, rank):
                return False
            c0 = alert.clear_points if alert is not None else 0
            t = rule_transitions(b.ranks, n, rule.keep_firing_for_points, alert is not None, rank, c0)
            planned.append((i, key, alert, t))
        if not planned:
            return True
        offsets, total = reading_offsets([t for *_, t in planned])
        clock = self.clock
        readings = list(starmap(clock, repeat((), total)))  # as many and in the order of point by point
        last = (int(steps[-1]), float(wall_times[-1]), float(values[-1]))
        # alerts that start firing in the batch join ``alerts`` (whose order the catch-up summary
        # keeps) in the order point by point would add them: by point, at one point by rule
        order = sorted(range(len(planned)), key=lambda k: planned[k][3].starts_at or (-1, k))
        for k in order:
            i, key, alert, t = planned[k]
            s.ranks[i] = self._apply(s, i, key, alert, t, readings, offsets[k], last, batches[i])
        return True

    def _apply(self, s, i, key, alert, t, readings, offsets, last, b) -> int:
        """Leave the alert as rule i's calls over the batch would; returns its rank for ``s.ranks``."""
        if t.called:
            self.changed.add(key)
        if not t.active:
            self.alerts.pop(key, None)
            return 0
        if t.fired:  # a new alert (the one before resolved): at the end of ``alerts``, as after a del
            self.alerts.pop(key, None)
            alert = self.alerts[key] = Alert(s.rules[i].name, s.run, s.tag)
            alert.state = ACTIVE
        ratio = float(b.measures[-1]) if b.measures is not None else s.states[i].ratio
        settle(alert, t, readings, offsets, last, ratio)
        return t.rank

    def _decide(
        self,
        s: Series,
        i: int,
        rule: Rule,
        state: RuleState,
        key: str,
        alert: Alert | None,
        rank: int,
        raw: int,
        step: int,
        wall_time: float,
        value: float,
    ) -> Alert | None:
        """The alert's transition at this point; returns the alert after it (None: no alert)."""
        if rank:
            if alert is None:
                alert = self.alerts[key] = Alert(rule.name, s.run, s.tag)
            self._point(alert, step, wall_time, value, state)
            alert.clear_points = 0
            alert.clear_since = None
            if alert.state != ACTIVE:
                alert.state = ACTIVE
                alert.rank = rank
                alert.starts_at = self.clock()
                self._emit(rule, alert, FIRING, state)
            elif rank != alert.rank:
                kind = ESCALATED if rank > alert.rank else DEESCALATED
                before = alert.rank
                alert.rank = rank
                self._emit(rule, alert, kind, state, previous=before)
            self.changed.add(key)
            return alert
        if alert is None:
            if raw:  # condition holds but `for` is not yet met
                alert = self.alerts[key] = Alert(rule.name, s.run, s.tag)
                self._point(alert, step, wall_time, value)
                self.changed.add(key)
            return alert
        if alert.state == PENDING:
            self.changed.add(key)
            if not raw:
                del self.alerts[key]
                return None
            self._point(alert, step, wall_time, value)
            return alert
        # firing, and this point is back to normal
        self._point(alert, step, wall_time, value, state)
        alert.clear_points += 1
        if alert.clear_since is None:
            alert.clear_since = self.clock()
        self.changed.add(key)
        if self._may_resolve(rule, alert, self.clock()):
            self._resolve(rule, alert, state, key)
            return None
        return alert

    def _point(
        self, alert: Alert, step: int, wall_time: float, value: float, state: RuleState | None = None
    ) -> None:
        alert.step = step
        alert.wall_time = wall_time
        alert.value = value
        if state is not None:
            alert.ratio = state.ratio

    def _may_resolve(self, rule: Rule, alert: Alert, now: float) -> bool:
        if alert.clear_points <= rule.keep_firing_for_points:
            return False
        if rule.keep_firing_for_seconds and alert.clear_since is not None:
            return now - alert.clear_since >= rule.keep_firing_for_seconds
        return True

    def _resolve(self, rule: Rule, alert: Alert, state: RuleState | None, key: str | None = None) -> None:
        self._emit(rule, alert, RESOLVED, state, ends_at=self.clock())
        del self.alerts[key or alert_key(alert.rule, alert.run, alert.tag)]

    # -- timers --------------------------------------------------------------
    def tick(self, engine_series) -> None:
        """Clock-driven transitions: keep_firing_for (seconds), repeats, absence."""
        now = self.clock()
        for key, alert in list(self.alerts.items()):
            rule = self.rules.get(alert.rule)
            if rule is None or alert.state != ACTIVE:
                continue
            if (
                rule.kind != "absent"
                and alert.clear_since is not None
                and self._may_resolve(rule, alert, now)
            ):
                self._resolve(rule, alert, None)
                self.changed.add(key)
            elif rule.repeat_interval and now - alert.last_notified >= rule.repeat_interval:
                self._emit(rule, alert, REPEAT, None)
                self.changed.add(key)
        if any(r.kind == "absent" for r in self.rules.values()):
            self._absence(engine_series, now)

    def _absence(self, engine_series, now: float) -> None:
        for s in engine_series:
            for i, rule in enumerate(s.rules):
                if rule.kind != "absent" or not s.wall_time:
                    continue
                key = alert_key(rule.name, s.run, s.tag)
                silent = now - s.wall_time
                alert = self.alerts.get(key)
                if silent > rule.absent_for:
                    # a series that had already stopped before we started is history, not a stall
                    if alert is None and s.wall_time >= self.started_at - rule.absent_for:
                        alert = self.alerts[key] = Alert(rule.name, s.run, s.tag)
                        self._point(alert, s.step, s.wall_time, s.value)
                        alert.state = ACTIVE
                        alert.rank = rule.levels[0][0]
                        alert.starts_at = now
                        # so the next point reaches the sink and resolves it
                        s.ranks[i] = alert.rank
                        self._emit(rule, alert, FIRING, s.states[i])
                        self.changed.add(key)
                elif alert is not None and alert.state == ACTIVE:
                    s.ranks[i] = 0
                    self._resolve(rule, alert, s.states[i])
                    self.changed.add(key)

    # -- events --------------------------------------------------------------
    def _emit(
        self,
        rule: Rule,
        alert: Alert,
        kind: str,
        state: RuleState | None,
        previous: int | None = None,
        ends_at: float | None = None,
    ) -> None:
        now = self.clock()
        alert.seq += 1
        alert.last_notified = now
        if self.suppress:
            return
        self.events.append(self.event(rule, alert, kind, state, previous, ends_at))

    def event(
        self,
        rule: Rule,
        alert: Alert,
        kind: str,
        state: RuleState | None,
        previous: int | None = None,
        ends_at: float | None = None,
        catchup: bool = False,
    ) -> AlertEvent:
        if state is None and rule.kind == "growth":
            # timer and summary events: the ratio the alert saw at its last point
            state = RuleState(len(rule.levels))
            state.ratio = alert.ratio
        fields = rule.fields(alert.run, alert.tag, alert.step, alert.value, alert.rank, state)
        annotations = rule.render(fields)
        if rule.description:
            annotations.setdefault("description", rule.description)
        severity = Severity.of_rank(alert.rank, "warning")
        labels = {
            **rule.labels,
            "alertname": rule.name,
            "severity": severity,
            "run": alert.run,
            "tag": alert.tag,
        }
        threshold = rule.level_of(alert.rank) if rule.kind in ("thresholds", "growth") else None
        if rule.kind == "absent":
            threshold = rule.absent_for
        return AlertEvent(
            rule=rule.name,
            run=alert.run,
            tag=alert.tag,
            kind=kind,
            severity=severity,
            previous=Severity.of_rank(previous, None) if previous else None,
            step=alert.step,
            value=alert.value,
            wall_time=alert.wall_time,
            threshold=threshold,
            starts_at=alert.starts_at,
            ends_at=ends_at,
            labels=labels,
            annotations=annotations,
            catchup=catchup,
            seq=alert.seq,
        )

    def catchup_summary(self) -> list[AlertEvent]:
        """One FIRING event per alert still firing at the end of catch-up."""
        out = []
        for alert in self.alerts.values():
            rule = self.rules.get(alert.rule)
            if rule is not None and alert.state == ACTIVE:
                out.append(self.event(rule, alert, FIRING, None, catchup=True))
        return out

    def take_events(self) -> list[AlertEvent]:
        events, self.events = self.events, []
        return events

    def take_changes(self) -> dict[str, dict[str, Any] | None]:
        out = {k: (self.alerts[k].to_dict() if k in self.alerts else None) for k in self.changed}
        self.changed = set()
        return out

    def restore(self, saved: dict[str, dict[str, Any]]) -> None:
        for key, d in saved.items():
            self.alerts[key] = Alert.from_dict(d)

    def reload_rules(self, rules: list[Rule]) -> list[str]:
        """New rules; alerts of rules that are gone resolve (notified). Returns those rule names."""
        old, self.rules = self.rules, {r.name: r for r in rules}
        gone = []
        for key, alert in list(self.alerts.items()):
            if alert.rule in self.rules:
                continue
            gone.append(alert.rule)
            rule = old.get(alert.rule)
            if rule is not None and alert.state == ACTIVE:
                self._resolve(rule, alert, None)
            else:
                del self.alerts[key]
            self.changed.add(key)
        return sorted(set(gone))

    def drop_run(self, run: str) -> int:
        """The run directory is gone: resolve its firing alerts (receivers must close them too)."""
        keys = [k for k, a in self.alerts.items() if a.run == run]
        for key in keys:
            alert = self.alerts[key]
            rule = self.rules.get(alert.rule)
            if rule is not None and alert.state == ACTIVE:
                self._emit(rule, alert, RESOLVED, None, ends_at=self.clock())
                if not self.suppress:
                    self.events[-1].annotations["resolution"] = "the run directory was deleted"
            del self.alerts[key]
            self.changed.add(key)
        return len(keys)

    def firing(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state == ACTIVE]


def _batchable(alert: Alert | None, rank: int) -> bool:
    """Whether the alert before a batch is one ``rule_transitions`` starts from: none (and the
    series' rank 0), or firing at the series' rank with clear_since set exactly when it counts
    clear points. Anything else (pending; a rank a reload or restore left; a restored row gradwatch
    never writes, firing at rank 0 or with negative clear points) goes point by point."""
    if alert is None:
        return not rank
    if alert.state != ACTIVE or not rank or alert.rank != rank or alert.clear_points < 0:
        return False
    return (alert.clear_points == 0) == (alert.clear_since is None)
