"""Alertmanager channel against the real prometheus-alertmanager, routing to a loopback webhook."""

from __future__ import annotations

import socket
import sqlite3
import time
from datetime import datetime

import pytest
from conftest import require_binary
from receivers import Alertmanager, Receiver, crossing_and_recovery, make_event, refused_port, wait_until

from gradwatch.alerts import AlertBook
from gradwatch.config.rulefiles import load_rules
from gradwatch.config.secrets import secret_url
from gradwatch.engine import Engine
from gradwatch.notify.alertmanager import ENDS_AFTER_RESENDS, AlertmanagerNotifier
from gradwatch.notify.base import DeliveryError
from gradwatch.notify.outbox import Outbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary():
    return require_binary("prometheus-alertmanager")


@pytest.fixture(scope="module")
def hook():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def am(binary, hook):
    a = Alertmanager(binary, hook.url())
    yield a
    a.stop()


def notifications(hook: Receiver, run: str) -> list[dict]:
    """Webhook requests Alertmanager sent for ``run`` (tests share one Alertmanager)."""
    return [r.json for r in list(hook.requests) if r.json["groupLabels"].get("run") == run]


def wait_status(hook: Receiver, run: str, status: str) -> dict:
    return wait_until(
        lambda: next((n for n in notifications(hook, run) if n["status"] == status), None),
        15,
        what=f"a {status} notification for {run}",
    )


def active(am: Alertmanager, run: str) -> list[dict]:
    return [a for a in am.alerts() if a["labels"].get("run") == run and a["status"]["state"] == "active"]


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_firing_then_resolved_with_labels(am, hook):
    n = AlertmanagerNotifier(
        "am",
        [secret_url(am.url)],
        labels={"source": "gradwatch"},
        generator_url="http://tb.example:6006/?run={run}",
        resend_interval=60,
    )
    n.send([make_event(run="am-fire", labels={"team": "rl"}, seq=1)])
    firing = wait_status(hook, "am-fire", "firing")
    [alert] = firing["alerts"]
    assert alert["labels"] == {
        "alertname": "GradientExplosion",
        "severity": "critical",
        "run": "am-fire",
        "tag": "gradients/actor_cnn_norm",
        "team": "rl",
        "source": "gradwatch",
    }
    assert alert["annotations"]["value"] == "826,256" and alert["annotations"]["summary"]
    assert alert["generatorURL"] == "http://tb.example:6006/?run=am-fire"
    [held] = active(am, "am-fire")
    # Alertmanager keeps it until endsAt = now + 4 x resend_interval unless it is re-sent
    assert 200 < ts(held["endsAt"]) - time.time() <= 240
    n.send([make_event(run="am-fire", labels={"team": "rl"}, kind="resolved", seq=2)])
    resolved = wait_status(hook, "am-fire", "resolved")
    assert resolved["alerts"][0]["status"] == "resolved"
    assert active(am, "am-fire") == []
    n.close()


def test_escalation_ends_the_old_severity(am, hook):
    n = AlertmanagerNotifier("am", [secret_url(am.url)])
    n.send([make_event(run="am-esc", severity="warning", seq=1)])
    wait_until(lambda: active(am, "am-esc"), what="the warning alert")
    n.send([make_event(run="am-esc", severity="critical", kind="escalated", previous="warning", seq=2)])
    wait_until(
        lambda: [a["labels"]["severity"] for a in active(am, "am-esc")] == ["critical"],
        what="only the critical alert active",
    )
    # a channel with min_severity critical never saw the warning; de-escalation ends it there
    crit = AlertmanagerNotifier("am-crit", [secret_url(am.url)], min_severity="critical")
    down = make_event(run="am-esc", severity="warning", kind="deescalated", previous="critical", seq=3)
    assert crit.accepts(down)
    crit.send([down])
    wait_until(lambda: active(am, "am-esc") == [], what="no alert left for the critical-only channel")
    n.close()
    crit.close()


