"""Baseline comparison (gradwatch/baseline.py) on its own: nearest step, not reached, median."""

from __future__ import annotations

import json

import pytest
from seed_series import SEED, clipped

from gradwatch.baseline import (
    COMPARED,
    HOLD,
    NO_BASELINE,
    NO_POINT_NEAR,
    NOT_FINITE,
    NOT_POSITIVE,
    NOT_REACHED,
    Baseline,
    History,
    References,
    Verdict,
)

WARNING, CRITICAL = 2, 3


def refs_with(runs: dict[str, list[tuple[int, float]]], tag: str = "norm") -> References:
    refs = References()
    for run, points in runs.items():
        h = refs.history(run, tag)
        for s, v in points:
            h.add(s, v)
    return refs


def judge(b: Baseline, refs: References, step: int, value: float, run: str = "run2") -> tuple[int, Verdict]:
    v = Verdict()
    return b.judge(v, refs, run, "norm", step, value), v


def test_seed_run2_against_clipped_run3_factor_10_fires_at_200_not_at_100():
    b = Baseline([(WARNING, "warning", 10.0)], ["run3"])
    refs = refs_with({"run3": clipped(every=100)})
    rank, v = judge(b, refs, 100, SEED[100])
    assert (rank, v.outcome, v.ratio) == (0, COMPARED, pytest.approx(5_191 / 2_000))
    rank, v = judge(b, refs, 200, SEED[200])
    assert (rank, v.ratio, v.base, v.base_step) == (WARNING, pytest.approx(130_486 / 3_500), 3_500, 200)


def test_a_baseline_that_has_not_reached_the_step_is_not_evidence():
    b = Baseline([(WARNING, "warning", 10.0)], ["run3"])
    refs = refs_with({"run3": [(100, 2_000.0)]})
    rank, v = judge(b, refs, 200, SEED[200])
    assert (rank, v.outcome, v.base_step) == (HOLD, NOT_REACHED, 100)
    assert v.explain(200) == "baseline has not reached step 200 (its last step is 100)"
    # once it logs step 200 the point is compared
    refs.history("run3", "norm").add(200, 3_500.0)
    assert judge(b, refs, 200, SEED[200])[0] == WARNING


def test_nearest_step_and_tolerance():
    h = History()
    for s in (0, 100, 200):
        h.add(s, float(s + 1))
    assert h.nearest(140, None) == (COMPARED, 100, 101.0)
    assert h.nearest(150, None) == (COMPARED, 100, 101.0)  # a tie goes to the earlier step
    assert h.nearest(160, None) == (COMPARED, 200, 201.0)
    assert h.nearest(160, 50) == (COMPARED, 200, 201.0)
    assert h.nearest(140, 30) == (NO_POINT_NEAR, 100, 0.0)
    assert h.nearest(210, None)[0] == NOT_REACHED
    assert h.nearest(210, 10) == (COMPARED, 200, 201.0)  # within tolerance past the last step
    assert h.nearest(211, 10)[0] == NOT_REACHED
    h2 = History()
    h2.add(50, 1.0)
    assert h2.nearest(10, None)[0] == NO_POINT_NEAR  # before the baseline's first point


def test_median_of_the_runs_matching_a_glob_leaves_out_the_run_itself_and_those_behind():
    b = Baseline([(WARNING, "warning", 2.0)], ["td3-*"])
    refs = refs_with(
        {
            "td3-a": [(100, 10.0)],
            "td3-b": [(100, 30.0)],
            "td3-c": [(100, 20.0)],
            "td3-slow": [(50, 1.0)],  # not at step 100 yet: left out
            "sac-a": [(100, 1e9)],  # does not match
        }
    )
    rank, v = judge(b, refs, 100, 45.0, run="td3-c")
    assert (rank, v.base, v.ratio) == (WARNING, 20.0, 2.25)  # median of 10 and 30
    rank, v = judge(b, refs, 100, 39.0, run="td3-new")
    assert (rank, v.base) == (0, 20.0)  # median of 10, 20, 30


def test_no_reference_at_all_and_non_positive_and_nonfinite_are_not_evidence():
    b = Baseline([(WARNING, "warning", 10.0)], ["run3"])
    assert judge(b, References(), 100, 1.0)[1].outcome == NO_BASELINE
    refs = refs_with({"run3": [(100, 0.0)]})
    for value, outcome in ((5.0, NOT_POSITIVE), (float("nan"), NOT_FINITE)):
        rank, v = judge(b, refs, 100, value)
        assert (rank, v.outcome) == (HOLD, outcome)
    # the reference run is never compared with itself
    assert judge(b, refs, 100, 5.0, run="run3")[1].outcome == NO_BASELINE


def test_direction_below_is_how_many_times_smaller():
    b = Baseline([(WARNING, "warning", 10.0)], ["ref"], direction="below")
    refs = refs_with({"ref": [(100, 1e-3)]})
    assert judge(b, refs, 100, 2e-4)[0] == 0
    rank, v = judge(b, refs, 100, 5e-5)
    assert rank == WARNING and v.ratio == pytest.approx(20)


def test_levels_critical_wins():
    b = Baseline([(WARNING, "warning", 10.0), (CRITICAL, "critical", 100.0)], ["ref"])
    refs = refs_with({"ref": [(0, 1.0)]})
    assert [judge(b, refs, 0, x)[0] for x in (10.0, 10.5, 100.0, 101.0)] == [0, WARNING, WARNING, CRITICAL]


