"""The ``notifiers:`` list of ``gradwatch.yaml`` -> one typed config per channel (data only).

Every key is read and checked here, once, when the config loads: a bad value,
an unset ``${ENV}`` or a duplicate name is a ``file:line`` problem, and
secrets are read into :class:`~gradwatch.config.secrets.Secret` values. No
notifier is built here: ``gradwatch.notify.registry.build_notifiers`` turns
these configs into channels (the daemon builds new ones on reload and closes
the old).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from gradwatch.config.secrets import Secret, expand, get_headers, get_secret, secret_url, url_problem
from gradwatch.config.yaml import Section
from gradwatch.severity import SEVERITY_NAMES

TYPES = ("slack", "webhook", "alertmanager", "console")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
DEFAULT_TIMEOUT = 10.0
MAX_GROUP_WAIT = 3600.0

# alertmanager
DEFAULT_RESEND = 60.0
# longer than Alertmanager's default group_wait (30s), so it pages before the alert ends
DEFAULT_MIN_FIRING = 60.0
RESERVED_LABELS = ("alertname", "severity", "run", "tag")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# webhook signature headers (notify/webhook.py sets them)
TIMESTAMP_HEADER = "X-Gradwatch-Timestamp"
SIGNATURE_HEADER = "X-Gradwatch-Signature"
# headers gradwatch sets on JSON POSTs: a user header of that name would be overwritten
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host"})
WEBHOOK_RESERVED_HEADERS = RESERVED_HEADERS | {TIMESTAMP_HEADER.lower(), SIGNATURE_HEADER.lower()}

LINK_FIELDS = ("run", "tag", "rule")
CONSOLE_FORMATS = ("auto", "line", "block", "json")


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """The keys every channel has. ``group_wait`` None: the channel type's default."""

    type: ClassVar[str] = "?"

    name: str
    min_severity: str = "info"
    rules: list[str] | None = None
    runs: list[str] | None = None
    tags: list[str] | None = None
    send_resolved: bool = True
    group_wait: float | None = None
    repeat_interval: float | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_age: float | None = None

    def common(self) -> dict[str, Any]:
        """The keyword arguments every ``Notifier`` takes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ChannelConfig)}

    def options(self) -> dict[str, Any]:
        """The keyword arguments of this channel type only."""
        shared = {f.name for f in dataclasses.fields(ChannelConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in shared}


@dataclass(frozen=True, kw_only=True)
class SlackConfig(ChannelConfig):
    type = "slack"
    url: Secret
    mention: str | None = None
    generator_url: str | None = None
    username: str | None = None
    icon_emoji: str | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookConfig(ChannelConfig):
    type = "webhook"
    url: Secret
    headers: dict[str, Secret] = dataclasses.field(default_factory=dict)
    bearer_token: Secret | None = None
    hmac_secret: Secret | None = None
    max_alerts: int = 0
    generator_url: str | None = None
    external_url: str = ""


@dataclass(frozen=True, kw_only=True)
class AlertmanagerConfig(ChannelConfig):
    type = "alertmanager"
    urls: list[Secret]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    generator_url: str | None = None
    resend_interval: float = DEFAULT_RESEND
    min_firing: float = DEFAULT_MIN_FIRING
    headers: dict[str, Secret] = dataclasses.field(default_factory=dict)
    bearer_token: Secret | None = None


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig(ChannelConfig):
    type = "console"
    fmt: str = "auto"
    colour: bool | None = None


# -- reading one channel's own keys ---------------------------------------------------


def _slack(sec: Section, common: dict[str, Any]) -> SlackConfig | None:
    url = get_secret(sec, "url", required=True, url=True)
    mention = sec.string("mention")
    generator_url = link_template(sec)
    username = sec.string("username")
    icon_emoji = sec.string("icon_emoji")
    if icon_emoji is not None and not (icon_emoji.startswith(":") and icon_emoji.endswith(":")):
        sec.error("icon_emoji", "expected an emoji name like :rotating_light:")
    if url is None:
        return None
    return SlackConfig(
        url=url,
        mention=mention,
        generator_url=generator_url,
        username=username,
        icon_emoji=icon_emoji,
        **common,
    )


def _webhook(sec: Section, common: dict[str, Any]) -> WebhookConfig | None:
    url = get_secret(sec, "url", required=True, url=True)
    headers = get_headers(sec)
    check_headers(sec, headers, WEBHOOK_RESERVED_HEADERS)
    bearer = get_secret(sec, "bearer_token")
    secret = get_secret(sec, "hmac_secret")
    max_alerts = sec.integer("max_alerts", default=0)
    generator_url = link_template(sec)
    external_url = sec.string("external_url", default="")
    if url is None:
        return None
    return WebhookConfig(
        url=url,
        headers=headers,
        bearer_token=bearer,
        hmac_secret=secret,
        max_alerts=max_alerts or 0,
        generator_url=generator_url,
        external_url=external_url or "",
        **common,
    )


def _alertmanager_urls(sec: Section) -> list[Secret]:
    """``url``/``url_file`` (one Alertmanager) or ``urls`` (an HA cluster), never both."""
    urls: list[Secret] = []
    if sec.has("urls") and (sec.has("url") or sec.has("url_file")):
        sec.error("urls", "give either 'url' or 'urls', not both")
    elif sec.has("urls"):
        raw = sec.raw("urls")
        if not isinstance(raw, list) or not raw:
            sec.error("urls", "expected a list of Alertmanager URLs")
        else:
            urls = [u for i, item in enumerate(raw) if (u := _url_item(sec, i, item)) is not None]
    else:
        one = get_secret(sec, "url", required=False, url=True)
        if one is not None:
            urls.append(one)
        elif not sec.has("url") and not sec.has("url_file"):
            sec.error("", "missing required key 'url' (or 'urls' for several Alertmanagers)")
    return urls


def _url_item(sec: Section, i: int, item: Any) -> Secret | None:
    if not isinstance(item, str) or not item:
        sec.error("urls", f"item {i + 1}: expected a URL string")
        return None
    try:
        value = expand(item)
    except KeyError as e:
        sec.error("urls", f"item {i + 1}: environment variable {e.args[0]} is not set or is empty")
        return None
    problem = url_problem(value)
    if problem:
        sec.error("urls", f"item {i + 1}: {problem}")
        return None
    return secret_url(value)


def _alertmanager(sec: Section, common: dict[str, Any]) -> AlertmanagerConfig | None:
    urls = _alertmanager_urls(sec)
    labels = sec.mapping("labels")
    for k in labels:
        if not LABEL_NAME.match(k):
            sec.error("labels", f"{k!r} is not a valid label name ([A-Za-z_][A-Za-z0-9_]*)")
        elif k in RESERVED_LABELS:
            sec.error("labels", f"'{k}' is set by gradwatch from the alert itself")
    resend = sec.duration("resend_interval", default=DEFAULT_RESEND)
    if resend is not None and resend < 1:
        sec.error("resend_interval", "at least 1s")
    min_firing = sec.duration("min_firing", default=DEFAULT_MIN_FIRING)
    if min_firing is not None and min_firing <= 0:
        sec.error("min_firing", "must be more than 0")
        min_firing = None
    generator_url = link_template(sec)
    headers = get_headers(sec)
    check_headers(sec, headers)
    bearer = get_secret(sec, "bearer_token")
    if not urls:
        return None
    return AlertmanagerConfig(
        urls=urls,
        labels=labels,
        generator_url=generator_url,
        resend_interval=max(1.0, resend or DEFAULT_RESEND),
        min_firing=min_firing or DEFAULT_MIN_FIRING,
        headers=headers,
        bearer_token=bearer,
        **common,
    )


def _console(sec: Section, common: dict[str, Any]) -> ConsoleConfig:
    fmt = sec.choice("format", CONSOLE_FORMATS, default="auto")
    return ConsoleConfig(fmt=fmt, colour=sec.boolean("colour"), **common)


_READERS: dict[str, Callable[[Section, dict[str, Any]], ChannelConfig | None]] = {
    "slack": _slack,
    "webhook": _webhook,
    "alertmanager": _alertmanager,
    "console": _console,
}


# -- the keys every channel has, and the list ------------------------------------------


def read_common(sec: Section) -> dict[str, Any] | None:
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
    group_wait = sec.duration("group_wait")
    repeat_interval = sec.duration("repeat_interval")
    timeout = sec.duration("timeout", default=DEFAULT_TIMEOUT)
    if timeout is not None and timeout <= 0:
        sec.error("timeout", "must be more than 0")
        timeout = DEFAULT_TIMEOUT
    max_age = sec.duration("max_age")
    if max_age is not None and max_age <= 0:
        sec.error("max_age", "must be more than 0")
        max_age = None
    if group_wait is not None and group_wait > MAX_GROUP_WAIT:
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


def read_channels(sections: list[Section]) -> list[ChannelConfig]:
    """Typed configs from the items of the ``notifiers:`` list.

    Problems (unknown keys, bad values, unset ``${ENV}``, duplicate names) go
    to each Section's problem list; the caller raises ConfigError when any.
    Items with problems are left out of the result.
    """
    out: list[ChannelConfig] = []
    seen: dict[str, int] = {}
    for sec in sections:
        before = len(sec.problems)
        kind = sec.choice("type", TYPES, required=True)
        common = read_common(sec)
        channel = _READERS[kind](sec, common) if kind is not None and common is not None else None
        sec.finish()
        if common is not None:
            name = common["name"]
            if name in seen:
                sec.error("name", f"channel name '{name}' is already used on line {seen[name]}")
                continue
            seen[name] = sec.line_of("name")
        if channel is not None and len(sec.problems) == before:
            out.append(channel)
    return out


# -- checks shared by the HTTP channels ------------------------------------------------


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


def check_headers(
    sec: Section, headers: dict[str, Secret], reserved: frozenset[str] = RESERVED_HEADERS
) -> None:
    for h in headers:
        if h.lower() in reserved or (h.lower() == "authorization" and sec.has("bearer_token")):
            sec.error("headers", f"{h}: gradwatch sets this header itself")
