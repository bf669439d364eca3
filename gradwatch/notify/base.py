"""What every notification channel shares: filtering, config, HTTP delivery, errors.

A channel (:class:`Notifier`) decides which :class:`~gradwatch.alerts.AlertEvent`
it wants (``accepts``) and delivers one group of them (``send``). It does not
retry, wait or persist: the outbox does that, so a channel stays a small
translation from events to one HTTP request, and errors say whether trying
again can help (:class:`DeliveryError`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections import deque
from typing import ClassVar

from gradwatch.alerts import DEESCALATED, REPEAT, RESOLVED, AlertEvent
from gradwatch.config.channels import DEFAULT_TIMEOUT, RESERVED_HEADERS, check_headers, link_template
from gradwatch.notify.errors import DeliveryError
from gradwatch.notify.http import (
    RETRYABLE_4XX,
    USER_AGENT,
    make_session,
    network_reason,
    parse_retry_after,
    post,
)
from gradwatch.severity import SEVERITY_NAMES, Severity

log = logging.getLogger("gradwatch.notify")

# re-exported: channels and tests import these from here
__all__ = [
    "RESERVED_HEADERS",
    "RETRYABLE_4XX",
    "USER_AGENT",
    "DeliveryError",
    "Notifier",
    "check_headers",
    "link_template",
    "make_session",
    "network_reason",
    "parse_retry_after",
    "post",
]


class Notifier:
    """One configured channel. Subclasses set ``type`` and implement ``send``."""

    type: ClassVar[str] = "?"
    # the default grouping window: alerts of one run that fire within it go out together
    default_group_wait: ClassVar[float] = 2.0
    # minimum seconds between two requests to this channel's receiver (``pace_key``; Slack: 1/s
    # per webhook URL); the outbox's dispatcher waits for it, ``send`` never sleeps
    min_interval: ClassVar[float] = 0.0
    # whether the daemon should hand currently firing alerts to refresh() (Alertmanager)
    wants_refresh: ClassVar[bool] = False
    # a payload holds one state per alert (webhook JSON): a second transition of an alert goes
    # in the next send. False for a channel that folds a group's transitions itself
    # (Alertmanager: a crossing and its recovery in one group become one alert held to min_firing)
    one_state_per_alert: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        min_severity: str = "info",
        rules: list[str] | None = None,
        runs: list[str] | None = None,
        tags: list[str] | None = None,
        send_resolved: bool = True,
        group_wait: float | None = None,
        repeat_interval: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_age: float | None = None,
    ) -> None:
        if min_severity not in SEVERITY_NAMES:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITY_NAMES)}")
        self.name = name
        self.min_severity = min_severity
        self.min_rank = int(Severity.parse(min_severity))
        self.rules = rules or ["*"]
        self.runs = runs or ["*"]
        self.tags = tags or ["*"]
        self.send_resolved = send_resolved
        self.group_wait = self.default_group_wait if group_wait is None else group_wait
        self.repeat_interval = repeat_interval
        self.timeout = timeout
        # None: the outbox's default (the config's outbox.max_age)
        self.max_age = max_age
        # when the outbox let each recent request go (monotonic): what the pacing promise is about
        self.paced_at: deque[float] = deque(maxlen=32)

    # -- filtering -------------------------------------------------------------
    def accepts(self, event: AlertEvent) -> bool:
        """Whether this channel wants ``event``: matchers, severity, resolved notices."""
        if not (
            _glob(event.rule, self.rules) and _glob(event.run, self.runs) and _glob(event.tag, self.tags)
        ):
            return False
        if event.kind == RESOLVED:
            return self.send_resolved and self.rank_of(event.severity) >= self.min_rank
        if event.kind == DEESCALATED:
            # dropping below this channel's level ends the alert *for this channel*:
            # it was told about the higher severity, so it hears that it went down
            return max(self.rank_of(event.severity), self.rank_of(event.previous)) >= self.min_rank
        return self.rank_of(event.severity) >= self.min_rank

    @staticmethod
    def rank_of(severity: str | None) -> int:
        return int(Severity.parse(severity))

    def below_min(self, event: AlertEvent) -> bool:
        """A de-escalation under this channel's min_severity: for it, the alert is over."""
        return event.kind == DEESCALATED and self.rank_of(event.severity) < self.min_rank

    def is_repeat(self, event: AlertEvent) -> bool:
        return event.kind == REPEAT

    def status_for(self, event: AlertEvent) -> str:
        """Alertmanager's status of ``event`` for this channel: below min_severity is over."""
        return "resolved" if event.kind == RESOLVED or self.below_min(event) else "firing"

    def status_changes(self, events: list[AlertEvent]) -> list[list[AlertEvent]]:
        """``events`` cut, in order, before each event that changes its alert's status.

        Payloads that hold one state per alert (webhook) would show only the
        last of "firing, resolved" read in one batch, and nobody would be paged:
        each part is sent as its own request, so the receiver sees every status.
        """
        parts: list[list[AlertEvent]] = [[]]
        status: dict[str, str] = {}
        for e in events:
            now = self.status_for(e)
            if status.get(e.key, now) != now:
                parts.append([])
                status.clear()
            status[e.key] = now
            parts[-1].append(e)
        return [p for p in parts if p]

    # -- delivery --------------------------------------------------------------
    def send(self, events: list[AlertEvent]) -> None:
        """Deliver one group (one run, one window); raise DeliveryError if not delivered."""
        raise NotImplementedError

    def refresh(self, events: list[AlertEvent], now: float) -> None:
        """Re-announce currently firing alerts (channels with ``wants_refresh``)."""

    def refresh_due(self, now: float) -> bool:
        return False

    def pace_key(self) -> str:
        """The receiver ``min_interval`` applies to; channels with the same key are paced together."""
        return "channel " + self.name

    def close(self) -> None:
        """Release connections; the notifier is not used afterwards."""

    def describe(self) -> str:
        """One line for logs and ``gradwatch check``: never a secret."""
        bits = [f"min_severity {self.min_severity}"]
        for what, globs in (("rules", self.rules), ("runs", self.runs), ("tags", self.tags)):
            if globs != ["*"]:
                bits.append(f"{what} {','.join(globs)}")
        if not self.send_resolved:
            bits.append("no resolved notices")
        target = self.target()
        return f"{self.type} '{self.name}'{' -> ' + target if target else ''} ({'; '.join(bits)})"

    def target(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.target()}>"


def _glob(value: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)