def test_refresh_keeps_alerts_and_never_revives_a_resolved_one(am, hook):
    n = AlertmanagerNotifier("am", [secret_url(am.url)], resend_interval=1)
    first = make_event(run="am-refresh", seq=1)
    n.send([first])
    [held] = wait_until(lambda: active(am, "am-refresh"), what="the alert")
    before = ts(held["endsAt"])
    assert n.refresh_due(time.time() + 1)
    later = time.time() + 0.5
    n.refresh([make_event(run="am-refresh", kind="repeat", seq=1)], later)
    [held] = active(am, "am-refresh")
    assert ts(held["endsAt"]) > before  # pushed forward
    assert not n.refresh_due(later + 0.1)
    n.send([make_event(run="am-refresh", kind="resolved", seq=2)])
    wait_until(lambda: active(am, "am-refresh") == [], what="resolved")
    # a snapshot taken before the resolve arrives late: it must not fire the alert again
    n.refresh([first], time.time() + 2)
    assert active(am, "am-refresh") == []
    n.close()


def test_ha_pair_with_one_member_down_is_delivered(am, hook):
    with refused_port() as port, refused_port() as port2:
        dead = f"http://127.0.0.1:{port}"
        n = AlertmanagerNotifier("am-ha", [secret_url(dead), secret_url(am.url)], timeout=2)
        n.send([make_event(run="am-ha")])
        wait_status(hook, "am-ha", "firing")
        status = n.url_status
        assert status[f"{dead}/***"]["ok"] is False and "Connection refused" in status[f"{dead}/***"]["error"]
        assert status[f"{am.url}/***"]["ok"] is True
        n.close()
        # all members down: a retryable error naming each
        dead2 = f"http://127.0.0.1:{port2}"
        both = AlertmanagerNotifier("am-down", [secret_url(dead), secret_url(dead2)], timeout=2)
        with pytest.raises(DeliveryError) as info:
            both.send([make_event(run="am-ha")])
        assert not info.value.permanent and info.value.message.count("POST") == 2
        both.close()


def test_bad_payload_is_a_permanent_error(am):
    n = AlertmanagerNotifier("am", [secret_url(am.url)])
    with pytest.raises(DeliveryError) as info:
        n._post([{"annotations": {}}])  # no labels: Alertmanager answers 400/422
    assert info.value.permanent and "labels" in info.value.message
    n.close()


def test_alertmanager_down_then_up_gets_the_alert_once(binary, tmp_path):
    with Receiver() as hook2, socket.socket() as held:
        # the port is held (bound, refusing connections) until Alertmanager is started on it
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        n = AlertmanagerNotifier("am", [secret_url(f"http://127.0.0.1:{port}")], timeout=2)
        db = str(tmp_path / "state.db")
        box = Outbox(db, [n], poll_interval=0.05, backoff_base=0.1, backoff_max=0.5)
        conn = sqlite3.connect(db)
        box.enqueue(conn, [make_event(run="late")])
        conn.commit()
        box.start()
        wait_until(lambda: box.stats()["am"]["failed"] >= 2, what="failed attempts while it is down")
        assert hook2.count() == 0
        held.close()
        late = Alertmanager(binary, hook2.url(), port=port)
        try:
            hook2.wait_for(1, timeout=15)
            assert box.wait_idle(10)
            assert box.stats()["am"]["sent"] == 1 and box.stats()["am"]["queued"] == 0
            assert [a["labels"]["run"] for a in late.alerts()] == ["late"]
        finally:
            box.stop(5)
            late.stop()
        conn.close()


def test_real_rules_and_alert_book_through_outbox_to_alertmanager(am, hook, tmp_path):
    """The chain the daemon runs: points -> rules -> AlertBook -> outbox -> Alertmanager -> webhook."""
    rules = load_rules()  # the packaged default: warning 10K, critical 50K
    book = AlertBook(rules, live=True)
    engine = Engine(rules, book)
    n = AlertmanagerNotifier("am", [secret_url(am.url)], resend_interval=1)
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05)
    conn = sqlite3.connect(db)
    box.start()
    now = time.time()
    for step, value in enumerate((5_191, 130_486, 826_256), start=1):
        engine.observe("td3-chain", "gradients/actor_cnn_norm", step * 100, now + step, float(value))
    events = book.take_events()
    assert events, "the default rules fire on 130,486"
    box.enqueue(conn, events)
    conn.commit()
    box.wake()

    def explosion() -> list[dict]:
        return [a for a in active(am, "td3-chain") if a["labels"]["alertname"] == "gradient_explosion"]

    wait_status(hook, "td3-chain", "firing")
    [held] = wait_until(explosion, what="the alert in Alertmanager")
    assert held["labels"] == {
        "alertname": "gradient_explosion",
        "severity": "critical",
        "run": "td3-chain",
        "tag": "gradients/actor_cnn_norm",
        "category": "gradients",
    }
    assert "above 50,000" in held["annotations"]["summary"]
    # the daemon's timer: re-send what the book says is firing
    wait_until(lambda: n.refresh_due(time.time()), what="resend interval")
    box.resend_firing(book)
    wait_until(
        lambda: [a for a in explosion() if ts(a["endsAt"]) > ts(held["endsAt"])],
        what="endsAt pushed forward by the re-send",
    )
    assert box.stop(5)
    conn.close()


