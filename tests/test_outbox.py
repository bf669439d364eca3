"""The durable outbox: transactions, grouping, order, backoff, age limit, restarts and kill -9."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from receivers import Receiver, Response, make_event, refused_port, wait_until

from gradwatch.config.secrets import secret_url
from gradwatch.notify.base import Notifier
from gradwatch.notify.outbox import TABLE, Outbox
from gradwatch.notify.webhook import WebhookNotifier


def hook_notifier(url: str, name: str = "hook", **kw) -> WebhookNotifier:
    kw.setdefault("group_wait", 0.0)
    kw.setdefault("timeout", 2.0)
    return WebhookNotifier(name, secret_url(url), **kw)


def fast_outbox(db: str, notifiers: list[Notifier], **kw) -> Outbox:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_max", 0.2)
    return Outbox(db, notifiers, **kw)


def tags_per_request(receiver: Receiver) -> list[list[tuple[str, str, str]]]:
    return [
        [(a["labels"]["run"], a["labels"]["tag"], a["status"]) for a in r.json["alerts"]]
        for r in receiver.requests
    ]


def states(db: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute(f"SELECT channel, state FROM {TABLE} ORDER BY id").fetchall()


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "state.db")


@pytest.fixture
def hook():
    with Receiver() as r:
        yield r


def test_enqueue_joins_the_callers_transaction(db, hook):
    box = fast_outbox(db, [hook_notifier(hook.url())])
    conn = sqlite3.connect(db)
    box.start()
    assert box.enqueue(conn, [make_event(run="rolled-back")]) == 1
    conn.rollback()  # the batch failed: its notification must vanish with it
    box.enqueue(conn, [make_event(run="committed")])
    conn.commit()
    box.wake()
    hook.wait_for(1)
    assert box.wait_idle(5) and box.stop(5)
    assert tags_per_request(hook) == [[("committed", "gradients/actor_cnn_norm", "firing")]]
    conn.close()


def test_filters_apply_at_enqueue(db):
    crit = hook_notifier("http://127.0.0.1:9/x", "crit", min_severity="critical", send_resolved=False)
    runs = hook_notifier("http://127.0.0.1:9/x", "runs", runs=["exp*"], tags=["grad*"], rules=["Grad*"])
    slow = hook_notifier("http://127.0.0.1:9/x", "slow-repeat", repeat_interval=3600)
    box = Outbox(db, [crit, runs, slow])
    conn = sqlite3.connect(db)
    t = time.time()
    box.enqueue(conn, [make_event(severity="warning")], now=t)  # runs, slow-repeat
    box.enqueue(conn, [make_event(run="other")], now=t)  # crit, slow-repeat
    box.enqueue(conn, [make_event(kind="resolved", seq=2)], now=t)  # runs, slow-repeat
    box.enqueue(conn, [make_event(kind="repeat", seq=2)], now=t + 60)  # crit, runs; not slow-repeat
    box.enqueue(conn, [make_event(kind="repeat", tag="grad/new", seq=2)], now=t + 60)  # new alert: all
    conn.commit()
    got = [c for c, _ in states(db)]
    assert got == [
        "runs",
        "slow-repeat",
        "crit",
        "slow-repeat",
        "runs",
        "slow-repeat",
        "crit",
        "runs",
        "crit",
        "runs",
        "slow-repeat",
    ]
    assert box.stats()["crit"]["queued"] == 0  # counts come from the dispatcher, not started here
    conn.close()


def test_groups_by_run_within_the_window_and_keeps_order(db, hook):
    box = fast_outbox(db, [hook_notifier(hook.url(), group_wait=0.5)])
    conn = sqlite3.connect(db)
    t0 = time.time() - 10  # windows already over: grouping is decided by the enqueue times
    box.enqueue(conn, [make_event(run="A", tag="a1")], now=t0)
    box.enqueue(conn, [make_event(run="B", tag="b1")], now=t0 + 0.1)
    box.enqueue(conn, [make_event(run="A", tag="a2")], now=t0 + 0.4)
    box.enqueue(conn, [make_event(run="A", tag="a3")], now=t0 + 2)  # after A's window
    box.enqueue(conn, [make_event(run="A", tag="a4")], now=t0 + 2.1)
    conn.commit()
    box.start()
    hook.wait_for(3)
    assert box.wait_idle(5) and box.stop(5)
    assert [[tag for _, tag, _ in req] for req in tags_per_request(hook)] == [
        ["a1", "a2"],
        ["b1"],
        ["a3", "a4"],
    ]
    conn.close()


def test_waits_for_the_group_window_before_sending(db, hook):
    box = fast_outbox(db, [hook_notifier(hook.url(), group_wait=0.5)])
    conn = sqlite3.connect(db)
    box.start()
    t0 = time.time()
    box.enqueue(conn, [make_event(tag="first")], now=t0)
    conn.commit()
    box.wake()
    box.enqueue(conn, [make_event(tag="second")], now=t0 + 0.2)  # still inside the window
    conn.commit()
    box.wake()
    hook.wait_for(1)
    sent_at = time.time()
    assert sent_at >= t0 + 0.5
    assert box.wait_idle(5) and box.stop(5)
    assert [[tag for _, tag, _ in req] for req in tags_per_request(hook)] == [["first", "second"]]
    conn.close()


def test_order_per_alert_survives_failures(db, hook):
    hook.script(Response(500, "down"), Response(502, "down"))
    box = fast_outbox(db, [hook_notifier(hook.url())])
    conn = sqlite3.connect(db)
    t0 = time.time() - 10
    box.enqueue(conn, [make_event(seq=1)], now=t0)
    box.enqueue(conn, [make_event(kind="resolved", seq=2)], now=t0 + 5)
    box.enqueue(conn, [make_event(seq=3)], now=t0 + 9)
    conn.commit()
    box.start()
    hook.wait_for(5)
    assert box.wait_idle(5) and box.stop(5)
    delivered = [req[0][2] for req in tags_per_request(hook)[2:]]
    assert delivered == ["firing", "resolved", "firing"]
    assert box.stats()["hook"] == {"sent": 3, "failed": 2, "dropped": 0, "queued": 0}
    conn.close()


@pytest.fixture
def dead_url():
    """A URL whose port is held and refuses connections: a receiver that is down."""
    with refused_port() as port:
        yield f"http://127.0.0.1:{port}/x"


def test_dead_channel_does_not_hold_up_a_live_one(db, hook, dead_url):
    dead = hook_notifier(dead_url, "dead")
    live = hook_notifier(hook.url(), "live")
    box = fast_outbox(db, [dead, live])
    conn = sqlite3.connect(db)
    box.start()
    for i in range(3):
        box.enqueue(conn, [make_event(run=f"r{i}")])
        conn.commit()
        box.wake()
    hook.wait_for(3)
    wait_until(lambda: box.stats()["live"]["sent"] == 3, what="all three on the live channel")
    # the dead channel counts its queue when its backoff lets it look at the table again
    wait_until(lambda: box.stats()["dead"]["queued"] == 3, what="three queued on the dead channel")
    stats = box.stats()
    assert stats["dead"]["sent"] == 0 and stats["dead"]["failed"] >= 1
    assert box.stop(5)
    conn.close()


def test_too_old_notifications_are_dropped_counted_and_logged_once(db, caplog, dead_url):
    n = hook_notifier(dead_url, max_age=60)
    box = fast_outbox(db, [n])
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event(run="a"), make_event(run="b")], now=time.time() - 120)
    box.enqueue(conn, [make_event(run="c")], now=time.time() - 90)
    conn.commit()
    box.start()
    assert box.wait_idle(5) and box.stop(5)
    assert box.stats()["hook"] == {"sent": 0, "failed": 0, "dropped": 3, "queued": 0}
    assert [s for _, s in states(db)] == ["dropped"] * 3
    assert caplog.text.count("dropping notifications older than 60 s") == 1
    conn.close()


def test_restart_resumes_pending_and_does_not_resend_delivered(db):
    hook = Receiver(listening=False)  # down: holds its port, refuses connections
    url = hook.url()
    box = fast_outbox(db, [hook_notifier(url)])
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event(run="outage")])
    conn.commit()
    box.start()
    wait_until(lambda: box.stats()["hook"]["failed"] >= 1, what="a failed attempt")
    assert box.stop(5)
    hook.start()
    with hook:
        box2 = fast_outbox(db, [hook_notifier(url)])
        box2.start()
        hook.wait_for(1)
        assert box2.wait_idle(5) and box2.stop(5)
        box3 = fast_outbox(db, [hook_notifier(url)])  # and once more: nothing left to send
        box3.start()
        assert box3.wait_idle(5) and box3.stop(5)
        assert hook.count() == 1 and box3.stats()["hook"]["sent"] == 0
    conn.close()


CHILD = r"""
import sys, time
from gradwatch.notify.outbox import Outbox
from gradwatch.notify.webhook import WebhookNotifier
from gradwatch.config.secrets import secret_url
db, url = sys.argv[1], sys.argv[2]
n = WebhookNotifier("hook", secret_url(url), group_wait=0, timeout=2)
Outbox(db, [n], poll_interval=0.05, backoff_base=0.05, backoff_max=0.2).start()
print("started", flush=True)
time.sleep(120)
"""


def run_child(db: str, url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, db, url], stdout=subprocess.PIPE, text=True)


def kill9(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    p.stdout.close()
    assert p.returncode == -signal.SIGKILL


def attempts(db: str) -> int:
    with sqlite3.connect(db) as c:
        return c.execute(f"SELECT COALESCE(SUM(attempts), 0) FROM {TABLE}").fetchone()[0]


@pytest.mark.slow
def test_kill_9_during_an_outage_then_delivered_once_after_restart(db):
    hook = Receiver(listening=False)  # down: holds its port, refuses connections
    url = hook.url()
    Outbox(db, [hook_notifier(url)])  # creates the table, as the daemon's start-up does
    conn = sqlite3.connect(db)
    Outbox(db, [hook_notifier(url)]).enqueue(conn, [make_event(run="killed")])
    conn.commit()
    child = run_child(db, url)
    try:
        assert child.stdout.readline().strip() == "started"
        wait_until(lambda: attempts(db) >= 2, what="the child failing to deliver")
    finally:
        kill9(child)
    hook.start()
    with hook:
        box = fast_outbox(db, [hook_notifier(url)])
        box.start()
        hook.wait_for(1)
        assert box.wait_idle(5) and box.stop(5)
        assert hook.count() == 1 and states(db) == [("hook", "sent")]
    conn.close()


@pytest.mark.slow
def test_kill_9_after_delivery_does_not_send_twice(db):
    with Receiver() as hook:
        url = hook.url()
        Outbox(db, [hook_notifier(url)])
        conn = sqlite3.connect(db)
        Outbox(db, [hook_notifier(url)]).enqueue(conn, [make_event(run="done")])
        conn.commit()
        child = run_child(db, url)
        try:
            hook.wait_for(1)
            wait_until(lambda: states(db) == [("hook", "sent")], what="the row marked sent")
        finally:
            kill9(child)
        box = fast_outbox(db, [hook_notifier(url)])
        box.start()
        assert box.wait_idle(5) and box.stop(5)
        assert hook.count() == 1 and box.stats()["hook"]["sent"] == 0
        conn.close()


def test_a_writer_holding_the_database_delays_the_mark_but_never_duplicates(db, hook):
    box = fast_outbox(db, [hook_notifier(hook.url())])
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    blocker = sqlite3.connect(db, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a long batch
    box.start()
    hook.wait_for(1)  # reading works under WAL; the mark waits for the lock
    threading.Timer(0.5, blocker.commit).start()
    wait_until(lambda: states(db) == [("hook", "sent")], what="the mark after the lock is released")
    assert box.wait_idle(5) and box.stop(5)
    assert hook.count() == 1
    blocker.close()
    conn.close()


def test_stop_sends_what_waits_in_a_group_window(db, hook):
    box = fast_outbox(db, [hook_notifier(hook.url(), group_wait=3600)])
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    assert box.stop(5)
    assert hook.count() == 1 and states(db) == [("hook", "sent")]
    conn.close()


def test_stop_gives_up_on_a_dead_receiver_and_keeps_the_rows(db, dead_url):
    backoff, stop_timeout = 120.0, 60.0  # the next attempt (>= 60 s away) is past stop's deadline
    box = fast_outbox(db, [hook_notifier(dead_url)], backoff_base=backoff, backoff_max=backoff)
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    wait_until(lambda: box.stats()["hook"]["failed"] == 1, what="the first failure")
    before = box._channels["hook"].cycles
    assert box.stop(stop_timeout)
    # in backoff beyond the deadline: stop gave up after one draining cycle instead of waking
    # every few seconds until its deadline, and made no second attempt (no wall-clock bound)
    assert box._channels["hook"].cycles <= before + 2
    assert box.stats()["hook"]["failed"] == 1
    with sqlite3.connect(db) as c:
        assert c.execute(f"SELECT state, attempts FROM {TABLE}").fetchall() == [("pending", 1)]
    conn.close()


def test_rows_of_a_removed_channel_are_dropped_at_start_and_done_rows_pruned(db, hook, caplog):
    conn = sqlite3.connect(db)
    old = Outbox(db, [hook_notifier(hook.url(), "old"), hook_notifier(hook.url(), "kept")])
    old.enqueue(conn, [make_event()])
    conn.commit()
    Outbox(db, [hook_notifier(hook.url(), "kept")])
    assert states(db) == [("old", "dropped"), ("kept", "pending")]
    assert "dropped 1 queued notification(s) for channel 'old'" in caplog.text
    box = fast_outbox(db, [hook_notifier(hook.url(), "kept")])
    box.start()
    hook.wait_for(1)
    assert box.wait_idle(5) and box.stop(5)
    box = fast_outbox(db, [hook_notifier(hook.url(), "kept")], keep_done=0)
    box.start()
    assert box.wait_idle(5) and box.stop(5)
    assert states(db) == [("old", "dropped")]  # each channel prunes its own rows
    conn.close()


def test_a_bug_in_a_notifier_is_retried_not_fatal(db, caplog):
    class Broken(Notifier):
        type = "broken"
        calls = 0

        def send(self, events):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("oops")

    box = fast_outbox(db, [Broken("b", group_wait=0)])
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    wait_until(lambda: box.stats()["b"]["sent"] == 1, what="the retry to succeed")
    assert box.stop(5)
    assert "unexpected error while sending" in caplog.text
    conn.close()


def test_duplicate_channel_names_are_refused(db):
    with pytest.raises(ValueError, match="unique"):
        Outbox(db, [hook_notifier("http://x/"), hook_notifier("http://y/")])


def test_queued_counts_pending_rows(db, caplog, dead_url):
    caplog.set_level(logging.WARNING)
    box = fast_outbox(db, [hook_notifier(dead_url)], backoff_base=30)
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event(run=f"r{i}") for i in range(7)])
    conn.commit()
    box.start()
    wait_until(lambda: box.stats()["hook"]["queued"] == 7, what="queued = 7")
    assert box.stop(1)
    conn.close()


def test_backoff_doubles_from_1_s_to_5_min_with_jitter(db):
    """docs/notifications.md: "1 s doubling to 5 min, with jitter" (issue 15: a constant 1 s passed)."""
    box = Outbox(db, [])
    assert (box.backoff_base, box.backoff_max) == (1.0, 300.0)
    for attempts in range(1, 15):
        step = min(300.0, 2.0 ** (attempts - 1))
        delays = [box.backoff(attempts, None) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays), (attempts, min(delays), max(delays))
    assert all(7 <= box.backoff(1, 7.0) <= 8 for _ in range(50))  # never sooner than Retry-After


def test_retries_wait_longer_each_time(db, hook):
    """The channel uses that backoff: the gaps between attempts at a failing receiver double.

    A gap is at least the backoff's lower bound (the next attempt starts after the failed
    answer plus the delay), so the assertions hold however slow the machine is.
    """
    base = 0.1
    hook.script(*[Response(500, "down")] * 4)
    box = fast_outbox(db, [hook_notifier(hook.url())], backoff_base=base, backoff_max=60)
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    reqs = hook.wait_for(5, timeout=20)
    assert box.wait_idle(5) and box.stop(5)
    gaps = [b.at - a.at for a, b in itertools.pairwise(reqs)]
    assert all(gap >= base * 2**i / 2 for i, gap in enumerate(gaps)), gaps
    conn.close()


def test_done_rows_are_kept_for_the_repeat_interval_when_it_is_longer_than_a_day(db):
    """docs: finished rows are pruned after a day "or after the channel's repeat_interval, if
    longer". The rows are what spaces a channel's reminders; pruned early, a reminder that
    should wait goes out (issue 15: dropping the repeat_interval term passed)."""
    day = 86400.0
    weekly = hook_notifier("http://127.0.0.1:9/x", "weekly", repeat_interval=7 * day)
    daily = hook_notifier("http://127.0.0.1:9/x", "daily")
    conn = sqlite3.connect(db)
    box = fast_outbox(db, [weekly, daily])
    long_ago = time.time() - 2 * day
    box.enqueue(conn, [make_event(seq=1)], now=long_ago)
    # delivered two days ago (rows written as the dispatcher leaves them)
    conn.execute(f"UPDATE {TABLE} SET state='sent', done_at=?", (long_ago,))
    conn.commit()
    box.start()
    assert box.wait_idle(5) and box.stop(5)  # an idle channel prunes its finished rows
    assert states(db) == [("weekly", "sent")]
    # the weekly channel still knows it reminded two days ago: no reminder yet
    box.enqueue(conn, [make_event(kind="repeat", seq=2)])
    queued = conn.execute(f"SELECT channel FROM {TABLE} WHERE state='pending'").fetchall()
    assert queued == [("daily",)]
    conn.rollback()
    conn.close()


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_retry_after_of_a_year_waits_at_most_the_backoff_maximum(db, caplog, form):
    """Review 3: a 503 with Retry-After: 31536000 (or a date a year ahead) parked the channel
    for a year; old rows are only dropped when a send is attempted. The wait is capped at the
    backoff maximum (or max_age, whichever is smaller) and the cap is logged once."""
    import email.utils

    year = 365 * 86400
    value = str(year) if form == "seconds" else email.utils.formatdate(time.time() + year, usegmt=True)
    with Receiver() as hook:
        hook.script(*[Response(503, "busy", {"Retry-After": value})] * 2)  # then 200
        box = fast_outbox(db, [hook_notifier(hook.url())], backoff_max=0.2)
        conn = sqlite3.connect(db)
        box.enqueue(conn, [make_event()])
        conn.commit()
        with caplog.at_level(logging.WARNING, "gradwatch"):
            box.start()
            hook.wait_for(3, timeout=60)  # two 503s, then delivered: no year's wait in between
            assert box.wait_idle(30) and box.stop(5)
    assert states(db) == [("hook", "sent")]
    capped = [r.getMessage() for r in caplog.records if "waiting 0.2 s at most" in r.getMessage()]
    assert len(capped) == 1 and "asked to wait 3153" in capped[0]
    conn.close()
