"""Engine.observe_many (each rule over the batches of many series at once, gradwatch/rules/growth.py
and rules/batch.py's evaluate_group) makes exactly the sink calls observe makes point by point, in
the same order, and leaves the same states: several random series of different lengths (NaN/±Inf,
non-positive values, steps repeating and going back, windows at their cap, ``for``), their batches
interleaved, a series' later batches carrying its window into the next group."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from random_series import RULE_SETS, random_series, rules_of, splits
from test_batch_engine import Recorder, state_of

from gradwatch import engine as engine_module
from gradwatch.config.rulefiles import parse_rules
from gradwatch.engine import Engine


def interleaved_batches(rng: random.Random, series: dict[str, tuple]) -> list[tuple]:
    """Each series cut at random points; the batches of all series shuffled, each series' in order."""
    queues = {}
    for tag, (steps, walls, values) in series.items():
        bounds = splits(rng, steps, values)
        queues[tag] = [(tag, steps[a:b], walls[a:b], values[a:b]) for a, b in itertools.pairwise(bounds)]
    out = []
    while queues:
        tag = rng.choice(sorted(queues))
        out.append(queues[tag].pop(0))
        if not queues[tag]:
            del queues[tag]
    return out


def some_series(rng: random.Random, jump: int = 0) -> dict[str, tuple]:
    """Two to six series of different lengths; some log at the same steps as another (a trainer's
    tags), so the ends of their batches meet at one step; ``jump`` is added to the later half of
    the steps of all but the first."""
    series = {}
    for k in range(rng.randint(2, 6)):
        steps, walls, values = random_series(rng, rng.choice([40, 300, 1500, 4000]))
        if k and rng.random() < 0.5:  # another tag at the same steps as the first
            first_steps, first_walls, _ = series["t0"]
            steps, walls, values = first_steps, first_walls, values[: len(first_steps)]
            if len(values) < len(steps):
                steps, walls = steps[: len(values)], walls[: len(values)]
        if k and jump:
            steps = steps.copy()
            steps[len(steps) // 2 :] += jump
        series[f"t{k}"] = (steps, walls, values)
    return series


def dense_series(rng: random.Random) -> dict[str, tuple]:
    """The common shape (bench/data/runs): one point per step, every value positive and finite."""
    series = {}
    for k in range(rng.randint(2, 8)):
        n = rng.choice([40, 300, 1000, 2500])
        _, walls, values = random_series(rng, n)
        values = np.abs(np.where(np.isfinite(values), values, 3.0)) + 1e-3
        series[f"t{k}"] = (np.arange(n, dtype=np.int64) + rng.randint(-5, 5), walls, values)
    return series


def per_point_and_grouped(names, seed: int, jump: int = 0, dense: bool = False, cut: bool = True):
    rng = random.Random(seed)
    series = dense_series(rng) if dense else some_series(rng, jump)
    if cut:
        batches = interleaved_batches(rng, series)
    else:  # each series in one batch: no window carried from an earlier group
        batches = [(tag, *columns) for tag, columns in series.items()]
    rules = rules_of(names, tag="t*")
    one, many = Recorder(), Recorder()
    e1, e2 = Engine(rules, one), Engine(rules, many)
    for tag, steps, walls, values in batches:
        for step, wall, value in zip(steps.tolist(), walls.tolist(), values.tolist()):
            e1.observe("run", tag, step, wall, value)
    e2.observe_many([("run", tag, steps, walls, values) for tag, steps, walls, values in batches])
    return (one.calls, state_of(e1)), (many.calls, state_of(e2))


@pytest.mark.parametrize("names", RULE_SETS, ids=lambda n: "+".join(n) if n else "all")
@pytest.mark.parametrize("seed", range(4))
def test_a_group_makes_the_calls_and_leaves_the_states_of_its_points(names, seed):
    (calls, states), (group_calls, group_states) = per_point_and_grouped(names, seed)
    assert group_calls == calls and group_states == states


@pytest.mark.parametrize("seed", range(4))
def test_small_groups_cut_anywhere_decide_the_same(seed, monkeypatch):
    """A group bound of a few hundred points: groups end mid-way through the interleaved batches."""
    monkeypatch.setattr(engine_module, "GROUP_POINTS", 300)
    per_point, grouped = per_point_and_grouped(None, seed)
    assert grouped == per_point


@pytest.mark.parametrize("cut", [True, False], ids=["cut", "whole"])
@pytest.mark.parametrize("seed", range(4))
def test_series_with_a_point_per_step_decide_the_same(seed, cut):
    """The shortcut for one point per step (the window is the last ``within`` points)."""
    per_point, grouped = per_point_and_grouped(
        ["growth", "growth_min", "growth_long"], seed, dense=True, cut=cut
    )
    assert grouped == per_point
    assert len(per_point[0]) > 50  # the series did alert


def test_short_series_with_a_point_per_step_and_a_wide_window_decide_the_same():
    """Every series shorter than the window (together longer): no point has a full window of
    ``within`` points, so the range-minimum table has no row for one."""
    rules = parse_rules(
        {
            "rules": [
                {"name": "wide", "match": {"tags": ["t*"]}, "growth": {"within_steps": 600, "warning": 2}}
            ]
        },
        "test",
        [],
    )
    rng = np.random.default_rng(0)
    batches = [
        (f"t{k}", np.arange(n), np.zeros(n), rng.uniform(1, 100, n)) for k, n in enumerate([40, 300, 7, 500])
    ]
    e1, e2 = Engine(rules, Recorder()), Engine(rules, Recorder())
    for tag, steps, _, values in batches:
        for step, value in zip(steps.tolist(), values.tolist()):
            e1.observe("run", tag, step, 0.0, value)
    e2.observe_many([("run", *batch) for batch in batches])
    assert e2.sink.calls == e1.sink.calls and state_of(e2) == state_of(e1)


@pytest.mark.parametrize("cut", [True, False], ids=["cut", "whole"])
@pytest.mark.parametrize("seed", range(3))
def test_steps_too_far_apart_to_share_keys_decide_the_same(seed, cut):
    """Steps that jump by 1.5 * 2**62 half-way: two such segments end to end would overflow int64,
    so each batch goes alone (or point by point); the decisions do not change."""
    rules = ["growth", "growth_long", "growth_for"]
    per_point, grouped = per_point_and_grouped(rules, seed, jump=3 << 61, cut=cut)
    assert grouped == per_point


def test_a_window_wider_than_int64_is_every_point_before():
    problems: list = []
    rules = parse_rules(
        {
            "rules": [
                {"name": "wide", "match": {"tags": ["t*"]}, "growth": {"within_steps": 10**30, "warning": 2}}
            ]
        },
        "test",
        problems,
    )
    assert not problems
    steps = np.arange(50, dtype=np.int64)
    values = np.linspace(1, 3, 50)
    e1, e2 = Engine(rules, Recorder()), Engine(rules, Recorder())
    for tag in ("t1", "t2"):
        for step, value in zip(steps.tolist(), values.tolist()):
            e1.observe("run", tag, step, 0.0, value)
    e2.observe_many([("run", tag, steps, np.zeros(50), values) for tag in ("t1", "t2")])
    assert state_of(e2) == state_of(e1)
    assert e1.sink.calls == e2.sink.calls and e1.sink.calls  # the series grew x3 > x2: it alerted


@pytest.mark.parametrize("group", [False, True], ids=["observe_batch", "observe_many"])
def test_steps_near_the_lowest_int64_decide_the_same(group):
    """step - within_steps would wrap around in int64 at the lowest steps: the window must still
    hold the points before (the per-point deque reckons in Python ints)."""
    rules = rules_of(["growth", "growth_long"], tag="t*")
    low = -(2**63) + 5
    steps = np.arange(low, low + 60, dtype=np.int64)
    values = np.linspace(1, 40, 60)
    tags = ("t1", "t2") if group else ("t1",)
    e1, e2 = Engine(rules, Recorder()), Engine(rules, Recorder())
    for tag in tags:
        for step, value in zip(steps.tolist(), values.tolist()):
            e1.observe("run", tag, step, 0.0, value)
    if group:
        e2.observe_many([("run", tag, steps, np.zeros(60), values) for tag in tags])
    else:
        e2.observe_batch("run", "t1", steps, np.zeros(60), values)
    assert e2.sink.calls == e1.sink.calls and state_of(e2) == state_of(e1)
    assert e1.sink.calls  # x40 within 20 steps: it alerted
