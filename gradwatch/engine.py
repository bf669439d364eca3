"""Points -> rule decisions.

The engine finds (once per series) the rules that match it and evaluates
them on every point. It calls the sink only when a rule's severity is or was
non-zero, so a healthy series costs two dict lookups per point and one call
per matching rule.

``observe_batch`` takes a batch of one series' points as numpy arrays and makes
exactly the sink calls ``observe`` would make point by point, in the same
order, leaving the same state; a sink with a ``many`` method (see ``Sink``)
takes a rule's whole batch in one call.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Callable

import numpy as np

from gradwatch.baseline import References
from gradwatch.events.logdir import ProblemLog
from gradwatch.fmt import shown_name
from gradwatch.match import MAX_NAME_BYTES, name_too_long
from gradwatch.rules import Rule, RuleBatch, Series, series_rules

NAME_TOO_LONG = "name_too_long"

# Most points ``observe_many`` decides at once (check stops adding a file's batches past it). Past a
# few thousand points per numpy call the per-call overhead a group saves is gone, and a group's
# temporaries (the growth rules' range-minimum table: ~10 floats a point) should stay in cache:
# bench/data/runs' rules took ~0.06 s at 2**15 to 2**17 points, ~0.09 s at 2**18, ~0.10 s at 2**19.
GROUP_POINTS = 1 << 15

# sink(series, rule index, rank, previous rank, step, wall_time, value)
#
# A sink may also have ``many(series, i, ranks, steps, wall_times, values, measures)``: it then
# stands for every call of rule i over one batch (``observe_batch``), and must do what those
# calls would: the engine calls the sink at point j when ranks[j] (after ``for``), the raw rank
# of point j (before ``for``: pending) or the rank in ``series.ranks[i]`` is non-zero, having set
# ``series.ranks[i] = ranks[j]`` (``previous`` is what it was), and ``series.states[i]`` has that
# raw rank and ``ratio = measures[j]`` (growth); ``many`` is not told the raw ranks, so only a
# sink to which a pending point is no alert may have it. ``many`` reads ``series.ranks[i]`` as
# the rank before the batch, leaves it as the last of those calls would, and finds the state
# already at the batch's end. Its calls for different rules come rule by rule, not interleaved
# point by point: only a sink whose rules are independent of each other's order may have it.
#
# A sink may instead have ``batch_calls(series, batches, steps, wall_times, values)``: called before
# the rules' batches are committed to ``series.states``, it stands for every call of the batch (all
# rules, their (point, rule) order included) when it returns True, and has then left ``series.ranks``
# as the last of those calls would; when it returns False it has changed nothing and the engine
# makes the calls (gradwatch/alerts.py: AlertBook during a catch-up).
#
# A sink whose attribute ``collapses_steady_runs`` is true declares that after a call at rank r != 0
# that leaves ``series.ranks[i] == r``, a call at the next point with rank r again only records that
# point (nothing else changes, no transition, no clock read); within a batch the engine then calls it
# only at the last point of such a run of rank r (gradwatch/alerts.py: AlertBook).
Sink = Callable[[Series, int, int, int, int, float, float], None]


class Engine:
    """``export_tags`` (globs) makes series tracked (for metrics) without a rule."""

    def __init__(
        self,
        rules: list[Rule],
        sink: Sink,
        export_tags: list[str] | None = None,
        on_new_series: Callable[[Series], None] | None = None,
        problems: Callable[[str, str, int, str], None] | None = None,
    ) -> None:
        self.rules = rules
        self.sink = sink
        self.export_tags = export_tags or []
        # called once per new series (the daemon restores persisted rule states)
        self.on_new_series = on_new_series
        # run -> tag -> Series, or None when no rule matches the series
        self.runs: dict[str, dict[str, Series | None]] = {}
        # where a skipped series is reported (a ProblemLog: counted, logged once)
        self.problems = problems or ProblemLog()
        # the points of baseline rules' reference series, bounded per series (kept across reloads)
        self.references = References()

    def series(self, run: str, tag: str) -> Series | None:
        tags = self.runs.setdefault(run, {})
        if tag not in tags:
            if self._too_long(run, tag):
                tags[tag] = None
                return None
            matched = series_rules(self.rules, run, tag)
            reference = self.is_reference(run, tag)
            tracked = matched or reference or any(fnmatch.fnmatchcase(tag, g) for g in self.export_tags)
            s = tags[tag] = Series(run, tag, matched) if tracked else None
            if s is not None:
                self._bind_baselines(s, reference)
            if s is not None and self.on_new_series is not None:
                self.on_new_series(s)
        return tags[tag]

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    @rules.setter
    def rules(self, rules: list[Rule]) -> None:
        # the daemon's reload assigns new rules: the baseline rules among them go with them
        self._rules = rules
        self._baselines = [r for r in rules if r.baseline is not None]

    def is_reference(self, run: str, tag: str) -> bool:
        """Whether some baseline rule compares other runs with this series."""
        return any(r.baseline.is_reference(run) and r.match.matches_tag(tag) for r in self._baselines)  # type: ignore[union-attr]

    def is_reference_run(self, run: str) -> bool:
        """Whether some baseline rule compares other runs with this run (any tag)."""
        return any(r.baseline.is_reference(run) for r in self._baselines)  # type: ignore[union-attr]

    @property
    def has_baselines(self) -> bool:
        return bool(self._baselines)

    def _bind_baselines(self, s: Series, reference: bool) -> None:
        if reference:
            s.history = self.references.history(s.run, s.tag)
        for rule, state in zip(s.rules, s.states):
            if rule.baseline is not None:
                state.extra.bind(self.references, s.run, s.tag)  # type: ignore[union-attr]

    def _too_long(self, run: str, tag: str) -> bool:
        """Names over MAX_NAME_BYTES never reach a rule's regex: reported once (the series is cached)."""
        where = f"run {shown_name(run)}"
        if not name_too_long(run):
            if not name_too_long(tag):
                return False
            where += f", tag {shown_name(tag)}"
        limit = f"over {MAX_NAME_BYTES:,} bytes, longer than any TensorBoard name; not matched against rules"
        self.problems(NAME_TOO_LONG, where, -1, limit)
        return True

    def observe(self, run: str, tag: str, step: int, wall_time: float, value: float) -> None:
        tags = self.runs.get(run)
        s = tags.get(tag, False) if tags is not None else False
        if s is False:
            s = self.series(run, tag)
        if s is None:
            return
        s.step = step
        s.wall_time = wall_time
        s.value = value
        history = s.history
        if history is not None:
            history.add(step, value)
        ranks = s.ranks
        states = s.states
        for i, rule in enumerate(s.rules):
            rank = rule.evaluate(states[i], step, wall_time, value)
            previous = ranks[i]
            # raw: the condition holds but ``for`` is not met yet (pending). The sink keeps
            # ranks[i] non-zero while its alert fires or is pending, so the point that clears
            # it (or breaks the streak) reaches the sink too.
            if rank or previous or states[i].raw:
                ranks[i] = rank
                self.sink(s, i, rank, previous, step, wall_time, value)

    def observe_batch(
        self, run: str, tag: str, steps: np.ndarray, wall_times: np.ndarray, values: np.ndarray
    ) -> None:
        """``observe`` for each point of one series' batch (int64 steps, float64 wall times and
        values, in order): the same sink calls in the same order, the same state after."""
        if not len(steps):
            return
        s = self.series(run, tag)
        if s is None:
            return
        self._apply(s, self._evaluate_batch(s, steps, values), steps, wall_times, values)

    def observe_many(self, batches: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """``observe_batch`` for each (run, tag, steps, wall_times, values) in order: the same sink
        calls in the same order, the same state after; but each rule decides the batches of many
        series at once (``Rule.evaluate_group``), a few numpy calls for all of them. A series'
        second batch starts a new group: it must see the state the first leaves."""
        group: list[tuple[Series, np.ndarray, np.ndarray, np.ndarray]] = []
        in_group: set[int] = set()
        points = 0
        for run, tag, steps, wall_times, values in batches:
            if not len(steps):
                continue
            s = self.series(run, tag)
            if s is None:
                continue
            if id(s) in in_group or points >= GROUP_POINTS:
                self._observe_group(group)
                group, points = [], 0
                in_group.clear()
            group.append((s, steps, wall_times, values))
            in_group.add(id(s))
            points += len(steps)
        self._observe_group(group)

    def _observe_group(self, group: list[tuple[Series, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        if len(group) == 1:
            s, steps, wall_times, values = group[0]
            self._apply(s, self._evaluate_batch(s, steps, values), steps, wall_times, values)
            return
        for (s, steps, wall_times, values), batches in zip(group, _evaluate_group(group)):
            self._apply(s, batches, steps, wall_times, values)

    def _apply(
        self,
        s: Series,
        batches: list[RuleBatch] | None,
        steps: np.ndarray,
        wall_times: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """The sink calls and the state of a batch whose rules decided it (``batches``), or point by
        point (None)."""
        if batches is None:
            observe, run, tag = self.observe, s.run, s.tag
            for step, wall_time, value in zip(steps.tolist(), wall_times.tolist(), values.tolist()):
                observe(run, tag, step, wall_time, value)
            return
        many = getattr(self.sink, "many", None)
        if many is None:
            batch_calls = getattr(self.sink, "batch_calls", None)
            if batch_calls is None or not batch_calls(s, batches, steps, wall_times, values):
                self._calls(s, batches, steps, wall_times, values)
        s.step = int(steps[-1])
        s.wall_time = float(wall_times[-1])
        s.value = float(values[-1])
        for i, b in enumerate(batches):
            b.commit(s.states[i])
            if many is not None and (b.ranks is not None or s.ranks[i]):
                ranks = b.ranks if b.ranks is not None else np.zeros(len(steps), dtype=np.int64)
                many(s, i, ranks, steps, wall_times, values, b.measures)

    @staticmethod
    def _evaluate_batch(s: Series, steps: np.ndarray, values: np.ndarray) -> list[RuleBatch] | None:
        """Every rule's decisions on the batch, or None when the series goes point by point:
        some rule cannot take a batch, or the series is a baseline's reference (its history
        must grow point by point)."""
        if s.history is not None:
            return None
        batches = []
        for rule, state in zip(s.rules, s.states):
            b = rule.evaluate_batch(state, steps, values)
            if b is None:
                return None
            batches.append(b)
        return batches

    def _calls(
        self,
        s: Series,
        batches: list[RuleBatch],
        steps: np.ndarray,
        wall_times: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """The per-point sink calls of a batch, in (point, rule) order as ``observe`` makes them;
        the sink may change ``s.ranks[i]``, which decides whether the next point is a call."""
        n = len(steps)
        # per rule: the points whose rank or raw is non-zero (each is a call), as a sorted list
        alerting = [b.calls() for b in batches]
        upcoming = {}  # rule index -> its next call
        for i, points in enumerate(alerting):
            j = 0 if s.ranks[i] else points[0] if points else None
            if j is not None:
                upcoming[i] = j
        if not upcoming:
            return
        steps_, walls, values_ = steps.tolist(), wall_times.tolist(), values.tolist()
        sink, ranks, states = self.sink, s.ranks, s.states
        collapse = getattr(sink, "collapses_steady_runs", False)
        run_ends = [_run_ends(b.ranks) if collapse and b.ranks is not None else [] for b in batches]
        while upcoming:
            i = min(upcoming, key=lambda k: (upcoming[k], k))
            j = upcoming[i]
            b = batches[i]
            b.at(states[i], j)
            rank = int(b.ranks[j]) if b.ranks is not None else 0
            previous = ranks[i]
            ranks[i] = rank
            s.step, s.wall_time, s.value = steps_[j], walls[j], values_[j]  # what observe shows a sink
            sink(s, i, rank, previous, steps_[j], walls[j], values_[j])
            if not ranks[i]:
                nxt = _after(alerting[i], j)
            elif rank and ranks[i] == rank and run_ends[i]:
                # a steady alert: the calls at the next points of this rank only record the point
                # (``collapses_steady_runs``), so the last point of the run stands for them all
                nxt = max(j + 1, run_ends[i][bisect.bisect_left(run_ends[i], j)])
            else:
                nxt = j + 1
            if nxt is None or nxt >= n:
                del upcoming[i]
            else:
                upcoming[i] = nxt

    def forget_run(self, run: str) -> None:
        self.runs.pop(run, None)
        self.references.forget_run(run)

    def all_series(self):
        # copies: the metrics thread iterates while the daemon thread adds series
        for tags in list(self.runs.values()):
            for s in list(tags.values()):
                if s is not None:
                    yield s


def _evaluate_group(
    group: list[tuple[Series, np.ndarray, np.ndarray, np.ndarray]],
) -> list[list[RuleBatch] | None]:
    """``Engine._evaluate_batch`` of each series' batch in ``group`` (different series), each rule
    over all the batches it watches at once."""
    decided: list[list[RuleBatch | None] | None] = []
    by_rule: dict[int, tuple[Rule, list[tuple[int, int]]]] = {}  # id(rule) -> rule, (batch, rule index)
    for k, (s, _, _, _) in enumerate(group):
        if s.history is not None:  # a baseline's reference: its history grows point by point
            decided.append(None)
            continue
        decided.append([None] * len(s.rules))
        for i, rule in enumerate(s.rules):
            by_rule.setdefault(id(rule), (rule, []))[1].append((k, i))
    everything = None  # every batch of the group end to end, made once for the rules that watch all
    for rule, where in by_rule.values():
        members = [k for k, _ in where]
        if len(members) == len(group):
            if everything is None:
                everything = _end_to_end(group)
            steps, values, bounds = everything
        else:
            steps, values, bounds = _end_to_end([group[k] for k in members])
        states = [group[k][0].states[i] for k, i in where]
        for (k, i), b in zip(where, rule.evaluate_group(states, steps, values, bounds)):
            decided[k][i] = b  # type: ignore[index]
    return [None if d is None or any(b is None for b in d) else d for d in decided]  # type: ignore[misc]


def _end_to_end(
    group: list[tuple[Series, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batches' steps and values laid end to end, and where each starts (and the last ends)."""
    bounds = np.zeros(len(group) + 1, dtype=np.int64)
    np.cumsum([len(steps) for _, steps, _, _ in group], out=bounds[1:])
    steps = np.concatenate([steps for _, steps, _, _ in group])
    values = np.concatenate([values for _, _, _, values in group])
    return steps, values, bounds


def _after(points: list[int], j: int) -> int | None:
    """The first of the sorted ``points`` after j."""
    k = bisect.bisect_right(points, j)
    return points[k] if k < len(points) else None


def _run_ends(ranks: np.ndarray) -> list[int]:
    """The last index of each run of equal ranks, sorted."""
    return [*np.flatnonzero(ranks[1:] != ranks[:-1]).tolist(), len(ranks) - 1]
