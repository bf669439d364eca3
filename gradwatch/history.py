"""Alert history: one row per alert episode, from firing to resolved, in the state database.

The daemon calls :func:`record` with the transitions of a batch on the
connection and inside the transaction that saves the alert states and queues
their notifications (gradwatch/daemon.py ``checkpoint``), so the history, the
alert states and the outbox agree after a crash. ``gradwatch alerts`` reads it
with :func:`episodes`, together with what the outbox did with each
notification (:func:`deliveries`).

An episode is (alert, ``starts_at``): ``firing`` inserts it, ``escalated`` /
``deescalated`` / ``repeat`` update it, ``resolved`` closes it. Retention is
bounded: episodes that ended more than ``KEEP_SECONDS`` ago go, and at most
``MAX_EPISODES`` are kept (the oldest go first). Delivery rows belong to the
outbox and are kept as long as it keeps them (a day after delivery by
default, see notify/outbox.py).

Names are stored as the state database stores them: TEXT when they are UTF-8,
their raw bytes otherwise (``state.db_text``), so a run named with an
undecodable byte round-trips.
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gradwatch.alerts import AlertEvent
from gradwatch.severity import Severity
from gradwatch.store import db_text, from_db_text

TABLE = "alert_history"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    run TEXT NOT NULL,
    tag TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL,
    severity TEXT NOT NULL,
    worst TEXT NOT NULL,
    first_step INTEGER NOT NULL,
    first_value TEXT NOT NULL,
    last_step INTEGER NOT NULL,
    last_value TEXT NOT NULL,
    transitions INTEGER NOT NULL DEFAULT 1,
    catchup INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL DEFAULT '',
    UNIQUE (alert_key, starts_at)
);
CREATE INDEX IF NOT EXISTS {TABLE}_ends ON {TABLE} (ends_at);
"""
KEEP_SECONDS = 30 * 86400.0
MAX_EPISODES = 10_000
OUTBOX_TABLE = "notify_outbox"  # gradwatch/notify/outbox.py's table, read only here


def create_schema(conn: sqlite3.Connection) -> None:
    """The history table (idempotent), created by the daemon when it opens the state database."""
    conn.executescript(SCHEMA)


def _value(v: float) -> str:
    return repr(float(v))  # 'nan' and 'inf' too: float() reads them back


def worse(a: str, b: str) -> str:
    return a if Severity.parse(a) >= Severity.parse(b) else b


def record(conn: sqlite3.Connection, events: Iterable[AlertEvent], now: float) -> None:
    """Write a batch's transitions into the history, on ``conn``, without committing."""
    opened = False
    for e in events:
        key = db_text(e.key)
        if e.kind == "firing":
            conn.execute(
                f"INSERT OR IGNORE INTO {TABLE} (alert_key, rule, run, tag, starts_at, severity, worst, "
                "first_step, first_value, last_step, last_value, catchup, summary) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    e.rule,
                    db_text(e.run),
                    db_text(e.tag),
                    e.starts_at,
                    e.severity,
                    e.severity,
                    e.step,
                    _value(e.value),
                    e.step,
                    _value(e.value),
                    int(e.catchup),
                    db_text(e.annotations.get("summary", "")),  # it names the run: maybe not UTF-8
                ),
            )
            opened = True
            continue
        row = conn.execute(
            f"SELECT worst FROM {TABLE} WHERE alert_key=? AND starts_at=?", (key, e.starts_at)
        ).fetchone()
        if row is None:
            continue  # its firing is older than the history (an upgraded daemon): nothing to update
        conn.execute(
            f"UPDATE {TABLE} SET severity=?, worst=?, last_step=?, last_value=?, ends_at=?, "
            "transitions=transitions+1 WHERE alert_key=? AND starts_at=?",
            (
                e.severity,
                worse(row[0], e.severity),
                e.step,
                _value(e.value),
                (e.ends_at or now) if e.kind == "resolved" else None,
                key,
                e.starts_at,
            ),
        )
    if opened:
        prune(conn, now)


