"""Generic webhook: Alertmanager's v4 JSON, bearer token, custom headers, HMAC signature, timeouts."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import sqlite3
import time
from pathlib import Path

import pytest
from receivers import Receiver, Response, crossing_and_recovery, make_event

from gradwatch.config.secrets import Secret, secret_url
from gradwatch.notify.base import DeliveryError
from gradwatch.notify.outbox import Outbox
from gradwatch.notify.webhook import WebhookNotifier, verify, verify_signature

# the keys of the request Alertmanager 0.25 sent to a webhook (docs: ECOSYSTEM.md 1c)
AM_TOP_KEYS = {
    "receiver",
    "status",
    "alerts",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "version",
    "groupKey",
    "truncatedAlerts",
}
AM_ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


@pytest.fixture
def hook():
    with Receiver() as r:
        yield r


def test_v4_payload_shape_and_values(hook):
    n = WebhookNotifier(
        "ops-hook",
        secret_url(hook.url()),
        generator_url="http://tb.example:6006/?run={run}",
        external_url="http://gradwatch.example:9108",
    )
    start = time.time() - 60
    events = [
        make_event(tag="grad/a", starts_at=start, labels={"team": "rl"}),
        make_event(tag="grad/b", starts_at=start, labels={"team": "rl"}, kind="resolved", seq=4),
    ]
    n.send(events)
    body = hook.wait_for(1)[0].json
    assert set(body) == AM_TOP_KEYS
    assert body["version"] == "4" and body["receiver"] == "ops-hook" and body["status"] == "firing"
    assert body["groupLabels"] == {"run": "exp1"} and body["groupKey"] == '{}:{run="exp1"}'
    assert body["commonLabels"] == {
        "alertname": "GradientExplosion",
        "severity": "critical",
        "run": "exp1",
        "team": "rl",
    }
    assert body["externalURL"] == "http://gradwatch.example:9108" and body["truncatedAlerts"] == 0
    a, b = body["alerts"]
    assert set(a) == AM_ALERT_KEYS and set(b) == AM_ALERT_KEYS
    assert a["status"] == "firing" and a["endsAt"] == "0001-01-01T00:00:00Z"
    assert b["status"] == "resolved"
    assert re.match(RFC3339, a["startsAt"]) and re.match(RFC3339, b["endsAt"])
    assert a["labels"]["tag"] == "grad/a" and a["annotations"]["value"] == "826,256"
    assert a["annotations"]["summary"].startswith("grad/a") and a["annotations"]["threshold"] == "50,000"
    assert a["generatorURL"] == "http://tb.example:6006/?run=exp1"
    assert a["fingerprint"] == events[0].fingerprint and a["fingerprint"] != b["fingerprint"]
    n.close()


def test_latest_state_per_alert_and_max_alerts(hook):
    n = WebhookNotifier("h", secret_url(hook.url()), max_alerts=2)
    events = [make_event(tag=f"t{i}", seq=1) for i in range(5)]
    events.append(make_event(tag="t0", kind="resolved", seq=2))  # same alert: only its latest state
    payload = n.payload(events)
    assert [a["labels"]["tag"] for a in payload["alerts"]] == ["t0", "t1"]
    assert payload["alerts"][0]["status"] == "resolved" and payload["truncatedAlerts"] == 3
    assert payload["status"] == "firing"
    n.close()


def test_bearer_custom_headers_and_hmac_signature(hook):
    secret = "hmac-key-123"
    n = WebhookNotifier(
        "h",
        secret_url(hook.url()),
        headers={"X-Team": Secret("rl")},
        bearer_token=Secret("tok-abc"),
        hmac_secret=Secret(secret),
    )
    n.send([make_event()])
    req = hook.wait_for(1)[0]
    assert req.header("Authorization") == "Bearer tok-abc" and req.header("X-Team") == "rl"
    ts, sig = req.header("X-Gradwatch-Timestamp"), req.header("X-Gradwatch-Signature")
    # verify as a receiver would, independently of gradwatch's helper
    expected = hmac.new(secret.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert sig == "sha256=" + expected
    assert abs(int(ts) - time.time()) < 300
    assert verify_signature(secret.encode(), ts, req.body, sig)
    assert not verify_signature(b"wrong", ts, req.body, sig)
    assert not verify_signature(secret.encode(), ts, req.body + b" ", sig)  # body tampered
    assert not verify_signature(secret.encode(), str(int(ts) - 3600), req.body, sig)  # replayed later
    n.close()


def test_error_classes(hook):
    n = WebhookNotifier("h", secret_url(hook.url("/hook/tok-s3cret")), timeout=5)
    hook.script(
        Response(401, "no"),
        Response(500, "x"),
        Response(503, "later", {"Retry-After": "7"}),
        Response(302, "", {"Location": "http://elsewhere/"}),
    )
    with pytest.raises(DeliveryError) as e1:
        n.send([make_event()])
    with pytest.raises(DeliveryError) as e2:
        n.send([make_event()])
    with pytest.raises(DeliveryError) as e3:
        n.send([make_event()])
    with pytest.raises(DeliveryError) as e4:
        n.send([make_event()])
    assert e1.value.permanent and "HTTP 401 no" in e1.value.message
    assert not e2.value.permanent and e2.value.retry_after is None
    assert not e3.value.permanent and e3.value.retry_after == 7
    assert e4.value.permanent and "redirects are not followed" in e4.value.message
    for e in (e1, e2, e3, e4):
        assert "s3cret" not in e.value.message
    n.close()


def test_receiver_that_times_out_is_retried_and_does_not_block_others(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with Receiver() as slow, Receiver() as fast:
        slow.script(Response(hang=True))
        n_slow = WebhookNotifier("slow", secret_url(slow.url()), timeout=1, group_wait=0)
        n_fast = WebhookNotifier("fast", secret_url(fast.url()), group_wait=0)
        db = str(tmp_path / "state.db")
        box = Outbox(db, [n_slow, n_fast], poll_interval=0.05, backoff_base=0.05)
        conn = sqlite3.connect(db)
        box.enqueue(conn, [make_event(run="r1")])
        conn.commit()
        box.start()
        slow.wait_for(1)  # the slow receiver holds its request
        box.enqueue(conn, [make_event(run="r2")])
        conn.commit()
        box.wake()
        fast.wait_for(2)  # the fast channel delivered both while the slow one waits
        slow.wait_for(2, timeout=10)  # the retry after the timeout gets 200
        assert box.wait_idle(10) and box.stop(5)
        assert box.stats()["slow"]["sent"] == 2 and box.stats()["slow"]["failed"] == 1
        assert "timed out after 1 s waiting for an answer" in caplog.text
        conn.close()


def statuses(hook: Receiver) -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        (r.json["status"], sorted((a["labels"]["alertname"], a["status"]) for a in r.json["alerts"]))
        for r in hook.requests
    ]


FIRED = ("firing", [("gradient_explosion", "firing"), ("gradient_growth", "firing")])
RESOLVED = ("resolved", [("gradient_explosion", "resolved"), ("gradient_growth", "resolved")])


def deliver_batch(tmp_path, hook: Receiver, run: str, requests: int) -> dict[str, int]:
    """A crossing and its recovery, queued in one transaction, through the outbox to ``hook``."""
    n = WebhookNotifier("h", secret_url(hook.url()), group_wait=0)
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05, backoff_base=0.05)
    conn = sqlite3.connect(db)
    box.enqueue(conn, crossing_and_recovery(run))
    conn.commit()
    box.start()
    hook.wait_for(requests)
    assert box.wait_idle(10) and box.stop(5)
    conn.close()
    return box.stats()["h"]


def test_a_crossing_and_its_recovery_in_one_batch_arrive_as_firing_then_resolved(tmp_path, hook):
    """Issue 8: the payload held each alert's latest state only, so the receiver saw just "resolved"."""
    stats = deliver_batch(tmp_path, hook, "one-batch", 2)
    assert statuses(hook) == [FIRED, RESOLVED]
    assert stats == {"sent": 4, "failed": 0, "dropped": 0, "queued": 0}