def test_a_crossing_and_its_recovery_in_one_batch_page_then_resolve(am, hook, tmp_path):
    """Issue 8: Alertmanager got only the resolved alert, which it never notifies about."""
    n = AlertmanagerNotifier("am", [secret_url(am.url)], min_firing=2)
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05)
    conn = sqlite3.connect(db)
    box.enqueue(conn, crossing_and_recovery("am-batch"))
    conn.commit()
    box.start()
    # Alertmanager groups by alertname and run: each rule's group pages, then resolves
    for rule in ("gradient_explosion", "gradient_growth"):

        def statuses(rule: str = rule) -> list[str]:
            sent = notifications(hook, "am-batch")
            return [n["status"] for n in sent if n["groupLabels"]["alertname"] == rule]

        got = wait_until(lambda: "resolved" in statuses() and statuses(), 15, what=f"{rule} resolved")
        assert got[0] == "firing", f"{rule}: Alertmanager notified {got}, never firing first"
    assert box.stop(5)
    conn.close()


def test_fire_resolve_fire_again_is_kept_firing_by_refreshes(am, hook):
    """Issue 8: the new lifecycle's seq (from 1 again) was below the ended one's, so never refreshed."""
    resend = 1.0
    n = AlertmanagerNotifier("am", [secret_url(am.url)], resend_interval=resend)
    t0 = time.time()
    n.send([make_event(run="am-refire", seq=1, starts_at=t0)])
    n.send([make_event(run="am-refire", kind="resolved", seq=2, starts_at=t0)])
    wait_until(lambda: active(am, "am-refire") == [], what="the first lifecycle resolved")
    again = make_event(run="am-refire", seq=1, starts_at=t0 + 1)
    n.send([again])
    wait_until(lambda: active(am, "am-refire"), what="the second lifecycle firing")
    # the daemon's timer: the book holds the new lifecycle as firing; re-send it when due. Each
    # refresh must move endsAt to its time + 4 x resend: judged on the values Alertmanager got,
    # so a stall of this loaded machine (past the 4 s) cannot make a pass look like a failure
    for _ in range(3):
        wait_until(lambda: n.refresh_due(time.time()), what="the resend interval")
        now = time.time()
        n.refresh([make_event(run="am-refire", kind="repeat", seq=1, starts_at=t0 + 1)], now)
        wanted = now + ENDS_AFTER_RESENDS * resend - 0.5  # the refresh before ended >= 1 s earlier
        wait_until(
            lambda wanted=wanted: [a for a in active(am, "am-refire") if ts(a["endsAt"]) >= wanted],
            what="the refresh to extend endsAt of the firing alert",
        )
    n.close()


def test_an_alertmanager_with_a_group_wait_pages_for_a_crossing_and_recovery_sent_together(binary, tmp_path):
    """Through the outbox, the recovery must not follow the crossing in a send of its own: Alertmanager
    keeps the later endsAt of a firing alert, takes a resolve at once, and when its group_wait ends
    (30 s by default; 2 s here) an alert already resolved pages nobody."""
    with Receiver() as hook:
        am = Alertmanager(binary, hook.url(), group_wait="2s")
        n = AlertmanagerNotifier("am", [secret_url(am.url)], min_firing=6)
        db = str(tmp_path / "state.db")
        box = Outbox(db, [n], poll_interval=0.05)
        conn = sqlite3.connect(db)
        try:
            box.enqueue(conn, crossing_and_recovery("am-wait"))
            conn.commit()
            box.start()
            sent = wait_until(
                lambda: notifications(hook, "am-wait"), 20, what="a notification after group_wait"
            )
            assert sent[0]["status"] == "firing", sent
        finally:
            assert box.stop(5)
            conn.close()
            am.stop()
