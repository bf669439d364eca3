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

from gradwatch.events.logdir import ProblemLog, read_logdir
from gradwatch.export import csv_value
from gradwatch.fmt import escape
from gradwatch.rules import human, json_number

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
    if steps is None:
        every = sorted(set().union(*(v.keys() for v in values.values()))) if values else []
        if len(every) > DEFAULT_ROWS:
            # evenly spaced rows, always including the first and the last step
            k = len(every) - 1
            every = sorted({every[round(i * k / (DEFAULT_ROWS - 1))] for i in range(DEFAULT_ROWS)})
        steps = every
    return Report(tag, order, steps, values, unmatched, tags_seen, with_tag)


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
    for row in rows:
        out.write("  ".join(c.rjust(w) for c, w in zip(row, widths)) + "\n")


def write_csv(report: Report, out: TextIO) -> None:
    base = report.runs[0]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["step", *report.runs, *(f"{r}/{base}" for r in report.runs[1:])])
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
