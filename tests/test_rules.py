"""Rule evaluation point by point: every kind, ``for``, NaN, matching, templates."""

import math
import tracemalloc

import pytest
from conftest import require_module

from gradwatch.config.rulefiles import load_rules, parse_rules
from gradwatch.config.yaml import load_yaml_text
from gradwatch.engine import Engine
from gradwatch.fmt import human
from gradwatch.match import Match, Pattern
from gradwatch.rules import Rule, Series
from gradwatch.severity import Severity
from gradwatch.templates import NOT_APPLICABLE, Num, Template

SEED_STEPS = [100, 200, 300, 400, 500]
SEED_NORMS = [5191, 130486, 826256, 2860755, 7475702]
WARNING, CRITICAL = Severity.WARNING, Severity.CRITICAL
nan, inf = math.nan, math.inf


def rule(text: str) -> Rule:
    """One rule from the YAML of a rule list item (indented as under ``rules:``)."""
    problems = []
    rules = parse_rules(load_yaml_text("rules:\n" + text, "test.yaml"), "test.yaml", problems)
    assert not problems, [str(p) for p in problems]
    (r,) = rules
    return r


def ranks(r: Rule, values, steps=None, wall_times=None) -> list[int]:
    state = r.new_state()
    steps = steps or list(range(len(values)))
    wall_times = wall_times or [1000.0 + s for s in steps]
    return [r.evaluate(state, s, w, v) for s, w, v in zip(steps, wall_times, values)]


THRESHOLDS = """
  - name: explosion
    thresholds: {warning: 10000, critical: 50000}
"""


def test_seed_thresholds_critical_first_at_step_200():
    assert ranks(rule(THRESHOLDS), SEED_NORMS, SEED_STEPS) == [0, CRITICAL, CRITICAL, CRITICAL, CRITICAL]


def test_threshold_is_strictly_above_and_warning_below_critical():
    assert ranks(rule(THRESHOLDS), [10000, 10000.5, 50000, 50001, 9999]) == [0, WARNING, WARNING, CRITICAL, 0]


def test_direction_below():
    r = rule("""
  - name: lr
    thresholds: {direction: below, warning: 1.0e-7, critical: 1.0e-9}
""")
    assert ranks(r, [1e-3, 1e-7, 5e-8, 1e-9, 0.0, -1.0]) == [0, 0, WARNING, WARNING, CRITICAL, CRITICAL]


def test_direction_absolute_catches_either_sign():
    r = rule("""
  - name: q
    thresholds: {direction: absolute, warning: 100000, critical: 1000000}
""")
    assert ranks(r, [5, -5, -200000, 200000, -2e6, 2e6, 1e5]) == [
        0,
        0,
        WARNING,
        WARNING,
        CRITICAL,
        CRITICAL,
        0,
    ]


def test_nonfinite_kind_sees_nan_and_both_infinities():
    r = rule("""
  - name: nf
    nonfinite: warning
""")
    assert ranks(r, [1.0, nan, inf, -inf, 0.0, 1e308]) == [0, WARNING, WARNING, WARNING, 0, 0]


def test_thresholds_hold_their_severity_on_nonfinite_points():
    # NaN is not "back to normal" (the explosion's alert would resolve as training dies)
    # nor "above" (that is the nonfinite kind's alert): the rule stays where it was.
    r = rule(THRESHOLDS)
    assert ranks(r, [60000, nan, inf, -inf, 20000, nan, 5]) == [
        CRITICAL,
        CRITICAL,
        CRITICAL,
        CRITICAL,
        WARNING,
        WARNING,
        0,
    ]
    assert ranks(r, [nan, inf, 5]) == [0, 0, 0]


def test_for_ignores_single_spikes():
    r = rule(THRESHOLDS + "    for: 3\n")
    assert ranks(r, [60000, 5, 60000, 60000, 5]) == [0, 0, 0, 0, 0]
    assert ranks(r, [60000, 60000, 60000, 60000, 5]) == [0, 0, CRITICAL, CRITICAL, 0]


def test_for_counts_each_severity_level_separately():
    r = rule(THRESHOLDS + "    for: 2\n")
    # critical needs two critical points of its own; warning counts critical points too
    assert ranks(r, [20000, 60000, 20000, 60000, 60000, 20000, 20000, 5]) == [
        0,
        WARNING,
        WARNING,
        WARNING,
        CRITICAL,
        WARNING,
        WARNING,
        0,
    ]


