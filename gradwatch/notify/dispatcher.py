"""One dispatcher thread per channel: delivers its queued rows, in order, and never loses one.

Per channel, in order of enqueueing (the policy is ``notify/policy.py``):

* grouping: the oldest pending row opens a window of ``group_wait``; every
  row of the same run enqueued within it goes out in the same ``send``;
* pacing: at least ``notifier.min_interval`` between two sends to one
  receiver (``notifier.pace_key()``), across the channels of one outbox;
* backoff: exponential with jitter after a retryable failure, never sooner
  than the receiver's Retry-After; the whole channel waits, which keeps the
  order of each alert's notifications and does not hammer a receiver that is
  down;
* permanent failures (HTTP 400/404/...) mark the group failed and move on;
* rows older than ``notifier.max_age`` are dropped (counted, logged once per
  outage): a day-old page helps nobody, and the queue stays bounded.

Rows are marked sent right after the receiver accepted them (``store/outbox_rows.py``).
A slow or dead receiver only holds up its own thread.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import gradwatch.store.outbox_rows as rows_sql
from gradwatch.alerts import AlertEvent
from gradwatch.notify.base import DeliveryError, Notifier
from gradwatch.notify.policy import Pacer, backoff, next_group
from gradwatch.store.db import connect as db_connect
from gradwatch.store.outbox_rows import BATCH, DROPPED, FAILED, PENDING, SENT, Row

# the dispatchers' log lines keep the name operators know
log = logging.getLogger("gradwatch.notify.outbox")


def connect(db_path: str) -> sqlite3.Connection:
    """A dispatcher's own connection: the store's one connect, with a shorter busy wait."""
    return db_connect(db_path, busy_timeout=rows_sql.BUSY_TIMEOUT)


@dataclass
class Delivery:
    """What the dispatchers of one outbox share: settings, the pacer, and the shutdown signal."""

    db_path: str
    max_age: float
    poll_interval: float
    backoff_base: float
    backoff_max: float
    keep_done: float
    pacer: Pacer = field(default_factory=Pacer)
    stopping: threading.Event = field(default_factory=threading.Event)
    deadline: float = math.inf  # monotonic; set by stop()

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        return backoff(attempts, retry_after, self.backoff_base, self.backoff_max)


class Dispatcher(threading.Thread):
    """The thread that delivers one channel's rows, in order; see the module docstring."""

    def __init__(self, delivery: Delivery, notifier: Notifier) -> None:
        super().__init__(name=f"gradwatch-notify-{notifier.name}", daemon=True)
        self.delivery = delivery
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
            conn = connect(self.delivery.db_path)
        except sqlite3.Error as e:
            log.error("%s: cannot open the outbox database, not sending: %s", self.notifier.name, e)
            return
        try:
            while True:
                stopping = self.delivery.stopping.is_set()
                if stopping and time.monotonic() >= self.delivery.deadline:
                    return
                self.wake.clear()
                try:
                    self._maybe_refresh()
                    wait = self._cycle(conn, draining=stopping)
                except sqlite3.Error as e:
                    # a locked or briefly unavailable database: try again, nothing is lost
                    log.warning("%s: outbox database error, retrying: %s", self.name, e)
                    wait = self.delivery.poll_interval
                self.cycles += 1
                if stopping and (
                    wait is None or self._attempts or time.monotonic() + wait >= self.delivery.deadline
                ):
                    return  # nothing more, or a failing receiver: the rows wait for the next start
                self.wake.wait(self.delivery.poll_interval if wait is None else min(wait, 5.0))
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
        rows = rows_sql.pending(conn, n.name)
        self._count(conn, len(rows))
        rows = self._drop_old(conn, rows, now)
        if not rows:
            if now_mono >= self._next_prune:
                self._prune(conn, now)
                self._next_prune = now_mono + 600
            self.idle = True
            return None
        self.idle = False
        group, wait = next_group(rows, n.group_wait, now, draining, n.one_state_per_alert)
        if not group:
            return wait
        granted = time.monotonic()
        pause = self.delivery.pacer.reserve(n.pace_key(), n.min_interval, granted)
        if pause > 0:
            return pause
        n.paced_at.append(granted)
        events: list[AlertEvent] = []
        good: list[Row] = []
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

    def _deliver(self, conn: sqlite3.Connection, rows: list[Row], events: list[AlertEvent]) -> None:
        n = self.notifier
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

    def _delivered(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        n = self.notifier
        self._mark(conn, rows, SENT, None)
        with self._lock:
            self.sent += len(rows)
        if self._outage_logged:
            extra = f"; {self._dropped_in_outage} too old were dropped" if self._dropped_in_outage else ""
            log.info("%s: delivering again after %d failed attempt(s)%s", n.name, self._attempts, extra)
        self._attempts = 0
        self._outage_logged = False
        self._retry_after_capped = False
        self._dropped_in_outage = 0

    def _retry_later(
        self, conn: sqlite3.Connection, rows: list[Row], message: str, retry_after: float | None
    ) -> None:
        self._attempts += 1
        with self._lock:
            self.failed += 1
        delay = self.delivery.backoff(self._attempts, self._capped(retry_after))
        self._next_attempt = time.monotonic() + delay
        rows_sql.add_attempt(conn, [r.id for r in rows], message, self.name)
        if not self._outage_logged:
            # once per outage; the next success logs how it ended
            log.warning("%s: delivery failed, retrying with backoff: %s", self.notifier.name, message)
            self._outage_logged = True
        else:
            log.debug("%s: attempt %d failed, next in %.1f s: %s", self.name, self._attempts, delay, message)

    def _capped(self, retry_after: float | None) -> float | None:
        """A receiver's Retry-After, at most the backoff maximum or max_age: a 503 asking for a
        year would park the channel, and old rows are dropped only when a send is attempted."""
        cap = min(self.delivery.backoff_max, self.notifier.max_age or self.delivery.max_age)
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

    def _drop_old(self, conn: sqlite3.Connection, rows: list[Row], now: float) -> list[Row]:
        max_age = self.notifier.max_age or self.delivery.max_age
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
        total = seen if seen < BATCH else rows_sql.count_pending(conn, self.notifier.name)
        with self._lock:
            self.queued = total

    def _mark(self, conn: sqlite3.Connection, rows: list[Row], state: str, error: str | None) -> None:
        rows_sql.mark(conn, [r.id for r in rows], state, error, self.name)
        if state != PENDING:
            with self._lock:
                self.queued = max(0, self.queued - len(rows))

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        # housekeeping only: if the daemon holds the write lock, try again later
        keep = max(self.delivery.keep_done, self.notifier.repeat_interval or 0.0)
        if not rows_sql.prune(conn, self.notifier.name, now - keep, self.name):
            self._next_prune = time.monotonic() + 5