def test_when_the_resolve_request_fails_only_it_is_retried(tmp_path, hook):
    hook.script(Response(200), Response(503, "busy"))
    stats = deliver_batch(tmp_path, hook, "retry-half", 3)
    assert statuses(hook) == [FIRED, RESOLVED, RESOLVED]  # the firing half is not sent twice
    assert stats == {"sent": 4, "failed": 1, "dropped": 0, "queued": 0}


DOC = Path(__file__).resolve().parent.parent / "docs" / "notifications.md"


def documented_snippets(heading: str) -> list[str]:
    """The ```python blocks of one section of docs/notifications.md, as a reader would paste them."""
    text = DOC.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_documented_verify_calls_work_as_pasted(hook):
    """Issue 10: the docs said gradwatch's verify was the recipe's verify(secret, headers, body); it raised
    TypeError. Both snippets run as pasted on a real signed request."""
    recipe, imported = documented_snippets("### Verifying the signature")
    secret = b"hmac-key-123"
    n = WebhookNotifier("h", secret_url(hook.url()), hmac_secret=Secret(secret.decode()))
    n.send([make_event()])
    req = hook.wait_for(1)[0]
    for headers, body, expected in (
        (req.headers, req.body, True),
        (req.headers, req.body + b" ", False),  # body tampered
        ({k.lower(): v for k, v in req.headers.items()}, req.body, True),  # a framework that lowercases
    ):
        pasted: dict = {"secret": secret, "headers": headers, "body": body}
        exec(imported, pasted)
        assert pasted["ok"] is expected
        if headers is req.headers:  # the recipe indexes the headers as sent
            own: dict = {}
            exec(recipe, own)
            assert own["verify"](secret, headers, body) is expected
    assert not verify(secret, {}, req.body)  # unsigned: no exception, just no
    n.close()


