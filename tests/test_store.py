"""store/: the outbox's rows live in the state DB and commit (or roll back) with the state rows."""

from __future__ import annotations

import logging
import os
import sqlite3
import time

from gradwatch.store import StateDB, outbox_rows
from gradwatch.store.outbox_rows import DROPPED, PENDING, SENT, TABLE

RUN = os.fsdecode(b"run-\xff")  # a run directory whose name is not UTF-8
KEY = f"rule\x00{RUN}\x00tag"


def queue(state: StateDB, channel: str = "hook", seq: int = 1, at: float | None = None) -> None:
    outbox_rows.insert(state.conn, [(channel, KEY, RUN, seq, '{"kind": "firing"}', at or time.time())])


def test_a_fresh_state_db_has_the_outbox_table_before_any_outbox_exists(tmp_path):
    # the daemon's first commit may queue notifications: the table comes with the schema
    state = StateDB(str(tmp_path))
    try:
        tables = {r[0] for r in state.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert TABLE in tables
    finally:
        state.close()


def test_queued_rows_commit_and_roll_back_with_the_state_rows(tmp_path):
    state = StateDB(str(tmp_path))
    try:
        state.begin()
        state.save_offsets([("/logs/a/events", RUN, 10)])
        queue(state)
        state.rollback()
        assert outbox_rows.pending(state.conn, "hook") == []
        assert state.files() == {}

        state.begin()
        state.save_offsets([("/logs/a/events", RUN, 10)])
        queue(state)
        state.commit()
        (row,) = outbox_rows.pending(state.conn, "hook")
        assert row.run == os.fsencode(RUN)  # stored as the state rows store names: lossless bytes
        assert outbox_rows.last_enqueued(state.conn, "hook", KEY) == row.enqueued_at
    finally:
        state.close()


def test_marks_attempts_retirement_and_pruning(tmp_path):
    state = StateDB(str(tmp_path))
    conn = state.conn
    try:
        queue(state, "hook", 1)
        queue(state, "hook", 2)
        queue(state, "gone", 1)
        first, second = outbox_rows.pending(conn, "hook")
        outbox_rows.add_attempt(conn, [first.id], "HTTP 503", "test")
        outbox_rows.mark(conn, [second.id], SENT, None, "test")
        assert outbox_rows.count_pending(conn, "hook") == 1
        assert outbox_rows.retire_channels(conn, {"hook"}) == [("gone", 1)]
        rows = conn.execute(
            f"SELECT channel, state, attempts, last_error FROM {TABLE} ORDER BY id"
        ).fetchall()
        assert rows == [
            ("hook", PENDING, 1, "HTTP 503"),
            ("hook", SENT, 1, None),
            ("gone", DROPPED, 0, "channel no longer configured"),
        ]
        assert outbox_rows.prune(conn, "hook", time.time() + 1, "test")
        left = conn.execute(f"SELECT channel, state FROM {TABLE} ORDER BY id").fetchall()
        assert left == [("hook", PENDING), ("gone", DROPPED)]  # pending rows are never pruned
    finally:
        state.close()


def test_pruning_gives_up_while_another_connection_writes(tmp_path):
    state = StateDB(str(tmp_path))
    other = sqlite3.connect(state.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert not outbox_rows.prune(state.conn, "hook", time.time(), "test")
        other.execute("ROLLBACK")
        assert outbox_rows.prune(state.conn, "hook", time.time(), "test")
    finally:
        other.close()
        state.close()


def test_a_bad_row_is_logged_with_its_name_escaped_as_every_output_shows_names(tmp_path, caplog):
    # one escaping (fmt.escape): the undecodable byte as \xff, the newline as \x0a; never a raw
    # line break in the log, never Python's \udcff
    state = StateDB(str(tmp_path))
    path = b"/logs/run-\xff\nFIRING"
    state.conn.execute("INSERT INTO files VALUES (?, ?, -1)", (path, b"run"))
    with caplog.at_level(logging.WARNING, "gradwatch.state"):
        assert state.files() == {os.fsdecode(path): ("run", 0)}  # an impossible offset: read again
    state.close()
    (record,) = caplog.records
    assert "'/logs/run-\\xff\\x0aFIRING'" in record.getMessage()
