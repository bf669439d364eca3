"""``gradwatch check``: evaluate every existing point of a logdir once.

Exit status follows the monitoring-plugin convention, so CI can gate on it:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad logdir, bad rules, nothing
checked).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from gradwatch.anomaly import AnomalyState
from gradwatch.baseline import Verdict
from gradwatch.engine import Engine
from gradwatch.events.columns import Columns
from gradwatch.events.logdir import LogdirReader, ProblemLog, scan
from gradwatch.events.parallel import fork_map, split_runs
from gradwatch.events.remote import is_remote
from gradwatch.events.shard import Shard
from gradwatch.fmt import escape, human, json_number
from gradwatch.rules import Rule, RuleState, Series
from gradwatch.severity import Severity

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_INDENT = " " * 14
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def exit_code_of(rank: int) -> int:
    if rank >= Severity.CRITICAL:
        return CRITICAL
    if rank >= Severity.WARNING:
        return WARNING
    return OK


class SeriesStats:
    """Count, finite extremes and non-finite points of one checked series."""

    __slots__ = ("count", "first_nonfinite", "last_step", "max", "max_step", "min", "min_step", "nonfinite")

    def __init__(self) -> None:
        self.count = 0
        self.nonfinite = 0
        self.first_nonfinite: tuple[int, float] | None = None
        self.max = -math.inf
        self.min = math.inf
        self.max_step: int | None = None
        self.min_step: int | None = None
        self.last_step: int | None = None

    def add(self, step: int, value: float) -> None:
        self.count += 1
        self.last_step = step
        if not math.isfinite(value):
            self.nonfinite += 1
            if self.first_nonfinite is None:
                self.first_nonfinite = (step, value)
            return
        if value > self.max:
            self.max, self.max_step = value, step
        if value < self.min:
            self.min, self.min_step = value, step

    def add_batch(self, steps: np.ndarray, values: np.ndarray) -> None:
        """``add`` for each point of a batch (int64 steps, float64 values, in order)."""
        n = len(values)
        self.count += n
        self.last_step = int(steps[-1])
        finite = np.isfinite(values)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            self.nonfinite += len(bad)
            if self.first_nonfinite is None:
                self.first_nonfinite = (int(steps[bad[0]]), float(values[bad[0]]))
            steps, values = steps[finite], values[finite]
            if not len(values):
                return
        high = values.max()
        if high > self.max:  # the first point at the maximum, as ``add`` keeps it
            j = int(np.argmax(values == high))
            self.max, self.max_step = float(values[j]), int(steps[j])
        low = values.min()
        if low < self.min:
            j = int(np.argmax(values == low))
            self.min, self.min_step = float(values[j]), int(steps[j])

    def extreme(self, which: str) -> dict[str, Any] | None:
        """{"step", "value"} of the finite max or min; None when no value was finite."""
        step = self.max_step if which == "max" else self.min_step
        if step is None:
            return None
        return {"step": step, "value": self.max if which == "max" else self.min}


@dataclass
class Finding:
    """What one rule saw on one series."""

    rule: Rule
    run: str
    tag: str
    # severity -> (step, value, measure) of the first point at that severity or worse; the measure is
    # the growth ratio, the ratio to the baseline, the anomaly's z-score, or None
    first: dict[str, tuple[int, float, float | None]] = field(default_factory=dict)
    worst: int = 0
    # rank -> points at that rank; "points at warning or worse" sums the ranks >= warning
    at_rank: dict[int, int] = field(default_factory=dict)
    final: int = 0
    # annotations rendered at the first point of the worst severity
    annotations: dict[str, str] = field(default_factory=dict)

    def points_at(self, rank: int) -> int:
        return sum(n for r, n in self.at_rank.items() if r >= rank)

    @property
    def points_alerting(self) -> int:
        return sum(self.at_rank.values())

    def to_json(self, stats: SeriesStats) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "kind": self.rule.kind,
            "run": self.run,
            "tag": self.tag,
            "severity": Severity.of_rank(self.worst),
            "first": {
                sev: _json_first(*first, "zscore" if self.rule.kind == "anomaly" else "ratio")
                for sev, first in self.first.items()
            },
            "points_at": {
                sev: self.points_at(rank) for rank, sev, _ in self.rule.levels if sev in self.first
            },
            "points_alerting": self.points_alerting,
            "points": stats.count,
            "nonfinite": stats.nonfinite,
            "max": _json_extreme(stats.extreme("max")),
            "min": _json_extreme(stats.extreme("min")),
            "last_step": stats.last_step,
            "active_at_end": Severity.of_rank(self.final, None),
            "labels": self.rule.labels,
            "annotations": self.annotations,
        }


def _json_first(step: int, value: float, ratio: float | None, name: str = "ratio") -> dict[str, Any]:
    out: dict[str, Any] = {"step": step, "value": json_number(value)}
    if ratio is not None:
        out[name] = json_number(ratio)
    return out


def _json_extreme(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {"step": d["step"], "value": json_number(d["value"])}


@dataclass
class CheckResult:
    logdir: str
    rules: list[Rule]
    findings: dict[tuple[str, str, str], Finding]
    # only the series some rule matched
    stats: dict[tuple[str, str], SeriesStats]
    runs: list[str]
    points: int
    problems: dict[str, int]
    # every tag seen, matched or not, to explain "nothing matched"
    tags_seen: set[str] = field(default_factory=set)
    # baseline rules' series with points that could not be compared: (rule, run, tag, points, why)
    uncompared: list[tuple[Rule, str, str, int, str]] = field(default_factory=list)

    @property
    def worst(self) -> int:
        return max((f.worst for f in self.findings.values()), default=0)

    @property
    def exit_code(self) -> int:
        if not self.runs or not self.stats:
            return UNKNOWN
        return exit_code_of(self.worst)

    def alerted(self) -> list[Finding]:
        return sorted(
            (f for f in self.findings.values() if f.worst),
            key=lambda f: (f.run, f.tag, -f.worst, f.rule.name),
        )


def run_check(
    logdir: str, rules: list[Rule], problems: ProblemLog | None = None, shard: Shard | None = None
) -> CheckResult:
    """Evaluate every point of ``logdir``; groups of runs on other cores when it pays
    (gradwatch/events/parallel.py), merged in run order: the same result as one process."""
    problems = problems or ProblemLog()
    runs = scan(logdir, problems, shard)
    # a baseline rule compares runs with each other: they must all be in the one process;
    # an object store's client (its connection pool, its event loop thread) does not survive a fork
    one_process = any(r.baseline is not None for r in rules) or is_remote(logdir)
    groups = [runs] if runs and one_process else split_runs(runs)
    parts = fork_map(lambda group: _check_runs(logdir, rules, group), groups)
    by_name = {rule.name: rule for rule in rules}

    def in_run_order(items, run_of):
        # each run is in one part only: a stable sort keeps each run's own order
        return dict(sorted(items, key=run_of))

    findings = in_run_order([kf for part in parts for kf in part.findings.items()], lambda kf: kf[0][1])
    for f in findings.values():
        f.rule = by_name[f.rule.name]  # the caller's own Rule, not a child's copy
    stats = in_run_order([ks for part in parts for ks in part.stats.items()], lambda ks: ks[0][0])
    for part in parts:
        for kind, n in part.problems.items():
            problems.counts[kind] = problems.counts.get(kind, 0) + n
    points = sum(part.points for part in parts)
    tags_seen = set().union(*(part.tags_seen for part in parts))
    result = CheckResult(
        logdir, rules, findings, stats, sorted(runs), points, dict(problems.counts), tags_seen
    )
    result.uncompared = [(by_name[u[0].name], *u[1:]) for part in parts for u in part.uncompared]
    return result


class FindingSink:
    """check's engine sink: what each rule saw on each series, as ``Finding``s. Its ``many`` takes
    a rule's batch of points with numpy (see engine.Sink): the same findings as point by point."""

    def __init__(self) -> None:
        self.findings: dict[tuple[str, str, str], Finding] = {}

    def _finding(self, s: Series, rule: Rule) -> Finding:
        key = (rule.name, s.run, s.tag)
        f = self.findings.get(key)
        if f is None:
            f = self.findings[key] = Finding(rule, s.run, s.tag)
        return f

    def __call__(
        self, s: Series, i: int, rank: int, previous: int, step: int, wall_time: float, value: float
    ) -> None:
        if not rank and not previous:
            return  # pending (``for`` not met yet): not an alert
        rule = s.rules[i]
        f = self._finding(s, rule)
        f.final = rank
        if not rank:
            return
        f.at_rank[rank] = f.at_rank.get(rank, 0) + 1
        state = s.states[i]
        ratio = _ratio_of(rule, state)
        for r, sev, _ in rule.levels:
            if r <= rank and sev not in f.first:
                f.first[sev] = (step, value, ratio)
        if rank > f.worst:
            f.worst = rank
            f.annotations = rule.render(rule.fields(s.run, s.tag, step, value, rank, state))

    def many(
        self,
        s: Series,
        i: int,
        ranks: np.ndarray,
        steps: np.ndarray,
        wall_times: np.ndarray,
        values: np.ndarray,
        measures: np.ndarray | None,
    ) -> None:
        previous = s.ranks[i]
        s.ranks[i] = int(ranks[-1])  # the rank of the last call (0 after the point that cleared it)
        alerting = ranks.nonzero()[0]
        if not len(alerting):
            if previous:  # the first point clears what the last batch left alerting
                self._finding(s, s.rules[i]).final = 0
            return
        rule = s.rules[i]
        f = self._finding(s, rule)
        f.final = int(ranks[-1])
        at = ranks[alerting]
        for r, count in zip(*(a.tolist() for a in np.unique(at, return_counts=True))):
            f.at_rank[r] = f.at_rank.get(r, 0) + count
        state = s.states[i]

        def measure(j: int) -> float | None:
            return float(measures[j]) if measures is not None else _ratio_of(rule, state)

        # severity -> its first point; in point order, and at one point the highest severity first
        firsts = [
            (int(alerting[np.argmax(at >= r)]), order, sev)
            for order, (r, sev, _) in enumerate(rule.levels)
            if sev not in f.first and (at >= r).any()
        ]
        for j, _, sev in sorted(firsts):
            f.first[sev] = (int(steps[j]), float(values[j]), measure(j))
        top = int(at.max())
        if top > f.worst:
            f.worst = top
            j = int(alerting[np.argmax(at == top)])
            at_j = RuleState(len(rule.levels))
            at_j.extra, at_j.raw = state.extra, top
            at_j.ratio = measure(j) if measures is not None else state.ratio
            step, value = int(steps[j]), float(values[j])
            f.annotations = rule.render(rule.fields(s.run, s.tag, step, value, top, at_j))


