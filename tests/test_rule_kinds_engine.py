"""The engine's shortcut for anomaly and baseline rules (Rule._quiet) decides as the detectors do."""

from __future__ import annotations

import random

import pytest

from gradwatch.anomaly import HOLD, Detector
from gradwatch.baseline import Baseline, References, Verdict
from gradwatch.config.rulefiles import parse_rules
from gradwatch.engine import Engine


def one_rule(body: dict) -> list:
    problems: list = []
    rules = parse_rules({"rules": [{"name": "r", "match": {"runs": "run"}, **body}]}, "test", problems)
    assert not problems
    return rules


def drifting(seed: int, n: int = 600) -> list[float]:
    """A level that doubles slowly (healthy drift), ±5% noise, a few spikes and NaNs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v = 5_000 * 2 ** (i / n) * (1 + rng.uniform(-0.05, 0.05))
        r = rng.random()
        out.append(v * 20 if r < 0.01 else float("nan") if r < 0.015 else v)
    return out


def through_engine(rules: list, points: list[tuple[int, float]], reference=None) -> list[int]:
    engine = Engine(rules, lambda *a: None)
    for s, v in reference or []:
        engine.observe("ref", "t", s, 0.0, v)
    ranks = []
    for s, v in points:
        engine.observe("run", "t", s, 0.0, v)
        ranks.append(engine.runs["run"]["t"].ranks[0])
    return ranks


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("settings", [{}, {"log": True}, {"robust": True, "window": 40}])
def test_anomaly_in_the_engine_decides_as_the_detector(seed, settings):
    values = drifting(seed)
    (rule,) = one_rule({"anomaly": settings})
    d = Detector(rule.levels, **{"window": 100, **settings})
    st, rank, expected = d.new_state(), 0, []
    for v in values:
        got = d.observe(st, v)
        rank = rank if got == HOLD else got
        expected.append(rank)
    assert through_engine([rule], list(enumerate(values))) == expected
    assert 0 < sum(1 for r in expected if r) < 30  # the spikes, not the drift


def interleaved(seed: int) -> list[tuple[str, int, float]]:
    """A reference that trains ahead, restarts from checkpoints now and then, and a run whose
    steps also go back once (a restart): (run, step, value) in the order they are logged. Values
    spread over two decades, so a stale quiet band would call some alerting point quiet."""
    rng = random.Random(seed)
    events, ref_step, step = [], 0, 0
    for _ in range(600):
        while ref_step <= step + rng.randint(0, 300):
            if rng.random() < 0.01:
                ref_step = max(0, ref_step - rng.randint(10, 300))
            events.append(("ref", ref_step, 10 ** rng.uniform(1, 3)))
            ref_step += 10
        events.append(("run", step, 10 ** rng.uniform(1, 3)))
        if 1000 <= step < 1007:  # two more reference runs appear: the median of three drops x100
            for other in ("ref2", "ref3"):
                events += [(other, s, 10 ** rng.uniform(-1, 0)) for s in range(0, 4000, 10)]
        step = step - 500 if step == 2000 else step + 7
    return events


@pytest.mark.parametrize("seed", range(8))
def test_baseline_in_the_engine_decides_as_the_comparison(seed):
    events = interleaved(seed)
    (rule,) = one_rule({"baseline": {"runs": "ref*", "warning": 3, "critical": 15}})
    refs = References(max_points=64)  # small: thinning happens
    b = Baseline(rule.levels, ["ref*"])
    rank, expected = 0, []
    for run, s, v in events:
        if run != "run":
            refs.history(run, "t").add(s, v)
            continue
        got = b.judge(Verdict(), refs, "run", "t", s, v)
        rank = rank if got == HOLD else got
        expected.append(rank)
    engine = Engine([rule], lambda *a: None)
    engine.references.max_points = 64
    got = []
    for run, s, v in events:
        engine.observe(run, "t", s, 0.0, v)
        if run == "run":
            got.append(engine.runs["run"]["t"].ranks[0])
    assert got == expected
