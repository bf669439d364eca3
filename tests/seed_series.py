"""The founding incident's actor CNN gradient norm, as the anomaly and baseline tests use it.

Tests import this module directly (``from seed_series import exploding``), like writers.py.
"""

from __future__ import annotations

import math
import random

# the seed's logged norms (Run #2, no clipping)
SEED = {100: 5_191.0, 200: 130_486.0, 300: 826_256.0, 400: 2_860_755.0, 500: 7_475_702.0}
# Run #3, the clipped run: 2,000 -> 8,000 over the same steps
CLIPPED = {100: 2_000.0, 200: 3_500.0, 300: 5_000.0, 400: 6_500.0, 500: 8_000.0}


def healthy(seed: int, last: int = 500, every: int = 10, level: float = 5_000.0) -> list[tuple[int, float]]:
    """``level`` with uniform ±10% noise at steps 0, every, ..., last."""
    rng = random.Random(seed)
    return [(s, level * (1 + rng.uniform(-0.1, 0.1))) for s in range(0, last + 1, every)]


def _geometric(points: dict[int, float], step: int) -> float:
    """Log-linear between the two known points around ``step``."""
    known = sorted(points)
    hi = next(s for s in known if s >= step)
    lo = max(s for s in known if s <= step)
    if lo == hi:
        return points[lo]
    t = (step - lo) / (hi - lo)
    return math.exp(math.log(points[lo]) * (1 - t) + math.log(points[hi]) * t)


def exploding(seed: int, every: int = 10) -> list[tuple[int, float]]:
    """Healthy noise for steps 0..90, the seed's 5,191 at 100, then geometric growth through its
    130,486 at step 200 to 7,475,702 at step 500."""
    noise = [(s, v) for s, v in healthy(seed, 90, every)]
    return noise + [(s, _geometric(SEED, s)) for s in range(100, 501, every)]


def clipped(every: int = 10) -> list[tuple[int, float]]:
    """Run #3 logged every ``every`` steps from 100 to 500, linear between its table's points."""
    known = sorted(CLIPPED)
    out = []
    for s in range(100, 501, every):
        lo = max(k for k in known if k <= s)
        hi = min(k for k in known if k >= s)
        t = 0.0 if hi == lo else (s - lo) / (hi - lo)
        out.append((s, CLIPPED[lo] + (CLIPPED[hi] - CLIPPED[lo]) * t))
    return out
