"""``gradwatch check``'s output: the text report and the ``--json`` document, and both forms
of the UNKNOWN verdict when the check could not run."""

from __future__ import annotations

import functools
import math
import textwrap
from typing import Any, TextIO

from gradwatch.fmt import escape, human, json_number
from gradwatch.fmt import write_json as write_json_document
from gradwatch.oneshot.findings import STATUS, UNKNOWN, CheckResult, Finding, SeriesStats
from gradwatch.rules import Rule
from gradwatch.severity import Severity

_INDENT = " " * 14


def describe_rule(rule: Rule) -> str:
    """One line saying what the rule looks for, e.g. ``above 10,000 (warning), 50,000 (critical)``."""
    levels = sorted(rule.levels)
    if rule.kind == "thresholds":
        what = {"above": "above", "below": "below", "absolute": "|value| above"}[rule.direction]
        return what + " " + ", ".join(f"{human(level)} ({sev})" for _, sev, level in levels)
    if rule.kind == "growth":
        grew = ", ".join(f"x{human(level)} ({sev})" for _, sev, level in levels)
        return f"grew {grew} within {rule.within_steps} steps"
    if rule.kind == "absent":
        return f"no point for more than {human(rule.absent_for)} s ({levels[0][1]})"
    if rule.detector is not None:
        d = rule.detector
        away = {"both": "from", "above": "above", "below": "below"}[d.direction]
        sigmas = ", ".join(f"{human(level)} sd ({sev})" for _, sev, level in levels)
        scale = " on a log scale" if d.log else ""
        return f"{sigmas} {away} the last {d.window} points{scale}"
    if rule.baseline is not None:
        b = rule.baseline
        times = ", ".join(f"x{human(level)} ({sev})" for _, sev, level in levels)
        which = b.runs[0] if len(b.runs) == 1 else "the median of " + " ".join(b.runs)
        return f"{times} {'below' if b.below else 'above'} {escape(which)} at the same step"
    return f"NaN or ±Inf ({levels[0][1]})"


@functools.lru_cache(maxsize=256)
def _wrapped(recommendation: str) -> str:
    """A recommendation as indented lines; remembered, because a rule's text is usually the same
    on every series it fires on (textwrap took half of write_text on 1,000 findings)."""
    wrapped = textwrap.fill(
        escape(recommendation),
        width=110,
        initial_indent=_INDENT + "-> ",
        subsequent_indent=_INDENT + "   ",
        break_on_hyphens=False,
    )
    return wrapped + "\n"


def write_text(result: CheckResult, out: TextIO) -> None:
    n_series = len(result.stats)
    out.write(
        f"gradwatch check {escape(result.logdir)}: {len(result.rules)} rules, {len(result.runs)} runs, "
        f"{n_series} matching series, {result.points:,} points read\n"
    )
    alerted = result.alerted()
    run = tag = None
    for f in alerted:
        st = result.stats[(f.run, f.tag)]
        if f.run != run:
            run, tag = f.run, None
            out.write(f"\nrun {escape(f.run)}\n")
        if f.tag != tag:
            tag = f.tag
            out.write(f"  {escape(f.tag)}: {_series_text(st)}\n")
        rule = f.rule
        out.write(f"    {Severity.of_rank(f.worst).upper():9} {rule.name}: {describe_rule(rule)}\n")
        present = [(rank, sev) for rank, sev, _ in sorted(rule.levels) if sev in f.first]
        for _, sev in present:
            step, value, ratio = f.first[sev]
            extra = "" if ratio is None else f" ({ratio:.1f} sd)" if rule.detector else f" (x{human(ratio)})"
            out.write(f"{_INDENT}{sev:8} first at step {step}: {human(value)}{extra}\n")
        counts = ", ".join(
            f"{f.points_at(rank):,}"
            + (f" of {st.count:,} points" if i == 0 else "")
            + f" at {sev}"
            + (" or worse" if i < len(present) - 1 else "")
            for i, (rank, sev) in enumerate(present)
        )
        end = f"still {Severity.of_rank(f.final)}" if f.final else "back to normal"
        out.write(f"{_INDENT}{counts}; {end} at the last point (step {st.last_step})\n")
        recommendation = f.annotations.get("recommendation")
        if recommendation:
            out.write(_wrapped(recommendation))
    _write_uncompared(result, out)
    code = result.exit_code
    crit = sum(1 for f in alerted if f.worst >= Severity.CRITICAL)
    warn = sum(1 for f in alerted if Severity.WARNING <= f.worst < Severity.CRITICAL)
    info = sum(1 for f in alerted if f.worst < Severity.WARNING)
    if not result.runs:
        summary = "no event files found (a run is a directory holding files named *tfevents*)"
    elif not result.points:
        summary = "the event files hold no scalar points"
    elif not result.stats:
        seen = sorted(result.tags_seen)
        shown = ", ".join(map(escape, seen[:10])) + (f" and {len(seen) - 10} more" if len(seen) > 10 else "")
        summary = f"no series matched the rules, nothing was checked (tags seen: {shown})"
    elif not alerted:
        summary = f"all {n_series} matching series stayed within the rules"
    else:
        series = len({(f.run, f.tag) for f in alerted})
        parts = [f"{crit} critical", f"{warn} warning"] + ([f"{info} info"] if info else [])
        summary = f"{', '.join(parts)} findings on {series} of {n_series} matching series"
    problems = sum(result.problems.values())
    if problems:
        summary += f"; {problems} problems in event files (see log)"
    out.write(f"\n{STATUS[code]}: {summary}\n")


