"""The growth batch's shortcuts for the common batch (every point finite, every value positive,
every point with a window) decide what the general path and the per-point deque decide.

tests/test_batch_engine.py's series are mostly batches with a NaN or a zero somewhere; here the
same random series are made finite and positive (or only finite), so nearly every batch takes
the shortcuts, with steps still repeating and going back and windows still reaching their cap."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from random_series import random_series, rules_of, splits
from test_batch_engine import Recorder, state_of

from gradwatch.engine import Engine

GROWTH = ["growth", "growth_min", "growth_long", "growth_for"]


def finite_series(seed: int, positive: bool, n: int = 4000):
    rng = random.Random(seed)
    steps, walls, values = random_series(rng, n)
    values = np.where(np.isfinite(values), values, 7.0)
    if positive:
        values = np.abs(values) + 1e-3
    return rng, steps, walls, values


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "finite"])
@pytest.mark.parametrize("seed", range(8))
def test_finite_batches_decide_what_the_points_decide(seed, positive):
    rng, steps, walls, values = finite_series(seed, positive)
    rules = rules_of(GROWTH)
    one, many = Recorder(), Recorder()
    e1, e2 = Engine(rules, one), Engine(rules, many)
    for step, wall, value in zip(steps.tolist(), walls.tolist(), values.tolist()):
        e1.observe("run", "t", step, wall, value)
    for a, b in itertools.pairwise(splits(rng, steps, values)):
        e2.observe_batch("run", "t", steps[a:b], walls[a:b], values[a:b])
    assert many.calls == one.calls
    assert state_of(e2) == state_of(e1)
    assert len(one.calls) > 100  # the series did alert