def test_for_with_nonfinite_points_neither_advances_nor_resets():
    r = rule(THRESHOLDS + "    for: 2\n")
    assert ranks(r, [60000, nan, 60000, nan, 5]) == [0, 0, CRITICAL, CRITICAL, 0]


def test_for_streaks_saturate_so_state_stays_small():
    r = rule(THRESHOLDS + "    for: 3\n")
    state = r.new_state()
    for step in range(10000):
        r.evaluate(state, step, 0.0, 60000.0)
    assert state.streaks == [3, 3]


GROWTH = """
  - name: growth
    growth: {within_steps: 200, warning: 10, critical: 100}
"""


def test_seed_growth_ratios_over_a_200_step_window():
    r = rule(GROWTH)
    state = r.new_state()
    got = []
    for step, value in zip(SEED_STEPS, SEED_NORMS):
        got.append((r.evaluate(state, step, 0.0, value), round(state.ratio, 2)))
    # 200: x25.14 over step 100; 300: x159 over step 100 (200 steps back counts);
    # 400: x21.92 over step 200 (step 100 left the window); 500: x9.05 over step 300
    assert got == [(0, 0.0), (WARNING, 25.14), (CRITICAL, 159.17), (WARNING, 21.92), (0, 9.05)]


def test_growth_base_is_the_minimum_within_the_window():
    r = rule(GROWTH)
    assert ranks(r, [50, 5, 40, 60], steps=[0, 10, 20, 30]) == [0, 0, 0, WARNING]


def test_growth_window_evicts_old_points():
    r = rule(GROWTH)
    assert ranks(r, [1, 2, 11], steps=[0, 100, 201]) == [0, 0, 0]
    assert ranks(r, [1, 2, 11], steps=[0, 100, 200]) == [0, 0, WARNING]


def test_growth_steps_going_back_is_a_restart_not_growth():
    r = rule(GROWTH)
    # the run restarts from a checkpoint at step 100 with a higher value:
    # compared with the pre-restart points it would look like x20
    assert ranks(r, [1, 1, 1, 20, 21], steps=[0, 100, 200, 100, 200]) == [0, 0, 0, 0, 0]
    # after the restart the window refills and growth is seen again
    assert ranks(r, [1, 1, 20, 30, 400], steps=[0, 200, 100, 150, 200]) == [0, 0, 0, 0, WARNING]


def test_growth_ignores_non_positive_bases_and_holds_on_nan():
    r = rule(GROWTH)
    assert ranks(r, [0, -5, 0.5, 10, nan, inf, 0.6]) == [0, 0, 0, WARNING, WARNING, WARNING, 0]


def test_growth_min_value_ignores_small_values():
    r = rule("""
  - name: growth
    growth: {within_steps: 200, warning: 10, min_value: 100}
""")
    assert ranks(r, [0.01, 0.5, 50, 99, 101]) == [0, 0, 0, 0, WARNING]


def test_growth_window_stays_bounded_on_a_steadily_rising_series():
    r = rule(GROWTH)
    state = r.new_state()
    for step in range(5000):
        r.evaluate(state, step, 0.0, 1.0 + step * 1e-4)
    assert len(state.window) <= 201


def test_growth_state_stays_small_at_a_constant_step():
    """1M rising points logged at one step (a trainer that never advances its step) used to keep 1M."""
    import json

    from gradwatch.store import dump_rule_state

    r = rule(GROWTH)
    state = r.new_state()
    for i in range(1_000_000):
        r.evaluate(state, 7, 0.0, 1.0 + i * 1e-3)
    assert len(state.window) == 1  # the lowest value at step 7: the only possible base
    assert len(json.dumps(dump_rule_state(state))) < 200
    # growth across steps is still seen afterwards
    assert r.evaluate(state, 8, 0.0, 50.0) == WARNING


def test_growth_window_is_bounded_by_count_even_over_a_huge_window():
    from gradwatch.rules import MAX_GROWTH_WINDOW

    r = rule("""
  - name: growth
    growth: {within_steps: 100000000, warning: 10}
""")
    state = r.new_state()
    for step in range(5 * MAX_GROWTH_WINDOW):
        r.evaluate(state, step, 0.0, 1.0 + step * 1e-6)
    assert len(state.window) == MAX_GROWTH_WINDOW
    # the oldest points went: the base is the oldest kept one, and a x10 jump still alerts
    assert state.window[0][0] == 4 * MAX_GROWTH_WINDOW
    assert r.evaluate(state, 5 * MAX_GROWTH_WINDOW, 0.0, 20.0) == WARNING
    # a window restored oversized (an older state row) is cut on the next point
    state.window.extendleft((-i, 0.5) for i in range(1, 3000))
    r.evaluate(state, 5 * MAX_GROWTH_WINDOW + 1, 0.0, 30.0)
    assert len(state.window) <= MAX_GROWTH_WINDOW


