"""Compare a run with a reference run at the same step.

A reference series (the baseline run's values of a tag) is kept as a bounded
:class:`History`; a point of the watched run at step *s* is compared with the
reference's value at its nearest logged step (within ``tolerance`` steps when
one is set), or with the median over several reference runs. What is compared
is a ratio, so both values must be positive.

A reference that has not logged step *s* yet is **not evidence**: the baseline
may still be training behind the watched run. The verdict says so
(``NOT_REACHED``) and the caller keeps the severity it had, as for NaN.
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
from array import array
from collections.abc import Iterable

# verdict outcomes
COMPARED = "compared"
NOT_REACHED = "not reached"  # every reference's last step is before this one
NO_POINT_NEAR = "no point near"  # the references logged around this step but not within tolerance
NO_BASELINE = "no baseline"  # no reference run has logged this tag yet
NOT_POSITIVE = "not positive"  # a ratio needs positive values
NOT_FINITE = "not finite"
DIRECTIONS = ("above", "below")
MAX_POINTS = 4096
# how many reference points a quiet band spans
BAND_POINTS = 32
_INF = float("inf")


class History:
    """Up to ``max_points`` (step, value) pairs of one series, steps increasing.

    Memory is 16 bytes a point in two arrays. When full, every other point is
    dropped and from then on only one point in ``stride`` is kept, so a long
    reference run is kept at a coarser step spacing; its last step is always
    known, so "not reached yet" stays exact.
    """

    __slots__ = ("_skip", "last_step", "max_points", "owner", "steps", "stride", "values")

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.steps = array("q")
        self.values = array("d")
        self.max_points = max(2, max_points)
        self.stride = 1
        self._skip = 0
        self.last_step: int | None = None
        # the References this history belongs to: told when stored points are dropped or replaced
        # (thinning, rewind, restore), which makes every quiet band built on them stale
        self.owner: References | None = None

    def add(self, step: int, value: float) -> None:
        last = self.last_step
        if last is not None and step <= last:
            self._rewind(step)  # restarted from a checkpoint: the new points replace the old ones
        self.last_step = step
        if value != value or value in (_INF, -_INF):
            return  # the reference reached this step, but NaN/±Inf is no base for a ratio
        if self._skip:
            self._skip -= 1
            return
        self._skip = self.stride - 1
        self.steps.append(step)
        self.values.append(value)
        if len(self.steps) >= self.max_points:
            self.steps = self.steps[::2]
            self.values = self.values[::2]
            self.stride *= 2
            self._changed()

    def _rewind(self, step: int) -> None:
        keep = bisect.bisect_left(self.steps, step)
        del self.steps[keep:]
        del self.values[keep:]
        self._skip = 0
        self._changed()

    def _changed(self) -> None:
        if self.owner is not None:
            self.owner.version += 1

    def nearest(self, step: int, tolerance: int | None) -> tuple[str, int, float]:
        """(outcome, reference step, reference value) for ``step``."""
        steps = self.steps
        last = self.last_step
        if last is None or not steps:
            return NO_BASELINE, 0, 0.0
        if step > last + (tolerance or 0):
            return NOT_REACHED, last, 0.0
        i = bisect.bisect_left(steps, step)
        if i == len(steps) or (i > 0 and step - steps[i - 1] <= steps[i] - step):
            i -= 1
        near = steps[i]
        if tolerance is None:
            if step < steps[0]:
                return NO_POINT_NEAR, near, 0.0
        elif abs(near - step) > tolerance:
            return NO_POINT_NEAR, near, 0.0
        return COMPARED, near, self.values[i]

    def dump(self) -> dict:
        return {
            "steps": list(self.steps),
            "values": list(self.values),
            "stride": self.stride,
            "last_step": self.last_step,
        }

    @classmethod
    def load(cls, d: dict, max_points: int = MAX_POINTS) -> History:
        """A history from :meth:`dump`; data that is not what dump wrote gives an empty one."""
        h = cls(max_points)
        h.restore(d)
        return h

    def restore(self, d: dict) -> None:
        """Put the points of :meth:`dump` back in place (the engine's References keep this object);
        data that is not what dump wrote leaves the history as it is."""
        h = self
        max_points = self.max_points
        try:
            steps = array("q", (int(s) for s in d["steps"]))
            values = array("d", (float(v) for v in d["values"]))
            stride = int(d.get("stride", 1))
            last = d.get("last_step")
            last = int(last) if last is not None else None
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            return
        if len(steps) != len(values) or stride < 1 or any(a >= b for a, b in itertools.pairwise(steps)):
            return
        keep = max_points - 1
        h.steps, h.values, h.stride, h.last_step = steps[-keep:], values[-keep:], stride, last
        h._changed()


class References:
    """The histories of every reference series, by tag then run; the engine feeds it."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.max_points = max_points
        self.by_tag: dict[str, dict[str, History]] = {}
        # bumped when a history is added, removed, thinned or rewound: Baseline's per-tag caches and
        # the quiet bands of every Verdict built before are stale
        self.version = 0

    def history(self, run: str, tag: str) -> History:
        runs = self.by_tag.setdefault(tag, {})
        h = runs.get(run)
        if h is None:
            h = runs[run] = History(self.max_points)
            h.owner = self
            self.version += 1
        return h

    def forget_run(self, run: str) -> None:
        for runs in self.by_tag.values():
            if runs.pop(run, None) is not None:
                self.version += 1


# what judge() returns when the point is not evidence: the caller keeps its severity
HOLD = -1


class Verdict:
    """What a baseline rule found at its last point, per series; ``judge`` overwrites it in place."""

    __slots__ = (
        "base",
        "base_step",
        "hi",
        "lo",
        "outcome",
        "ratio",
        "refs",
        "run",
        "since",
        "skipped",
        "tag",
        "until",
        "version",
    )

    def __init__(self) -> None:
        # the quiet band: a point at a step in [since, until] with a value in (lo, hi) is below every
        # level, whichever reference point is nearest; built after a quiet point, valid while the
        # references (their runs and stored points: References.version) are unchanged
        self.since, self.until = 0, -1
        self.lo, self.hi = 0.0, 0.0
        self.version = 0
        # the series judged and where its references are (set by the engine: bind)
        self.refs: References | None = None
        self.run = self.tag = ""
        # points that could not be compared (not reached, no point near, ...), for check output
        self.skipped = 0
        self.outcome = NO_BASELINE
        self.ratio = 0.0
        self.base = 0.0  # the reference value compared with (the median over several runs)
        self.base_step = 0  # the reference step (NOT_REACHED: the last step the reference logged)

    def bind(self, refs: References, run: str, tag: str) -> None:
        self.refs, self.run, self.tag = refs, run, tag

    def set(self, outcome: str, base_step: int = 0, base: float = 0.0, ratio: float = 0.0) -> int:
        self.outcome, self.base_step, self.base, self.ratio = outcome, base_step, base, ratio
        self.skipped += 1
        return HOLD

    @property
    def evidence(self) -> bool:
        return self.outcome == COMPARED

    def explain(self, step: int) -> str:
        """What the last point was compared with, or why it was not, for people (check output)."""
        if self.outcome == NOT_REACHED:
            return f"baseline has not reached step {step} (its last step is {self.base_step})"
        if self.outcome == NO_POINT_NEAR:
            return f"baseline has no point near step {step} (nearest: step {self.base_step})"
        if self.outcome == NO_BASELINE:
            return "no baseline run has logged this tag"
        if self.outcome == NOT_POSITIVE:
            return f"value or baseline at step {step} is not positive: no ratio"
        if self.outcome == NOT_FINITE:
            return f"value at step {step} is not a finite number"
        return f"x{self.ratio:.3g} the baseline's {self.base:g} at step {self.base_step}"


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class Baseline:
    """One baseline rule's settings: the reference run (a name) or runs (globs, median)."""

    def __init__(
        self,
        levels: list[tuple[int, str, float]],
        runs: list[str],
        tolerance: int | None = None,
        direction: str = "above",
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not levels or any(f <= 1 for _, _, f in levels):
            raise ValueError("levels are factors above 1")
        self.levels = sorted(levels, reverse=True)
        self.runs = list(runs)
        self.tolerance = tolerance
        self.below = direction == "below"
        self._cache: dict[str, tuple[References, int, list[tuple[str, History]]]] = {}

    def signature(self) -> tuple:
        """What a saved state depends on (the reference runs, tolerance, direction)."""
        return (tuple(self.runs), self.tolerance, self.below)

    def is_reference(self, run: str) -> bool:
        return any(fnmatch.fnmatchcase(run, g) for g in self.runs)

    def _references(self, refs: References, tag: str) -> list[tuple[str, History]]:
        cached = self._cache.get(tag)
        if cached is not None and cached[0] is refs and cached[1] == refs.version:
            return cached[2]
        found = [(r, h) for r, h in refs.by_tag.get(tag, {}).items() if self.is_reference(r)]
        self._cache[tag] = (refs, refs.version, found)
        return found

    def judge(self, v: Verdict, refs: References, run: str, tag: str, step: int, value: float) -> int:
        """The severity rank of one point of (run, tag) against the reference(s) at its step, or
        HOLD when it is not evidence; ``v`` is the series' verdict, updated in place."""
        if v.since <= step <= v.until and v.lo < value < v.hi and v.version == refs.version:
            return 0  # healthy, and the band says so without a lookup
        v.until = -1
        if value != value or value in (_INF, -_INF):
            return v.set(NOT_FINITE)
        found = self._references(refs, tag)
        if len(found) == 1 and found[0][0] != run:
            # the common case, one reference run: no lists
            outcome, base_step, base = found[0][1].nearest(step, self.tolerance)
            if outcome != COMPARED:
                return v.set(outcome, base_step)
        else:
            looked = [h.nearest(step, self.tolerance) for r, h in found if r != run]
            compared = [(s, b) for outcome, s, b in looked if outcome == COMPARED]
            if not compared:
                return _why_not(v, looked)
            base_step = compared[0][0]
            base = _median([b for _, b in compared])
        if value <= 0 or base <= 0:
            return v.set(NOT_POSITIVE, base_step, base)
        ratio = base / value if self.below else value / base
        v.outcome, v.base_step, v.base, v.ratio = COMPARED, base_step, base, ratio
        for rank, _, factor in self.levels:
            if ratio > factor:
                return rank
        self._quiet_band(v, [h for r, h in found if r != run], step, refs.version)
        return 0

    def _quiet_band(self, v: Verdict, histories: list[History], step: int, version: int) -> None:
        """After a quiet point: the values that stay quiet until each reference's BAND_POINTS-th
        point ahead. For a step in that range each reference's nearest point is one of those, and
        a median of some of them lies between their smallest and largest value."""
        if not histories:
            return
        until, low, high = _INF, _INF, 0.0
        for h in histories:
            steps = h.steps
            first = max(0, bisect.bisect_right(steps, step) - 1)
            last = min(first + BAND_POINTS, len(steps) - 1)
            if steps[last] <= step:
                return  # at a reference's end: new points may come, keep looking them up
            values = h.values[first : last + 1]
            until, low, high = min(until, steps[last]), min(low, *values), max(high, *values)
        if low <= 0:
            return  # a ratio to a non-positive baseline is no evidence: keep judging each point
        factor = self.levels[-1][2]  # the lowest level
        v.lo, v.hi = (high / factor, _INF) if self.below else (0.0, low * factor)
        v.since, v.until, v.version = step, int(until), version


def _why_not(v: Verdict, looked: Iterable[tuple[str, int, float]]) -> int:
    """No reference could be compared: say why; "not reached" wins (it will be, later)."""
    looked = list(looked)
    for outcome in (NOT_REACHED, NO_POINT_NEAR):
        steps = [s for o, s, _ in looked if o == outcome]
        if steps:
            return v.set(outcome, max(steps))
    return v.set(NO_BASELINE)
