"""``gradwatch check``: evaluate every existing point of a logdir once.

Exit status follows the monitoring-plugin convention, so CI can gate on it:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad logdir, bad rules, nothing
checked).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gradwatch.baseline import Verdict
from gradwatch.engine import GROUP_POINTS, Engine
from gradwatch.events.columns import Columns
from gradwatch.events.logdir import LogdirReader, ProblemLog, scan
from gradwatch.events.parallel import fork_map, split_runs
from gradwatch.events.remote import is_remote
from gradwatch.events.shard import Shard

# what callers import from here: the verdict's parts and its writers (gradwatch/oneshot/check_output.py)
from gradwatch.oneshot.check_output import (
    describe_rule,
    write_error_json,
    write_error_text,
    write_json,
    write_text,
)
from gradwatch.oneshot.findings import (
    CRITICAL,
    OK,
    STATUS,
    UNKNOWN,
    WARNING,
    CheckResult,
    Finding,
    FindingSink,
    SeriesStats,
    exit_code_of,
)
from gradwatch.rules import Rule

__all__ = [
    "CRITICAL",
    "OK",
    "STATUS",
    "UNKNOWN",
    "WARNING",
    "CheckResult",
    "Finding",
    "FindingSink",
    "SeriesStats",
    "describe_rule",
    "exit_code_of",
    "run_check",
    "write_error_json",
    "write_error_text",
    "write_json",
    "write_text",
]


def run_check(
    logdir: str, rules: list[Rule], problems: ProblemLog | None = None, shard: Shard | None = None
) -> CheckResult:
    """Evaluate every point of ``logdir``; groups of runs on other cores when it pays
    (gradwatch/events/parallel.py), merged in run order: the same result as one process."""
    problems = problems or ProblemLog()
    runs = scan(logdir, problems, shard)
    # a baseline rule compares runs with each other: they must all be in the one process;
    # an object store's client (its connection pool, its event loop thread) does not survive a fork
    one_process = any(r.baseline is not None for r in rules) or is_remote(logdir)
    groups = [runs] if runs and one_process else split_runs(runs)
    parts = fork_map(lambda group: _check_runs(logdir, rules, group), groups)
    by_name = {rule.name: rule for rule in rules}

    def in_run_order(items, run_of):
        # each run is in one part only: a stable sort keeps each run's own order
        return dict(sorted(items, key=run_of))

    findings = in_run_order([kf for part in parts for kf in part.findings.items()], lambda kf: kf[0][1])
    for f in findings.values():
        f.rule = by_name[f.rule.name]  # the caller's own Rule, not a child's copy
    stats = in_run_order([ks for part in parts for ks in part.stats.items()], lambda ks: ks[0][0])
    for part in parts:
        for kind, n in part.problems.items():
            problems.counts[kind] = problems.counts.get(kind, 0) + n
    points = sum(part.points for part in parts)
    tags_seen = set().union(*(part.tags_seen for part in parts))
    result = CheckResult(
        logdir, rules, findings, stats, sorted(runs), points, dict(problems.counts), tags_seen
    )
    result.uncompared = [(by_name[u[0].name], *u[1:]) for part in parts for u in part.uncompared]
    return result


def _check_runs(logdir: str, rules: list[Rule], runs: dict[str, list[str]]) -> CheckResult:
    sink = FindingSink()
    problems = ProblemLog()
    engine = Engine(rules, sink, problems=problems)
    reader = LogdirReader(logdir, problems=problems)
    for run, paths in runs.items():
        for path in paths:
            reader.reader(run, path)
    stats: dict[tuple[str, str], SeriesStats] = {}
    engine_runs = engine.runs
    points = 0
    # the batches of many series go to the engine together: each rule decides them all at once
    pending: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]] = []
    pending_points = 0
    for run, batch in _references_first(reader, engine):
        for c in batch:
            n = len(c)
            points += n
            if not n:
                continue
            series = engine.series(run, c.tag)
            if series is not None and series.rules:  # not a baseline's reference that no rule watches
                st = stats.get((run, c.tag))
                if st is None:
                    st = stats[(run, c.tag)] = SeriesStats()
                st.add_batch(c.steps, c.values)
            if series is not None:
                pending.append((run, c.tag, c.steps, c.wall_times, c.values))
                pending_points += n
        if pending_points >= GROUP_POINTS:
            engine.observe_many(pending)
            pending, pending_points = [], 0
    engine.observe_many(pending)
    tags_seen = {tag for tags in engine_runs.values() for tag in tags}
    result = CheckResult(
        logdir, rules, sink.findings, stats, sorted(runs), points, dict(problems.counts), tags_seen
    )
    result.uncompared = _uncompared(engine)
    return result


def _references_first(reader: LogdirReader, engine: Engine) -> Iterator[tuple[str, list[Columns]]]:
    """Every point in columns, the runs that baseline rules compare with first: a finished logdir's
    baseline has reached every step when the other runs are compared with it."""
    if not engine.has_baselines:
        yield from reader.read_all_columns(final=True)
        return
    paths = sorted(reader.readers, key=lambda p: (reader.readers[p][0], p))
    reference_runs = {reader.readers[p][0] for p in paths if engine.is_reference_run(reader.readers[p][0])}
    for path in sorted(paths, key=lambda p: reader.readers[p][0] not in reference_runs):
        yield from reader.read_file_columns(path, final=True)


def _uncompared(engine: Engine) -> list[tuple[Rule, str, str, int, str]]:
    out = []
    for s in engine.all_series():
        for rule, state in zip(s.rules, s.states):
            v = state.extra
            if isinstance(v, Verdict) and v.skipped:
                out.append((rule, s.run, s.tag, v.skipped, v.explain(s.step)))
    return sorted(out, key=lambda u: (u[1], u[2], u[0].name))
