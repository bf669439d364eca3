"""Alertmanager: POST /api/v2/alerts, the way Prometheus does it.

Routing, grouping, silences, inhibition, PagerDuty/Opsgenie/e-mail receivers
are Alertmanager's job; gradwatch only keeps Alertmanager's view of its
alerts current:

* a firing alert is sent with ``endsAt = now + 4 * resend_interval`` and must
  be re-sent before that (``refresh``), or Alertmanager resolves it by itself;
  so if gradwatch dies, its alerts resolve within that time instead of firing
  forever;
* a resolved alert is sent with ``endsAt`` = when it resolved; but an alert
  that fired and resolved within one group (a crossing and its recovery read
  in one batch) is sent firing with ``endsAt = now + min_firing``: Alertmanager
  pages only for alerts still firing when its group_wait ends, so an alert it
  first hears of as resolved would never reach anyone;
* severity is a label, so an escalation warning -> critical ends the warning
  alert and starts the critical one (two label sets, as in Prometheus rules);
* several URLs (an HA cluster) all receive every request. A request counts as
  delivered when at least one member accepted it (members share
  notification logs, so the cluster notifies once); a member that was down
  gets the firing alerts at the next refresh, and drops stale ones at their
  ``endsAt``. ``url_status`` tells the outcome per member.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gradwatch.alerts import DEESCALATED, ESCALATED, RESOLVED, AlertEvent
from gradwatch.config.channels import DEFAULT_MIN_FIRING, DEFAULT_RESEND, LABEL_NAME
from gradwatch.config.secrets import Secret, secret_url
from gradwatch.fmt import rfc3339
from gradwatch.notify.base import DeliveryError, Notifier, make_session, post
from gradwatch.notify.payloads import event_annotations, render_link, request_headers

log = logging.getLogger("gradwatch.notify.alertmanager")

API_PATH = "/api/v2/alerts"
ENDS_AFTER_RESENDS = 4  # Prometheus: endsAt = 4 x max(resend delay, evaluation interval)
_LABEL = LABEL_NAME


def api_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


def label_name(name: str) -> str:
    """A valid Prometheus label name (Alertmanager rejects the whole request otherwise)."""
    if _LABEL.match(name):
        return name
    fixed = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return fixed if _LABEL.match(fixed) else "_" + fixed


class AlertmanagerNotifier(Notifier):
    type = "alertmanager"
    default_group_wait = 0.0  # Alertmanager groups (group_wait) itself
    wants_refresh = True

    def __init__(
        self,
        name: str,
        urls: list[Secret],
        *,
        labels: dict[str, str] | None = None,
        generator_url: str | None = None,
        resend_interval: float = DEFAULT_RESEND,
        min_firing: float = DEFAULT_MIN_FIRING,
        headers: dict[str, Secret] | None = None,
        bearer_token: Secret | None = None,
        **common: Any,
    ) -> None:
        super().__init__(name, **common)
        if not urls:
            raise ValueError("at least one Alertmanager URL is needed")
        self.urls = [secret_url(api_url(u.reveal())) for u in urls]
        self.labels = {label_name(k): v for k, v in (labels or {}).items()}
        self.generator_url = generator_url
        self.resend_interval = resend_interval
        self.min_firing = min_firing
        self.headers = headers or {}
        self.bearer_token = bearer_token
        # per member: {"ok": bool, "error": str | None, "at": epoch seconds}
        self.url_status: dict[str, dict[str, Any]] = {str(u): {"ok": None, "error": None} for u in self.urls}
        # one Session per member: requests' Sessions are not meant to be shared across threads
        self._sessions = [make_session() for _ in self.urls]
        self._pool = ThreadPoolExecutor(len(self.urls), f"am-{name}") if len(self.urls) > 1 else None
        self._lock = threading.Lock()
        self._last_refresh = 0.0
        # per alert, the (lifecycle start, seq) of the newest event sent: a refresh must not
        # re-fire an ended lifecycle, and a new lifecycle (seq from 1 again) must be refreshed
        self._last_sent: dict[str, tuple[float, int]] = {}

    # alerts_for folds a group's transitions into the state Alertmanager should hold; split in
    # two sends, a crossing and its recovery would reach Alertmanager as fired then resolved at
    # once (its Merge keeps the longer endsAt of a firing alert), and page nobody
    one_state_per_alert = False

    def target(self) -> str:
        return ", ".join(str(u) for u in self.urls)

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- payload -------------------------------------------------------------------
    def _alert(self, e: AlertEvent, severity: str, ends_at: float, now: float) -> dict[str, Any]:
        labels = {label_name(k): v for k, v in e.labels.items()}
        labels.update(self.labels)
        labels.update(alertname=e.rule, severity=severity, run=e.run, tag=e.tag)
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": event_annotations(e),
            "startsAt": rfc3339(min(e.starts_at, now) if e.starts_at else now),
            "endsAt": rfc3339(ends_at),
        }
        link = render_link(self.generator_url, e)
        if link:
            out["generatorURL"] = link
        return out

    def alerts_for(self, events: list[AlertEvent], now: float) -> list[dict[str, Any]]:
        """The v2 alerts that bring Alertmanager to the state after ``events`` (in order)."""
        firing_until = now + ENDS_AFTER_RESENDS * self.resend_interval
        state: dict[str, dict[str, Any]] = {}
        fresh: set[str] = set()  # label sets first fired in this batch (Alertmanager never saw them)

        def key(alert: dict[str, Any]) -> str:
            return json.dumps(alert["labels"], sort_keys=True)

        def fire(e: AlertEvent) -> None:
            alert = self._alert(e, e.severity, firing_until, now)
            if key(alert) not in state:
                fresh.add(key(alert))
            state[key(alert)] = alert

        def end(e: AlertEvent, severity: str, at: float, superseded: bool = False) -> None:
            alert = self._alert(e, severity, at, now)
            k = key(alert)
            if k not in fresh:
                state[k] = alert
            elif superseded:
                # a severity replaced within one batch by one that fires: only that one matters
                del state[k]
                fresh.discard(k)
            else:
                # fired and ended within this batch: resolved at once, it would page nobody
                state[k]["endsAt"] = rfc3339(now + self.min_firing)

        for e in events:
            if e.kind == RESOLVED:
                end(e, e.severity, e.ends_at or now)
            elif e.kind in (ESCALATED, DEESCALATED):
                replaced = not self.below_min(e)
                if e.previous and self.rank_of(e.previous) >= self.min_rank:
                    end(e, e.previous, now, superseded=replaced)  # the old severity's alert ends here
                if replaced:
                    fire(e)
            else:
                fire(e)
        return list(state.values())

    # -- delivery ------------------------------------------------------------------
    def send(self, events: list[AlertEvent]) -> None:
        if not events:
            return
        now = time.time()
        self._post(self.alerts_for(events, now))
        with self._lock:
            for e in events:
                self._last_sent[e.key] = max(self._last_sent.get(e.key, (0.0, 0)), _lifecycle(e))

    def refresh_due(self, now: float) -> bool:
        return now - self._last_refresh >= self.resend_interval

    def refresh(self, events: list[AlertEvent], now: float) -> None:
        """Re-send currently firing alerts so Alertmanager keeps them (call every resend_interval).

        ``events``: the latest event of each alert the daemon considers firing.
        An event older than what this channel already sent for its alert is
        skipped, so a refresh taken just before a resolve cannot re-fire it.
        Order is (lifecycle start, seq): an alert that fires again starts a
        new lifecycle whose seq counts from 1, and is refreshed.
        """
        self._last_refresh = now
        fresh = []
        with self._lock:
            for e in events:
                if e.kind == RESOLVED or not super().accepts(e) or self.below_min(e):
                    continue
                if _lifecycle(e) < self._last_sent.get(e.key, (0.0, 0)):
                    continue
                fresh.append(e)
        if not fresh:
            return
        firing_until = now + ENDS_AFTER_RESENDS * self.resend_interval
        self._post([self._alert(e, e.severity, firing_until, now) for e in fresh])

    def _post(self, alerts: list[dict[str, Any]]) -> None:
        body = json.dumps(alerts).encode()
        headers = request_headers(self.headers, self.bearer_token)

        def one(i: int) -> DeliveryError | None:
            try:
                post(
                    self._sessions[i],
                    self.urls[i],
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    secrets=[self.bearer_token, *self.headers.values()],
                )
            except DeliveryError as e:
                return e
            return None

        # in parallel: a member that hangs must not delay the others
        members = range(len(self.urls))
        results = [one(0)] if self._pool is None else list(self._pool.map(one, members))
        errors = []
        for url, err in zip(self.urls, results):
            self._record(str(url), err)
            if err is not None:
                errors.append(err)
        if len(errors) < len(self.urls):
            return
        if len(errors) == 1:
            raise errors[0]
        retry_after = [e.retry_after for e in errors if e.retry_after is not None]
        raise DeliveryError(
            "no Alertmanager accepted the alerts: " + "; ".join(e.message for e in errors),
            retry_after=max(retry_after) if retry_after else None,
            permanent=all(e.permanent for e in errors),
        )

    def _record(self, url: str, err: DeliveryError | None) -> None:
        status = self.url_status[url]
        was_ok = status["ok"]
        status.update(ok=err is None, error=err.message if err else None, at=time.time())
        # log changes, not every attempt: a member down for an hour is one line, not 60
        if err is not None and was_ok is not False and len(self.urls) > 1:
            log.warning("%s: Alertmanager %s failed, others still receive: %s", self.name, url, err.message)
        elif err is None and was_ok is False:
            log.info("%s: Alertmanager %s accepts alerts again", self.name, url)


def _lifecycle(e: AlertEvent) -> tuple[float, int]:
    """Orders the events of one alert across lifecycles: when it started firing, then seq."""
    return (e.starts_at, e.seq)