def test_a_restarted_reference_replaces_its_newer_points():
    h = History()
    for s, v in ((0, 1.0), (100, 2.0), (200, 3.0)):
        h.add(s, v)
    h.add(100, 20.0)  # resumed from the step-100 checkpoint
    assert list(h.steps) == [0, 100] and h.nearest(100, None) == (COMPARED, 100, 20.0)
    assert h.nearest(200, None)[0] == NOT_REACHED


def test_history_is_bounded_and_thins_evenly():
    h = History(max_points=100)
    for s in range(100_000):
        h.add(s, float(s))
    assert len(h.steps) < 100 and h.last_step == 99_999
    gaps = {b - a for a, b in zip(h.steps, h.steps[1:])}
    assert len(gaps) == 1  # an even spacing
    outcome, step, value = h.nearest(50_000, None)
    assert outcome == COMPARED and value == step and abs(step - 50_000) <= gaps.pop()


def test_dump_and_load():
    h = History()
    for s in range(0, 1000, 10):
        h.add(s, s / 7)
    h2 = History.load(json.loads(json.dumps(h.dump())))
    assert list(h2.steps) == list(h.steps) and list(h2.values) == list(h.values)
    assert h2.last_step == h.last_step and h2.nearest(555, 10) == h.nearest(555, 10)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"steps": [1, 2], "values": [1.0]},
        {"steps": [2, 1], "values": [1, 1]},
        {"steps": "x", "values": []},
    ],
)
def test_load_of_bad_data_is_empty(bad):
    assert len(History.load(bad).steps) == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Baseline([(WARNING, "warning", 1.0)], ["x"])
    with pytest.raises(ValueError):
        Baseline([(WARNING, "warning", 2.0)], ["x"], direction="absolute")


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("direction", ["above", "below"])
def test_the_quiet_band_shortcut_decides_like_a_full_lookup(seed, direction):
    # a persistent verdict (which builds quiet bands) against a fresh one per point (which never
    # uses one), while the reference grows, restarts and gets thinned
    import random

    rng = random.Random(seed)
    b = Baseline([(WARNING, "warning", 3.0), (CRITICAL, "critical", 30.0)], ["ref"], direction=direction)
    refs = References(max_points=40)
    ref = refs.history("ref", "norm")
    kept, rank = Verdict(), 0
    ref_step = 0
    for step in range(0, 3000, rng.choice([1, 3, 7])):
        while ref_step <= step + rng.randint(-20, 200):
            if rng.random() < 0.005:
                ref_step = max(0, ref_step - rng.randint(1, 300))  # the reference restarts
            ref.add(ref_step, rng.uniform(1, 100) * (1 if rng.random() > 0.01 else -1))
            ref_step += rng.choice([1, 5, 10])
        value = rng.uniform(1, 100) * rng.choice([1, 1, 1, 5, 50, 0.2, 0.02])
        fresh = b.judge(Verdict(), refs, "run", "norm", step, value)
        got = b.judge(kept, refs, "run", "norm", step, value)
        expected = rank if fresh == HOLD else fresh
        actual = rank if got == HOLD else got
        assert actual == expected, (step, value)
        rank = actual


def test_a_quiet_band_is_dropped_when_the_reference_rewinds_or_thins():
    b = Baseline([(WARNING, "warning", 10.0)], ["ref"])
    refs = References(max_points=64)
    h = refs.history("ref", "norm")
    for s in range(0, 1000, 10):
        h.add(s, 100.0)
    v = Verdict()
    assert b.judge(v, refs, "run", "norm", 0, 500.0) == 0  # quiet, builds a band up to ~step 300
    assert v.until > 100
    h.add(50, 1.0)  # restarted from step 50 with much smaller values
    for s in range(60, 1000, 10):
        h.add(s, 1.0)
    assert b.judge(v, refs, "run", "norm", 100, 500.0) == WARNING
    # thinning: the point the band started from is dropped, an older one becomes the nearest
    refs = References(max_points=8)
    h = refs.history("ref", "norm")
    for s in range(0, 70, 10):
        h.add(s, 1.0 if s == 0 else 100.0)
    v = Verdict()
    assert b.judge(v, refs, "run", "norm", 10, 500.0) == 0
    h.add(70, 100.0)  # the eighth point: every other one is dropped, step 10 with them
    assert list(h.steps) == [0, 20, 40, 60]
    assert b.judge(v, refs, "run", "norm", 10, 500.0) == WARNING  # nearest is step 0 (a tie goes earlier)


def test_a_quiet_band_over_several_references_covers_each_of_them():
    # the median of three drops x100 at step 100, because two of them do; the last one does not
    b = Baseline([(WARNING, "warning", 3.0), (CRITICAL, "critical", 30.0)], ["ref*"])
    refs = refs_with(
        {
            "ref-a": [(s, 100.0 if s < 100 else 1.0) for s in range(0, 600, 10)],
            "ref-b": [(s, 100.0 if s < 100 else 1.0) for s in range(0, 600, 10)],
            "ref-c": [(s, 100.0) for s in range(0, 600, 10)],
        }
    )
    v = Verdict()
    assert b.judge(v, refs, "run", "norm", 0, 150.0) == 0  # x1.5 the median of 100s
    assert b.judge(v, refs, "run", "norm", 100, 150.0) == CRITICAL  # x150 the median (1.0)
    # and a band over several references does save the lookups where it can
    v = Verdict()
    assert b.judge(v, refs, "run", "norm", 200, 2.0) == 0 and v.until >= 300
