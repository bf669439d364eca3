"""Rule model, series matching and per-point evaluation.

A rule has one condition kind:

* ``thresholds``: severity levels on the value (above, below for metrics
  that collapse, or absolute for values that diverge either way); finite
  values only — NaN/±Inf is the ``nonfinite`` kind's job, and a non-finite
  point leaves a thresholds rule where it was;
* ``nonfinite``: NaN or ±Inf;
* ``growth``: the value grew by a factor within a window of steps (levels are
  factors), the exponential blow-up that precedes any threshold;
* ``absent``: the series stopped logging for a duration (evaluated on a timer
  by the daemon, as gaps in wall time by one-shot commands);
* ``anomaly``: a point far from the series' own recent points, in standard
  deviations (gradwatch/anomaly.py);
* ``baseline``: a point more than a factor away from a reference run's value
  at the same step (gradwatch/baseline.py; the engine keeps the references).

``for: N`` needs N consecutive points at a severity before it counts.
Evaluation is per point and per (rule, series) state object; the no-alert
path allocates no container and touches no dict.
"""

from __future__ import annotations

import fnmatch
import math
import re
import string
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradwatch.anomaly import AnomalyState, Detector
from gradwatch.baseline import Baseline, History, Verdict
from gradwatch.fmt import escape

try:  # linear-time matching when the optional extra is installed (pip install 'gradwatch[re2]')
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

try:
    from re import _parser as _sre_parse  # Python >= 3.11
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

SEVERITIES = ("info", "warning", "critical")
# rank 0 means "no condition"; higher rank wins
RANK = {name: i + 1 for i, name in enumerate(SEVERITIES)}
SEVERITY_OF_RANK = {i + 1: name for i, name in enumerate(SEVERITIES)}

KINDS = ("thresholds", "nonfinite", "growth", "absent", "anomaly", "baseline")
DIRECTIONS = ("above", "below", "absolute")

_isfinite = math.isfinite

# evaluation modes, decided once per rule so ``evaluate`` branches on an int
_ABOVE, _BELOW, _ABSOLUTE, _NONFINITE, _GROWTH, _ABSENT, _ANOMALY, _BASELINE = range(8)


class Num(float):
    """A float that formats for humans when no format spec is given.

    ``{value}`` renders 826256.0 as ``826,256`` and 1.5e-05 as ``1.5e-05``;
    ``{value:.2f}`` still works as for any float. NaN and ±Inf render as
    ``NaN``, ``+Inf`` and ``-Inf`` with or without a spec (Python's own
    ``nan``/``inf`` read like typos in an alert).
    """

    def __format__(self, spec: str) -> str:
        if not spec:
            return human(self)
        out = format(float(self), spec)  # errors name "float", not this class
        if _isfinite(self):
            return out
        return out.replace("nan", "NaN").replace("inf", "Inf")

    def __str__(self) -> str:
        return human(self)


class Factor(Num):
    """A growth rule's level: a factor, so ``{threshold}`` reads ``x10``, not a value of 10."""

    def __format__(self, spec: str) -> str:
        return "x" + human(self) if not spec else super().__format__(spec)

    def __str__(self) -> str:
        return "x" + human(self)


def json_number(v: float | None) -> float | str | None:
    """JSON has no NaN/Inf: they become the strings "NaN", "Infinity", "-Infinity"."""
    if v is None:
        return None
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def human(x: float) -> str:
    """826256.0 -> ``826,256``; 0.5 -> ``0.5``; 1.5e-05 -> ``1.5e-05``; NaN -> ``NaN``."""
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if 1e-3 <= abs(x) < 1e15:
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.2f}"
    return f"{x:.4g}"


class _NotApplicable:
    """A template field that has no value for this rule kind (e.g. threshold of nonfinite)."""

    def __format__(self, spec: str) -> str:
        return "n/a"

    def __str__(self) -> str:
        return "n/a"


