"""Engine.observe_batch makes exactly the sink calls observe makes point by point, in the same order,
and leaves the same series and rule states: random series with NaN/±Inf, negatives, zeros, steps
going back or repeating and long rises, batches split at random points, every rule kind."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from random_series import RULE_SETS, random_series, rules_of, splits

from gradwatch.engine import Engine
from gradwatch.rules import MAX_GROWTH_WINDOW


class Recorder:
    """A per-point sink that records each call with what the sink can read of the state."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, s, i, rank, previous, step, wall_time, value) -> None:
        st = s.states[i]
        self.calls.append(repr((s.tag, i, rank, previous, step, wall_time, value, st.raw, st.ratio, s.step)))
        if rank:
            s.ranks[i] = -1 if step % 3 == 0 else rank  # like AlertBook: the sink may change the rank


def state_of(engine: Engine) -> list[str]:
    out = []
    for s in engine.all_series():
        out.append(repr((s.run, s.tag, s.step, s.wall_time, s.value, s.ranks)))
        for st in s.states:
            window = list(st.window) if st.window is not None else None
            extra = vars(st.extra) if hasattr(st.extra, "__dict__") else None
            out.append(repr((st.raw, st.streaks, window, st.ratio, st.last_step, st.last_wall, extra)))
    return out


def per_point_and_batched(names, seed: int, n: int = 4000):
    rng = random.Random(seed)
    steps, walls, values = random_series(rng, n)
    rules = rules_of(names)
    one, many = Recorder(), Recorder()
    e1, e2 = Engine(rules, one), Engine(rules, many)
    for step, wall, value in zip(steps.tolist(), walls.tolist(), values.tolist()):
        e1.observe("run", "t", step, wall, value)
    bounds = splits(rng, steps, values)
    for a, b in itertools.pairwise(bounds):
        e2.observe_batch("run", "t", steps[a:b], walls[a:b], values[a:b])
    return (one.calls, state_of(e1)), (many.calls, state_of(e2))


@pytest.mark.parametrize("names", RULE_SETS, ids=lambda n: "+".join(n) if n else "all")
@pytest.mark.parametrize("seed", range(6))
def test_a_batch_makes_the_calls_and_leaves_the_state_of_its_points(names, seed):
    per_point, batched = per_point_and_batched(names, seed)
    assert batched[0] == per_point[0]
    assert batched[1] == per_point[1]


def test_the_random_series_reach_what_the_property_must_cover():
    """The generator exercises the cases: alerts of every kind, a growth window at its cap."""
    rules = rules_of(None)
    rng = random.Random(0)
    steps, walls, values = random_series(rng, 4000)
    engine = Engine(rules, Recorder())
    peak = 0
    for step, wall, value in zip(steps.tolist(), walls.tolist(), values.tolist()):
        engine.observe("run", "t", step, wall, value)
        (s,) = engine.all_series()
        peak = max(peak, len(s.states[[r.name for r in rules].index("growth_long")].window))
    assert peak == MAX_GROWTH_WINDOW
    assert np.isnan(values).any() and np.isinf(values).any() and (np.diff(steps) < 0).any()


def test_a_quiet_batch_calls_nothing_and_touches_no_state():
    rules = rules_of(["above", "nonfinite"])
    rec = Recorder()
    engine = Engine(rules, rec)
    n = 10_000
    engine.observe_batch("run", "t", np.arange(n), np.zeros(n), np.linspace(0, 9, n))
    (s,) = engine.all_series()
    assert rec.calls == [] and s.ranks == [0, 0] and s.step == n - 1


def test_a_rise_that_just_fills_the_growth_window_goes_point_by_point():
    """1,025 rising points in one batch: the last one finds 1,024 in its window, so the deque drops
    its oldest (the cap); a batch that ignored the cap would keep all 1,025."""
    rules = rules_of(["growth_long"])
    n = MAX_GROWTH_WINDOW + 1
    steps, values = np.arange(n), np.arange(1, n + 1, dtype=np.float64)
    e1, e2 = Engine(rules, Recorder()), Engine(rules, Recorder())
    for step, value in zip(steps.tolist(), values.tolist()):
        e1.observe("run", "t", step, 0.0, value)
    e2.observe_batch("run", "t", steps, np.zeros(n), values)
    assert state_of(e2) == state_of(e1)
    (s,) = e1.all_series()
    assert len(s.states[0].window) == MAX_GROWTH_WINDOW


@pytest.mark.parametrize(
    "window",
    [[(0, 50.0), (1, 2.0), (2, 80.0)], [(0, 5.0), (1, 5.0)], [(0, 5.0), (0, 6.0)]],
    ids=["falling", "equal values", "equal steps"],
)
def test_a_restored_window_that_remember_could_not_have_made_goes_point_by_point(window):
    """A window from a damaged state row (not increasing): its head is not its minimum, so the batch
    must not treat it as one; fails if the batch takes the minimum of the window instead. With two
    equal neighbours (``_remember`` keeps both strictly increasing) the batch's final window would
    drop one where the deque keeps both: fails if ``_increasing`` accepts them (<= for <)."""
    rules = rules_of(["growth"])
    engines = Engine(rules, Recorder()), Engine(rules, Recorder())
    for engine in engines:
        engine.observe("run", "t", 0, 0.0, 1.0)
        (s,) = engine.all_series()
        s.states[0].window.clear()
        s.states[0].window.extend(window)
        s.states[0].last_step = 2
    steps, values = np.arange(3, 8), np.array([100.0, 120.0, 90.0, 300.0, 10.0])
    for step, value in zip(steps.tolist(), values.tolist()):
        engines[0].observe("run", "t", step, 0.0, value)
    engines[1].observe_batch("run", "t", steps, np.zeros(5), values)
    assert state_of(engines[1]) == state_of(engines[0])