def _check_runs(logdir: str, rules: list[Rule], runs: dict[str, list[str]]) -> CheckResult:
    sink = FindingSink()
    problems = ProblemLog()
    engine = Engine(rules, sink, problems=problems)
    reader = LogdirReader(logdir, problems=problems)
    for run, paths in runs.items():
        for path in paths:
            reader.reader(run, path)
    stats: dict[tuple[str, str], SeriesStats] = {}
    observe_batch = engine.observe_batch
    engine_runs = engine.runs
    points = 0
    for run, batch in _references_first(reader, engine):
        for c in batch:
            points += len(c)
            observe_batch(run, c.tag, c.steps, c.wall_times, c.values)
            series = engine_runs[run].get(c.tag)
            if series is not None and series.rules:  # not a baseline's reference that no rule watches
                st = stats.get((run, c.tag))
                if st is None:
                    st = stats[(run, c.tag)] = SeriesStats()
                st.add_batch(c.steps, c.values)
    tags_seen = {tag for tags in engine_runs.values() for tag in tags}
    result = CheckResult(
        logdir, rules, sink.findings, stats, sorted(runs), points, dict(problems.counts), tags_seen
    )
    result.uncompared = _uncompared(engine)
    return result


def _ratio_of(rule: Rule, state: RuleState) -> float | None:
    """The measure check shows next to a finding: growth's ratio, the value over the baseline's,
    or the anomaly's z-score."""
    if rule.kind == "growth":
        return state.ratio
    if isinstance(state.extra, Verdict):
        return state.extra.ratio
    if isinstance(state.extra, AnomalyState):
        return state.extra.z
    return None


