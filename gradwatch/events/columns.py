"""Points in columns: one series' points from one batch of records as numpy arrays.

The per-point reader (``EventFileReader.read``) yields a tuple per point; the
one-shot commands and the daemon's catch-up read millions of points, and the
rules evaluate a series' points a batch at a time (engine.observe_batch), so
the reader hands them over in columns instead: for each batch of records, the
points of each tag in file order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Columns(NamedTuple):
    """The points of one tag in one batch of records, in file order."""

    tag: str
    steps: np.ndarray  # int64
    wall_times: np.ndarray  # float64
    values: np.ndarray  # float64

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.steps)

    def points(self):
        """(step, wall_time, value) per point as Python numbers, for the per-point paths."""
        return zip(self.steps.tolist(), self.wall_times.tolist(), self.values.tolist())


def group_points(points: list[tuple[str, int, float, float]]) -> list[Columns]:
    """(tag, step, wall_time, value) points -> one Columns per tag, tags in order of first point."""
    by_tag: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for tag, step, wall_time, value in points:
        cols = by_tag.get(tag)
        if cols is None:
            cols = by_tag[tag] = ([], [], [])
        cols[0].append(step)
        cols[1].append(wall_time)
        cols[2].append(value)
    return [
        Columns(
            tag,
            np.array(steps, dtype=np.int64),
            np.array(walls, dtype=np.float64),
            np.array(values, dtype=np.float64),
        )
        for tag, (steps, walls, values) in by_tag.items()
    ]