NOT_APPLICABLE = _NotApplicable()
TEMPLATE_FIELDS = (
    "rule",
    "run",
    "tag",
    "step",
    "value",
    "threshold",
    "severity",
    "labels",
    "ratio",
    "for",
    "direction",
    "within",
    "zscore",
    "baseline",
    "baseline_step",
)


# {labels[team]}: one index by a label name, nothing else ({labels.__class__} would reach Python internals)
_LABEL_INDEX = re.compile(r"\[[A-Za-z_][A-Za-z0-9_]*\]")
# a format width or precision above this is a mistake or an attack ({value:>999999999} allocates 1 GB)
MAX_FORMAT_WIDTH = 100


def _check_spec(name: str, spec: str | None) -> None:
    """Refuse nested fields in a format spec and any number (width, precision) over MAX_FORMAT_WIDTH."""
    if not spec:
        return
    if "{" in spec or "}" in spec:
        raise ValueError(f"field {{{name}:{spec}}}: a format spec cannot hold another field")
    if any(len(n) > 3 or int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", spec)):
        raise ValueError(
            f"field {{{name}:{spec}}}: format width and precision are limited to {MAX_FORMAT_WIDTH}"
        )


def template_fields(text: str, allowed: tuple[str, ...], indexable: str | None = None) -> set[str]:
    """The fields a ``str.format`` template uses; ValueError unless each is a name from ``allowed``
    (``indexable[name]`` too), without attribute access, and with a bounded format spec."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:  # "{value" or "}" alone
        raise ValueError(f"bad template: {e} (write {{{{ and }}}} for literal braces)") from None
    fields: set[str] = set()
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base == "" or base.isdigit():
            named = ", ".join(f"{{{f}}}" for f in allowed[:3])
            raise ValueError(f"positional fields like {{}} or {{0}} are not allowed; use {named}, ...")
        if base not in allowed:
            raise ValueError(f"unknown field {{{base}}} (fields: {', '.join(allowed)})")
        if name != base and not (base == indexable and _LABEL_INDEX.fullmatch(name[len(base) :])):
            only = f"; only {{{indexable}[name]}} may index" if indexable else ""
            raise ValueError(f"field {{{name}}}: no attribute or index access{only}")
        _check_spec(name, spec)
        fields.add(base)
    return fields


class Template:
    """An annotation template: Python ``str.format`` with named fields only."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields = template_fields(text, TEMPLATE_FIELDS, indexable="labels")

    def check(self, fields: dict[str, Any]) -> None:
        """Render once; raises ValueError naming what is wrong (bad format spec, missing label)."""
        try:
            self.text.format_map(fields)
        except KeyError as e:
            raise ValueError(f"no label {e} in this rule's labels") from None
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"cannot render: {e}") from None

    def render(self, fields: dict[str, Any]) -> str:
        try:
            return self.text.format_map(fields)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            return f"{self.text} (template error: {e})"


# Run and tag names longer than this (in UTF-8 bytes) are never matched against rules: TensorBoard
# tags are short, and a backtracking regex such as '(?i)grad.*norm' costs O(length^2) on a hostile
# 128 KiB tag (50 s of a frozen daemon). The engine reports such a series once and skips it.
MAX_NAME_BYTES = 1024


def name_too_long(name: str) -> bool:
    """True when ``name`` is over :data:`MAX_NAME_BYTES` (checked cheaply before encoding)."""
    if len(name) > MAX_NAME_BYTES:
        return True
    # surrogatepass: run names carry undecodable bytes as lone surrogates (surrogateescape)
    return len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES


def shown_name(name: str, limit: int = 60) -> str:
    """A possibly huge name for a log line: quoted, escaped by ``fmt.escape``, cut to ``limit``."""
    if len(name) <= limit:
        return f"'{escape(name)}'"
    return f"'{escape(name[:limit])}'... ({len(name):,} characters)"


