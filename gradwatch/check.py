"""``gradwatch check``: evaluate every existing point of a logdir once.

Exit status follows the monitoring-plugin convention, so CI can gate on it:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad logdir, bad rules, nothing
checked).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TextIO

from gradwatch.engine import Engine
from gradwatch.events.logdir import LogdirReader, ProblemLog
from gradwatch.rules import RANK, SEVERITY_OF_RANK, Rule, Series, human

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def exit_code_of(rank: int) -> int:
    if rank >= RANK["critical"]:
        return CRITICAL
    if rank >= RANK["warning"]:
        return WARNING
    return OK


@dataclass
class Finding:
    """What one rule saw on one series."""

    rule: Rule
    run: str
    tag: str
    first: dict[str, tuple[int, float]] = field(default_factory=dict)
    worst: int = 0
    points_alerting: int = 0
    final: int = 0

    def to_json(self, stats: SeriesStats) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "kind": self.rule.kind,
            "run": self.run,
            "tag": self.tag,
            "severity": SEVERITY_OF_RANK[self.worst],
            "first": {sev: {"step": s, "value": json_number(v)} for sev, (s, v) in self.first.items()},
            "points_alerting": self.points_alerting,
            "points": stats.count,
            "max": {"step": stats.max_step, "value": json_number(stats.max)},
            "min": {"step": stats.min_step, "value": json_number(stats.min)},
            "active_at_end": SEVERITY_OF_RANK.get(self.final),
            "labels": self.rule.labels,
        }


class SeriesStats:
    __slots__ = ("count", "max", "max_step", "min", "min_step", "nonfinite")

    def __init__(self) -> None:
        self.count = 0
        self.nonfinite = 0
        self.max = -math.inf
        self.min = math.inf
        self.max_step: int | None = None
        self.min_step: int | None = None

    def add(self, step: int, value: float) -> None:
        self.count += 1
        if value != value:
            self.nonfinite += 1
            return
        if value in (math.inf, -math.inf):
            self.nonfinite += 1
        if value > self.max:
            self.max, self.max_step = value, step
        if value < self.min:
            self.min, self.min_step = value, step


def json_number(v: float) -> float | str | None:
    if v is None:
        return None
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "Infinity" if v > 0 else "-Infinity"
    return v


@dataclass
class CheckResult:
    logdir: str
    rules: list[Rule]
    findings: dict[tuple[str, str, str], Finding]
    stats: dict[tuple[str, str], SeriesStats]
    runs: list[str]
    points: int
    problems: dict[str, int]

    @property
    def worst(self) -> int:
        return max((f.worst for f in self.findings.values()), default=0)

    @property
    def exit_code(self) -> int:
        if not self.runs or not self.stats:
            return UNKNOWN
        return exit_code_of(self.worst)


def run_check(logdir: str, rules: list[Rule], problems: ProblemLog | None = None) -> CheckResult:
    findings: dict[tuple[str, str, str], Finding] = {}

    def sink(s: Series, i: int, rank: int, previous: int, step: int, wall_time: float, value: float) -> None:
        rule = s.rules[i]
        key = (rule.name, s.run, s.tag)
        f = findings.get(key)
        if f is None:
            f = findings[key] = Finding(rule, s.run, s.tag)
        f.final = rank
        if not rank:
            return
        f.points_alerting += 1
        if rank > f.worst:
            f.worst = rank
        for r, sev, _ in rule.levels:
            if r <= rank and sev not in f.first:
                f.first[sev] = (step, value)

    problems = problems or ProblemLog()
    engine = Engine(rules, sink)
    reader = LogdirReader(logdir, problems=problems)
    runs = sorted(reader.refresh())
    stats: dict[tuple[str, str], SeriesStats] = {}
    observe = engine.observe
    points = 0
    for run, tag, step, wall_time, value in reader.read_all(final=True):
        points += 1
        observe(run, tag, step, wall_time, value)
        if engine.runs[run][tag] is not None:
            st = stats.get((run, tag))
            if st is None:
                st = stats[(run, tag)] = SeriesStats()
            st.add(step, value)
    return CheckResult(logdir, rules, findings, stats, runs, points, dict(problems.counts))


def write_text(result: CheckResult, out: TextIO) -> None:
    n_series = len(result.stats)
    out.write(
        f"gradwatch check {result.logdir}: {len(result.rules)} rules, {len(result.runs)} runs, "
        f"{n_series} matching series, {result.points:,} points read\n"
    )
    alerted = sorted(
        (f for f in result.findings.values() if f.worst),
        key=lambda f: (-f.worst, f.run, f.tag, f.rule.name),
    )
    for f in alerted:
        st = result.stats[(f.run, f.tag)]
        out.write(f"\n{SEVERITY_OF_RANK[f.worst].upper():9} {f.rule.name}  run={f.run}  tag={f.tag}\n")
        for _, sev, level in f.rule.levels:
            if sev in f.first:
                step, value = f.first[sev]
                what = _level_text(f.rule, level)
                out.write(f"          {sev:8} first at step {step}: {human(value)}{what}\n")
        peak = f"max {human(st.max)} at step {st.max_step}" if st.max_step is not None else "no finite value"
        out.write(
            f"          {peak}; "
            f"{f.points_alerting:,} of {st.count:,} points alerting; "
            f"{'still ' + SEVERITY_OF_RANK[f.final] if f.final else 'back to normal'} at the last point\n"
        )
    code = result.exit_code
    crit = sum(1 for f in alerted if f.worst >= RANK["critical"])
    warn = sum(1 for f in alerted if RANK["warning"] <= f.worst < RANK["critical"])
    if not result.runs:
        summary = "no event files found"
    elif not result.stats:
        summary = "no series matched the rules: nothing was checked"
    elif not alerted:
        summary = f"all {n_series} matching series stayed within the rules"
    else:
        summary = f"{crit} critical, {warn} warning findings in {n_series} matching series"
    problems = sum(result.problems.values())
    if problems:
        summary += f"; {problems} problems in event files (see log)"
    out.write(f"\n{STATUS[code]}: {summary}\n")


def _level_text(rule: Rule, level: float) -> str:
    if rule.kind == "thresholds":
        return f" ({'below' if rule.below else 'above'} {human(level)})"
    if rule.kind == "growth":
        return f" (grew x{human(level)} or more within {rule.within_steps} steps)"
    if rule.kind == "absent":
        return f" (after a gap of more than {human(rule.absent_for)} s)"
    return ""


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
        "findings": [
            f.to_json(result.stats[(f.run, f.tag)])
            for f in sorted(result.findings.values(), key=lambda f: (-f.worst, f.run, f.tag, f.rule.name))
            if f.worst
        ],
        "problems": result.problems,
    }
    json.dump(doc, out, indent=2)
    out.write("\n")
