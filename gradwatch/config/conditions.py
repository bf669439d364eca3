"""Each condition kind of a rule file (thresholds, nonfinite, growth, anomaly, baseline, absent):
its YAML section -> the ``Rule`` fields it sets, every problem reported as ``file:line``.

Severity levels are checked to be reachable: a higher severity must be further from normal.
"""

from __future__ import annotations

import glob
import itertools
from collections.abc import Callable
from typing import Any

from gradwatch.anomaly import DEFAULTS as ANOMALY_DEFAULTS
from gradwatch.anomaly import DIRECTIONS as ANOMALY_DIRECTIONS
from gradwatch.anomaly import Detector
from gradwatch.baseline import DIRECTIONS as BASELINE_DIRECTIONS
from gradwatch.baseline import Baseline
from gradwatch.config.yaml import Section
from gradwatch.rules import DIRECTIONS
from gradwatch.severity import SEVERITY_NAMES, Severity
from gradwatch.templates import Num


def _levels(
    sec: Section, key: str, what: str, descending: bool = False, factor: bool = False
) -> list[tuple[int, str, float]]:
    """Severity levels of a section; a higher severity must be further from normal."""
    levels: list[tuple[int, str, float]] = []
    for severity in SEVERITY_NAMES:
        value = sec.number(severity)
        if value is None:
            continue
        if factor and value <= 1:
            sec.error(severity, f"expected a growth factor above 1, got {value:g}")
            continue
        levels.append((int(Severity.parse(severity)), severity, value))
    if not levels and not any(p.path.startswith(sec.path + ".") for p in sec.problems):
        sec.error("", f"{key} needs at least one of {', '.join(SEVERITY_NAMES)} with {what}")
    # each severity must be reached strictly after the one below it, or it can never fire
    for (_, low_sev, low), (_, high_sev, high) in itertools.pairwise(levels):
        if (high >= low) if descending else (high <= low):
            rel = "below" if descending else "above"
            sec.error(
                high_sev,
                f"{high_sev} ({Num(high)}) must be {rel} {low_sev} ({Num(low)}), or {low_sev} can never fire",
            )
    levels.sort(reverse=True)
    return levels


def severity_level(sec: Section, key: str, default: str) -> list[tuple[int, str, float]]:
    sev = sec.choice(key, SEVERITY_NAMES, default=default) or default
    return [(int(Severity.parse(sev)), sev, 0.0)]


def _parse_anomaly(sec: Section) -> tuple[list[tuple[int, str, float]], Detector | None]:
    """``anomaly:`` -- every key optional (``anomaly: {}`` is the defaults); levels in standard deviations."""
    before = len(sec.problems)
    window = sec.integer("window", default=ANOMALY_DEFAULTS["window"], minimum=2)
    min_points = sec.integer("min_points", minimum=2)
    direction = sec.choice("direction", ANOMALY_DIRECTIONS, default=ANOMALY_DEFAULTS["direction"])
    log = sec.boolean("log", default=False)
    robust = sec.boolean("robust", default=False)
    if any(sec.has(severity) for severity in SEVERITY_NAMES):
        levels = _levels(sec, "anomaly", "a number of standard deviations")
        for _, severity, sigmas in levels:
            if sigmas <= 0:
                sec.error(severity, f"expected a number of standard deviations above 0, got {Num(sigmas)}")
    else:
        levels = [
            (int(Severity.parse(sev)), sev, float(ANOMALY_DEFAULTS[sev])) for sev in ("critical", "warning")
        ]
    if min_points is not None and window is not None and min_points > window:
        sec.error("min_points", f"min_points ({min_points}) cannot be above window ({window})")
    sec.finish()
    if len(sec.problems) > before or window is None:
        return levels, None
    return levels, Detector(levels, window, min_points, direction, bool(log), bool(robust))


def _parse_baseline(sec: Section) -> tuple[list[tuple[int, str, float]], Baseline | None]:
    """``baseline:`` -- ``run`` (one name) or ``runs`` (globs, the median), ``factor`` or levels."""
    before = len(sec.problems)
    run = sec.string("run")
    runs = sec.strings("runs")
    if (run is None) == (runs is None) and len(sec.problems) == before:
        sec.error("", "name the reference: either run (one run) or runs (globs: the median of those runs)")
    references = [glob.escape(run)] if run is not None else runs or []
    tolerance = sec.integer("tolerance")
    direction = sec.choice("direction", BASELINE_DIRECTIONS, default="above")
    if sec.has("factor"):
        if any(sec.has(severity) for severity in SEVERITY_NAMES):
            sec.error("factor", "use either factor (with severity) or factors per severity, not both")
            sec.allow(*SEVERITY_NAMES)
        factor = sec.number("factor", required=True)
        severity = sec.choice("severity", SEVERITY_NAMES, default="warning") or "warning"
        levels = [(int(Severity.parse(severity)), severity, factor)] if factor is not None else []
        if factor is not None and factor <= 1:
            sec.error("factor", f"expected a factor above 1, got {Num(factor)}")
    else:
        sec.allow("severity")
        if sec.has("severity"):
            sec.error("severity", "severity goes with factor; with per-severity factors it is their key")
        levels = _levels(sec, "baseline", "a factor such as 10 (or factor: 10)", factor=True)
    sec.finish()
    if len(sec.problems) > before or not levels:
        return levels, None
    return levels, Baseline(levels, references, tolerance, direction)


def _thresholds(sec: Section) -> dict[str, Any]:
    th = sec.section("thresholds")
    direction = th.choice("direction", DIRECTIONS, default="above") or "above"
    levels = _levels(th, "thresholds", "a value", descending=direction == "below")
    if direction == "absolute":
        for _, sev, level in levels:
            if level < 0:
                th.error(sev, f"with direction absolute the level is a magnitude, got {Num(level)}")
    th.finish()
    return {"levels": levels, "below": direction == "below", "absolute": direction == "absolute"}


def _nonfinite(sec: Section) -> dict[str, Any]:
    return {"levels": severity_level(sec, "nonfinite", "critical")}


def _growth(sec: Section) -> dict[str, Any]:
    gr = sec.section("growth")
    within = gr.integer("within_steps", required=True, minimum=1) or 0
    min_value = gr.number("min_value", default=0.0)
    levels = _levels(gr, "growth", "a factor such as 10", factor=True)
    gr.finish()
    return {"levels": levels, "within_steps": within, "min_value": min_value}


def _anomaly(sec: Section) -> dict[str, Any]:
    levels, detector = _parse_anomaly(sec.section("anomaly"))
    return {"levels": levels, "detector": detector}


def _baseline(sec: Section) -> dict[str, Any]:
    levels, baseline = _parse_baseline(sec.section("baseline"))
    return {"levels": levels, "baseline": baseline}


def _absent(sec: Section) -> dict[str, Any]:
    absent_for = sec.duration("absent_for", required=True)
    if absent_for is not None and absent_for <= 0:
        sec.error("absent_for", "expected a duration above zero")
    return {"absent_for": absent_for or 0.0}  # its severity is read by _parse_rule


CONDITIONS: dict[str, Callable[[Section], dict[str, Any]]] = {
    "thresholds": _thresholds,
    "nonfinite": _nonfinite,
    "growth": _growth,
    "anomaly": _anomaly,
    "baseline": _baseline,
    "absent": _absent,
}
