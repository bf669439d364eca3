"""The outbox's rows: the SQL of durable delivery, in the state database.

The daemon inserts (``insert``) on its own connection inside the transaction
that saves the offsets and alert states, without committing; each channel's
dispatcher reads its pending rows (``pending``), and marks them sent, failed
or dropped (``mark``), or counts a failed attempt (``add_attempt``) on its own
connection. Names are stored as the state DB stores them (``db_text``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from gradwatch.store.names import db_text

# the dispatchers' log lines keep the name operators know
log = logging.getLogger("gradwatch.notify.outbox")

TABLE = "notify_outbox"
STATEMENTS = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    alert_key TEXT NOT NULL,
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_at REAL
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE} (channel, state, id)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_alert ON {TABLE} (channel, alert_key, enqueued_at)",
)
PENDING, SENT, FAILED, DROPPED = "pending", "sent", "failed", "dropped"
BUSY_TIMEOUT = 10.0  # seconds a dispatcher waits for the daemon's write lock before retrying
BATCH = 500  # rows read per cycle, and the largest group one send gets


@dataclass
class Row:
    """One queued notification: one event for one channel."""

    id: int
    run: str
    enqueued_at: float
    event: str
    alert_key: str | bytes = ""


def create_tables(conn: sqlite3.Connection) -> None:
    """The outbox table and indexes (idempotent; statement by statement, so inside a transaction too)."""
    for statement in STATEMENTS:
        conn.execute(statement)


def insert(conn: sqlite3.Connection, rows: list[tuple[str, str, str, int, str, float]]) -> None:
    """(channel, alert key, run, seq, event JSON, enqueued at) rows, in the caller's transaction."""
    conn.executemany(
        f"INSERT INTO {TABLE} (channel, alert_key, run, seq, event, enqueued_at) VALUES (?,?,?,?,?,?)",
        [(ch, db_text(key), db_text(run), seq, event, at) for ch, key, run, seq, event, at in rows],
    )


def last_enqueued(conn: sqlite3.Connection, channel: str, key: str) -> float | None:
    """When ``channel`` last queued anything for the alert ``key`` (rows not yet pruned)."""
    got = conn.execute(
        f"SELECT MAX(enqueued_at) FROM {TABLE} WHERE channel=? AND alert_key=?", (channel, db_text(key))
    ).fetchone()
    return got[0] if got else None


def retire_channels(conn: sqlite3.Connection, keep: set[str]) -> list[tuple[str, int]]:
    """Drop the pending rows of channels not in ``keep``; (channel, rows dropped) for each."""
    rows = conn.execute(
        f"SELECT channel, COUNT(*) FROM {TABLE} WHERE state=? GROUP BY channel", (PENDING,)
    ).fetchall()
    retired = [(channel, count) for channel, count in rows if channel not in keep]
    for channel, _ in retired:
        conn.execute(
            f"UPDATE {TABLE} SET state=?, done_at=?, last_error=? WHERE channel=? AND state=?",
            (DROPPED, time.time(), "channel no longer configured", channel, PENDING),
        )
    return retired


def pending(conn: sqlite3.Connection, channel: str) -> list[Row]:
    """The oldest ``BATCH`` pending rows of ``channel``, in order of enqueueing."""
    return [
        Row(*r)
        for r in conn.execute(
            f"SELECT id, run, enqueued_at, event, alert_key FROM {TABLE} WHERE channel=? AND state=? "
            f"ORDER BY id LIMIT {BATCH}",
            (channel, PENDING),
        )
    ]


def count_pending(conn: sqlite3.Connection, channel: str) -> int:
    sql = f"SELECT COUNT(*) FROM {TABLE} WHERE channel=? AND state=?"
    return conn.execute(sql, (channel, PENDING)).fetchone()[0]


def mark(conn: sqlite3.Connection, ids: list[int], state: str, error: str | None, who: str) -> None:
    """Rows done: sent, failed or dropped (a drop is no delivery attempt)."""
    tried = 0 if state == DROPPED else 1
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        _write(
            conn,
            f"UPDATE {TABLE} SET state=?, done_at=?, attempts=attempts+?, last_error=? "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            (state, time.time(), tried, error, *chunk),
            who,
        )


def add_attempt(conn: sqlite3.Connection, ids: list[int], error: str, who: str) -> None:
    """A retryable failure: the rows stay pending, one more attempt and its error recorded."""
    _write(
        conn,
        f"UPDATE {TABLE} SET attempts=attempts+1, last_error=? WHERE id IN ({','.join('?' * len(ids))})",
        (error, *ids),
        who,
    )


def _write(conn: sqlite3.Connection, sql: str, params: tuple, who: str) -> None:
    # a mark that does not land means a duplicate after restart: insist (busy_timeout waits too)
    for attempt in range(50):
        try:
            conn.execute(sql, params)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            log.warning("%s: outbox database busy, retrying the update (%d)", who, attempt + 1)
            time.sleep(0.2)
    conn.execute(sql, params)


def prune(conn: sqlite3.Connection, channel: str, before: float, who: str) -> bool:
    """Delete ``channel``'s finished rows done before ``before``; False when the database was busy.

    Housekeeping only: it waits 200 ms at most for the daemon's write lock, then gives up.
    """
    conn.execute("PRAGMA busy_timeout=200")
    try:
        sql = f"DELETE FROM {TABLE} WHERE channel=? AND state!=? AND done_at < ?"
        conn.execute(sql, (channel, PENDING, before))
        return True
    except sqlite3.OperationalError as e:
        log.debug("%s: pruning skipped: %s", who, e)
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