def _references_first(reader: LogdirReader, engine: Engine) -> Iterator[tuple[str, list[Columns]]]:
    """Every point in columns, the runs that baseline rules compare with first: a finished logdir's
    baseline has reached every step when the other runs are compared with it."""
    if not engine.has_baselines:
        yield from reader.read_all_columns(final=True)
        return
    paths = sorted(reader.readers, key=lambda p: (reader.readers[p][0], p))
    reference_runs = {reader.readers[p][0] for p in paths if engine.is_reference_run(reader.readers[p][0])}
    for path in sorted(paths, key=lambda p: reader.readers[p][0] not in reference_runs):
        yield from reader.read_file_columns(path, final=True)


def _uncompared(engine: Engine) -> list[tuple[Rule, str, str, int, str]]:
    out = []
    for s in engine.all_series():
        for rule, state in zip(s.rules, s.states):
            v = state.extra
            if isinstance(v, Verdict) and v.skipped:
                out.append((rule, s.run, s.tag, v.skipped, v.explain(s.step)))
    return sorted(out, key=lambda u: (u[1], u[2], u[0].name))


def describe_rule(rule: Rule) -> str:
    """One line saying what the rule looks for, e.g. ``above 10,000 (warning), 50,000 (critical)``."""
    levels = sorted(rule.levels)
    if rule.kind == "thresholds":
        what = {"above": "above", "below": "below", "absolute": "|value| above"}[rule.direction]
        return what + " " + ", ".join(f"{human(level)} ({sev})" for _, sev, level in levels)
    if rule.kind == "growth":
        grew = ", ".join(f"x{human(level)} ({sev})" for _, sev, level in levels)
        return f"grew {grew} within {rule.within_steps} steps"
    if rule.kind == "absent":
        return f"no point for more than {human(rule.absent_for)} s ({levels[0][1]})"
    if rule.detector is not None:
        d = rule.detector
        away = {"both": "from", "above": "above", "below": "below"}[d.direction]
        sigmas = ", ".join(f"{human(level)} sd ({sev})" for _, sev, level in levels)
        scale = " on a log scale" if d.log else ""
        return f"{sigmas} {away} the last {d.window} points{scale}"
    if rule.baseline is not None:
        b = rule.baseline
        times = ", ".join(f"x{human(level)} ({sev})" for _, sev, level in levels)
        which = b.runs[0] if len(b.runs) == 1 else "the median of " + " ".join(b.runs)
        return f"{times} {'below' if b.below else 'above'} {escape(which)} at the same step"
    return f"NaN or ±Inf ({levels[0][1]})"


