"""Slack incoming webhooks: one Block Kit message per group, within Slack's limits.

Every string that comes from a metric (run and tag names, rendered
annotations) is escaped for mrkdwn; ``&``, ``<``, ``>`` and only those, so a
run called ``exp<1>`` can neither create a link nor ping ``@channel``. Run and
tag names always sit in a code span (see ``code``), which nothing in a name
can end, so ``*``, ``_`` and backticks in them show literally.
Messages respect Slack's limits by construction: long texts are cut before
escaping (never through an ``&amp;``), and a group with many alerts becomes a
summary list instead of one section per alert.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gradwatch.alerts import DEESCALATED, ESCALATED, RESOLVED, AlertEvent
from gradwatch.config.secrets import Secret
from gradwatch.fmt import escape as fmt_escape
from gradwatch.fmt import rfc3339
from gradwatch.notify.base import DeliveryError, Notifier, make_session, post
from gradwatch.notify.payloads import format_value, render_link

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
FIELDS_MAX = 10
BLOCKS_MAX = 50
TEXT_MAX = 3000  # the top-level fallback: Slack truncates long ones; keep notifications short
DETAIL_MAX = 8  # alerts shown one section each; more become a summary list
RECOMMENDATIONS_MAX = 3

ICON = {"critical": "\U0001f534", "warning": "\U0001f7e0", "info": "\U0001f535", "resolved": "\u2705"}


def escape(text: str) -> str:
    """mrkdwn escaping: ``&`` first (so the others are not double-escaped), then ``<``, ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fit(raw: str, limit: int, esc: bool = True) -> str:
    """``raw`` escaped (if ``esc``) and at most ``limit`` characters, cut in the raw text.

    Cutting the raw string and escaping afterwards can never leave half an
    entity like ``&am`` behind.
    """
    out = escape(raw) if esc else raw
    if len(out) <= limit:
        return out
    lo, hi = 0, len(raw)
    # the longest prefix whose escaped form plus the ellipsis fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = escape(raw[:mid]) if esc else raw[:mid]
        if len(candidate) + 1 <= limit:
            lo = mid
        else:
            hi = mid - 1
    return (escape(raw[:lo]) if esc else raw[:lo]) + "\u2026"


# Slack's mrkdwn has no escape for a backtick: one inside a code span ends it, and the
# rest of the name is read as markup (*bold*, _italic_, a second span). In metric-derived
# text a backtick is shown as U+02CB, which looks the same; everything else (line breaks,
# bidi marks, undecodable bytes) is shown as fmt.escape shows it in the console and logs.
def _neutral(raw: str) -> str:
    return fmt_escape(raw).replace("`", "\u02cb")


def code(raw: str, limit: int = 300) -> str:
    """A run/tag name in a code span (keeps ``_`` and ``*`` literal), escaped; nothing in it can end it."""
    return f"`{fit(_neutral(raw), limit - 2)}`"


def free_text(raw: str, limit: int) -> str:
    """Metric-derived free text (rendered annotations): escaped, cut, unable to open a code span."""
    return fit(_neutral(raw), limit)


