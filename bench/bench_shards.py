"""Catch-up time of one shared logdir split across N `gradwatch watch --shard I/N` replicas.

    .venv/bin/python bench/bench_shards.py [--shards 1,2,4] [--repeat 3] [--data DIR]

The logdir is bench_reader.py's ``runs`` data set (200 runs x 5,000 events, generated once).
For each N, N daemons start together, each with its own state directory; the time is from
spawning them to the last one's "caught up" line (the points each read come from that line).
On the project's 2-core machine N = 4 shows what oversubscription costs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench_reader import DEFAULT_DATA, generate


def catch_up(logdir: str, shards: int) -> tuple[float, int]:
    """Seconds until every replica has caught up, and the points they read together."""
    states = tempfile.mkdtemp(prefix="gradwatch-shards-")
    t0 = time.perf_counter()
    watch = [sys.executable, "-m", "gradwatch", "watch", logdir, "--listen", ""]
    procs = [
        subprocess.Popen(
            [*watch, "--shard", f"{i}/{shards}", "--state-dir", os.path.join(states, str(i))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(shards)
    ]
    points = 0
    try:
        for proc in procs:
            for line in proc.stderr:  # type: ignore[union-attr]
                if "caught up on" in line:
                    points += int(re.search(r"(\d+) points in", line).group(1))  # type: ignore[union-attr]
                    break
            else:
                raise SystemExit(f"a replica exited before it caught up (exit {proc.wait()})")
        seconds = time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
            proc.stderr.close()  # type: ignore[union-attr]
        shutil.rmtree(states)
    return seconds, points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default="1,2,4")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data", default=DEFAULT_DATA)
    args = p.parse_args()
    generate(args.data, ["runs"])
    logdir = os.path.join(args.data, "runs")
    print("| replicas (N) | catch-up seconds (median) | points read (all replicas) |")
    print("| ---: | ---: | ---: |")
    for n in map(int, args.shards.split(",")):
        runs = [catch_up(logdir, n) for _ in range(args.repeat)]
        print(f"| {n} | {statistics.median(s for s, _ in runs):.2f} | {runs[0][1]:,} |")


if __name__ == "__main__":
    main()
