"""Per-point cost of the anomaly and baseline conditions on a healthy series.

    .venv/bin/python bench/bench_rules_kinds.py [--points N] [--repeat R]

A healthy series is 5,000 with uniform ±10% noise (the seed's actor CNN norm
before it diverged), logged every 10 steps. Each row is the median over R
repeats of N points, per point, of one loop over the same (step, value)
pairs, CPU time (``time.process_time``: other work on the machine does not
count). "added" is the row minus the empty loop that only makes the call
(``loop``), i.e. what the condition itself costs a point.

Rows:

* ``loop``: the loop and a call of a function that returns 0 (the floor);
* ``anomaly``, ``anomaly log``, ``anomaly robust``: ``Detector.observe``
  (window 100, refresh every 10 points, default levels);
* ``baseline``: ``Baseline.judge`` against one reference run logged at the
  same steps (a bisect into its history per point);
* ``baseline median of 3``: against the median of three reference runs;
* ``reference history``: ``History.add`` (what each point of a baseline run costs);
* the second table: ``Engine.observe`` on a series with a thresholds rule that
  never fires, then with one rule of each kind added: what adding the rule
  costs a healthy series in the daemon and in ``check``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gradwatch.anomaly import DEFAULTS, Detector
from gradwatch.baseline import Baseline, History, References, Verdict

LEVELS = [(2, "warning", DEFAULTS["warning"]), (3, "critical", DEFAULTS["critical"])]
FACTORS = [(2, "warning", 10.0)]


def healthy(n: int, seed: int = 0) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    return [(i * 10, 5_000 * (1 + rng.uniform(-0.1, 0.1))) for i in range(n)]


def cpu_per_point(loop, points: list[tuple[int, float]], repeat: int) -> float:
    """Median CPU seconds per point of ``loop(points)`` (a fresh state each repeat)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        loop(points)
        times.append((time.process_time() - t0) / len(points))
    return statistics.median(times)


def loop_floor(points):
    def nothing(st, value):
        return 0

    for _, v in points:
        nothing(None, v)


def loop_anomaly(**settings):
    def loop(points):
        d = Detector(LEVELS, **settings)
        st = d.new_state()
        observe = d.observe
        for _, v in points:
            observe(st, v)

    return loop


def loop_baseline(references: int):
    def loop(points):
        refs = References()
        rng = random.Random(1)
        for k in range(references):
            h = refs.history(f"ref{k}", "norm")
            for s, _ in points:
                h.add(s, 5_000 * (1 + rng.uniform(-0.1, 0.1)))
        b = Baseline(FACTORS, ["ref*"])
        v = Verdict()
        judge = b.judge
        t0 = time.process_time()
        for s, x in points:
            judge(v, refs, "run", "norm", s, x)
        # the references' set-up is not the cost measured: leave it out
        loop.setup = t0

    return loop


def loop_history(points):
    h = History()
    add = h.add
    for s, v in points:
        add(s, v)


def measure_baseline(loop, points, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        loop(points)
        times.append((time.process_time() - loop.setup) / len(points))
    return statistics.median(times)


def engine_rows(points, repeat: int) -> list[tuple[str, float]]:
    """Engine.observe on a series with a thresholds rule, then with one rule of each kind added."""
    from gradwatch.config.rulefiles import parse_rules
    from gradwatch.engine import Engine

    added = {
        "thresholds only": [],
        "+ thresholds": [{"thresholds": {"warning": 2e9}}],
        "+ anomaly": [{"anomaly": {}}],
        "+ anomaly log": [{"anomaly": {"log": True}}],
        "+ anomaly robust": [{"anomaly": {"robust": True}}],
        "+ baseline": [{"baseline": {"run": "ref", "factor": 10}}],
        "+ baseline median of 3": [{"baseline": {"runs": "ref*", "factor": 10}}],
    }
    out = []
    for name, extra in added.items():
        bodies = [{"thresholds": {"warning": 1e9}}, *extra]
        problems: list = []
        doc = {"rules": [{"name": f"r{i}", "match": {"runs": "run"}, **b} for i, b in enumerate(bodies)]}
        rules = parse_rules(doc, "bench", problems)
        assert not problems, problems
        references = 3 if "median" in name else 1

        def loop(points, rules=rules, references=references):
            engine = Engine(rules, lambda *a: None)
            rng = random.Random(1)
            for k in range(references):
                for s, _ in points:
                    engine.observe(
                        f"ref{'' if references == 1 else k}",
                        "norm",
                        s,
                        0.0,
                        5_000 * (1 + rng.uniform(-0.1, 0.1)),
                    )
            loop.setup = time.process_time()
            for s, v in points:
                engine.observe("run", "norm", s, 0.0, v)

        out.append((name, measure_baseline(loop, points, repeat)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    points = healthy(args.points)
    floor = cpu_per_point(loop_floor, points, args.repeat)
    rows = [
        ("anomaly", cpu_per_point(loop_anomaly(), points, args.repeat)),
        ("anomaly log", cpu_per_point(loop_anomaly(log=True), points, args.repeat)),
        ("anomaly robust", cpu_per_point(loop_anomaly(robust=True), points, args.repeat)),
        ("baseline", measure_baseline(loop_baseline(1), points, args.repeat)),
        ("baseline median of 3", measure_baseline(loop_baseline(3), points, args.repeat)),
        ("reference history", cpu_per_point(loop_history, points, args.repeat)),
    ]
    print(f"{args.points:,} healthy points, median of {args.repeat}, CPU time per point\n")
    print("| what | per point | added |")
    print("| --- | ---: | ---: |")
    print(f"| loop | {floor * 1e6:.3f} µs | |")
    for name, t in rows:
        print(f"| {name} | {t * 1e6:.3f} µs | {(t - floor) * 1e6:.3f} µs |")
    engine = engine_rows(points, args.repeat)
    base = dict(engine)["thresholds only"]
    print("\n`Engine.observe` per point; added: over the same series with its thresholds rule only\n")
    print("| rules on the series | per point | added |")
    print("| --- | ---: | ---: |")
    for name, t in engine:
        print(f"| {name} | {t * 1e6:.3f} µs | {'' if t is base else f'{(t - base) * 1e6:.3f} µs'} |")


if __name__ == "__main__":
    main()
