"""What the channels put in their requests: Alertmanager-shaped alerts, annotations, links, headers.

Generic webhooks carry Alertmanager's webhook JSON (version "4") and the
Alertmanager channel its v2 API alerts: both are built from
:func:`alert_payload` / :func:`event_annotations`, so a receiver written for
Alertmanager reads either. Values are spelled by ``fmt.human_or_na``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from gradwatch.alerts import AlertEvent
from gradwatch.config.secrets import Secret
from gradwatch.fmt import human_or_na, rfc3339

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alertmanager sends as endsAt of a firing alert


def latest_per_alert(events: Iterable[AlertEvent]) -> list[AlertEvent]:
    """The last event of each alert, in order of first appearance (state, not history)."""
    out: dict[str, AlertEvent] = {}
    for e in events:
        out[e.key] = e
    return list(out.values())


# a channel's spelling of a value or threshold: fmt's, the one every output uses
format_value = human_or_na


def event_annotations(e: AlertEvent) -> dict[str, str]:
    """The event's annotations plus value, step and threshold (Alertmanager-shaped payloads)."""
    annotations = dict(e.annotations)
    annotations.setdefault("value", format_value(e.value))
    annotations.setdefault("step", str(e.step))
    if e.threshold is not None:
        annotations.setdefault("threshold", format_value(e.threshold))
    return annotations


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


def alert_payload(e: AlertEvent, status: str, generator_url: str, now: float) -> dict[str, Any]:
    """One entry of ``alerts`` in Alertmanager's webhook and v2 API shapes."""
    return {
        "status": status,
        "labels": dict(e.labels),
        "annotations": event_annotations(e),
        "startsAt": rfc3339(e.starts_at),
        "endsAt": rfc3339(e.ends_at or now) if status == "resolved" else ZERO_TIME,
        "generatorURL": generator_url,
        "fingerprint": e.fingerprint,
    }


def common_items(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    out = dict(maps[0])
    for m in maps[1:]:
        out = {k: v for k, v in out.items() if m.get(k) == v}
    return out
