"""Generic webhook: Alertmanager's webhook JSON (version "4"), optionally signed.

Receivers written for Alertmanager (alert bridges, chat relays, ticket
creators) take gradwatch's notifications unchanged. A group is one run, so
``groupLabels`` is ``{"run": ...}``.

Signature (``hmac_secret``): the headers ``X-Gradwatch-Timestamp: <unix
seconds>`` and ``X-Gradwatch-Signature: sha256=<hex>``, where hex is
HMAC-SHA256(secret, timestamp + "." + body). See docs/notifications.md for
how to verify it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from gradwatch.alerts import AlertEvent
from gradwatch.config.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER
from gradwatch.config.secrets import Secret
from gradwatch.notify.base import DeliveryError, Notifier, make_session, post
from gradwatch.notify.payloads import (
    alert_payload,
    common_items,
    latest_per_alert,
    render_link,
    request_headers,
)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes | str, headers: Mapping[str, str], body: bytes, max_skew: float = 300.0) -> bool:
    """What a receiver does with a request: the call docs/notifications.md documents.

    ``headers``: the request's headers (any mapping; names in any case);
    ``body``: the raw bytes received. False when a header is missing, the
    signature differs (compared in constant time) or the timestamp is more
    than ``max_skew`` seconds away (a replayed request).
    """
    found = {k.lower(): v for k, v in headers.items()}
    timestamp = found.get(TIMESTAMP_HEADER.lower())
    signature = found.get(SIGNATURE_HEADER.lower())
    if timestamp is None or signature is None:
        return False
    key = secret.encode() if isinstance(secret, str) else secret
    return verify_signature(key, timestamp, body, signature, max_skew)


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, signature: str, max_skew: float = 300.0
) -> bool:
    """:func:`verify` from the two header values (the arguments ``verify`` took before it took headers)."""
    try:
        skew = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return skew <= max_skew and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier(Notifier):
    type = "webhook"
    default_group_wait = 2.0

    def __init__(
        self,
        name: str,
        url: Secret,
        *,
        headers: dict[str, Secret] | None = None,
        bearer_token: Secret | None = None,
        hmac_secret: Secret | None = None,
        max_alerts: int = 0,
        generator_url: str | None = None,
        external_url: str = "",
        **common: Any,
    ) -> None:
        super().__init__(name, **common)
        self.url = url
        self.headers = headers or {}
        self.bearer_token = bearer_token
        self.hmac_secret = hmac_secret
        self.max_alerts = max_alerts
        self.generator_url = generator_url
        self.external_url = external_url
        self._session = make_session()

    def target(self) -> str:
        return str(self.url)

    def close(self) -> None:
        self._session.close()

    def payload(self, events: list[AlertEvent], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        latest = latest_per_alert(events)
        alerts = []
        for e in latest:
            alerts.append(alert_payload(e, self.status_for(e), render_link(self.generator_url, e), now))
        truncated = 0
        if self.max_alerts and len(alerts) > self.max_alerts:
            truncated = len(alerts) - self.max_alerts
            alerts = alerts[: self.max_alerts]
        run = latest[0].run if latest else ""
        return {
            "receiver": self.name,
            "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
            "alerts": alerts,
            "groupLabels": {"run": run},
            "commonLabels": common_items([a["labels"] for a in alerts]),
            "commonAnnotations": common_items([a["annotations"] for a in alerts]),
            "externalURL": self.external_url,
            "version": "4",
            "groupKey": "{}:{run=" + json.dumps(run) + "}",
            "truncatedAlerts": truncated,
        }

    def send(self, events: list[AlertEvent]) -> None:
        """One request per status change: a crossing and its recovery in one group are two requests."""
        delivered = 0
        for part in self.status_changes(events):
            try:
                self._post(part)
            except DeliveryError as e:
                e.delivered = delivered  # the outbox marks those sent and retries the rest
                raise
            delivered += len(part)

    def _post(self, events: list[AlertEvent]) -> None:
        body = json.dumps(self.payload(events), allow_nan=False).encode()
        headers = request_headers(self.headers, self.bearer_token)
        if self.hmac_secret is not None:
            ts = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(self.hmac_secret.reveal().encode(), ts, body)
        post(
            self._session,
            self.url,
            data=body,
            headers=headers,
            timeout=self.timeout,
            secrets=[self.bearer_token, self.hmac_secret, *self.headers.values()],
        )
