"""What a rule decides on a batch of one series' points (``RuleBatch``), shared by the batch paths
(gradwatch/rules/batch.py, gradwatch/rules/growth.py): the ranking of level conditions, and what a
point that is no evidence holds (``fill_segments``)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gradwatch.rules import RuleState


class RuleBatch:
    """One rule's decisions on a batch of one series' points, before they touch its state.

    ``ranks[j]`` is the rank point j puts the series at, after ``for`` (None: every point 0);
    ``raws[j]`` the rank before ``for`` (``raw`` after the point; None: the same as ranks).
    ``measures[j]`` is a growth rule's ``ratio`` after point j (None for other kinds).
    ``at(state, j)`` gives ``state`` what a sink reads of it after point j; ``commit(state)``
    the state after the whole batch.
    """

    __slots__ = ("last_step", "measures", "ranks", "raws", "streaks", "window")

    def __init__(
        self,
        ranks: np.ndarray | None,
        measures: np.ndarray | None = None,
        window: deque | None = None,
        last_step: int | None = None,
    ) -> None:
        self.ranks = ranks
        self.raws: np.ndarray | None = None
        self.streaks: list[int] | None = None  # ``for``: the streaks after the batch
        self.measures = measures
        self.window = window  # growth: the window after the batch (None: unchanged)
        self.last_step = last_step

    def at(self, state: RuleState, j: int) -> None:
        raws = self.raws if self.raws is not None else self.ranks
        state.raw = int(raws[j]) if raws is not None else 0
        if self.measures is not None:
            state.ratio = float(self.measures[j])

    def calls(self) -> list[int]:
        """The points the engine calls the sink at whatever the rank before: rank or raw non-zero."""
        if self.ranks is None:
            return []
        nonzero = self.ranks != 0
        if self.raws is not None:
            nonzero |= self.raws != 0
        return np.flatnonzero(nonzero).tolist()

    def commit(self, state: RuleState) -> None:
        self.at(state, -1)
        if self.streaks is not None:
            state.streaks[:] = self.streaks
        if self.window is not None:
            state.window = self.window
            state.last_step = self.last_step


def ranked(conditions: list[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    """Per point, the highest rank whose condition holds (0 if none), as ``evaluate``'s loop
    over the levels (highest first, first hit wins)."""
    ranks = np.zeros(n, dtype=np.int64)
    for rank, holds in sorted(conditions, key=lambda c: c[0]):  # lowest first: a higher rank overwrites
        ranks[holds] = rank
    return ranks


def fill_segments(
    values: np.ndarray, defined: np.ndarray, initials: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """Per segment (each starts at one of ``starts``, the first at 0): values[j] where defined[j],
    else the last defined value before j in its segment, else the segment's initial value."""
    if defined.all():
        return values
    open_ = ~defined[starts]  # segments whose first point is not defined: it takes the initial value
    values = values.copy()
    values[starts[open_]] = initials[open_]
    if len(defined) - np.count_nonzero(defined) == np.count_nonzero(open_):
        return values  # only first points were not defined (one point per step): nothing to carry
    defined = defined.copy()
    defined[starts] = True
    last = np.where(defined, np.arange(len(values)), 0)
    np.maximum.accumulate(last, out=last)
    return values[last]