def test_absent_is_a_gap_in_wall_time_between_points():
    r = rule("""
  - name: stalled
    absent_for: 10m
""")
    assert r.levels[0][1] == "warning"
    walls = [0, 60, 120, 120 + 601, 780, 780 + 600]
    assert ranks(r, [1.0] * 6, wall_times=walls) == [0, 0, 0, WARNING, 0, 0]


def test_quiet_points_keep_no_memory():
    rules = load_rules(None)
    states = [r.new_state() for r in rules]
    args = [(step, 1000.0 + step, 50.5) for step in range(2000)]
    for r, st in zip(rules, states):
        r.evaluate(st, 0, 1000.0, 50.5)
    tracemalloc.start()
    try:
        for r, st in zip(rules, states):
            ev = r.evaluate
            for a in args:
                ev(st, *a)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 2000, f"{current} bytes kept after 6000 quiet evaluations"


# -- matching ---------------------------------------------------------------


def test_globs_match_whole_names_and_regexes_search():
    m = Match(tags=["grad*"], runs=["td3*"])
    assert m.matches("td3-seed1", "grad_norm")
    assert not m.matches("td3-seed1", "train/grad_norm")  # a glob is the whole name
    assert not m.matches("sac", "grad_norm")
    r = Match(tag_regex=Pattern("(?i)grad.*norm"))
    assert r.matches(".", "train/GradNorm")  # a regex is searched, not anchored
    assert not r.matches(".", "loss")


def test_match_keys_from_yaml():
    r = rule("""
  - name: m
    match:
      runs: ["exp-*", "baseline"]
      tags: "*loss*"
      exclude_tags: ["eval/*"]
      exclude_runs: ["exp-old*"]
    nonfinite: critical
""")
    assert r.match.matches("exp-1", "train/loss")
    assert r.match.matches("baseline", "loss")
    assert not r.match.matches("exp-1", "eval/loss")
    assert not r.match.matches("exp-old3", "loss")
    assert not r.match.matches("other", "loss")


def test_run_and_tag_regex_from_yaml():
    r = rule("""
  - name: m
    match: {run_regex: '^td3-(seed)?[0-9]+$', tag_regex: '^gradients/(actor|critic)_'}
    nonfinite: critical
""")
    assert r.match.matches("td3-seed4", "gradients/critic_mlp_norm")
    assert not r.match.matches("td3-seed4-old", "gradients/critic_mlp_norm")
    assert not r.match.matches("td3-7", "gradients/value_norm")


def test_the_default_rules_match_the_seed_tags():
    rules = load_rules(None)
    for tag in ("gradients/actor_cnn_norm", "gradients/critic_mlp_norm", "train/grad_norm", "GradNorm"):
        assert [r.name for r in rules if r.match.matches("run", tag)] == [
            "gradient_explosion",
            "gradient_nonfinite",
            "gradient_growth",
        ]
    assert not [r for r in rules if r.match.matches("run", "loss")]


# -- templates ----------------------------------------------------------------


def test_num_formats_for_humans_and_nonfinite_consistently():
    assert f"{Num(826256.0)}" == "826,256"
    assert f"{Num(7475702.0):,.0f}" == "7,475,702"
    assert f"{Num(1.5e-05)}" == "1.5e-05"
    assert f"{Num(0.25)}" == "0.25"
    assert f"{Num(1234.5678)}" == "1,234.57"
    assert f"{Num(nan)}" == "NaN"
    assert f"{Num(inf)}" == "+Inf"
    assert f"{Num(-inf)}" == "-Inf"
    assert f"{Num(nan):.2f}" == "NaN"
    assert f"{Num(inf):>8.1f}" == "     Inf"
    assert f"{Num(-inf):,}" == "-Inf"
    assert human(11_000_000.0) == "11,000,000"
    assert human(2e20) == "2e+20"


def test_fields_and_rendering_of_the_seed_alert():
    rules = load_rules(None)
    r = rules[0]
    fields = r.fields("td3", "gradients/actor_cnn_norm", 200, 130486.0, CRITICAL, r.new_state())
    assert fields["threshold"] == 50000
    assert fields["severity"] == "critical"
    out = r.render(fields)
    assert (
        out["summary"] == "gradients/actor_cnn_norm = 130,486 at step 200 on run td3 (critical: above 50,000)"
    )
    assert out["recommendation"].startswith("Stop training, enable gradient clipping")
    warn = r.render(r.fields("td3", "g", 1, 20000.0, WARNING))
    assert "(warning: above 10,000)" in warn["summary"]


