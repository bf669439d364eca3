"""The anomaly detector (gradwatch/anomaly.py) on its own: z-scores, warm-up, levels, state."""

from __future__ import annotations

import json
import math
import random

import pytest
from seed_series import exploding, healthy

from gradwatch.anomaly import DEFAULTS, HOLD, Detector

WARNING, CRITICAL = 2, 3
LEVELS = [(WARNING, "warning", DEFAULTS["warning"]), (CRITICAL, "critical", DEFAULTS["critical"])]


def run(detector: Detector, points: list[tuple[int, float]]) -> list[tuple[int, float, int]]:
    """(step, value, rank) for every point."""
    st = detector.new_state()
    return [(s, v, detector.observe(st, v)) for s, v in points]


def first_alert(results: list[tuple[int, float, int]]) -> tuple[int, float, int] | None:
    return next((r for r in results if r[2] > 0), None)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("variant", [{}, {"log": True}])
def test_seed_explosion_fires_before_the_norm_crosses_50000(seed, variant):
    results = run(Detector(LEVELS, **variant), exploding(seed))
    hit = first_alert(results)
    assert hit is not None
    step, value, _ = hit
    assert value < 50_000, f"first alert at step {step} ({value:,.0f}), after crossing 50,000"
    assert all(v < 50_000 for s, v, _ in results if s <= step)


def test_robust_needs_a_longer_warm_up_and_then_catches_the_explosion_too():
    # 30 points by default: the seed's 11 healthy points are not enough, 30 are
    d = Detector(LEVELS, robust=True)
    assert d.min_points == 30
    points = [(s, v) for s, v in healthy(1, 290)] + [(300 + s, v) for s, v in exploding(1) if s >= 100]
    hit = first_alert(run(d, points))
    assert hit is not None and hit[1] < 50_000


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("variant", [{}, {"log": True}, {"robust": True}, {"log": True, "robust": True}])
def test_the_same_healthy_noise_to_step_500_fires_nothing(seed, variant):
    assert first_alert(run(Detector(LEVELS, **variant), healthy(seed))) is None


def test_nothing_is_judged_before_min_points():
    d = Detector(LEVELS, min_points=5, window=10)
    st = d.new_state()
    assert [d.observe(st, v) for v in (1.0, 1.1, 0.9, 1e9)] == [0, 0, 0, 0]
    # the fifth point ends the warm-up (with 1e9 in the window); then a far point is judged
    assert d.observe(st, 1.0) == 0
    assert d.observe(st, -1e12) == CRITICAL


def test_z_score_is_against_mean_and_sample_deviation():
    d = Detector([(WARNING, "warning", 2.0)], window=100, min_points=10)  # refresh every 10
    st = d.new_state()
    base = [10.0, 12.0] * 5  # mean 11, sample sd sqrt(10/9)
    for v in base:
        d.observe(st, v)
    sd = math.sqrt(10 / 9)
    assert d.observe(st, 11 + 1.9 * sd) == 0
    assert d.observe(st, 11 + 2.1 * sd) == WARNING
    assert st.z == pytest.approx(2.1)


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("both", [WARNING, WARNING]), ("above", [WARNING, 0]), ("below", [0, WARNING])],
)
def test_direction(direction, expected):
    d = Detector([(WARNING, "warning", 3.0)], window=10, min_points=10, direction=direction)
    got = []
    for v in (20.0, 2.0):
        st = d.new_state()
        for x in [10.0, 12.0] * 5:
            d.observe(st, x)
        got.append(d.observe(st, v))
    assert got == expected


def test_critical_wins_over_warning():
    d = Detector(LEVELS, window=10, min_points=10)
    st = d.new_state()
    for x in [10.0, 12.0] * 5:
        d.observe(st, x)
    assert d.observe(st, 11 + 8 * 1.06) == WARNING
    assert d.observe(st, 1_000.0) == CRITICAL


def test_robust_ignores_one_outlier_in_the_window_that_the_mean_does_not():
    # one huge value among the warm-up points inflates the standard deviation but not the MAD
    points = [10.0, 12.0] * 4 + [1e6, 11.0]
    for robust, expected in ((False, 0), (True, CRITICAL)):
        d = Detector(LEVELS, window=20, min_points=10, robust=robust)
        st = d.new_state()
        for v in points:
            d.observe(st, v)
        assert d.observe(st, 40.0) == expected