_REPEATS = (_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT, getattr(_sre_parse, "POSSESSIVE_REPEAT", None))


def _children(av: Any) -> list:
    """The sub-patterns held by one parsed regex node's argument (groups, branches, repeats)."""
    items = av if isinstance(av, (tuple, list)) else (av,)
    out = []
    for x in items:
        if isinstance(x, _sre_parse.SubPattern):
            out.append(x)
        elif isinstance(x, list):
            out.extend(y for y in x if isinstance(y, _sre_parse.SubPattern))
    return out


def _has_unbounded_repeat(pattern) -> bool:
    for op, av in pattern:
        if op in _REPEATS and av[1] is _sre_parse.MAXREPEAT:
            return True
        if any(_has_unbounded_repeat(c) for c in _children(av)):
            return True
    return False


def _nested_quantifier(pattern) -> bool:
    """A repeated group holding an unbounded repeat, like ``(a+)+`` or ``(\\w+\\s?)*``: exponential."""
    for op, av in pattern:
        if op in _REPEATS and av[1] != 1 and _has_unbounded_repeat(av[2]):
            return True
        if any(_nested_quantifier(c) for c in _children(av)):
            return True
    return False


class Pattern:
    """A rule regex with bounded cost: compiled by RE2 when installed, Python's ``re`` otherwise.

    Patterns with nested quantifiers are refused (ValueError) whichever engine runs them, so a rule
    file valid on one machine is valid on every machine; names over :data:`MAX_NAME_BYTES` never
    reach ``search`` (the engine skips them).
    """

    def __init__(self, text: str) -> None:
        try:
            compiled = re.compile(text)
        except re.error as e:
            raise ValueError(f"invalid regular expression {text!r}: {e.msg} at position {e.pos}") from None
        if _nested_quantifier(_sre_parse.parse(text)):
            raise ValueError(
                f"regular expression {text!r} repeats a group that holds a repeat (like (a+)+): "
                "its matching time can explode; write it without the nested quantifier"
            )
        self.text = text
        self.engine = "re"
        self._search: Callable[[str], Any] = compiled.search
        self._fallback = compiled.search
        if _re2 is not None:
            options = _re2.Options()
            options.log_errors = False  # a pattern RE2 cannot run is not an error: re runs it
            try:
                self._search = _re2.compile(text, options).search
                self.engine = "re2"
            except _re2.error:  # RE2 lacks backreferences and lookaround: keep re
                pass

    def search(self, name: str) -> bool:
        try:
            return self._search(name) is not None
        except UnicodeEncodeError:  # RE2 takes UTF-8; undecodable bytes (surrogates) go to re
            return self._fallback(name) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.text!r}, engine={self.engine})"


@dataclass
class Match:
    """Which series a rule watches: run and tag globs (whole name) or regexes (searched)."""

    runs: list[str] = field(default_factory=lambda: ["*"])
    tags: list[str] = field(default_factory=lambda: ["*"])
    run_regex: Pattern | None = None
    tag_regex: Pattern | None = None
    exclude_tags: list[str] = field(default_factory=list)
    exclude_runs: list[str] = field(default_factory=list)

    def matches(self, run: str, tag: str) -> bool:
        if self.run_regex is not None:
            if not self.run_regex.search(run):
                return False
        elif not any(fnmatch.fnmatchcase(run, g) for g in self.runs):
            return False
        if self.tag_regex is not None:
            if not self.tag_regex.search(tag):
                return False
        elif not any(fnmatch.fnmatchcase(tag, g) for g in self.tags):
            return False
        if any(fnmatch.fnmatchcase(run, g) for g in self.exclude_runs):
            return False
        return not any(fnmatch.fnmatchcase(tag, g) for g in self.exclude_tags)

    def matches_tag(self, tag: str) -> bool:
        """The tag half of :meth:`matches` (a baseline rule's reference runs are chosen by name)."""
        if self.tag_regex is not None:
            if not self.tag_regex.search(tag):
                return False
        elif not any(fnmatch.fnmatchcase(tag, g) for g in self.tags):
            return False
        return not any(fnmatch.fnmatchcase(tag, g) for g in self.exclude_tags)


