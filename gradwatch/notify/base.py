"""What every notification channel shares: filtering, config, HTTP delivery, errors.

A channel (:class:`Notifier`) decides which :class:`~gradwatch.alerts.AlertEvent`
it wants (``accepts``) and delivers one group of them (``send``). It does not
retry, wait or persist: the outbox does that, so a channel stays a small
translation from events to one HTTP request, and errors say whether trying
again can help (:class:`DeliveryError`).
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import logging
import re
import string
from collections.abc import Iterable
from typing import Any, ClassVar
from urllib.parse import quote

from gradwatch.alerts import DEESCALATED, REPEAT, RESOLVED, AlertEvent
from gradwatch.config.secrets import Secret, url_problem
from gradwatch.config.yaml import Section
from gradwatch.fmt import human_or_na
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

TYPES = ("slack", "webhook", "alertmanager", "console")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
DEFAULT_TIMEOUT = 10.0
# re-exported: channels and tests import these from here
__all__ = [
    "RETRYABLE_4XX",
    "USER_AGENT",
    "DeliveryError",
    "Notifier",
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
    # minimum seconds between two requests to this channel (Slack: 1 message/s per webhook)
    min_interval: ClassVar[float] = 0.0
    # whether the daemon should hand currently firing alerts to refresh() (Alertmanager)
    wants_refresh: ClassVar[bool] = False

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

    # -- config ----------------------------------------------------------------
    @classmethod
    def from_section(cls, sec: Section, common: dict[str, Any]) -> Notifier | None:
        """Build from a config item; ``common`` holds the keys every channel has.

        Subclasses read their own keys from ``sec`` (which reports problems)
        and return None when a required one is missing or bad.
        """
        return cls(**common)


def _glob(value: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)


# -- helpers for channels ------------------------------------------------------


def latest_per_alert(events: Iterable[AlertEvent]) -> list[AlertEvent]:
    """The last event of each alert, in order of first appearance (state, not history)."""
    out: dict[str, AlertEvent] = {}
    for e in events:
        out[e.key] = e
    return list(out.values())


# a channel's spelling of a value or threshold: fmt's, the one every output uses
format_value = human_or_na


# -- building from config --------------------------------------------------------


def _class_for(kind: str) -> type[Notifier] | None:
    if kind == "console":
        try:
            module = importlib.import_module("gradwatch.notify.console")
        except ImportError:
            return None
        cls = getattr(module, "ConsoleNotifier", None)
        if cls is None or (isinstance(cls, type) and issubclass(cls, Notifier)):
            return cls
        return _console_adapter(cls)
    module_name, class_name = _CLASSES[kind]
    return getattr(importlib.import_module(module_name), class_name)


_CLASSES = {
    "slack": ("gradwatch.notify.slack", "SlackNotifier"),
    "webhook": ("gradwatch.notify.webhook", "WebhookNotifier"),
    "alertmanager": ("gradwatch.notify.alertmanager", "AlertmanagerNotifier"),
}


def _console_adapter(console_cls: Any) -> type[Notifier]:
    """A Notifier around a console writer that is not one (filters and grouping from here)."""
    params = inspect.signature(console_cls).parameters

    class Console(Notifier):
        type = "console"
        default_group_wait = 0.0

        def __init__(self, name: str, inner: Any, **common: Any) -> None:
            super().__init__(name, **common)
            self.inner = inner

        @classmethod
        def from_section(cls, sec: Section, common: dict[str, Any]) -> Notifier | None:
            kwargs: dict[str, Any] = {}
            if "fmt" in params:
                kwargs["fmt"] = sec.choice("format", ("auto", "line", "block", "json"), default="auto")
            if "colour" in params:
                kwargs["colour"] = sec.boolean("colour")
            return cls(inner=console_cls(**kwargs), **common)

        def send(self, events: list[AlertEvent]) -> None:
            self.inner.send(events)

        def target(self) -> str:
            return "stdout"

    return Console


def read_common(sec: Section, default_group_wait: float) -> dict[str, Any] | None:
    """The keys every channel has; None when the name is unusable."""
    name = sec.string("name", required=True)
    if name is not None and not _NAME.match(name):
        sec.error("name", "use letters, digits, '_', '.', ':' and '-' only (it becomes a metric label)")
        name = None
    min_severity = sec.choice("min_severity", SEVERITY_NAMES, default="info")
    match = sec.section("match")
    rules = match.strings("rules")
    runs = match.strings("runs")
    tags = match.strings("tags")
    match.finish()
    send_resolved = sec.boolean("send_resolved", default=True)
    group_wait = sec.duration("group_wait", default=default_group_wait)
    repeat_interval = sec.duration("repeat_interval")
    timeout = sec.duration("timeout", default=DEFAULT_TIMEOUT)
    if timeout is not None and timeout <= 0:
        sec.error("timeout", "must be more than 0")
        timeout = DEFAULT_TIMEOUT
    max_age = sec.duration("max_age")
    if max_age is not None and max_age <= 0:
        sec.error("max_age", "must be more than 0")
        max_age = None
    if group_wait is not None and group_wait > 3600:
        sec.error("group_wait", "at most 1h: it delays every notification of the channel")
    if name is None:
        return None
    return {
        "name": name,
        "min_severity": min_severity,
        "rules": rules,
        "runs": runs,
        "tags": tags,
        "send_resolved": send_resolved,
        "group_wait": group_wait,
        "repeat_interval": repeat_interval,
        "timeout": timeout,
        "max_age": max_age,
    }


def build_notifiers(sections: list[Section]) -> list[Notifier]:
    """Notifiers from the items of the config's ``notifiers:`` list.

    Problems (unknown keys, bad values, unset ``${ENV}``, duplicate names) go
    to each Section's problem list; the caller raises ConfigError when any.
    Items with problems are left out of the result.
    """
    out: list[Notifier] = []
    seen: dict[str, int] = {}
    for sec in sections:
        before = len(sec.problems)
        kind = sec.choice("type", TYPES, required=True)
        cls = _class_for(kind) if kind else None
        if kind == "console" and cls is None:
            sec.error("type", "the console notifier is not available in this build")
        common = read_common(sec, cls.default_group_wait if cls else Notifier.default_group_wait)
        notifier = cls.from_section(sec, common) if cls is not None and common is not None else None
        sec.finish()
        if common is not None:
            name = common["name"]
            if name in seen:
                sec.error("name", f"channel name '{name}' is already used on line {seen[name]}")
                continue
            seen[name] = sec.line_of("name")
        if notifier is not None and len(sec.problems) == before:
            out.append(notifier)
        elif notifier is not None:
            notifier.close()
    return out


# -- links -----------------------------------------------------------------------

LINK_FIELDS = ("run", "tag", "rule")


def link_template(sec: Section, key: str = "generator_url") -> str | None:
    """A URL template such as ``http://tb:6006/#scalars&runSelectionState={run}``, checked."""
    text = sec.string(key)
    if text is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        sec.error(key, f"bad template: {e}")
        return None
    bad = [f for f in fields if f not in LINK_FIELDS]
    if bad:
        sec.error(key, f"unknown field {{{bad[0]}}} (fields: {', '.join(LINK_FIELDS)})")
        return None
    problem = url_problem(text.format(run="r", tag="t", rule="x"))
    if problem:
        sec.error(key, problem)
        return None
    return text