def test_rendering_nan_values_and_fields_that_do_not_apply():
    r = rule("""
  - name: nf
    nonfinite: critical
    labels: {team: rl}
    annotations:
      summary: "{tag}={value} ({value:.3f}) th={threshold} th2={threshold:.1f} ratio={ratio} t={labels[team]}"
""")
    out = r.render(r.fields("run", "loss", 7, nan, CRITICAL, r.new_state()))
    assert out["summary"] == "loss=NaN (NaN) th=n/a th2=n/a ratio=n/a t=rl"
    out = r.render(r.fields("run", "loss", 7, -inf, CRITICAL, r.new_state()))
    assert out["summary"].startswith("loss=-Inf (-Inf)")


def test_default_summaries_exist_for_every_kind():
    for text in (
        THRESHOLDS,
        GROWTH,
        "  - name: a\n    absent_for: 5m\n",
        "  - name: n\n    nonfinite: info\n",
    ):
        r = rule(text)
        state = r.new_state()
        state.ratio = 12.5
        summary = r.render(r.fields("run", "tag", 3, 4.5, r.levels[0][0], state))["summary"]
        assert "tag" in summary and "run" in summary and "template error" not in summary, summary


def test_growth_fields_carry_ratio_and_window():
    r = rule(GROWTH + "    annotations: {summary: 'x{ratio:.1f} within {within} steps (>= {threshold})'}\n")
    state = r.new_state()
    for step, value in zip(SEED_STEPS[:2], SEED_NORMS[:2]):
        rank = r.evaluate(state, step, 0.0, value)
    rendered = r.render(r.fields("td3", "g", 200, 130486.0, rank, state))
    # a growth level is a factor: "x10" wherever it is shown (console, Slack, webhooks read "threshold")
    assert rendered == {"summary": "x25.1 within 200 steps (>= x10)", "threshold": "x10"}
    assert format(r.fields("td3", "g", 200, 1.0, rank, state)["threshold"], ".1f") == "10.0"


def test_thresholds_rules_add_no_threshold_annotation():
    r = rule(THRESHOLDS)
    assert "threshold" not in r.render(r.fields("td3", "g", 1, 20000.0, WARNING))


def test_template_rejects_unknown_and_positional_fields():
    with pytest.raises(ValueError, match=r"unknown field \{valu\}"):
        Template("{valu}")
    with pytest.raises(ValueError, match="positional"):
        Template("{}")
    with pytest.raises(ValueError, match="no attribute or index access"):
        Template("{value.real}")
    with pytest.raises(ValueError, match="no attribute or index access"):
        Template("{labels.__class__.__init__}")
    with pytest.raises(ValueError, match="no attribute or index access"):
        Template("{labels[team][0]}")
    assert Template("{labels[team]:>20}").fields == {"labels"}
    with pytest.raises(ValueError, match="literal braces"):
        Template("{value")
    assert NOT_APPLICABLE.__format__(".2f") == "n/a"


# -- the engine contract the daemon relies on ----------------------------------


def test_engine_calls_the_sink_only_around_alerts():
    calls = []
    rules = load_rules(None)
    engine = Engine(
        rules, lambda s, i, rank, prev, step, w, v: calls.append((s.rules[i].name, rank, prev, step))
    )
    for step, value in zip(SEED_STEPS, [5191, 6000, 60000, 7000, 8000]):
        engine.observe("td3", "gradients/actor_cnn_norm", step, 1000.0 + step, value)
    engine.observe("td3", "loss", 1, 1000.0, 1e12)  # no rule matches
    assert calls == [
        ("gradient_explosion", CRITICAL, 0, 300),
        ("gradient_growth", WARNING, 0, 300),
        ("gradient_explosion", 0, CRITICAL, 400),
        ("gradient_growth", 0, WARNING, 400),
    ]
    (series,) = engine.all_series()
    assert isinstance(series, Series)
    assert (series.run, series.tag, series.step, series.value) == (
        "td3",
        "gradients/actor_cnn_norm",
        500,
        8000,
    )


# -- bounded regex cost ---------------------------------------------------------

ATTACK_TAG = "grad" * 32768  # 128 KiB: '(?i)grad.*norm' backtracks O(length^2) on it