def write_text(result: CheckResult, out: TextIO) -> None:
    n_series = len(result.stats)
    out.write(
        f"gradwatch check {escape(result.logdir)}: {len(result.rules)} rules, {len(result.runs)} runs, "
        f"{n_series} matching series, {result.points:,} points read\n"
    )
    alerted = result.alerted()
    run = tag = None
    for f in alerted:
        st = result.stats[(f.run, f.tag)]
        if f.run != run:
            run, tag = f.run, None
            out.write(f"\nrun {escape(f.run)}\n")
        if f.tag != tag:
            tag = f.tag
            out.write(f"  {escape(f.tag)}: {_series_text(st)}\n")
        rule = f.rule
        out.write(f"    {Severity.of_rank(f.worst).upper():9} {rule.name}: {describe_rule(rule)}\n")
        present = [(rank, sev) for rank, sev, _ in sorted(rule.levels) if sev in f.first]
        for _, sev in present:
            step, value, ratio = f.first[sev]
            extra = "" if ratio is None else f" ({ratio:.1f} sd)" if rule.detector else f" (x{human(ratio)})"
            out.write(f"{_INDENT}{sev:8} first at step {step}: {human(value)}{extra}\n")
        counts = ", ".join(
            f"{f.points_at(rank):,}"
            + (f" of {st.count:,} points" if i == 0 else "")
            + f" at {sev}"
            + (" or worse" if i < len(present) - 1 else "")
            for i, (rank, sev) in enumerate(present)
        )
        end = f"still {Severity.of_rank(f.final)}" if f.final else "back to normal"
        out.write(f"{_INDENT}{counts}; {end} at the last point (step {st.last_step})\n")
        recommendation = f.annotations.get("recommendation")
        if recommendation:
            out.write(
                textwrap.fill(
                    escape(recommendation),
                    width=110,
                    initial_indent=_INDENT + "-> ",
                    subsequent_indent=_INDENT + "   ",
                    break_on_hyphens=False,
                )
                + "\n"
            )
    _write_uncompared(result, out)
    code = result.exit_code
    crit = sum(1 for f in alerted if f.worst >= Severity.CRITICAL)
    warn = sum(1 for f in alerted if Severity.WARNING <= f.worst < Severity.CRITICAL)
    info = sum(1 for f in alerted if f.worst < Severity.WARNING)
    if not result.runs:
        summary = "no event files found (a run is a directory holding files named *tfevents*)"
    elif not result.points:
        summary = "the event files hold no scalar points"
    elif not result.stats:
        seen = sorted(result.tags_seen)
        shown = ", ".join(map(escape, seen[:10])) + (f" and {len(seen) - 10} more" if len(seen) > 10 else "")
        summary = f"no series matched the rules, nothing was checked (tags seen: {shown})"
    elif not alerted:
        summary = f"all {n_series} matching series stayed within the rules"
    else:
        series = len({(f.run, f.tag) for f in alerted})
        parts = [f"{crit} critical", f"{warn} warning"] + ([f"{info} info"] if info else [])
        summary = f"{', '.join(parts)} findings on {series} of {n_series} matching series"
    problems = sum(result.problems.values())
    if problems:
        summary += f"; {problems} problems in event files (see log)"
    out.write(f"\n{STATUS[code]}: {summary}\n")


