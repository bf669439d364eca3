"""Durable delivery: a SQLite outbox and one dispatcher thread per channel.

The daemon inserts notifications with :meth:`Outbox.enqueue` on *its own*
connection and commits them in the same transaction as the file offsets and
alert states that produced them. So after kill -9 either both the alert and
its notifications exist, or neither (and the points are read again). Each
channel's thread then delivers from the table, marks rows sent right after
the receiver accepted them, and retries the rest with backoff. A restart
resumes with the rows still pending; rows already marked sent are never sent
again. (The one gap: a kill between the receiver's "200" and the mark, a few
milliseconds, sends that group again: at-least-once, as every durable queue.)

This module is the facade the daemon uses (enqueue, start, wake, stop,
wait_idle, stats, resend_firing); the SQL is ``store/outbox_rows.py``, the
policy (grouping, pacing per receiver, backoff) ``notify/policy.py`` and the
thread of each channel ``notify/dispatcher.py``.

A slow or dead receiver only holds up its own thread; ``enqueue`` does no I/O
except the caller's database.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

import gradwatch.store.outbox_rows as rows_sql
from gradwatch.alerts import REPEAT, AlertEvent
from gradwatch.notify.base import Notifier
from gradwatch.notify.dispatcher import Delivery, Dispatcher, connect

log = logging.getLogger("gradwatch.notify.outbox")

# re-exported: tests and the daemon import these from here
TABLE, BATCH = rows_sql.TABLE, rows_sql.BATCH
PENDING, SENT, FAILED, DROPPED = rows_sql.PENDING, rows_sql.SENT, rows_sql.FAILED, rows_sql.DROPPED


_Row = rows_sql.Row


class Outbox:
    """Notifications on their way to each channel; see the module docstring."""

    def __init__(
        self,
        db_path: str,
        notifiers: Iterable[Notifier],
        *,
        max_age: float = 86400.0,
        poll_interval: float = 0.5,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        keep_done: float = 86400.0,
    ) -> None:
        self.db_path = db_path
        self.notifiers = list(notifiers)
        names = [n.name for n in self.notifiers]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be unique")
        self.delivery = Delivery(db_path, max_age, poll_interval, backoff_base, backoff_max, keep_done)
        conn = connect(db_path)
        try:
            rows_sql.create_tables(conn)
            self._retire_unknown_channels(conn, set(names))
        finally:
            conn.close()
        self._channels = {n.name: Dispatcher(self.delivery, n) for n in self.notifiers}
        self._started = False

    # the settings, as the daemon and tests read them
    max_age = property(lambda self: self.delivery.max_age)
    poll_interval = property(lambda self: self.delivery.poll_interval)
    backoff_base = property(lambda self: self.delivery.backoff_base)
    backoff_max = property(lambda self: self.delivery.backoff_max)
    keep_done = property(lambda self: self.delivery.keep_done)

    # -- caller side ---------------------------------------------------------------
    def enqueue(
        self, conn: sqlite3.Connection, events: Iterable[AlertEvent], now: float | None = None
    ) -> int:
        """Queue ``events`` for every channel that accepts them, on ``conn``, without committing.

        Commit with the offsets and alert states, then call :meth:`wake`.
        Returns the number of rows queued. A ``repeat`` is skipped for a
        channel that queued anything for that alert within its
        ``repeat_interval`` (so each channel can repeat at its own pace).
        """
        now = time.time() if now is None else now
        rows: list[tuple] = []
        recent: dict[tuple[str, str], float] = {}
        for e in events:
            text: str | None = None
            for n in self.notifiers:
                if not n.accepts(e):
                    continue
                if e.kind == REPEAT and n.repeat_interval:
                    last = recent.get((n.name, e.key))
                    if last is None:
                        last = rows_sql.last_enqueued(conn, n.name, e.key)
                    if last is not None and now - last < n.repeat_interval:
                        continue
                if text is None:
                    text = e.to_json()
                rows.append((n.name, e.key, e.run, e.seq, text, now))
                recent[(n.name, e.key)] = now
        if rows:
            rows_sql.insert(conn, rows)
        return len(rows)

    def wake(self) -> None:
        """Tell the dispatchers that new rows are committed (else they notice within poll_interval)."""
        for ch in self._channels.values():
            ch.wake.set()

    def refresh(self, firing: list[AlertEvent]) -> None:
        """The currently firing alerts (latest event of each), for channels that re-send them.

        Call it on a timer (every few seconds is fine) and once after start-up;
        each channel decides when it is due (Alertmanager: ``resend_interval``).
        Never blocks: the channel's own thread does the sending.
        """
        for ch in self._channels.values():
            if ch.notifier.wants_refresh:
                ch.refresh_events = list(firing)
                ch.wake.set()

    def resend_firing(self, book: Any) -> None:
        """:meth:`refresh` from the daemon's AlertBook (its firing alerts), when a channel is due."""
        now = time.time()
        if not any(
            ch.notifier.wants_refresh and ch.notifier.refresh_due(now) for ch in self._channels.values()
        ):
            return
        events = []
        for alert in book.firing():
            rule = book.rules.get(alert.rule)
            if rule is not None:
                events.append(book.event(rule, alert, REPEAT, None))
        self.refresh(events)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError("outbox already started")
        self._started = True
        for ch in self._channels.values():
            ch.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Deliver what is ready (ignoring group windows) for up to ``timeout`` s, then stop.

        Returns True if every dispatcher ended; undelivered rows stay queued
        for the next start. Notifiers are closed once their thread ended.
        """
        self.delivery.deadline = time.monotonic() + timeout
        self.delivery.stopping.set()
        self.wake()
        ok = True
        for ch in self._channels.values():
            if ch.is_alive():
                ch.join(max(0.0, self.delivery.deadline - time.monotonic()))
            if ch.is_alive():
                ok = False
                log.warning("%s: still sending at shutdown; its queue is kept for the next start", ch.name)
            else:
                ch.notifier.close()
        return ok

    def stats(self) -> dict[str, dict[str, int]]:
        """Per channel since start: ``sent`` (notifications delivered), ``failed`` (delivery
        attempts that failed, each retry counted), ``dropped`` (notifications given up on:
        rejected permanently or older than max age); and ``queued`` (pending now)."""
        return {name: ch.stats() for name, ch in self._channels.items()}

    def wait_idle(self, timeout: float) -> bool:
        """Block until every channel has looked at the table after this call and found nothing to do."""
        marks = {name: ch.cycles for name, ch in self._channels.items()}
        self.wake()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(ch.cycles > marks[name] + 1 and ch.idle for name, ch in self._channels.items()):
                return True
            self.wake()
            time.sleep(0.01)
        return False

    # -- internals -----------------------------------------------------------------
    def _retire_unknown_channels(self, conn: sqlite3.Connection, names: set[str]) -> None:
        for channel, count in rows_sql.retire_channels(conn, names):
            log.warning(
                "dropped %d queued notification(s) for channel '%s', which is no longer configured",
                count,
                channel,
            )

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Seconds before a retry (``policy.backoff`` with this outbox's base and cap)."""
        return self.delivery.backoff(attempts, retry_after)