class CountingPattern:
    """Wraps a rule's compiled regex and records the length of every name it is asked to search."""

    def __init__(self, pattern) -> None:
        self.pattern = pattern
        self.lengths: list[int] = []

    def search(self, name: str) -> bool:
        self.lengths.append(len(name))
        return self.pattern.search(name)


def test_a_hostile_tag_is_never_matched_and_is_reported_once(caplog):
    from gradwatch.engine import NAME_TOO_LONG
    from gradwatch.events.logdir import ProblemLog
    from gradwatch.match import MAX_NAME_BYTES

    rules = load_rules(None)
    spies = []
    for r in rules:
        r.match.tag_regex = CountingPattern(r.match.tag_regex)
        spies.append(r.match.tag_regex)
    problems = ProblemLog()
    fired = []
    engine = Engine(rules, lambda s, i, rank, *a: fired.append(rank), problems=problems)
    for step in range(50):
        engine.observe("td3", ATTACK_TAG, step, 1.0, 1e9)
        engine.observe("td3", "gradients/actor_cnn_norm", step, 1.0, 5.0)
    # the long tag reached no regex; the real one was matched once per rule (once per series)
    assert [spy.lengths for spy in spies] == [[24]] * 3
    assert len(ATTACK_TAG.encode()) > MAX_NAME_BYTES
    assert engine.runs["td3"][ATTACK_TAG] is None
    assert not fired  # 1e9 on the hostile tag alerted nothing: it is skipped, not matched
    assert problems.counts == {NAME_TOO_LONG: 1}
    (record,) = [r for r in caplog.records if "name too long" in r.getMessage()]
    assert "run 'td3', tag 'gradgradgrad" in record.getMessage()
    assert "over 1,024 bytes" in record.getMessage()
    assert len(record.getMessage()) < 400  # the 128 KiB name is not copied into the log


def test_the_cap_counts_utf8_bytes_and_long_run_names_are_skipped_too():
    from gradwatch.events.logdir import ProblemLog
    from gradwatch.match import name_too_long

    assert not name_too_long("g" * 1024)
    assert name_too_long("g" * 1025)
    assert name_too_long("é" * 513)  # 1,026 bytes in 513 characters
    assert name_too_long("run-\udcff" + "x" * 1020)  # undecodable bytes count, never crash
    problems = ProblemLog()
    engine = Engine(load_rules(None), lambda *a: None, problems=problems)
    assert engine.series("r" * 2000, "grad_norm") is None
    assert engine.series("r" * 2000, "grad_norm2") is None
    assert problems.total == 1  # one report per run, not per tag


@pytest.mark.parametrize(
    "text", ["(a+)+", "(a*)*b", "(\\w+\\s?)*$", "(?:x|y+)+z", "((ab)*c)*", "(a+){2,}", "(?i)(grad.+)*norm"]
)
def test_nested_quantifiers_are_refused(text):
    with pytest.raises(ValueError, match="repeats a group that holds a repeat"):
        Pattern(text)


@pytest.mark.parametrize(
    ("text", "sample"),
    [
        ("(?i)grad.*norm", "train/GRAD_norm"),
        ("^gradients/(actor|critic)_", "gradients/critic_mlp_norm"),
        ("(ab?)+", "xaab"),
        ("(a{2})*", ""),
        ("x+y*z?", "xxz"),
        ("(?:ab)+c", "ababc"),
    ],
)
def test_ordinary_regexes_are_accepted(text, sample):
    assert Pattern(text).search(sample)


def test_patterns_search_names_with_undecodable_bytes():
    p = Pattern("^run-.$")
    assert p.search("run-\udcff")  # a run directory named b"run-\xff" (surrogateescape)
    assert not p.search("run-\udcff\udcfe")


def test_re2_runs_the_patterns(capfd):
    require_module("re2")  # google-re2, in the test extra: CI runs this
    assert Pattern("(?i)grad.*norm").engine == "re2"
    assert Pattern("(?i)grad.*norm").search("train/GRAD_norm")
    assert Pattern("(a)\\1").engine == "re"  # a backreference RE2 cannot run: Python's re
    assert Pattern("(a)\\1").search("xaa")
    assert capfd.readouterr().err == ""  # and RE2 does not log its parse error to stderr


def test_without_re2_the_patterns_run_on_pythons_re(monkeypatch):
    import gradwatch.match

    monkeypatch.setattr(gradwatch.match, "_re2", None)  # as on a machine without google-re2
    assert Pattern("(?i)grad.*norm").engine == "re"
    assert Pattern("(?i)grad.*norm").search("train/GRAD_norm")