# Most points a growth rule remembers per series. The window normally holds only the rising points
# within ``within_steps``; a series that keeps rising at one step, or over a huge window, would grow
# it without end (1M points at a constant step saved 14.9 MB of state). Past this the oldest go.
MAX_GROWTH_WINDOW = 1024


def _remember(window: deque, step: int, value: float) -> None:
    """Add a positive point to a growth window kept increasing in step and value, bounded in length."""
    while window and window[-1][1] >= value:
        window.pop()  # a larger earlier value can never again be the minimum
    if window and window[-1][0] == step:
        return  # a smaller value at this same step is as old and lower: this one can never be the head
    while len(window) >= MAX_GROWTH_WINDOW:
        window.popleft()
    window.append((step, value))


class RuleState:
    """What one rule remembers about one series.

    ``raw`` is the severity rank of the last finite point before ``for``;
    ``streaks[i]`` counts consecutive points at or above ``levels[i]``
    (saturating at ``for``); ``window`` holds (step, value) pairs of a growth
    rule, increasing in both; ``ratio`` is the last growth ratio computed.
    """

    __slots__ = ("extra", "last_step", "last_wall", "ratio", "raw", "streaks", "window")

    def __init__(self, levels: int) -> None:
        # anomaly: the detector's AnomalyState; baseline: the series' Verdict
        self.extra: AnomalyState | Verdict | None = None
        self.streaks = [0] * levels
        self.window: deque | None = None
        self.last_wall: float | None = None
        self.last_step: int | None = None
        self.raw = 0
        self.ratio = 0.0


