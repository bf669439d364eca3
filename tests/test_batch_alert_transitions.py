"""During a catch-up (``suppress``) the AlertBook takes a series' whole batch at once
(AlertBook.batch_calls, gradwatch/alert_batches.py) and leaves exactly what its per-point calls
leave: the alerts (state, rank, point, ratio, clear points, clear_since, starts_at, seq) in the
same order, the same series ranks and changed keys after each batch, the same catch-up summary.
The clock ticks at each reading, so a batch that read it fewer times, or in another order, would
show in the times.
Random series with NaN/±Inf, keep_firing_for in points (also shorter than a restored alert's clear
points: a reload), rules that must go point by point (``for``, keep_firing_for in seconds) mixed in,
alerts restored from a previous run, batches split at random points."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from random_series import random_series, splits

from gradwatch.alerts import ACTIVE, AlertBook, alert_key
from gradwatch.config.rulefiles import parse_rules
from gradwatch.engine import Engine

LEVELS = {"warning": 10, "critical": 100}
RULES = {
    "above": {"thresholds": LEVELS},
    "keep1": {"thresholds": LEVELS, "keep_firing_for": 1},
    "keep3": {"thresholds": {"info": 1, **LEVELS}, "keep_firing_for": 3},
    "below_keep": {"thresholds": {"direction": "below", "warning": 1, "critical": 0.1}, "keep_firing_for": 5},
    "absolute": {"thresholds": {"direction": "absolute", "info": 5, "critical": 50}},
    "nonfinite": {"nonfinite": "critical"},
    "growth": {"growth": {"within_steps": 20, "warning": 2, "critical": 10}},
    "growth_keep": {"growth": {"within_steps": 5, "warning": 3, "min_value": 1}, "keep_firing_for": 2},
    # these go point by point (pending; the clock decides), and so does every rule of their series
    "for": {"thresholds": LEVELS, "for": 2},
    "seconds": {"thresholds": LEVELS, "keep_firing_for": "30s"},
}
BATCHED = [name for name in RULES if name not in ("for", "seconds")]


def rules_named(names, keep: dict[str, int] | None = None) -> list:
    """The rules ``names`` on every tag; ``keep`` overrides keep_firing_for (a reload)."""
    chosen = [{"name": n, "match": {"tags": ["*"]}, **RULES[n]} for n in names]
    for r in chosen:
        if keep and r["name"] in keep:
            r["keep_firing_for"] = keep[r["name"]]
    problems: list = []
    rules = parse_rules({"rules": chosen}, "test", problems)
    assert not problems, problems
    return rules


class TickingClock:
    def __init__(self) -> None:
        self._ticks = itertools.count(1_000_000)

    def __call__(self) -> float:
        return float(next(self._ticks))


class CountingBook(AlertBook):
    """An AlertBook that counts the engine's per-point calls."""

    per_point = 0

    def __call__(self, *args) -> None:
        self.per_point += 1
        super().__call__(*args)


def catch_up(rules, series, cuts, saved, batched: bool):
    """A first catch-up of ``series`` (tag -> columns) from the alerts ``saved`` (a previous run's
    state), as the daemon does it (loop.py: restore, and a firing alert's rank in its series)."""
    book = CountingBook(rules, clock=TickingClock(), live=True)
    book.restore(saved)
    book.suppress = True

    def new_series(s) -> None:
        for i, rule in enumerate(s.rules):
            alert = book.alerts.get(alert_key(rule.name, s.run, s.tag))
            if alert is not None and alert.state == ACTIVE:
                s.ranks[i] = alert.rank

    engine = Engine(rules, book, on_new_series=new_series)
    after = []  # the alerts (in order: the summary's) and ranks after each batch
    for tag, (steps, walls, values) in series.items():
        for a, b in itertools.pairwise(cuts[tag]):
            if batched:
                engine.observe_batch("run", tag, steps[a:b], walls[a:b], values[a:b])
            else:
                for point in zip(steps[a:b].tolist(), walls[a:b].tolist(), values[a:b].tolist()):
                    engine.observe("run", tag, *point)
            ranks = [(s.tag, list(s.ranks)) for s in engine.all_series()]
            alerts = [(k, a.to_dict()) for k, a in book.alerts.items()]
            after.append((alerts, ranks, book.take_changes()))
    summary = [e.to_json() for e in book.catchup_summary()]
    return (after, summary), book


def previous_run(rng: random.Random, names: list[str], tags) -> dict:
    """The alert states a previous daemon left: firing (some with clear points), pending, or none."""
    book = AlertBook(rules_named(names), clock=TickingClock(), live=True)
    engine = Engine(book.rules.values(), book)
    for tag in tags:
        for point in zip(*(c.tolist() for c in random_series(rng, rng.randint(1, 300)))):
            engine.observe("run", tag, *point)
    return {k: a.to_dict() for k, a in book.alerts.items()}