def _write_uncompared(result: CheckResult, out: TextIO) -> None:
    """Points a baseline rule could not judge: not evidence, but the reader must know."""
    if not result.uncompared:
        return
    out.write("\nnot compared with a baseline (not evidence either way)\n")
    for rule, run, tag, points, why in result.uncompared:
        out.write(
            f"  {rule.name} on run {escape(run)}, {escape(tag)}: "
            f"{points:,} points not compared; at the last point: {why}\n"
        )


def _series_text(st: SeriesStats) -> str:
    peak = st.extreme("max")
    parts = [f"{st.count:,} points"]
    parts.append(f"max {human(peak['value'])} at step {peak['step']}" if peak else "no finite value")
    if st.nonfinite:
        step, value = st.first_nonfinite or (0, math.nan)
        parts.append(f"{st.nonfinite:,} non-finite (first {human(value)} at step {step})")
    return ", ".join(parts)


def write_json(result: CheckResult, out: TextIO) -> None:
    code = result.exit_code
    doc = {
        "status": STATUS[code],
        "exit_code": code,
        "logdir": result.logdir,
        "rules": [r.name for r in result.rules],
        "runs": result.runs,
        "series": len(result.stats),
        "points": result.points,
        "findings": [finding_json(f, result.stats[(f.run, f.tag)]) for f in result.alerted()],
        "not_compared": [
            {"rule": rule.name, "run": run, "tag": tag, "points": points, "last": why}
            for rule, run, tag, points, why in result.uncompared
        ],
        "problems": result.problems,
    }
    # json.dump's layout for the document and its lists, a finding to a line (docs/commands.md)
    write_json_document(doc, out)


def write_error_json(logdir: str, message: str, out: TextIO) -> None:
    """``--json`` output when the check could not run (bad rules, bad logdir): UNKNOWN."""
    doc = {"status": STATUS[UNKNOWN], "exit_code": UNKNOWN, "logdir": logdir, "errors": message.splitlines()}
    write_json_document(doc, out)


def write_error_text(error: Exception, out: TextIO) -> None:
    """The plugin status line when the check could not run: ``UNKNOWN: <first problem>``."""
    lines = str(error).splitlines() or ["check could not run"]
    more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
    # the message may quote a run name or a file's bytes: one line, nothing a terminal obeys
    out.write(f"{STATUS[UNKNOWN]}: {escape(lines[0])}{more}\n")


def finding_json(f: Finding, stats: SeriesStats) -> dict[str, Any]:
    """One finding in ``--json`` (docs/commands.md)."""
    return {
        "rule": f.rule.name,
        "kind": f.rule.kind,
        "run": f.run,
        "tag": f.tag,
        "severity": Severity.of_rank(f.worst),
        "first": {
            sev: _json_first(*first, "zscore" if f.rule.kind == "anomaly" else "ratio")
            for sev, first in f.first.items()
        },
        "points_at": {sev: f.points_at(rank) for rank, sev, _ in f.rule.levels if sev in f.first},
        "points_alerting": f.points_alerting,
        "points": stats.count,
        "nonfinite": stats.nonfinite,
        "max": _json_extreme(stats.extreme("max")),
        "min": _json_extreme(stats.extreme("min")),
        "last_step": stats.last_step,
        "active_at_end": Severity.of_rank(f.final, None),
        "labels": f.rule.labels,
        "annotations": f.annotations,
    }


def _json_first(step: int, value: float, ratio: float | None, name: str = "ratio") -> dict[str, Any]:
    out: dict[str, Any] = {"step": step, "value": json_number(value)}
    if ratio is not None:
        out[name] = json_number(ratio)
    return out


def _json_extreme(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {"step": d["step"], "value": json_number(d["value"])}
