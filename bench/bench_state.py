"""What a state commit costs: the saved rule state per series, and writing only what changed.

    .venv/bin/python bench/bench_state.py [--points 1000000] [--series 2000] [--commits 20]

1. ``constant step``: ``--points`` points of one gradient-norm series (the packaged rules),
   all logged at step 0 with a value that creeps up, as a trainer that logs without a step
   does. The growth rule's window is bounded by steps, so at a constant step it is bounded
   only by what rules.py trims. Reported: the window's length, the size of the series' saved
   document, what one commit of that series costs (CPU and wall, median of ``--commits``) and
   the database file size. ``rising, a step each``: the same values at steps 0, 1, 2, ...,
   the most the packaged growth rule (within 200 steps) can keep.
2. ``many series``: ``--series`` quiet series in 20 runs, every run dirty (the daemon hands
   the store every series of a dirty run), one series changed per commit. Reported: the
   commit cost when the store writes only the changed series (what it does) and when it
   writes them all (its digest cache emptied before each commit, as before this change).
3. ``start-up``: 20,000 files and 10,000 series with full growth windows saved, then the
   store opened and every row read back, as the daemon does at start (each row validated).

Everything runs on a real SQLite database in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gradwatch.config.rulefiles import load_rules
from gradwatch.engine import Engine
from gradwatch.store import DB_NAME, StateDB, dump_series

TAG = "gradients/actor_cnn_norm"


def timed_commits(
    store: StateDB, series: list, change, commits: int, forget: bool = False
) -> tuple[float, float]:
    """Median (cpu, wall) seconds of one begin/save_series/commit, ``change()`` called before each."""
    cpu, wall = [], []
    for i in range(commits):
        change(i)
        if forget:
            store._saved.clear()  # the store before it kept digests: every series is written
        c0, w0 = time.process_time(), time.perf_counter()
        store.begin()
        store.save_series(series)
        store.commit()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def one_series(label: str, state_dir: str, points: int, commits: int, step_of) -> None:
    engine = Engine(load_rules(), lambda *a: None)
    s = engine.series("run", TAG)
    for i in range(points):
        engine.observe("run", TAG, step_of(i), 1000.0 + i, 100.0 + i * 1e-4)
    windows = [len(st.window) for st in s.states if st.window is not None]
    store = StateDB(state_dir)

    def change(i: int) -> None:
        engine.observe("run", TAG, step_of(points + i), 2e6 + i, 100.0 + (points + i) * 1e-4)

    cpu, wall = timed_commits(store, [s], change, commits)
    size = os.path.getsize(os.path.join(state_dir, DB_NAME)) + os.path.getsize(
        os.path.join(state_dir, DB_NAME + "-wal")
    )
    store.close()
    print(
        f"{label}: {points:,} points; growth window {windows} entries; "
        f"series document {len(dump_series(s).encode()):,} bytes; "
        f"one commit {cpu * 1e3:.2f} ms CPU, {wall * 1e3:.2f} ms wall; database + WAL {size / 1e6:.2f} MB"
    )


def many_series(state_dir: str, n: int, commits: int) -> None:
    engine = Engine(load_rules(), lambda *a: None)
    series = []
    for i in range(n):
        run, tag = f"run{i % 20:02}", f"gradients/layer{i:05}_norm"
        engine.observe(run, tag, 100, 1000.0, 1.0 + i)
        series.append(engine.runs[run][tag])
    store = StateDB(state_dir)
    store.begin()
    store.save_series(series)
    store.commit()

    def change(i: int) -> None:
        s = series[i % n]
        engine.observe(s.run, s.tag, 200 + i, 2000.0 + i, 2.0)

    only = timed_commits(store, series, change, commits)
    every = timed_commits(store, series, change, commits, forget=True)
    store.close()
    print(
        f"many series: {n:,} series, one changed per commit: "
        f"changed only {only[0] * 1e3:.1f} ms CPU, {only[1] * 1e3:.1f} ms wall; "
        f"every series {every[0] * 1e3:.1f} ms CPU, {every[1] * 1e3:.1f} ms wall"
    )


def start_up(state_dir: str, n: int, files: int) -> None:
    """What opening the store and reading every row back (each one validated) costs."""
    engine = Engine(load_rules(), lambda *a: None)
    series = []
    for i in range(n):
        run, tag = f"run{i % 100:03}", f"gradients/layer{i:05}_norm"
        for step in range(300):  # rising at every step: a full 201-point growth window
            engine.observe(run, tag, step, 1000.0 + step, 1.0 + step)
        series.append(engine.runs[run][tag])
    store = StateDB(state_dir)
    store.begin()
    store.save_offsets([(f"/logs/run{i:05}/events.out.tfevents.1", f"run{i:05}", i) for i in range(files)])
    store.save_series(series)
    store.commit()
    store.close()
    size = os.path.getsize(os.path.join(state_dir, DB_NAME))
    c0, w0 = time.process_time(), time.perf_counter()
    store = StateDB(state_dir)
    store.files(), store.alerts(), store.series()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    store.close()
    print(
        f"start-up: {files:,} files, {n:,} series of 201-point windows ({size / 1e6:.1f} MB): "
        f"open and read back {cpu * 1e3:.0f} ms CPU, {wall * 1e3:.0f} ms wall"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--series", type=int, default=2000)
    p.add_argument("--commits", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        one_series("constant step", os.path.join(d, "constant"), args.points, args.commits, lambda i: 0)
        one_series("rising, a step each", os.path.join(d, "rising"), args.points, args.commits, lambda i: i)
        many_series(os.path.join(d, "many"), args.series, args.commits)
        start_up(os.path.join(d, "start"), 10_000, 20_000)


if __name__ == "__main__":
    main()
