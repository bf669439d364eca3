"""Engine.observe_many (each rule over the batches of many series at once, gradwatch/rules/growth.py
and rules/batch.py's evaluate_group) makes exactly the sink calls observe makes point by point, in
the same order, and leaves the same states: several random series of different lengths (NaN/±Inf,
non-positive values, steps repeating and going back, windows at their cap, ``for``), their batches
interleaved, a series' later batches carrying its window into the next group."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
from random_series import RULE_SETS, random_series, rules_of, splits
from test_batch_engine import Recorder, state_of

from gradwatch import engine as engine_module
from gradwatch.config.rulefiles import parse_rules
from gradwatch.engine import Engine
from gradwatch.store import restore_series


def interleaved_batches(rng: random.Random, series: dict[str, tuple]) -> list[tuple]:
    """Each series cut at random points; the batches of all series shuffled, each series' in order."""
    queues = {}
    for tag, (steps, walls, values) in series.items():
        bounds = splits(rng, steps, values)
        queues[tag] = [(tag, steps[a:b], walls[a:b], values[a:b]) for a, b in itertools.pairwise(bounds)]
    return interleave(rng, queues)


def interleave(rng: random.Random, queues: dict[str, list[tuple]]) -> list[tuple]:
    """The batches of every queue (one per series, in order) in a random interleaving."""
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


def resumed_batches(rng: random.Random, restart: bool) -> list[tuple]:
    """Dense series (one point per step, all positive) whose every later batch starts at the step
    the one before ended on: a trainer resumed from a checkpoint logs that step again. With
    ``restart`` each batch then logs its last steps again (steps go back: a second segment, which
    takes observe_batch off its one-segment path). Each series' batches in order, the series'
    interleaved at random."""
    queues = {}
    for tag, (steps, walls, values) in dense_series(rng).items():
        n = len(steps)
        cuts = sorted(rng.sample(range(1, n - 1), min(6, n - 2)))
        queues[tag] = []
        for i, (a, b) in enumerate(itertools.pairwise([0, *cuts, n - 1])):
            # every other batch 9x the one before: the carried entries are the window's minimum
            s, w, v = steps[a : b + 1], walls[a : b + 1], values[a : b + 1] * 9.0 ** (i % 2)
            if restart:  # its last steps again: it still ends where the next batch starts
                back = rng.randint(1, len(s))
                s = np.concatenate((s, s[-back:]))
                w, v = np.concatenate((w, w[-back:])), np.concatenate((v, v[-back:] * 7))
            queues[tag].append((tag, s, w, v))
    return interleave(rng, queues)


@pytest.mark.parametrize("how", ["observe_batch", "observe_many"])
@pytest.mark.parametrize("restart", [False, True], ids=["resumed", "resumed_and_back"])
@pytest.mark.parametrize("seed", range(8))
def test_a_batch_that_logs_the_carried_step_again_decides_the_same(seed, restart, how):
    """The carried window's last entry at the batch's first step s: the point at s + within_steps
    still has it in its window (both ends of the window count). The one-point-per-step shortcut
    missed it (the ratio and rank wrong at that point, a spurious 'resolved' in the daemon): 21 of
    these 32 cases fail with it. The 8 resumed observe_batch cases cannot: a one-segment batch
    never took the shortcut (rules/growth_windows.py _one_segment searches by step)."""
    batches = resumed_batches(random.Random(seed), restart)
    rules = rules_of(["growth", "growth_min", "growth_long"], tag="t*")
    e1, e2 = point_by_point_and(how, batches, lambda: Engine(rules, Recorder()))
    assert e2.sink.calls == e1.sink.calls and state_of(e2) == state_of(e1)
    assert e1.sink.calls  # the series did alert


def point_by_point_and(how: str, batches: list[tuple], engine) -> tuple[Engine, Engine]:
    """Two new engines (``engine()``) after the (tag, steps, wall_times, values) ``batches`` of run
    "run": one fed point by point, the other with ``how`` (observe_batch each, or observe_many)."""
    e1, e2 = engine(), engine()
    for tag, steps, walls, values in batches:
        for step, wall, value in zip(steps.tolist(), walls.tolist(), values.tolist()):
            e1.observe("run", tag, step, wall, value)
    if how == "observe_many":
        e2.observe_many([("run", *batch) for batch in batches])
    else:
        for batch in batches:
            e2.observe_batch("run", *batch)
    return e1, e2


@pytest.mark.parametrize("how", ["observe_batch", "observe_many"])
@pytest.mark.parametrize(
    "window, last_step",
    [
        ([[-(2**70), 1.0]], None),  # a step below int64 (a JSON int, as a damaged row may hold)
        ([[-(2**63) - 1, 1.0]], None),  # one past int64's lowest
        ([[10, 1.0]], 5),  # an entry after the batch's first step
        ([[1, 2.0], [2, 1.0]], 2),  # values not rising: its head is not the minimum
        ([[1, -1.0]], 1),  # a value _remember never keeps
    ],
    ids=["below_int64", "just_below_int64", "entry_after_first_step", "not_rising", "negative"],
)
def test_a_damaged_restored_window_decides_as_point_by_point(window, last_step, how):
    """A restored state (store/documents.py accepts any JSON number) whose growth window
    ``_remember`` could not have made: the batch goes point by point, never raises."""
    saved = json.dumps(
        {"rules": {"g": {"rank": 0, "state": {"streaks": [0], "window": window, "last_step": last_step}}}}
    )
    growth = {"within_steps": 2**64, "warning": 5}
    rules = parse_rules({"rules": [{"name": "g", "match": {"tags": ["t*"]}, "growth": growth}]}, "test", [])
    low = -(2**63)
    batches = [
        (tag, np.array(steps, dtype=np.int64), np.zeros(len(steps)), np.array([10.0, 11.0, 60.0]))
        for tag, steps in [("t1", [7, 8, 9]), ("t2", [low, low + 1, low + 2])]
    ]
    e1, e2 = point_by_point_and(
        how, batches, lambda: Engine(rules, Recorder(), on_new_series=lambda s: restore_series(s, saved))
    )
    assert e2.sink.calls == e1.sink.calls and state_of(e2) == state_of(e1)
    assert e1.sink.calls  # x60 against the window's head or the first point: it alerted
