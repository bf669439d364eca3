"""Anomaly windows and baseline histories in the daemon's saved series state (gradwatch/state.py)."""

from __future__ import annotations

from seed_series import clipped, exploding

from gradwatch.config.rulefiles import parse_rules
from gradwatch.engine import Engine
from gradwatch.store import dump_series, restore_series

TAG = "gradients/actor_cnn_norm"


def rules(anomaly: dict) -> list:
    problems: list = []
    out = parse_rules(
        {
            "rules": [
                {"name": "spike", "match": {"runs": "spiky"}, "anomaly": anomaly},
                {"name": "vs", "match": {"runs": "run2"}, "baseline": {"run": "run3", "factor": 10}},
            ]
        },
        "test",
        problems,
    )
    assert not problems
    return out


def feed(engine: Engine, run: str, points) -> list[int]:
    ranks = []
    for s, v in points:
        engine.observe(run, TAG, s, 0.0, v)
        ranks.extend(engine.runs[run][TAG].ranks)  # none for run3, the reference
    return ranks


def restarted(engine: Engine, rule_list: list) -> Engine:
    """A new engine whose series come back from the old one's saved state, as the daemon does."""
    saved = {(s.run, s.tag): dump_series(s) for s in engine.all_series()}

    def restore(s) -> None:
        if (s.run, s.tag) in saved:
            restore_series(s, saved[(s.run, s.tag)])

    fresh = Engine(rule_list, lambda *a: None, on_new_series=restore)
    for run, tag in saved:
        fresh.series(run, tag)
    return fresh


def test_a_restart_in_the_middle_decides_as_one_run_would():
    points = exploding(seed=5)
    straight = Engine(rules({}), lambda *a: None)
    feed(straight, "run3", clipped(every=100))
    expected = feed(straight, "spiky", points) + feed(straight, "run2", [(200, 130_486.0)])

    first = Engine(rules({}), lambda *a: None)
    feed(first, "run3", clipped(every=100))
    got = feed(first, "spiky", points[:13])
    second = restarted(first, rules({}))
    got += feed(second, "spiky", points[13:]) + feed(second, "run2", [(200, 130_486.0)])
    assert got == expected and got[-1] == 2  # the baseline came back too: x37 at step 200


def test_changed_anomaly_settings_start_the_window_again():
    first = Engine(rules({}), lambda *a: None)
    feed(first, "spiky", exploding(seed=5)[:10])
    second = restarted(first, rules({"log": True}))
    st = second.runs["spiky"][TAG].states[0].extra
    assert len(st.window) + len(st.pending) == 0  # linear values must not be read as logarithms
