"""``gradwatch report``: one tag, several runs, side by side at chosen steps.

The table the founding incident was diagnosed with: each run's value at each
step, and each run's ratio to the first (baseline) run.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import TextIO

from gradwatch.engine import Engine
from gradwatch.events.logdir import ProblemLog, read_logdir
from gradwatch.fmt import escape, human, json_number
from gradwatch.oneshot.text import csv_name, csv_value
from gradwatch.rules import Rule, Series

DEFAULT_ROWS = 10


@dataclass
class Report:
    tag: str
    runs: list[str]
    steps: list[int]
    # run -> step -> value (the last value written at that step)
    values: dict[str, dict[int, float]]
    # --run globs that matched no run having the tag
    unmatched: list[str] = field(default_factory=list)
    # the other tags seen, to suggest one when the tag is missing
    tags_seen: set[str] = field(default_factory=set)
    # every run having the tag, selected or not
    runs_with_tag: list[str] = field(default_factory=list)
    # step -> where a rule first reached a severity at that step ("run: rule severity")
    first_alerts: dict[int, list[str]] = field(default_factory=dict)

    def value(self, run: str, step: int) -> float | None:
        return self.values[run].get(step)

    def ratio(self, run: str, step: int) -> float | None:
        base = self.value(self.runs[0], step)
        v = self.value(run, step)
        if base is None or v is None or base == 0:
            return None
        return v / base


def build_report(
    logdir: str,
    tag: str,
    runs: list[str] | None = None,
    steps: list[int] | None = None,
    problems: ProblemLog | None = None,
    rules: list[Rule] | None = None,
) -> Report:
    values: dict[str, dict[int, float]] = {}
    tags_seen: set[str] = set()
    for run, t, step, _, value in read_logdir(logdir, problems):
        if t != tag:
            tags_seen.add(t)
            continue
        values.setdefault(run, {})[step] = value
    unmatched: list[str] = []
    if runs:
        # keep the order the user gave: the first run is the baseline
        order: list[str] = []
        for g in runs:
            found = [r for r in sorted(values) if fnmatch.fnmatchcase(r, g)]
            if not found:
                unmatched.append(g)
            order.extend(r for r in found if r not in order)
    else:
        order = sorted(values)
    # every run with the tag, for the error message when a --run matches none of them
    with_tag = sorted(values)
    values = {r: values[r] for r in order}
    firsts = first_alerts(tag, values, rules) if rules else {}
    if steps is None:
        steps = default_steps(values, firsts)
    return Report(tag, order, steps, values, unmatched, tags_seen, with_tag, firsts)


def first_alerts(tag: str, values: dict[str, dict[int, float]], rules: list[Rule]) -> dict[int, list[str]]:
    """{step: ["td3: gradient_explosion critical", ...]}: where each rule first reached each severity
    on each run (a point that jumps straight to critical shows as critical only)."""
    reached: set[tuple[str, str, int]] = set()
    # step -> run -> rule -> highest severity first reached there
    found: dict[int, dict[str, dict[str, str]]] = {}

    def sink(s: Series, i: int, rank: int, previous: int, step: int, wall_time: float, value: float) -> None:
        rule = s.rules[i]
        for r, sev, _ in sorted(rule.levels):
            if r <= rank and (s.run, rule.name, r) not in reached:
                reached.add((s.run, rule.name, r))
                found.setdefault(step, {}).setdefault(s.run, {})[rule.name] = sev

    engine = Engine(rules, sink)
    # a baseline rule's reference runs first: a finished baseline has then reached every step
    for run, points in sorted(values.items(), key=lambda item: not engine.is_reference_run(item[0])):
        for step in sorted(points):
            # wall time is not kept here: absence rules (gaps in wall time) never fire in a report
            engine.observe(run, tag, step, 0.0, points[step])
    return {
        step: [
            f"{run}: " + ", ".join(f"{name} {sev}" for name, sev in by_rule.items())
            for run, by_rule in runs.items()
        ]
        for step, runs in found.items()
    }


def default_steps(values: dict[str, dict[int, float]], firsts: dict[int, list[str]]) -> list[int]:
    """Every logged step when there are at most DEFAULT_ROWS; else DEFAULT_ROWS steps spread from the
    first to the last of those the baseline logged together with another run (so each row has values
    and ratios, whatever interval each run logs at); plus every step where a rule first fired."""
    every = sorted(set().union(*values.values()))
    if len(every) > DEFAULT_ROWS:
        baseline, *others = values.values()
        shared = sorted(s for s in baseline if any(s in other for other in others))
        pool = shared if len(shared) >= 2 else sorted(baseline) if len(baseline) >= 2 else every
        # evenly spaced over the pool, always including its first and last step
        k = len(pool) - 1
        every = (
            pool
            if k < DEFAULT_ROWS
            else [pool[round(i * k / (DEFAULT_ROWS - 1))] for i in range(DEFAULT_ROWS)]
        )
    return sorted({*every, *firsts})


def _cell(v: float | None) -> str:
    return "-" if v is None else human(v)


def _ratio_cell(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return human(v)
    return f"x{v:,.0f}" if abs(v) >= 100 else f"x{v:.3g}"


def write_text(report: Report, out: TextIO) -> None:
    runs = [escape(r) for r in report.runs]  # run names are the trainer's: never raw on a terminal
    header = ["step", *runs, *(f"{r} / {runs[0]}" for r in runs[1:])]
    rows = [
        [
            str(step),
            *(_cell(report.value(r, step)) for r in report.runs),
            *(_ratio_cell(report.ratio(r, step)) for r in report.runs[1:]),
        ]
        for step in report.steps
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    out.write(f"{escape(report.tag)}\n")
    out.write("  ".join(h.rjust(w) for h, w in zip(header, widths)) + "\n")
    for step, row in zip(report.steps, rows):
        line = "  ".join(c.rjust(w) for c, w in zip(row, widths))
        firsts = report.first_alerts.get(step)
        out.write(line + (f"  <- first {escape('; '.join(firsts))}" if firsts else "") + "\n")


def write_csv(report: Report, out: TextIO) -> None:
    base = report.runs[0]
    w = csv.writer(out, lineterminator="\n")
    runs = [csv_name(r) for r in report.runs]
    w.writerow(["step", *runs, *(f"{r}/{csv_name(base)}" for r in runs[1:])])
    for step in report.steps:
        vals = [report.value(r, step) for r in report.runs]
        ratios = [report.ratio(r, step) for r in report.runs[1:]]
        w.writerow(
            [
                step,
                *("" if v is None else csv_value(v) for v in vals),
                *("" if v is None else csv_value(v) for v in ratios),
            ]
        )


def write_json(report: Report, out: TextIO) -> None:
    doc = {
        "tag": report.tag,
        "runs": report.runs,
        "baseline": report.runs[0],
        "rows": [
            {
                "step": step,
                "values": {r: json_number(report.value(r, step)) for r in report.runs},
                "ratios": {r: json_number(report.ratio(r, step)) for r in report.runs[1:]},
            }
            for step in report.steps
        ],
    }
    json.dump(doc, out, indent=2)
    out.write("\n")