def event_annotations(e: AlertEvent) -> dict[str, str]:
    """The event's annotations plus value, step and threshold (Alertmanager-shaped payloads)."""
    annotations = dict(e.annotations)
    annotations.setdefault("value", format_value(e.value))
    annotations.setdefault("step", str(e.step))
    if e.threshold is not None:
        annotations.setdefault("threshold", format_value(e.threshold))
    return annotations


# headers gradwatch sets on JSON POSTs: a user header of that name would be overwritten
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host"})


def check_headers(
    sec: Section, headers: dict[str, Secret], reserved: frozenset[str] = RESERVED_HEADERS
) -> None:
    for h in headers:
        if h.lower() in reserved or (h.lower() == "authorization" and sec.has("bearer_token")):
            sec.error("headers", f"{h}: gradwatch sets this header itself")


def request_headers(headers: dict[str, Secret], bearer_token: Secret | None) -> dict[str, str]:
    """The user's headers, JSON content type and the bearer token, secrets revealed (never logged)."""
    out = {k: v.reveal() for k, v in headers.items()}
    out["Content-Type"] = "application/json"
    if bearer_token is not None:
        out["Authorization"] = "Bearer " + bearer_token.reveal()
    return out


def render_link(template: str | None, event: AlertEvent) -> str:
    if not template:
        return ""
    return template.format(run=quote(event.run, safe=""), tag=quote(event.tag, safe=""), rule=event.rule)