def _write_uncompared(result: CheckResult, out: TextIO) -> None:
    """Points a baseline rule could not judge: not evidence, but the reader must know."""
    if not result.uncompared:
        return
    out.write("\nnot compared with a baseline (not evidence either way)\n")
    for rule, run, tag, points, why in result.uncompared:
        out.write(
            f"  {rule.name} on run {escape(run)}, {escape(tag)}: "
            f"{points:,} points not compared; at the last point: {why}\n"
        )


def _series_text(st: SeriesStats) -> str:
    peak = st.extreme("max")
    parts = [f"{st.count:,} points"]
    parts.append(f"max {human(peak['value'])} at step {peak['step']}" if peak else "no finite value")
    if st.nonfinite:
        step, value = st.first_nonfinite or (0, math.nan)
        parts.append(f"{st.nonfinite:,} non-finite (first {human(value)} at step {step})")
    return ", ".join(parts)


def write_json(result: CheckResult, out: TextIO) -> None:
    code = result.exit_code
    doc = {
        "status": STATUS[code],
        "exit_code": code,
        "logdir": result.logdir,
        "rules": [r.name for r in result.rules],
        "runs": result.runs,
        "series": len(result.stats),
        "points": result.points,
        "findings": [f.to_json(result.stats[(f.run, f.tag)]) for f in result.alerted()],
        "not_compared": [
            {"rule": rule.name, "run": run, "tag": tag, "points": points, "last": why}
            for rule, run, tag, points, why in result.uncompared
        ],
        "problems": result.problems,
    }
    json.dump(doc, out, indent=2)
    out.write("\n")


def write_error_json(logdir: str, message: str, out: TextIO) -> None:
    """``--json`` output when the check could not run (bad rules, bad logdir): UNKNOWN."""
    doc = {"status": STATUS[UNKNOWN], "exit_code": UNKNOWN, "logdir": logdir, "errors": message.splitlines()}
    json.dump(doc, out, indent=2)
    out.write("\n")


def write_error_text(error: Exception, out: TextIO) -> None:
    """The plugin status line when the check could not run: ``UNKNOWN: <first problem>``."""
    lines = str(error).splitlines() or ["check could not run"]
    more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
    # the message may quote a run name or a file's bytes: one line, nothing a terminal obeys
    out.write(f"{STATUS[UNKNOWN]}: {escape(lines[0])}{more}\n")
