"""Where `gradwatch check`'s wall time goes on a logdir split across two processes: when the
fork happens, how long each side's `_check_runs` takes, the wait for the child, the total.

    .venv/bin/python bench/trace_check_split.py bench/data/runs --repeat 8 --handicap 0,0.08

Each run is a fresh process (imports timed too); with several `--handicap` values
(events/parallel.py PARENT_HANDICAP: how much less than an even share the parent reads) the
runs alternate between them, so a difference beyond the noise of a shared machine shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from gradwatch import cli
from gradwatch.events import parallel
from gradwatch.oneshot import check
parallel.PARENT_HANDICAP = float(sys.argv[2])
imported = time.perf_counter() - t0
sides = []
run_checks = check._check_runs

def timed(*args):
    t = time.perf_counter()
    result = run_checks(*args)
    sides.append((os.getpid(), time.perf_counter() - t))
    return result

check._check_runs = timed
fork, parent = parallel._fork, os.getpid()

def forked(fn, group):
    marks["fork"] = time.perf_counter() - t0
    def child(g):
        result = fn(g)
        os.write(2, ("CHILD %f\n" % sides[-1][1]).encode())
        return result
    return fork(child, group)

marks = {}
parallel._fork = forked
try:
    cli.main(["check", "--json", sys.argv[1]])
except SystemExit:
    pass
mine = [t for pid, t in sides if pid == parent]
print(json.dumps({"imports": imported, "fork": marks.get("fork"), "parent": mine[0] if mine else None,
                  "total": time.perf_counter() - t0}))
"""


def one(logdir: str, handicap: float) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, logdir, str(handicap)], capture_output=True, text=True, check=False
    )
    out = json.loads(p.stdout.strip().splitlines()[-1])
    children = [float(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("CHILD ")]
    out["child"] = children[0] if children else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--handicap", default="0.08", help="comma-separated PARENT_HANDICAP values")
    args = ap.parse_args()
    handicaps = [float(h) for h in args.handicap.split(",")]
    runs: dict[float, list[dict]] = {h: [] for h in handicaps}
    for _ in range(args.repeat):
        for h in handicaps:
            runs[h].append(one(args.logdir, h))
    for h, rows in runs.items():

        def median(key: str, rows=rows) -> str:
            values = [r[key] for r in rows if r[key] is not None]
            return f"{statistics.median(values):.3f}" if values else "-"

        totals = " ".join(f"{r['total']:.2f}" for r in sorted(rows, key=lambda r: r["total"]))
        print(
            f"handicap {h}: median imports {median('imports')} s, fork at {median('fork')} s, "
            f"parent {median('parent')} s, child {median('child')} s, total {median('total')} s "
            f"(all totals: {totals})"
        )


if __name__ == "__main__":
    main()
