"""``gradwatch rules test``: unit tests for rules, like ``promtool test rules``.

A test file names rule files and lists tests; each test writes input series
as step/value lists and the alerts it expects (rule, run, tag, severity and
the step at which that severity began). Every change of a rule's severity on
a series is an alert, including the change back to ``ok``; a test passes
when the expected and the actual alerts are the same. Tests see the rules'
decisions point by point: the daemon's keep_firing_for and repeat_interval
are not applied. The format is described in docs/rules.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TextIO

from gradwatch.config.rulefiles import load_rules
from gradwatch.config.yaml import ConfigError, Problem, Section, load_yaml_file
from gradwatch.engine import Engine
from gradwatch.rules import Series
from gradwatch.severity import SEVERITY_NAMES, Severity

# the severity of a transition back to normal (the rule stopped alerting)
OK = "ok"
_SPECIAL = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


@dataclass(frozen=True)
class Alert:
    """A transition to a severity; ``step`` None (expected only) matches any step."""

    rule: str
    run: str
    tag: str
    severity: str
    step: int | None
    # expected: the annotations to compare (a subset); actual: all of them, rendered
    annotations: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        return f"{self.severity} {self.rule} run={self.run} tag={self.tag}{at}"

    def same(self, actual: Alert) -> bool:
        return (self.rule, self.run, self.tag, self.severity) == (
            actual.rule,
            actual.run,
            actual.tag,
            actual.severity,
        ) and (self.step is None or self.step == actual.step)


@dataclass
class InputSeries:
    run: str
    tag: str
    steps: list[int]
    values: list[float]
    wall_times: list[float]


@dataclass
class Case:
    name: str
    line: int
    series: list[InputSeries]
    expected: list[Alert]


def _value(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _SPECIAL:
            return _SPECIAL[s]
        try:
            return float(s)
        except ValueError:
            return None
    return None


def _values(v) -> list[float] | None:
    items = v.split() if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        return None
    out = [_value(x) for x in items]
    return None if any(x is None for x in out) else out  # type: ignore[misc]


def _ints(v) -> list[int] | None:
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return list(v)
    return None


def _numbers(v) -> list[float] | None:
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return [float(x) for x in v]
    return None


def _parse_series(sec: Section) -> InputSeries | None:
    before = len(sec.problems)
    run = sec.string("run", default=".")
    tag = sec.string("tag", required=True)
    values = (
        sec.get(
            "values", _values, "a list of numbers (nan, inf, -inf allowed) or a string of them", required=True
        )
        or []
    )
    steps = sec.get("steps", _ints, "a list of whole numbers")
    start = sec.integer("start", default=0, minimum=-(2**63))
    interval = sec.integer("interval", default=1, minimum=1)
    wall_times = sec.get("wall_times", _numbers, "a list of numbers (seconds)")
    seconds_per_step = sec.number("seconds_per_step", default=1.0)
    sec.finish()
    if steps is None:
        steps = [start + i * interval for i in range(len(values))]
    elif len(steps) != len(values):
        sec.error("steps", f"has {len(steps)} entries but values has {len(values)}")
    if wall_times is None:
        wall_times = [1_700_000_000.0 + s * seconds_per_step for s in steps]
    elif len(wall_times) != len(values):
        sec.error("wall_times", f"has {len(wall_times)} entries but values has {len(values)}")
    if len(sec.problems) > before or tag is None:
        return None
    return InputSeries(run, tag, steps, values, wall_times)


def _parse_expect(sec: Section) -> Alert | None:
    before = len(sec.problems)
    rule = sec.string("rule", required=True)
    run = sec.string("run", default=".")
    tag = sec.string("tag", required=True)
    severity = sec.choice("severity", (*SEVERITY_NAMES, OK), required=True)
    step = sec.integer("step", minimum=-(2**63))
    annotations = sec.mapping("annotations")
    sec.finish()
    if len(sec.problems) > before:
        return None
    return Alert(rule, run, tag, severity, step, tuple(sorted(annotations.items())))


def load_tests(path: str) -> tuple[list[str], list[Case]]:
    problems: list[Problem] = []
    top = Section(load_yaml_file(path), path, "", problems, line=1)
    base = os.path.dirname(path)
    files = top.strings("rule_files")
    rule_files = [f if os.path.isabs(f) else os.path.join(base, f) for f in files] if files else []
    cases = []
    if isinstance(top.data.get("tests"), list) and not top.data["tests"]:
        top.error("tests", "is empty: a test file needs at least one test")
    for sec in top.sections("tests", required=True):
        name = sec.string("name", default=f"test at line {sec.line}")
        series = [s for ss in sec.sections("series", required=True) if (s := _parse_series(ss))]
        expected = [a for es in sec.sections("expect") if (a := _parse_expect(es))]
        sec.finish()
        cases.append(Case(name, sec.line, series, expected))
    top.finish()
    if problems:
        raise ConfigError(problems)
    return rule_files, cases


def run_case(rules, case: Case) -> list[Alert]:
    actual: list[Alert] = []

    def sink(s: Series, i: int, rank: int, previous: int, step: int, wall_time: float, value: float) -> None:
        if rank != previous:
            rule = s.rules[i]
            rendered = rule.render(rule.fields(s.run, s.tag, step, value, rank, s.states[i]))
            severity = Severity.of_rank(rank, OK)
            actual.append(Alert(rule.name, s.run, s.tag, severity, step, tuple(sorted(rendered.items()))))

    engine = Engine(rules, sink)
    # interleave the series by wall time, as a trainer would write them; at the same time a
    # baseline rule's reference goes first (it has reached the step another run logs with it)
    points = sorted(
        (w, not engine.is_reference(s.run, s.tag), k, s.run, s.tag, step, v)
        for k, s in enumerate(case.series)
        for step, v, w in zip(s.steps, s.values, s.wall_times)
    )
    for w, _, _, run, tag, step, v in points:
        engine.observe(run, tag, step, w, v)
    return actual


def compare(expected: list[Alert], actual: list[Alert]) -> tuple[list[Alert], list[Alert], list[str]]:
    """(missing, unexpected, annotation mismatches); an expected alert without a step matches any step."""
    left = list(actual)
    missing: list[Alert] = []
    mismatches: list[str] = []
    # expectations that name a step first, so a step-less one cannot take their alert
    for e in sorted(expected, key=lambda e: e.step is None):
        match = next((a for a in left if e.same(a)), None)
        if match is None:
            missing.append(e)
            continue
        left.remove(match)
        got = dict(match.annotations)
        for key, want in e.annotations:
            if got.get(key) != want:
                mismatches.append(
                    f"{match}: annotation {key}:\n"
                    f"              expected: {want!r}\n"
                    f"              got:      {got.get(key)!r}"
                )
    return missing, left, mismatches


def run_tests(path: str, out: TextIO) -> int:
    """Run one test file; returns the number of failed tests (raises ConfigError)."""
    rule_files, cases = load_tests(path)
    rules = load_rules(rule_files or None)
    known = {r.name for r in rules}
    failed = 0
    for case in cases:
        actual = run_case(rules, case)
        missing, unexpected, mismatches = compare(case.expected, actual)
        unknown = sorted({e.rule for e in case.expected} - known)
        if not (missing or unexpected or mismatches or unknown):
            out.write(f"  PASS  {case.name}\n")
            continue
        failed += 1
        out.write(f"  FAIL  {case.name} ({path}:{case.line})\n")
        for name in unknown:
            out.write(
                f"          ! no rule named {name!r} in the rule files (rules: {', '.join(sorted(known))})\n"
            )
        for a in missing:
            out.write(f"          - expected, did not fire: {a}\n")
        for a in unexpected:
            out.write(f"          + fired, not expected:    {a}\n")
        for m in mismatches:
            out.write(f"          ~ {m}\n")
        out.write("          all alerts that fired, in order:\n")
        for a in actual or []:
            out.write(f"            {a}\n")
        if not actual:
            out.write("            (none)\n")
    return failed