@pytest.mark.parametrize("seed", range(40))
def test_a_catch_up_over_batches_leaves_the_alerts_of_its_points(seed):
    rng = random.Random(seed)
    names = rng.sample(BATCHED, k=rng.randint(1, 4))
    if seed % 4 == 3:
        names.append(rng.choice(["for", "seconds"]))
    tags = ("t", "u")
    saved = previous_run(rng, names, tags) if seed % 2 else {}
    # a reload may have shortened keep_firing_for below what a restored alert has counted
    keep = {n: rng.randint(0, 2) for n in names if "keep_firing_for" in RULES[n]} if seed % 3 == 0 else None
    rules = rules_named(names, keep)
    series = {tag: random_series(rng, 2000) for tag in tags}
    cuts = {tag: splits(rng, columns[0], columns[2]) for tag, columns in series.items()}
    if seed % 5 == 4:  # batches of a few points: a run back to normal spans several of them
        cuts = {tag: [*range(0, 2000, rng.randint(1, 6)), 2000] for tag in tags}

    expected, _ = catch_up(rules, series, cuts, saved, batched=False)
    got, book = catch_up(rules, series, cuts, saved, batched=True)
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    if not set(names) & {"for", "seconds"}:
        assert book.per_point == 0  # the batches went whole


def test_the_random_catch_ups_reach_what_the_property_must_cover():
    """Alerts that fire and resolve many times, escalate, hold through dips, and restored ones."""
    rng = random.Random(1)
    names = ["keep3", "growth_keep", "nonfinite"]
    saved = previous_run(rng, names, ("t",))
    assert any(a["state"] == ACTIVE and a["clear_points"] for a in saved.values())
    rules = rules_named(names)
    series = {"t": random_series(rng, 3000)}
    cuts = {"t": splits(rng, series["t"][0], series["t"][2])}
    book = AlertBook(rules, clock=TickingClock(), live=False)  # live=False: it emits, so we count
    engine = Engine(rules, book)
    for a, b in itertools.pairwise(cuts["t"]):
        engine.observe_batch("run", "t", *(c[a:b] for c in series["t"]))
    kinds = [(e.rule, e.kind) for e in book.take_events()]
    for rule in names:
        assert kinds.count((rule, "firing")) > 3 and kinds.count((rule, "resolved")) > 3
    assert ("keep3", "escalated") in kinds and ("keep3", "deescalated") in kinds


def test_live_and_point_by_point_rules_make_the_per_point_calls():
    """Only a catch-up's batches go whole: live, every transition is an event of its own point;
    with a ``for`` rule on the series, the pending state goes point by point (all its rules do)."""
    steps = np.arange(50, dtype=np.int64)
    values = np.where(steps % 7 < 3, 500.0, 1.0)
    for names, suppress, whole in [
        (["above"], True, True),
        (["above"], False, False),
        (["above", "for"], True, False),
        (["above", "seconds"], True, False),
    ]:
        rules = rules_named(names)
        book = CountingBook(rules, clock=TickingClock())
        book.suppress = suppress
        Engine(rules, book).observe_batch("run", "t", steps, 1000.0 + steps, values)
        assert (book.per_point == 0) == whole, (names, suppress)
        assert book.take_changes()


@pytest.mark.parametrize(
    "saved",
    [
        {"state": "pending", "rank": 0},  # a reload dropped the rule's ``for``
        {"state": "firing", "clear_points": 1, "clear_since": None},
        {"state": "firing", "clear_points": 0, "clear_since": 999_999.0},
        {"state": "firing", "clear_points": 2, "clear_since": 999_990.0},  # a batch goes on from it
        {"state": "firing", "clear_points": 5, "clear_since": 999_980.0},  # over keep_firing_for
        # rows the state's row check accepts though gradwatch never writes them (a hand-edited DB)
        {"state": "firing", "rank": 0, "clear_points": 0, "clear_since": None},
        {"state": "firing", "clear_points": -1, "clear_since": None},
    ],
    ids=[
        "pending",
        "clear_points_without_since",
        "since_without_clear_points",
        "clearing",
        "over_keep",
        "firing_at_rank_0",
        "negative_clear_points",
    ],
)
@pytest.mark.parametrize("keep", [3, 0])  # 0: a reload dropped keep_firing_for
def test_a_restored_alert_of_any_shape_ends_as_point_by_point(saved, keep):
    """Alerts a batch does not start from (they go point by point), and those it does."""
    rng = random.Random(7)
    rules = rules_named(["keep3"], keep={"keep3": keep})
    warning = rules[0].levels[1][0]
    alert = {"rule": "keep3", "run": "run", "tag": "t", "rank": warning, "seq": 3, "step": 5} | saved
    state = {alert_key("keep3", "run", "t"): {**alert, "value": 50.0}}
    values = np.array([1.0, 1.0, 1.0, 1.0, 500.0, 1.0, 50.0, 1.0, 1.0, 7.0])
    series = {"t": (np.arange(10, dtype=np.int64), 1000.0 + np.arange(10), values)}
    for cut in range(1, 10):
        cuts = {"t": [0, cut, rng.randint(cut, 10), 10]}
        expected, _ = catch_up(rules, series, cuts, state, batched=False)
        got, _ = catch_up(rules, series, cuts, state, batched=True)
        assert got == expected