def test_a_spike_stays_out_of_the_statistics_a_lasting_change_joins_them():
    d = Detector(LEVELS, window=100, min_points=10)
    st = d.new_state()
    for x in [10.0, 12.0] * 5:
        d.observe(st, x)
    center, scale = st.center, st.scale
    assert d.observe(st, 1_000.0) == CRITICAL
    assert d.observe(st, 11.0) == 0
    d._refresh(st)
    assert 1_000.0 not in st.window and st.center == pytest.approx(center, rel=0.01)
    # ten alerting points in a row (min_points) are a new level: they join and the alert can end
    ranks = [d.observe(st, 1_000.0 + i) for i in range(12)]
    assert ranks[:10] == [CRITICAL] * 10 and ranks[10:] == [0, 0]
    assert st.scale > 10 * scale


def test_log_scale_sees_multiplicative_growth_at_any_magnitude():
    d = Detector(LEVELS, window=10, min_points=10, log=True)
    for level in (5.0, 5e6):
        st = d.new_state()
        for x in [level * 0.9, level * 1.1] * 5:
            d.observe(st, x)
        assert d.observe(st, level * 1.05) == 0
        assert d.observe(st, level * 3) == CRITICAL


def test_log_scale_non_positive_values_are_infinitely_below_and_stay_out_of_the_window():
    below, above = (
        Detector(LEVELS, window=10, min_points=10, log=True, direction=d) for d in ("both", "above")
    )
    for d, expected in ((below, CRITICAL), (above, 0)):
        st = d.new_state()
        for x in [9.0, 11.0] * 5:
            d.observe(st, x)
        assert d.observe(st, 0.0) == expected
        assert d.observe(st, -3.0) == expected
        assert st.pending == []  # not added: no logarithm
        assert d.observe(st, 10.0) == 0
    # during warm-up a zero is not judged either
    st = below.new_state()
    assert below.observe(st, 0.0) == 0


def test_nan_and_inf_hold_and_do_not_enter_the_window():
    d = Detector(LEVELS, window=10, min_points=10)
    st = d.new_state()
    for x in [10.0, 12.0] * 5:
        d.observe(st, x)
    for bad in (math.nan, math.inf, -math.inf):
        assert d.observe(st, bad) == HOLD
    assert st.pending == [] and list(st.window) == [10.0, 12.0] * 5


def test_constant_series_alerts_on_any_change():
    d = Detector(LEVELS, window=10, min_points=10)
    st = d.new_state()
    for _ in range(10):
        d.observe(st, 3e-4)
    assert d.observe(st, 3e-4) == 0
    assert d.observe(st, 1e-4) == CRITICAL


def test_state_stays_bounded_over_a_million_points():
    d = Detector(LEVELS, window=50, min_points=10)
    st = d.new_state()
    rng = random.Random(1)
    for _ in range(100_000):
        d.observe(st, rng.gauss(0, 1))
    assert len(st.window) == 50 and len(st.pending) < d.refresh


def test_dump_and_load_continue_where_it_stopped():
    d = Detector(LEVELS, window=30, min_points=10, log=True)
    points = [v for _, v in exploding(3)]
    st = d.new_state()
    straight = [d.observe(st, v) for v in points]
    st = d.new_state()
    resumed = [d.observe(st, v) for v in points[:17]]
    st = d.load(json.loads(json.dumps(d.dump(st))))
    resumed += [d.observe(st, v) for v in points[17:]]
    assert resumed == straight


@pytest.mark.parametrize("bad", [{}, {"window": "x"}, {"window": [1, "nan"]}, {"pending": None}, []])
def test_load_of_bad_data_starts_a_fresh_warm_up(bad):
    d = Detector(LEVELS, window=10, min_points=10)
    st = d.load(bad) if isinstance(bad, dict) else d.load({"window": bad})
    assert list(st.window) == [] and st.lo == math.inf


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Detector(LEVELS, direction="sideways")
    with pytest.raises(ValueError):
        Detector(LEVELS, window=10, min_points=11)
    with pytest.raises(ValueError):
        Detector([])
