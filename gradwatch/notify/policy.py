"""Delivery policy, without I/O: which rows go out together, when a receiver may hear again, backoff.

* grouping (:func:`next_group`): the oldest pending row opens a window of
  ``group_wait``; the rows of the same run enqueued within it go out in one
  send, at most one transition per alert (a payload carries one state per
  alert, so "resolved" then "firing again" go in two sends);
* pacing (:class:`Pacer`): at most one send per ``min_interval`` per
  *receiver* (Slack: per webhook URL, whichever channel sends to it). It never
  sleeps: it says how long to wait, and the dispatcher waits (and can be
  stopped) instead of a channel sleeping inside ``send``;
* backoff (:func:`backoff`): exponential with "equal jitter", never sooner
  than the receiver's Retry-After.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Protocol


class QueuedRow(Protocol):
    """What grouping needs of a queued row (``store.outbox_rows.Row``)."""

    run: str
    enqueued_at: float
    alert_key: str | bytes


def next_group(
    rows: list[QueuedRow],
    group_wait: float,
    now: float,
    draining: bool = False,
    one_state_per_alert: bool = True,
) -> tuple[list[QueuedRow], float]:
    """The rows to send now (in order), or none and the seconds until the head's window closes.

    ``rows`` are pending, oldest first; ``draining`` (shutting down) ignores the window;
    ``one_state_per_alert``: the channel's payload holds one state per alert (Notifier).
    """
    head = rows[0]
    window_end = head.enqueued_at + group_wait
    if not draining and now < window_end:
        return [], window_end - now
    group: list[QueuedRow] = []
    alerts: set[str | bytes] = set()
    for r in rows:
        if r.run != head.run:
            continue
        if r.enqueued_at > window_end and not draining:
            break  # later rows of this run wait for their own window (keeps order)
        if one_state_per_alert and r.alert_key in alerts:
            # a payload holds one state per alert: a second transition (resolved, then firing
            # again) goes in the next send, or the first would never be delivered
            break
        alerts.add(r.alert_key)
        group.append(r)
    return group, 0.0


def backoff(
    attempts: int,
    retry_after: float | None,
    base: float,
    cap: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds before retrying after ``attempts`` consecutive retryable failures."""
    if retry_after is not None:
        # never sooner than asked; a little later so many clients do not return at once
        return retry_after + uniform(0, min(1.0, 0.1 * retry_after + 0.05))
    step = min(cap, base * 2 ** min(attempts - 1, 30))
    return uniform(step / 2, step)  # "equal jitter": at least half the step


class Pacer:
    """The next moment each receiver may be sent to, shared by the dispatchers of one outbox."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def reserve(self, receiver: str, interval: float, now: float) -> float:
        """0.0 when a send to ``receiver`` may go at ``now`` (the slot is taken), else the seconds
        until it may (nothing taken: ask again then). ``now`` is monotonic."""
        if interval <= 0:
            return 0.0
        with self._lock:
            at = self._next.get(receiver, now)
            if now < at:
                return at - now
            self._next[receiver] = now + interval
            return 0.0