@dataclass
class Rule:
    name: str
    kind: str
    match: Match
    # (rank, severity, level) sorted by rank, highest first
    levels: list[tuple[int, str, float]]
    below: bool = False
    for_points: int = 1
    within_steps: int = 0
    absent_for: float = 0.0
    keep_firing_for_points: int = 0
    keep_firing_for_seconds: float = 0.0
    repeat_interval: float | None = None
    # a severity, "never", or None (the daemon's default stop severity)
    stop: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, Template] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    # thresholds: compare |value| with the levels
    absolute: bool = False
    # growth: only values above this can alert (tiny values at start-up grow by large factors)
    min_value: float = 0.0
    # anomaly: the z-score settings; baseline: the reference run(s) and factors
    detector: Detector | None = None
    baseline: Baseline | None = None

    def __post_init__(self) -> None:
        self.levels = sorted(self.levels, reverse=True)
        if self.kind == "thresholds":
            self._mode = _ABSOLUTE if self.absolute else _BELOW if self.below else _ABOVE
        else:
            self._mode = {
                "nonfinite": _NONFINITE,
                "growth": _GROWTH,
                "absent": _ABSENT,
                "anomaly": _ANOMALY,
                "baseline": _BASELINE,
            }[self.kind]
        self._ranks = tuple(r for r, _, _ in self.levels)
        self._indexed = tuple(enumerate(self._ranks))
        self._top = self._ranks[0] if self._ranks else 0
        # finite values in [_lo, _hi] put the series at rank 0; an empty range disables the shortcut
        big = sys.float_info.max
        lo, hi = math.inf, -math.inf
        values = [level for _, _, level in self.levels]
        if self._mode == _ABOVE and values:
            lo, hi = -big, min(values)
        elif self._mode == _BELOW and values:
            lo, hi = max(values), big
        elif self._mode == _ABSOLUTE and values:
            lo, hi = -min(values), min(values)
        elif self._mode == _NONFINITE:
            lo, hi = -big, big
        self._lo, self._hi = lo, hi

    @property
    def direction(self) -> str:
        if self.detector is not None:
            return self.detector.direction
        return "absolute" if self.absolute else "below" if self.below else "above"

    def new_state(self) -> RuleState:
        state = RuleState(len(self.levels))
        if self.kind == "growth":
            state.window = deque()
        elif self.detector is not None:
            state.extra = self.detector.new_state()
        elif self.baseline is not None:
            state.extra = Verdict()  # the engine binds it to its references and the series
        return state

    def level_of(self, rank: int) -> float | None:
        for r, _, level in self.levels:
            if r == rank:
                return level
        return None

    # measured hot path (every point of every watched series): one flat function, no helper calls
    def evaluate(self, state: RuleState, step: int, wall_time: float, value: float) -> int:  # noqa: C901, PLR0915
        """Severity rank this point puts the series at, after ``for``."""
        if self._lo <= value <= self._hi and not state.raw:
            # the common case: a finite value in the quiet range after a quiet point
            # (raw 0 means every streak is already 0)
            return 0
        mode = self._mode
        # the same shortcut for the kinds whose quiet range is per series (inline: a call costs)
        if mode == _ANOMALY and not state.raw:
            extra = state.extra
            if extra.lo < value < extra.hi:  # type: ignore[union-attr]
                pending = extra.pending  # type: ignore[union-attr]
                pending.append(value)  # the detector's window still records the point
                if len(pending) >= extra.due:  # type: ignore[union-attr]
                    self.detector._refresh(extra)  # type: ignore[union-attr, arg-type]
                return 0
        elif mode == _BASELINE and not state.raw and self._quiet(state.extra, step, value):  # type: ignore[arg-type]
            return 0
        raw = 0
        if mode <= _ABSOLUTE:
            if not _isfinite(value):
                # not evidence either way: the nonfinite kind alerts on it, this rule holds
                return self._held(state)
            if mode == _ABOVE:
                for rank, _, level in self.levels:
                    if value > level:
                        raw = rank
                        break
            elif mode == _BELOW:
                for rank, _, level in self.levels:
                    if value < level:
                        raw = rank
                        break
            else:
                magnitude = -value if value < 0 else value
                for rank, _, level in self.levels:
                    if magnitude > level:
                        raw = rank
                        break
        elif mode == _NONFINITE:
            if not _isfinite(value):
                raw = self._top
        elif mode == _ANOMALY:
            raw = self.detector.observe(state.extra, value)  # type: ignore[union-attr, arg-type]
            if raw < 0:  # NaN/±Inf: not evidence
                return self._held(state)
        elif mode == _BASELINE:
            v = state.extra
            raw = self.baseline.judge(v, v.refs, v.run, v.tag, step, value)  # type: ignore[union-attr]
            if raw < 0:  # not compared (the baseline has not reached this step, ...): not evidence
                return self._held(state)
        elif mode == _GROWTH:
            if not _isfinite(value):
                return self._held(state)
            window = state.window
            if window is None:
                window = state.window = deque()
            last = state.last_step
            if last is not None and step < last:
                window.clear()  # steps went back: a restarted run, not growth
            state.last_step = step
            horizon = step - self.within_steps
            while window and window[0][0] < horizon:
                window.popleft()
            if window:
                # the window is kept increasing in value: its head is the minimum
                ratio = value / window[0][1]
                state.ratio = ratio
                if value > self.min_value:
                    for rank, _, factor in self.levels:
                        if ratio >= factor:
                            raw = rank
                            break
            if value > 0:
                _remember(window, step, value)
        else:  # absent: a gap in wall time between consecutive points
            last = state.last_wall
            if last is not None and wall_time - last > self.absent_for:
                raw = self._top
            state.last_wall = wall_time
        state.raw = raw
        n = self.for_points
        if n <= 1:
            return raw
        # ``for``: each level needs n consecutive points at or above it; the
        # counters saturate at n so they stay small ints (no allocation).
        best = 0
        streaks = state.streaks
        for i, rank in self._indexed:
            if raw >= rank:
                c = streaks[i]
                if c < n:
                    c += 1
                    streaks[i] = c
                if not best and c >= n:
                    best = rank
            else:
                streaks[i] = 0
        return best

    @staticmethod
    def _quiet(v: Verdict, step: int, value: float) -> bool:
        """Inside the quiet band of a baseline rule's last comparison (gradwatch/baseline.py)."""
        return v.since <= step <= v.until and v.lo < value < v.hi and v.version == v.refs.version  # type: ignore[union-attr]

    def _held(self, state: RuleState) -> int:
        """The rank after the last finite point (from ``raw`` and the streaks)."""
        n = self.for_points
        if n <= 1:
            return state.raw
        streaks = state.streaks
        for i, rank in self._indexed:
            if streaks[i] >= n:
                return rank
        return 0

    def fields(
        self, run: str, tag: str, step: int, value: float, rank: int, state: RuleState | None = None
    ) -> dict[str, Any]:
        """Template fields for one alert; see docs/rules.md for what each holds."""
        level = self.level_of(rank)
        threshold: Any = NOT_APPLICABLE
        if self.kind == "thresholds" and level is not None:
            threshold = Num(level)
        elif self.kind in ("growth", "baseline") and level is not None:
            threshold = Factor(level)
        elif self.kind == "anomaly" and level is not None:
            threshold = Num(level)
        elif self.kind == "absent":
            threshold = Num(self.absent_for)
        return {
            "rule": self.name,
            "run": run,
            "tag": tag,
            "step": step,
            "value": Num(value),
            "threshold": threshold,
            "severity": SEVERITY_OF_RANK.get(rank, "ok"),
            "labels": self.labels,
            "ratio": self._ratio(state),
            "for": self.for_points,
            "direction": self.direction,
            "within": self.within_steps,
            **self._kind_fields(state),
        }

    def _ratio(self, state: RuleState | None) -> Any:
        if state is None:
            return NOT_APPLICABLE
        if self.kind == "growth":
            return Num(state.ratio)
        if self.kind == "baseline" and isinstance(state.extra, Verdict):
            return Num(state.extra.ratio)
        return NOT_APPLICABLE

    def _kind_fields(self, state: RuleState | None) -> dict[str, Any]:
        """{zscore} (anomaly), {baseline} and {baseline_step} (baseline); n/a for other kinds."""
        extra = state.extra if state is not None else None
        return {
            "zscore": Num(extra.z) if isinstance(extra, AnomalyState) else NOT_APPLICABLE,
            "baseline": Num(extra.base) if isinstance(extra, Verdict) else NOT_APPLICABLE,
            "baseline_step": extra.base_step if isinstance(extra, Verdict) else NOT_APPLICABLE,
        }

    def render(self, fields: dict[str, Any]) -> dict[str, str]:
        out = {name: t.render(fields) for name, t in self.annotations.items()}
        if isinstance(fields.get("threshold"), Factor):
            # notifiers show this text instead of the bare level: "threshold x10", not "threshold 10"
            out.setdefault("threshold", str(fields["threshold"]))
        return out


class Series:
    """One (run, tag) and the rules that match it, with their states."""

    __slots__ = ("history", "ranks", "rules", "run", "states", "step", "tag", "value", "wall_time")

    def __init__(self, run: str, tag: str, rules: list[Rule]) -> None:
        self.run = run
        self.tag = tag
        self.rules = rules
        self.states = [r.new_state() for r in rules]
        # effective severity rank per rule after the last point
        self.ranks = [0] * len(rules)
        # the last point, read by the metrics exporter at scrape time
        self.step = 0
        self.wall_time = 0.0
        self.value = math.nan
        # a baseline rule's reference series: its points are kept here (gradwatch/baseline.py)
        self.history: History | None = None


def series_rules(rules: list[Rule], run: str, tag: str) -> list[Rule]:
    return [r for r in rules if r.match.matches(run, tag)]
