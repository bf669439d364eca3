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

Per channel, in order of enqueueing:

* grouping: the oldest pending row opens a window of ``group_wait``; every
  row of the same run enqueued within it goes out in the same ``send``;
* pacing: at least ``notifier.min_interval`` between two sends;
* backoff: exponential with jitter after a retryable failure, never sooner
  than the receiver's Retry-After; the whole channel waits, which keeps the
  order of each alert's notifications and does not hammer a receiver that is
  down;
* permanent failures (HTTP 400/404/...) mark the group failed and move on;
* rows older than ``notifier.max_age`` are dropped (counted, logged once per
  outage): a day-old page helps nobody, and the queue stays bounded.

A slow or dead receiver only holds up its own thread; ``enqueue`` does no I/O
except the caller's database.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gradwatch.alerts import REPEAT, AlertEvent
from gradwatch.notify.base import DeliveryError, Notifier
from gradwatch.state import db_text

log = logging.getLogger("gradwatch.notify.outbox")

TABLE = "notify_outbox"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
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
);
CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE} (channel, state, id);
CREATE INDEX IF NOT EXISTS {TABLE}_alert ON {TABLE} (channel, alert_key, enqueued_at);
"""
PENDING, SENT, FAILED, DROPPED = "pending", "sent", "failed", "dropped"
BUSY_TIMEOUT_MS = 10_000
BATCH = 500  # rows read per cycle, and the largest group one send gets


def connect(db_path: str) -> sqlite3.Connection:
    """A connection in autocommit mode, WAL, waiting (not failing) on a busy database."""
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL survives a process kill; only a power cut may lose the last marks (-> resend)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """The outbox table and indexes (idempotent); state.py may call it in its migrations."""
    conn.executescript(SCHEMA)


@dataclass
class _Row:
    id: int
    run: str
    enqueued_at: float
    event: str
    alert_key: str | bytes = ""


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
        self.max_age = max_age
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.keep_done = keep_done
        conn = connect(db_path)
        try:
            create_schema(conn)
            self._retire_unknown_channels(conn, set(names))
        finally:
            conn.close()
        self._channels = {n.name: _Channel(self, n) for n in self.notifiers}
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._started = False

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
                        got = conn.execute(
                            f"SELECT MAX(enqueued_at) FROM {TABLE} WHERE channel=? AND alert_key=?",
                            (n.name, db_text(e.key)),
                        ).fetchone()
                        last = got[0] if got else None
                    if last is not None and now - last < n.repeat_interval:
                        continue
                if text is None:
                    text = e.to_json()
                # names may not be valid UTF-8 (bytes on Linux): stored as the state DB stores them
                rows.append((n.name, db_text(e.key), db_text(e.run), e.seq, text, now))
                recent[(n.name, e.key)] = now
        if rows:
            conn.executemany(
                f"INSERT INTO {TABLE} (channel, alert_key, run, seq, event, enqueued_at) "
                "VALUES (?,?,?,?,?,?)",
                rows,
            )
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
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self.wake()
        ok = True
        for ch in self._channels.values():
            if ch.is_alive():
                ch.join(max(0.0, self._deadline - time.monotonic()))
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
        rows = conn.execute(
            f"SELECT channel, COUNT(*) FROM {TABLE} WHERE state=? GROUP BY channel", (PENDING,)
        ).fetchall()
        for channel, count in rows:
            if channel not in names:
                conn.execute(
                    f"UPDATE {TABLE} SET state=?, done_at=?, last_error=? WHERE channel=? AND state=?",
                    (DROPPED, time.time(), "channel no longer configured", channel, PENDING),
                )
                log.warning(
                    "dropped %d queued notification(s) for channel '%s', which is no longer configured",
                    count,
                    channel,
                )

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # never sooner than asked; a little later so many clients do not return at once
            return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after + 0.05))
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(attempts - 1, 30))
        return random.uniform(cap / 2, cap)  # "equal jitter": at least half the step


class _Channel(threading.Thread):
    """The dispatcher of one notifier."""

    def __init__(self, outbox: Outbox, notifier: Notifier) -> None:
        super().__init__(name=f"gradwatch-notify-{notifier.name}", daemon=True)
        self.outbox = outbox
        self.notifier = notifier
        self.wake = threading.Event()
        self.refresh_events: list[AlertEvent] | None = None
        # sent: notifications delivered; failed: delivery attempts that failed (each
        # retry counts); dropped: notifications given up on (rejected or too old)
        self.sent = self.failed = self.dropped = 0
        self.queued = 0
        self.cycles = 0
        self.idle = False
        self._attempts = 0  # consecutive retryable failures
        self._next_attempt = 0.0  # monotonic
        self._last_send = -1e9  # monotonic
        self._outage_logged = False
        self._retry_after_capped = False
        self._dropped_in_outage = 0
        self._refresh_failing = False
        self._next_prune = 0.0
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "dropped": self.dropped,
                "queued": self.queued,
            }

    def run(self) -> None:
        try:
            conn = connect(self.outbox.db_path)
        except sqlite3.Error as e:
            log.error("%s: cannot open the outbox database, not sending: %s", self.notifier.name, e)
            return
        try:
            while True:
                stopping = self.outbox._stopping.is_set()
                if stopping and time.monotonic() >= self.outbox._deadline:
                    return
                self.wake.clear()
                try:
                    self._maybe_refresh()
                    wait = self._cycle(conn, draining=stopping)
                except sqlite3.Error as e:
                    # a locked or briefly unavailable database: try again, nothing is lost
                    log.warning("%s: outbox database error, retrying: %s", self.name, e)
                    wait = self.outbox.poll_interval
                self.cycles += 1
                if stopping and (
                    wait is None or self._attempts or time.monotonic() + wait >= self.outbox._deadline
                ):
                    return  # nothing more, or a failing receiver: the rows wait for the next start
                self.wake.wait(self.outbox.poll_interval if wait is None else min(wait, 5.0))
        except Exception:
            log.exception("%s: dispatcher crashed; queued notifications wait for a restart", self.name)
        finally:
            conn.close()

    # one look at the table; returns how long to wait (None: nothing to do)
    def _cycle(self, conn: sqlite3.Connection, draining: bool) -> float | None:
        n = self.notifier
        now_mono = time.monotonic()
        now = time.time()
        if now_mono < self._next_attempt:
            self.idle = False
            return self._next_attempt - now_mono
        rows = [
            _Row(*r)
            for r in conn.execute(
                f"SELECT id, run, enqueued_at, event, alert_key FROM {TABLE} WHERE channel=? AND state=? "
                f"ORDER BY id LIMIT {BATCH}",
                (n.name, PENDING),
            )
        ]
        self._count(conn, len(rows))
        rows = self._drop_old(conn, rows, now)
        if not rows:
            if now_mono >= self._next_prune:
                self._prune(conn, now)
                self._next_prune = now_mono + 600
            self.idle = True
            return None
        self.idle = False
        head = rows[0]
        window_end = head.enqueued_at + n.group_wait
        if not draining and now < window_end:
            return window_end - now
        group: list[_Row] = []
        alerts: set[str | bytes] = set()
        for r in rows:
            if r.run != head.run:
                continue
            if r.enqueued_at > window_end and not draining:
                break  # later rows of this run wait for their own window (keeps order)
            if r.alert_key in alerts:
                # a payload holds one state per alert: a second transition (resolved, then firing
                # again) goes in the next send, or the first would never be delivered
                break
            alerts.add(r.alert_key)
            group.append(r)
        pause = self._last_send + n.min_interval - time.monotonic()
        if pause > 0:
            return pause
        events: list[AlertEvent] = []
        good: list[_Row] = []
        for r in group:
            try:
                events.append(AlertEvent.from_json(r.event))
                good.append(r)
            except (ValueError, TypeError, KeyError) as e:
                self._mark(conn, [r], FAILED, f"unreadable queued event: {type(e).__name__}")
                with self._lock:
                    self.dropped += 1
        if not events:
            return 0.0
        self._deliver(conn, good, events)
        return 0.0

    def _deliver(self, conn: sqlite3.Connection, rows: list[_Row], events: list[AlertEvent]) -> None:
        n = self.notifier
        self._last_send = time.monotonic()
        try:
            n.send(events)
        except DeliveryError as e:
            # a group sent as several requests: what went out before the failure stays sent
            done, rows = rows[: e.delivered], rows[e.delivered :]
            if done:
                self._delivered(conn, done)
            if e.permanent:
                self._mark(conn, rows, FAILED, e.message)
                with self._lock:
                    self.failed += 1
                    self.dropped += len(rows)
                log.error("%s: %d notification(s) rejected, not retrying: %s", n.name, len(rows), e.message)
                return
            self._retry_later(conn, rows, e.message, e.retry_after)
            return
        except Exception as e:  # a bug in a channel must not kill the dispatcher or lose the rows
            log.exception("%s: unexpected error while sending", n.name)
            self._retry_later(conn, rows, f"{type(e).__name__} in {n.type} notifier", None)
            return
        self._delivered(conn, rows)

    def _delivered(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        n = self.notifier
        self._mark(conn, rows, SENT, None)
        with self._lock:
            self.sent += len(rows)
        if self._outage_logged:
            extra = f"; {self._dropped_in_outage} too old were dropped" if self._dropped_in_outage else ""
            log.info("%s: delivering again after %d failed attempt(s)%s", n.name, self._attempts, extra)
        self._attempts = 0
        self._outage_logged = False
        self._dropped_in_outage = 0

    def _retry_later(
        self, conn: sqlite3.Connection, rows: list[_Row], message: str, retry_after: float | None
    ) -> None:
        self._attempts += 1
        with self._lock:
            self.failed += 1
        delay = self.outbox.backoff(self._attempts, self._capped(retry_after))
        self._next_attempt = time.monotonic() + delay
        ids = [r.id for r in rows]
        self._write(
            conn,
            f"UPDATE {TABLE} SET attempts=attempts+1, last_error=? WHERE id IN ({','.join('?' * len(ids))})",
            (message, *ids),
        )
        if not self._outage_logged:
            # once per outage; the next success logs how it ended
            log.warning("%s: delivery failed, retrying with backoff: %s", self.notifier.name, message)
            self._outage_logged = True
        else:
            log.debug("%s: attempt %d failed, next in %.1f s: %s", self.name, self._attempts, delay, message)

    def _capped(self, retry_after: float | None) -> float | None:
        """A receiver's Retry-After, at most the backoff maximum or max_age: a 503 asking for a
        year would park the channel, and old rows are dropped only when a send is attempted."""
        cap = min(self.outbox.backoff_max, self.notifier.max_age or self.outbox.max_age)
        if retry_after is None or retry_after <= cap:
            return retry_after
        if not self._retry_after_capped:  # once: a receiver that always says so would flood the log
            log.warning(
                "%s: the receiver asked to wait %.0f s; waiting %g s at most",
                self.notifier.name,
                retry_after,
                cap,
            )
            self._retry_after_capped = True
        return cap

    def _drop_old(self, conn: sqlite3.Connection, rows: list[_Row], now: float) -> list[_Row]:
        max_age = self.notifier.max_age or self.outbox.max_age
        old = [r for r in rows if now - r.enqueued_at > max_age]
        if not old:
            return rows
        self._mark(conn, old, DROPPED, f"older than max_age {max_age:g} s")
        with self._lock:
            self.dropped += len(old)
        if self._dropped_in_outage == 0:
            log.warning(
                "%s: dropping notifications older than %g s that could not be delivered (%d so far)",
                self.notifier.name,
                max_age,
                len(old),
            )
        self._dropped_in_outage += len(old)
        keep = {r.id for r in old}
        return [r for r in rows if r.id not in keep]

    def _maybe_refresh(self) -> None:
        n = self.notifier
        events = self.refresh_events
        now = time.time()
        if events is None or not n.refresh_due(now):
            return
        self.refresh_events = None
        try:
            n.refresh(events, now)
        except DeliveryError as e:
            if not self._refresh_failing:
                log.warning("%s: re-sending firing alerts failed (next try in its interval): %s", n.name, e)
            self._refresh_failing = True
            return
        except Exception:
            log.exception("%s: unexpected error while re-sending firing alerts", n.name)
            return
        self._refresh_failing = False

    def _count(self, conn: sqlite3.Connection, seen: int) -> None:
        if seen < BATCH:
            total = seen
        else:
            total = conn.execute(
                f"SELECT COUNT(*) FROM {TABLE} WHERE channel=? AND state=?", (self.notifier.name, PENDING)
            ).fetchone()[0]
        with self._lock:
            self.queued = total

    def _mark(self, conn: sqlite3.Connection, rows: list[_Row], state: str, error: str | None) -> None:
        ids = [r.id for r in rows]
        tried = 0 if state == DROPPED else 1
        for i in range(0, len(ids), BATCH):
            chunk = ids[i : i + BATCH]
            self._write(
                conn,
                f"UPDATE {TABLE} SET state=?, done_at=?, attempts=attempts+?, last_error=? "
                f"WHERE id IN ({','.join('?' * len(chunk))})",
                (state, time.time(), tried, error, *chunk),
            )
        if state != PENDING:
            with self._lock:
                self.queued = max(0, self.queued - len(rows))

    def _write(self, conn: sqlite3.Connection, sql: str, params: tuple) -> None:
        # a mark that does not land means a duplicate after restart: insist (busy_timeout waits too)
        for attempt in range(50):
            try:
                conn.execute(sql, params)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                log.warning("%s: outbox database busy, retrying the update (%d)", self.name, attempt + 1)
                time.sleep(0.2)
        conn.execute(sql, params)

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        # housekeeping only: if the daemon holds the write lock, try again later
        keep = max(self.outbox.keep_done, self.notifier.repeat_interval or 0.0)
        conn.execute("PRAGMA busy_timeout=200")
        try:
            conn.execute(
                f"DELETE FROM {TABLE} WHERE channel=? AND state!=? AND done_at < ?",
                (self.notifier.name, PENDING, now - keep),
            )
        except sqlite3.OperationalError as e:
            log.debug("%s: pruning skipped: %s", self.name, e)
            self._next_prune = time.monotonic() + 5
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