def prune(conn: sqlite3.Connection, now: float) -> None:
    """Drop what retention no longer keeps: old ended episodes, and the oldest past MAX_EPISODES."""
    conn.execute(f"DELETE FROM {TABLE} WHERE ends_at IS NOT NULL AND ends_at < ?", (now - KEEP_SECONDS,))
    conn.execute(
        f"DELETE FROM {TABLE} WHERE id <= (SELECT MAX(id) FROM {TABLE}) - ?",
        (MAX_EPISODES,),
    )


@dataclass
class Delivery:
    """One notification of an episode to one channel, as the outbox has it."""

    channel: str
    kind: str  # firing, escalated, deescalated, repeat, resolved
    status: str  # delivered, queued, retrying, failed, dropped
    attempts: int
    enqueued_at: float
    done_at: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "enqueued_at": self.enqueued_at,
            "done_at": self.done_at,
            "error": self.error,
        }


@dataclass
class Episode:
    rule: str
    run: str
    tag: str
    starts_at: float
    ends_at: float | None
    severity: str  # at the last transition
    worst: str
    first_step: int
    first_value: float
    last_step: int
    last_value: float
    transitions: int
    catchup: bool
    summary: str
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.rule}\x1f{self.run}\x1f{self.tag}"

    def duration(self, now: float) -> float:
        return (self.ends_at if self.ends_at is not None else now) - self.starts_at


@dataclass
class Query:
    """What ``gradwatch alerts`` asks for: episodes active at any time since ``since`` (epoch)."""

    since: float
    runs: list[str] = field(default_factory=list)  # globs; empty: every run
    rules: list[str] = field(default_factory=list)
    severity: str | None = None  # episodes that reached at least this severity

    def wants(self, ep: Episode) -> bool:
        if self.runs and not any(fnmatch.fnmatchcase(ep.run, g) for g in self.runs):
            return False
        if self.rules and not any(fnmatch.fnmatchcase(ep.rule, g) for g in self.rules):
            return False
        return self.severity is None or Severity.parse(ep.worst) >= Severity.parse(self.severity)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
        is not None
    )


def episodes(conn: sqlite3.Connection, query: Query) -> list[Episode]:
    """Episodes that were firing at some time since ``query.since``, oldest first, with deliveries."""
    if not has_table(conn, TABLE):
        return []
    rows = conn.execute(
        "SELECT rule, run, tag, starts_at, ends_at, severity, worst, first_step, first_value, last_step, "
        f"last_value, transitions, catchup, summary FROM {TABLE} "
        "WHERE ends_at IS NULL OR ends_at >= ? ORDER BY starts_at, id",
        (query.since,),
    ).fetchall()
    out = []
    for r in rows:
        ep = Episode(
            r[0], from_db_text(r[1]), from_db_text(r[2]), r[3], r[4], r[5], r[6],
            r[7], float(r[8]), r[9], float(r[10]), r[11], bool(r[12]), from_db_text(r[13]),
        )  # fmt: skip
        if query.wants(ep):
            out.append(ep)
    attach_deliveries(conn, out)
    return out


def _status(state: str, attempts: int) -> str:
    if state == "sent":
        return "delivered"
    if state == "pending":
        return "retrying" if attempts else "queued"
    return state  # failed, dropped


def attach_deliveries(conn: sqlite3.Connection, found: list[Episode]) -> None:
    """Each episode's notifications from the outbox, matched on the alert and its starts_at."""
    if not found or not has_table(conn, OUTBOX_TABLE):
        return
    by_episode = {(ep.key, ep.starts_at): ep for ep in found}
    since = min(ep.starts_at for ep in found)
    rows = conn.execute(
        f"SELECT channel, event, state, attempts, enqueued_at, done_at, last_error FROM {OUTBOX_TABLE} "
        "WHERE enqueued_at >= ? ORDER BY id",
        (since,),
    )
    for channel, text, state, attempts, enqueued_at, done_at, error in rows:
        try:
            event = json.loads(text)
            key = f"{event['rule']}\x1f{event['run']}\x1f{event['tag']}"
            ep = by_episode.get((key, float(event["starts_at"])))
            kind = str(event["kind"])
        except (ValueError, KeyError, TypeError):
            continue  # not an event this code wrote: the outbox's own problem, not the history's
        if ep is not None:
            ep.deliveries.append(
                Delivery(channel, kind, _status(state, attempts), attempts, enqueued_at, done_at, error)
            )
