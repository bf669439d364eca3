"""Random series and rules for the property tests of the batch paths (engine, check, AlertBook):
NaN/±Inf, negatives, zeros, steps going back or repeating, long rises that fill a growth window."""

from __future__ import annotations

import random

import numpy as np

from gradwatch.config.rulefiles import parse_rules

RULES = [
    {"name": "above", "thresholds": {"warning": 10, "critical": 100}},
    {"name": "below", "thresholds": {"direction": "below", "warning": 1, "critical": 0.1}},
    {"name": "absolute", "thresholds": {"direction": "absolute", "info": 5, "critical": 50}},
    {"name": "above_for", "thresholds": {"warning": 10, "critical": 100}, "for": 3},
    {"name": "nonfinite", "nonfinite": "critical"},
    {"name": "growth", "growth": {"within_steps": 20, "warning": 2, "critical": 10}},
    {"name": "growth_min", "growth": {"within_steps": 5, "warning": 3, "min_value": 1}},
    {"name": "growth_long", "growth": {"within_steps": 3000, "warning": 50}},
    {"name": "growth_for", "growth": {"within_steps": 20, "warning": 2}, "for": 2},
    {"name": "anomaly", "anomaly": {"window": 20}},
    {"name": "absent", "absent_for": "5s"},
    {"name": "keep", "thresholds": {"warning": 10}, "keep_firing_for": 2},
]
# rule sets seen by one series: the packaged defaults' shape, each kind alone, and everything at once
RULE_SETS = [["above", "nonfinite", "growth"], *([name] for name in [r["name"] for r in RULES]), None]


def rules_of(names: list[str] | None, tag: str = "t") -> list:
    chosen = [r for r in RULES if names is None or r["name"] in names]
    problems: list = []
    rules = parse_rules({"rules": [{"match": {"tags": [tag]}, **r} for r in chosen]}, "test", problems)
    assert not problems, problems
    return rules


def random_series(rng: random.Random, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps that mostly rise, sometimes repeat or go back; values from several regimes."""
    steps, values, walls = [], [], []
    step, wall, value = rng.randint(-5, 5), 1000.0, 1.0
    regime, left = 0, 0
    for _ in range(n):
        if left == 0:
            regime = rng.randrange(5)
            # a rise long enough to fill a growth window to its cap, or a short stretch
            left = rng.randint(1100, 1300) if regime == 1 and rng.random() < 0.5 else rng.randint(5, 200)
        left -= 1
        if regime == 1:  # a steady rise, one step at a time
            step += 1
        else:
            step += rng.choice([0, 1, 1, 1, 2, 7]) if rng.random() > 0.02 else -rng.randint(1, 50)
        wall += rng.choice([0.5, 1.0, 1.0, 9.0])
        if regime == 0:  # noise around thresholds and zero
            value = rng.choice(
                [0.0, -0.0, 1.0, -3.0, 0.05, 0.5, 6.0, 11.0, -60.0, 150.0, rng.uniform(-200, 200)]
            )
        elif regime == 1:  # a long steady rise at one step or a few: the growth window's cap
            value = value * 1.01 + 1e-3 if value > 0 else 1.0
        elif regime == 2:  # exponential blow-up
            value = abs(value) * rng.uniform(1.0, 3.0) + 1e-9
        elif regime == 3:  # non-finite
            value = rng.choice([float("nan"), float("inf"), -float("inf"), 5.0])
        else:
            value = rng.uniform(0, 1e4)
        steps.append(step)
        walls.append(wall)
        values.append(value)
    return np.array(steps, dtype=np.int64), np.array(walls), np.array(values)


def splits(rng: random.Random, steps: np.ndarray, values: np.ndarray) -> list[int]:
    """Random batch boundaries, some where a batch then starts at a step restart or a non-finite point."""
    n = len(steps)
    restarts = (np.flatnonzero(np.diff(steps) < 0) + 1).tolist()
    nonfinite = np.flatnonzero(~np.isfinite(values)).tolist()
    cuts = set(rng.sample(range(1, n), k=rng.randint(0, 30)))
    for where in (restarts, nonfinite):
        cuts |= set(rng.sample(where, k=min(len(where), 10)))
    return [0, *sorted(cuts - {0}), n]