class SlackNotifier(Notifier):
    type = "slack"
    default_group_wait = 2.0
    min_interval = 1.0

    def __init__(
        self,
        name: str,
        url: Secret,
        *,
        mention: str | None = None,
        generator_url: str | None = None,
        username: str | None = None,
        icon_emoji: str | None = None,
        **common: Any,
    ) -> None:
        super().__init__(name, **common)
        self.url = url
        self.mention = mention
        self.generator_url = generator_url
        self.username = username
        self.icon_emoji = icon_emoji
        self._session = make_session()

    def target(self) -> str:
        return str(self.url)

    def pace_key(self) -> str:
        # Slack's limit is one message per second per webhook URL, whichever channel sends it
        return "slack " + hashlib.sha256(self.url.reveal().encode()).hexdigest()

    def close(self) -> None:
        self._session.close()

    def send(self, events: list[AlertEvent]) -> None:
        if not events:
            return
        payload = self.message(events)
        body = json.dumps(payload).encode()
        try:
            post(
                self._session,
                self.url,
                data=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=self.timeout,
                secrets=[],
            )
        except DeliveryError as e:
            if e.status == 429 and e.retry_after is None:
                e.retry_after = 1.0  # Slack always sends Retry-After; if a proxy ate it, wait a second
            raise

    # -- formatting ----------------------------------------------------------------
    def message(self, events: list[AlertEvent]) -> dict[str, Any]:
        """The JSON payload: ``text`` (notification fallback) and ``blocks``."""
        blocks: list[dict[str, Any]] = [self._header(events)]
        if self.mention and any(self._status(e) != "resolved" for e in events):
            # in the message too: with blocks, ``text`` is only the notification
            blocks.append(_section(self.mention))
        if len(events) <= DETAIL_MAX:
            blocks.extend(self._detail(e) for e in events)
        else:
            blocks.append(self._summary(events))
        recs: list[str] = []
        for e in events:
            rec = e.annotations.get("recommendation")
            if rec and rec not in recs and e.kind != RESOLVED:
                recs.append(rec)
        for rec in recs[:RECOMMENDATIONS_MAX]:
            blocks.append(_fitted_section(rec, prefix=":bulb: *Recommendation:* "))
        blocks.append(self._context(events))
        payload: dict[str, Any] = {"text": self._fallback(events), "blocks": blocks[:BLOCKS_MAX]}
        if self.username:
            payload["username"] = self.username
        if self.icon_emoji:
            payload["icon_emoji"] = self.icon_emoji
        return payload

    def _status(self, e: AlertEvent) -> str:
        if e.kind == RESOLVED or self.below_min(e):
            return "resolved"
        return e.severity

    def _header(self, events: list[AlertEvent]) -> dict[str, Any]:
        # plain_text: not parsed for markup, so only config-derived words go here
        statuses = [self._status(e) for e in events]
        top = max(statuses, key=lambda s: self.rank_of(s) if s != "resolved" else -1)
        rules = sorted({e.rule for e in events})
        what = rules[0] if len(rules) == 1 else f"{len(rules)} rules"
        if len(events) > 1:
            what = f"{len(events)} alerts: {what}"
        word = "RESOLVED" if top == "resolved" else top.upper()
        catchup = " (catch-up)" if any(e.catchup for e in events) else ""
        text = fit(f"{ICON.get(top, '')} {word}: {what}{catchup}", HEADER_MAX, esc=False)
        return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}

    def _detail(self, e: AlertEvent) -> dict[str, Any]:
        summary = e.annotations.get("summary") or f"{e.rule} on {e.run}/{e.tag}"
        head = self._kind_word(e)
        fields = [
            ("Run", code(e.run)),
            ("Tag", code(e.tag)),
            ("Step", f"{e.step:,}"),
            ("Value", fit(format_value(e.value), 100)),
            ("Threshold", fit(e.annotations.get("threshold") or format_value(e.threshold), 100)),
            ("Severity", self._severity_text(e)),
        ]
        link = render_link(self.generator_url, e)
        if link:
            fields.append(("Link", f"<{link}|open>"))
        block = _fitted_section(summary, prefix=f"*{head}* ")
        block["fields"] = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields[:FIELDS_MAX]]
        return block

    def _kind_word(self, e: AlertEvent) -> str:
        if e.kind == RESOLVED or self.below_min(e):
            return "Resolved:"
        return {ESCALATED: "Escalated:", DEESCALATED: "De-escalated:"}.get(e.kind, "Firing:")

    @staticmethod
    def _severity_text(e: AlertEvent) -> str:
        if e.kind in (ESCALATED, DEESCALATED) and e.previous:
            return f"{e.severity} (was {e.previous})"
        return e.severity

    def _summary(self, events: list[AlertEvent]) -> dict[str, Any]:
        # whole escaped lines only: the list ends with a count, never mid-entity
        intro = f"*{len(events)} alerts on run* {code(events[0].run)}\n"
        lines: list[str] = []
        used = len(intro)
        for i, e in enumerate(events):
            line = (
                f"\u2022 {code(e.tag, 200)} = {fit(format_value(e.value), 60)} at step {e.step:,}"
                f" ({self._status(e)}, {fit(e.rule, 100)})\n"
            )
            rest = len(events) - i
            # room for this line and for the "...and N more" that may follow it
            if used + len(line) + len(f"\u2026and {rest} more") > SECTION_MAX and lines:
                lines.append(f"\u2026and {rest} more")
                break
            lines.append(line)
            used += len(line)
        return _section(intro + "".join(lines).rstrip("\n"))

    def _context(self, events: list[AlertEvent]) -> dict[str, Any]:
        first = min(e.starts_at for e in events)
        text = f"gradwatch \u00b7 run {code(events[0].run, 200)} \u00b7 since {rfc3339(first)}"
        return {"type": "context", "elements": [{"type": "mrkdwn", "text": fit(text, 2000, esc=False)}]}

    def _fallback(self, events: list[AlertEvent]) -> str:
        mention = ""
        if self.mention and any(self._status(e) != "resolved" for e in events):
            mention = self.mention + " "
        if len(events) == 1:
            e = events[0]
            summary = e.annotations.get("summary") or f"{e.rule} on {e.run}/{e.tag}"
            word = "RESOLVED" if self._status(e) == "resolved" else e.severity.upper()
            head = mention + f"[{word}] {fit(e.rule, 200)}: "
            return head + free_text(summary, TEXT_MAX - 250 - len(mention))
        rules = ", ".join(sorted({e.rule for e in events}))
        firing = sum(self._status(e) != "resolved" for e in events)
        resolved = len(events) - firing
        parts = [f"{firing} firing"] if firing else []
        if resolved:
            parts.append(f"{resolved} resolved")
        head = f"{len(events)} alerts on run {code(events[0].run, 200)} "
        return mention + head + fit(f"({', '.join(parts)}): {rules}", TEXT_MAX - len(mention) - len(head))


def _section(text: str, prefix: str = "") -> dict[str, Any]:
    # callers size ``text`` with fit(); slicing here could cut through an entity
    return {"type": "section", "text": {"type": "mrkdwn", "text": prefix + text}}


def _fitted_section(raw: str, prefix: str) -> dict[str, Any]:
    """A section of metric-derived ``raw`` text, escaped and cut to fit beside ``prefix``."""
    return _section(free_text(raw, SECTION_MAX - len(prefix)), prefix)
