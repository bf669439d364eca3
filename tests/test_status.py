"""The daemon's status snapshot: immutable plain data, built by the daemon thread only.

Real rules, a real Engine and AlertBook feed the board, as the daemon's loop does.
"""

import dataclasses

import pytest

from gradwatch.alerts import AlertBook
from gradwatch.config.rulefiles import load_rules
from gradwatch.daemon.status import Status, StatusBoard
from gradwatch.engine import Engine

NORM = "gradients/actor_cnn_norm"


class Fed:
    def __init__(self):
        self.rules = load_rules()
        self.book = AlertBook(self.rules)
        self.engine = Engine(self.rules, self.book)
        self.board = StatusBoard(len(self.rules))
        self.version = 0
        self.series_reads = 0

    def observe(self, step, value):
        self.engine.observe("run", NORM, step, 1.7e9 + step, value)
        self.version += 1  # what UnitOfWork.read does for a pass with points
        self.board.count(self.book.take_events())

    def series(self):
        self.series_reads += 1
        return self.engine.all_series()

    def publish(self, version=None):
        self.board.publish(
            series_version=self.version if version is None else version,
            series=self.series,
            rules=self.rules,
            firing=self.book.firing(),
            problems={"corrupt_record": 1},
            outbox={"slack": {"sent": 2, "queued": 1}},
            ready=True,
            runs=1,
            files=1,
        )
        return self.board.status


def test_a_status_is_frozen_plain_tuples():
    f = Fed()
    f.observe(100, 5191.0)
    status = f.publish()
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.ready = False  # type: ignore[misc]
    for field in dataclasses.fields(Status):
        value = getattr(status, field.name)
        assert isinstance(value, (bool, int, float, str, tuple, type(None))), field.name
    assert status.series == (("run", NORM, 100, 1.7e9 + 100, 5191.0),)
    assert status.outbox == (("slack", 2, 0, 1, 0),)  # missing fields read as 0
    assert status.problems == (("corrupt_record", 1),)


def test_series_rows_are_rebuilt_only_when_a_series_changed():
    f = Fed()
    f.observe(100, 5191.0)
    f.publish()
    f.publish()  # a loop iteration that read nothing: the previous rows are reused
    assert f.series_reads == 1
    f.observe(200, 130486.0)
    status = f.publish()
    assert f.series_reads == 2
    assert status.series == (("run", NORM, 200, 1.7e9 + 200, 130486.0),)
    assert status.series_watched == 1


def test_transitions_are_counted_and_every_possible_one_starts_at_zero():
    f = Fed()
    before = f.publish().changes
    f.observe(100, 5191.0)
    f.observe(200, 130486.0)  # critical: firing
    status = f.publish()
    counts = dict(status.transitions)
    assert counts[("gradient_explosion", "critical", "firing")] == 1
    assert counts[("gradient_explosion", "critical", "resolved")] == 0
    assert ("gradient_explosion", "warning", "escalated") not in counts  # nothing lower to come from
    assert status.changes > before  # a transition makes cached /metrics bodies stale
    assert ("gradient_explosion", "run", NORM, "critical") in status.alerts


def test_a_reload_outcome_lasts_until_the_next_reload():
    f = Fed()
    first = f.publish().reload_time
    f.board.reloaded(False, rules=2)
    status = f.publish()
    assert (status.reload_ok, status.reload_time) == (False, first)
    f.board.reloaded(True, rules=3)
    status = f.publish()
    assert status.reload_ok and status.reload_time >= first
