"""`gradwatch check` over batches of columns says exactly what it said point by point: random series
written by a real writer, read in batches of several sizes, every rule kind; the text and JSON
reports compared byte for byte (the order of "first" per severity included)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from random_series import random_series, rules_of
from writers import write_scalars

from gradwatch.engine import Engine
from gradwatch.events import scalars
from gradwatch.events.logdir import LogdirReader, ProblemLog, scan
from gradwatch.oneshot.check import CheckResult, FindingSink, SeriesStats, run_check, write_json, write_text

TAGS = ("actor/grad_norm", "critic/grad_norm", "loss")
BATCHABLE = ["above", "below", "absolute", "above_for", "nonfinite", "growth", "growth_min", "growth_long"]
BATCHABLE += ["growth_for", "keep"]
PER_POINT = ["anomaly", "absent"]


def write_logdir(logdir, rng: random.Random, n: int) -> None:
    """Two runs of three tags, the tags' points interleaved as a trainer logs them."""
    for run in ("r1", "r2"):
        series = [random_series(rng, n) for _ in TAGS]
        points = [
            (tag, int(steps[k]), float(values[k]), float(walls[k]))
            for k in range(n)
            for tag, (steps, walls, values) in zip(TAGS, series)
        ]
        write_scalars("tensorboardX", str(logdir / run), points)


def point_by_point(logdir: str, rules: list) -> CheckResult:
    """check as it was before batches: every point through Engine.observe and SeriesStats.add."""
    sink = FindingSink()
    problems = ProblemLog()
    engine = Engine(rules, sink.__call__, problems=problems)  # a bound method has no ``many``
    reader = LogdirReader(logdir, problems=problems)
    runs = scan(logdir, problems)
    for run, paths in runs.items():
        for path in paths:
            reader.reader(run, path)
    stats: dict = {}
    points = 0
    for run, tag, step, wall_time, value in reader.read_all(final=True):
        points += 1
        engine.observe(run, tag, step, wall_time, value)
        s = engine.runs[run][tag]
        if s is not None and s.rules:
            stats.setdefault((run, tag), SeriesStats()).add(step, value)
    tags_seen = {tag for tags in engine.runs.values() for tag in tags}
    return CheckResult(
        logdir, rules, sink.findings, stats, sorted(runs), points, dict(problems.counts), tags_seen
    )


def reports(result: CheckResult) -> tuple[str, str]:
    text, js = io.StringIO(), io.StringIO()
    write_text(result, text)
    write_json(result, js)
    return text.getvalue(), js.getvalue()


@pytest.mark.parametrize("seed", range(4))
def test_check_over_batches_reports_what_it_did_point_by_point(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    write_logdir(tmp_path, rng, 2500)
    # the rules a batch can take on every series, and on one tag also those that go point by point
    rules = rules_of(BATCHABLE, tag="*") + rules_of(PER_POINT, tag="critic/*")
    expected = reports(point_by_point(str(tmp_path), rules))
    # batches of a few records, of a few hundred, and the reader's default
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", [300, 16_384, 1 << 20][seed % 3])
    got = reports(run_check(str(tmp_path), rules))
    assert got[1] == expected[1]
    assert got[0] == expected[0]
    assert '"critical"' in got[1] and '"warning"' in got[1]  # the series did alert


@pytest.mark.parametrize("seed", range(20))
def test_series_stats_of_a_batch_are_those_of_its_points(seed):
    rng = random.Random(seed)
    steps, _, values = random_series(rng, 300)
    values[rng.sample(range(300), 5)] = rng.choice([0.0, -0.0, 150.0])  # ties at the extremes
    one, batched = SeriesStats(), SeriesStats()
    for step, value in zip(steps.tolist(), values.tolist()):
        one.add(step, value)
    cuts = sorted(rng.sample(range(1, 300), 4))
    for a, b in zip([0, *cuts], [*cuts, 300]):
        batched.add_batch(steps[a:b], values[a:b])
    for name in SeriesStats.__slots__:
        assert repr(getattr(batched, name)) == repr(getattr(one, name)), name
    assert np.isfinite(values).any()
