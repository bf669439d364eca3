"""Rule work per million points, point by point against a batch at a time (issue 12).

    .venv/bin/python bench/bench_rules_batch.py [--dataset bench/data/simple] [--repeat R]

The points of the data set are read once, in columns (``LogdirReader.read_all_columns``), before any
timing: the rows time only what comes after the reader, CPU time (``time.process_time``: other work
on the machine does not count), median of R repeats, scaled to 1,000,000 points. Rules: the packaged
defaults (gradwatch/default_rules/: thresholds, nonfinite, growth on ``grad.*norm`` tags).

* ``check, per point``: ``Engine.observe`` + ``SeriesStats.add`` per point into check's sink (what
  ``gradwatch check`` did before batches);
* ``check, batch``: ``Engine.observe_batch`` + ``SeriesStats.add_batch`` per Columns, the sink's
  ``many`` (what it did before groups);
* ``check, groups``: ``Engine.observe_many`` over a file batch's Columns, up to ``GROUP_POINTS``
  at a time (each rule decides many series at once), + ``SeriesStats.add_batch`` (what it does now);
* ``daemon, per point`` / ``daemon, batch``: the same into the daemon's ``AlertBook`` while it
  catches up (transitions decided, no events emitted);
* ``daemon, file groups``: ``Engine.observe_many`` over each file batch's Columns (what the daemon
  does now, gradwatch/daemon/reading.py); ``daemon, 8-file groups``: over 8 file batches at a time
  (whether the catch-up would gain from grouping across files).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gradwatch.alerts import AlertBook
from gradwatch.config.rulefiles import load_rules
from gradwatch.engine import GROUP_POINTS, Engine
from gradwatch.events.logdir import LogdirReader
from gradwatch.oneshot.check import FindingSink, SeriesStats


def read(dataset: str) -> list:
    reader = LogdirReader(dataset)
    reader.refresh()
    return [(run, c) for run, batch in reader.read_all_columns(final=True) for c in batch]


def file_batches(dataset: str) -> list:
    reader = LogdirReader(dataset)
    reader.refresh()
    return list(reader.read_all_columns(final=True))


def check_per_point(rules, columns) -> None:
    sink = FindingSink()
    engine = Engine(rules, sink.__call__)
    stats: dict = {}
    for run, c in columns:
        st = stats.setdefault((run, c.tag), SeriesStats())
        for step, wall_time, value in c.points():
            engine.observe(run, c.tag, step, wall_time, value)
            st.add(step, value)


def check_batch(rules, columns) -> None:
    engine = Engine(rules, FindingSink())
    stats: dict = {}
    for run, c in columns:
        engine.observe_batch(run, c.tag, c.steps, c.wall_times, c.values)
        stats.setdefault((run, c.tag), SeriesStats()).add_batch(c.steps, c.values)


def check_groups(rules, batches) -> None:
    """As gradwatch/oneshot/check.py's _check_runs: a file batch's Columns wait until GROUP_POINTS."""
    engine = Engine(rules, FindingSink())
    stats: dict = {}
    pending, points = [], 0
    for run, batch in batches:
        for c in batch:
            stats.setdefault((run, c.tag), SeriesStats()).add_batch(c.steps, c.values)
            pending.append((run, c.tag, c.steps, c.wall_times, c.values))
            points += len(c)
        if points >= GROUP_POINTS:
            engine.observe_many(pending)
            pending, points = [], 0
    engine.observe_many(pending)


def _catching_up(rules) -> Engine:
    book = AlertBook(rules, live=False)
    book.suppress = True
    return Engine(rules, book)


def daemon_per_point(rules, columns) -> None:
    engine = _catching_up(rules)
    for run, c in columns:
        for step, wall_time, value in c.points():
            engine.observe(run, c.tag, step, wall_time, value)


def daemon_batch(rules, columns) -> None:
    engine = _catching_up(rules)
    for run, c in columns:
        engine.observe_batch(run, c.tag, c.steps, c.wall_times, c.values)


def daemon_file_groups(rules, batches, files: int = 1) -> None:
    engine = _catching_up(rules)
    for i in range(0, len(batches), files):
        engine.observe_many(
            [(run, c.tag, c.steps, c.wall_times, c.values) for run, b in batches[i : i + files] for c in b]
        )


def daemon_8_file_groups(rules, batches) -> None:
    daemon_file_groups(rules, batches, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="bench/data/simple")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    columns = read(args.dataset)
    batches = file_batches(args.dataset)
    points = sum(len(c) for _, c in columns)
    rules = load_rules()  # no paths: the packaged defaults
    print(f"{args.dataset}: {points:,} points in {len(columns):,} columns")
    print(f"| path | CPU s per 1M points (median of {args.repeat}) |")
    for name, work in [
        ("check, per point", check_per_point),
        ("check, batch", check_batch),
        ("check, groups", check_groups),
        ("daemon, per point", daemon_per_point),
        ("daemon, batch", daemon_batch),
        ("daemon, file groups", daemon_file_groups),
        ("daemon, 8-file groups", daemon_8_file_groups),
    ]:
        times = []
        by_file = work in (check_groups, daemon_file_groups, daemon_8_file_groups)
        for _ in range(args.repeat):
            t0 = time.process_time()
            work(rules, batches if by_file else columns)
            times.append(time.process_time() - t0)
        print(f"| {name} | {statistics.median(times) * 1e6 / points:.3f} |")


if __name__ == "__main__":
    main()
