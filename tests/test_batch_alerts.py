"""The daemon's AlertBook behind Engine.observe_batch and observe_many emits exactly the events, in
the same order, and ends in exactly the alert states it has behind observe point by point: random
series, every rule kind and option (for, keep_firing_for, min_value, directions), live and catching
up. The clock ticks at each reading, so a transition decided at another moment would show in its
times."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from random_series import RULE_SETS, random_series, rules_of, splits

from gradwatch.alerts import AlertBook
from gradwatch.engine import Engine


class TickingClock:
    def __init__(self) -> None:
        self._ticks = itertools.count(1_000_000)

    def __call__(self) -> float:
        return float(next(self._ticks))


def book_after(rules, feed, live: bool, suppress: bool) -> tuple[list[str], dict, dict]:
    book = AlertBook(rules, clock=TickingClock(), live=live)
    book.suppress = suppress
    engine = Engine(rules, book)
    events = []
    for _ in feed(engine):
        events += [e.to_json() for e in book.take_events()]
    summary = [e.to_json() for e in book.catchup_summary()]
    return events + summary, {k: a.to_dict() for k, a in book.alerts.items()}, book.take_changes()


@pytest.mark.parametrize("feed", ["observe_batch", "observe_many"])
@pytest.mark.parametrize("mode", ["live", "catchup", "oneshot"])
@pytest.mark.parametrize("names", RULE_SETS, ids=lambda n: "+".join(n) if n else "all")
@pytest.mark.parametrize("seed", range(3))
def test_alerts_over_batches_are_those_point_by_point(seed, names, mode, feed):
    rng = random.Random(seed)
    tags = ("t", "u")
    series = {tag: random_series(rng, 3000) for tag in tags}
    cuts = {tag: splits(rng, series[tag][0], series[tag][2]) for tag in tags}
    rules = rules_of(names, tag="*")

    # observe_batch takes one series after the other; observe_many (the daemon's catch-up and live
    # reads: one call per batch of a file) each tag's next batch together, the tags interleaved
    batches = [[(tag, a, b) for tag in tags for a, b in zip(cuts[tag], cuts[tag][1:])]]
    if feed == "observe_many":
        parts = [list(itertools.pairwise(cuts[tag])) for tag in tags]
        batches = [
            [(tag, *ab) for tag, ab in zip(tags, group) if ab is not None]
            for group in itertools.zip_longest(*parts)
        ]

    def per_point(engine):
        for group in batches:
            for tag, a, b in group:
                steps, walls, values = (c[a:b] for c in series[tag])
                for point in zip(steps.tolist(), walls.tolist(), values.tolist()):
                    engine.observe("run", tag, *point)
                yield

    def batched(engine):
        for group in batches:
            columns = [("run", tag, *(c[a:b] for c in series[tag])) for tag, a, b in group]
            if feed == "observe_many":
                engine.observe_many(columns)
            else:
                for batch in columns:
                    engine.observe_batch(*batch)
            yield

    live, suppress = mode == "live", mode == "catchup"
    expected = book_after(rules, per_point, live, suppress)
    got = book_after(rules, batched, live, suppress)
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert got[2] == expected[2]
    if not suppress and names and set(names) & {"above", "growth"}:
        assert any('"kind": "resolved"' in e for e in got[0])  # alerts fired and resolved


def test_a_point_at_the_rank_an_alert_fires_at_records_the_point_and_its_ratio():
    """Such a point changes only the alert's point (step, value, wall time, growth ratio): the
    last one's, point by point as over batches (AlertBook.__call__'s shortcut for it)."""
    rules = rules_of(["growth"], tag="t")
    steps = np.arange(300, dtype=np.int64)
    walls = 1000.0 + steps
    values = 1.5 ** (steps / 10.0)
    for feed in ("points", "batches"):
        book = AlertBook(rules, clock=TickingClock(), live=True)
        engine = Engine(rules, book)
        if feed == "points":
            for point in zip(steps.tolist(), walls.tolist(), values.tolist()):
                engine.observe("run", "t", *point)
        else:
            engine.observe_batch("run", "t", steps, walls, values)
        (alert,) = book.firing()
        state = engine.series("run", "t").states[0]
        assert (alert.step, alert.wall_time, alert.value) == (299, 1299.0, values[-1])
        assert alert.ratio == state.ratio and alert.ratio > 1
        assert alert.seq == 1  # fired once, then only points at its rank
