"""``gradwatch export``: every scalar point of a logdir as JSON lines or CSV.

Fields: run, tag, step, wall_time, value, one point per line, runs in name
order and each run's points in file order. JSON has no NaN/Inf, so JSON lines
carry them as the strings "NaN", "Infinity" and "-Infinity" (``float()``
reads all three); CSV writes NaN, inf and -inf, which both ``float()`` and
pandas.read_csv read as numbers. docs/commands.md has the pandas recipes.
"""

from __future__ import annotations

import csv
import fnmatch
from typing import TextIO

from gradwatch.events.logdir import ProblemLog, read_logdir
from gradwatch.events.shard import Shard
from gradwatch.oneshot.text import csv_name, csv_value, json_name, json_value

FIELDS = ("run", "tag", "step", "wall_time", "value")


def _selected(name: str, globs: list[str] | None) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def export(
    logdir: str,
    out: TextIO,
    fmt: str = "jsonl",
    runs: list[str] | None = None,
    tags: list[str] | None = None,
    problems: ProblemLog | None = None,
    shard: Shard | None = None,
) -> int:
    """Write the points; returns how many were written."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
    # JSON-encoded run and tag names, once per series rather than per point
    encoded: dict[str, str] = {}
    wanted: dict[tuple[str, str], bool] = {}
    for run, tag, step, wall_time, value in read_logdir(logdir, problems, shard):
        key = (run, tag)
        ok = wanted.get(key)
        if ok is None:
            ok = wanted[key] = _selected(run, runs) and _selected(tag, tags)
        if not ok:
            continue
        n += 1
        if fmt == "csv":
            r = encoded.get(run) or encoded.setdefault(run, csv_name(run))
            t = encoded.get(tag) or encoded.setdefault(tag, csv_name(tag))
            writer.writerow((r, t, step, csv_value(wall_time), csv_value(value)))
            continue
        r = encoded.get(run) or encoded.setdefault(run, json_name(run))
        t = encoded.get(tag) or encoded.setdefault(tag, json_name(tag))
        out.write(
            f'{{"run": {r}, "tag": {t}, "step": {step}, "wall_time": {json_value(wall_time)}, '
            f'"value": {json_value(value)}}}\n'
        )
    return n