class _HugeErrorReceiver:
    """Answers every POST with a 500 whose body is ``size`` bytes; counts the bytes the client
    accepted before it hung up (a small send buffer keeps that count close to what was read)."""

    def __init__(self, size: int) -> None:
        import socket
        import threading

        self.size, self.sent = size, 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import socket

        conn, _ = self._srv.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            conn.recv(65536)  # the request (small: one alert)
            conn.sendall(f"HTTP/1.1 500 Oops\r\nContent-Length: {self.size}\r\n\r\n".encode())
            chunk = b"x" * 65536
            try:
                while self.sent < self.size:
                    self.sent += conn.send(chunk[: self.size - self.sent])
            except OSError:  # the client read enough and closed the connection
                pass

    def close(self) -> None:
        self._thread.join(30)
        self._srv.close()


def test_a_huge_error_body_is_read_only_a_few_kilobytes():
    """Review 4: the whole answer was read into memory (50 MB here), then scrubbed, then cut.
    Now at most BODY_READ_MAX bytes are read; the message keeps ERROR_BODY_MAX characters."""
    from gradwatch.notify.http import ERROR_BODY_MAX

    size = 50 << 20
    receiver = _HugeErrorReceiver(size)
    n = WebhookNotifier("h", secret_url(f"http://127.0.0.1:{receiver.port}/hook"), timeout=60)
    with pytest.raises(DeliveryError) as e:
        n.send([make_event()])
    receiver.close()
    n.close()
    assert str(e.value) == f"POST http://127.0.0.1:{receiver.port}/***: HTTP 500 {'x' * ERROR_BODY_MAX}"
    # what the kernel buffers between the two sockets, at most; the old code took all 50 MB
    assert receiver.sent < 16 << 20, f"{receiver.sent:,} bytes were sent"
