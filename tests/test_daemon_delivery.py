"""End to end: the real daemon delivers through its durable outbox across an outage, a kill -9 and a stop.

The receiver fails (HTTP 503) when the alert fires; the daemon is killed with SIGKILL
while the notification is still queued; the receiver recovers; the restarted daemon
delivers it, exactly once, and never sends it again. "Never again" is read from the
outbox itself: a notification goes out only while its row is pending, so once none is
pending nothing more can be sent, however long one waits.
"""

import json
import signal

from daemon_support import Daemon, outbox_rows, wait_for, watch_args
from receivers import Receiver, Response
from writers import write_scalars

SEED = [(100, 5191.0), (200, 130486.0), (300, 826256.0)]
EXPLOSION = ("firing", "gradient_explosion", "gradients/actor_cnn_norm")


def _config(path, url: str, group_wait: str = "0s") -> None:
    path.write_text(
        "notifiers:\n"
        "  - name: hook\n"
        "    type: webhook\n"
        f"    url: {url}\n"
        f"    group_wait: {group_wait}\n"
        "    timeout: 2s\n"
    )


def _firing(requests):
    out = []
    for r in requests:
        doc = json.loads(r.body)
        out += [(a["status"], a["labels"]["alertname"], a["labels"]["tag"]) for a in doc["alerts"]]
    return out


def _all_sent(state) -> list:
    rows = outbox_rows(str(state))
    return rows if rows and all(s == "sent" for _, _, s in rows) else []


def test_outage_then_kill_9_then_recovery_delivers_once(tmp_path):
    # bound before the daemon starts: the port is ours; "down" is a 503 until it recovers
    receiver = Receiver(default=Response(status=503, body="down"))
    cfg = tmp_path / "gradwatch.yaml"
    _config(cfg, receiver.url())
    logdir = tmp_path / "logdir"
    state = tmp_path / "state"
    write_scalars("tensorboardX", str(logdir / "warmup"), [("loss", 1, 0.5)])
    try:
        first = Daemon(watch_args(logdir, state, "--config", str(cfg)), str(tmp_path), name="first")
        first.wait_ready()
        write_scalars(
            "tensorboardX", str(logdir / "exploding"), [("gradients/actor_cnn_norm", s, v) for s, v in SEED]
        )
        first.wait_alert(rule="gradient_explosion", run="exploding")
        # the delivery failed and the notification waits in the outbox
        first.wait_err(r"hook: .*(failed|retry)", timeout=30)
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
        refused = len(receiver.requests)
        receiver.default = Response()

        second = Daemon(watch_args(logdir, state, "--config", str(cfg)), str(tmp_path), name="second")
        second.wait_ready()
        wait_for(lambda: _all_sent(state), "every queued notification sent after the restart")
        got = _firing(receiver.requests[refused:])
        assert got.count(EXPLOSION) == 1, got
        assert got.count(("firing", "gradient_growth", "gradients/actor_cnn_norm")) == 1, got
        # the restarted daemon did not re-evaluate what the first had committed: no second console line
        assert not [a for a in second.alerts() if a.get("rule") == "gradient_explosion"]
        assert second.stop() == 0

        rows = outbox_rows(str(state))
        third = Daemon(watch_args(logdir, state, "--config", str(cfg)), str(tmp_path), name="third")
        # ready means caught up and committed: whatever a restart would queue is in the table now
        third.wait_ready()
        assert outbox_rows(str(state)) == rows, "a restart after delivery must not queue anything again"
        assert third.stop() == 0
        assert _firing(receiver.requests[refused:]) == got
    finally:
        receiver.stop()


def test_sigterm_sends_what_is_queued_before_exiting(tmp_path, writer):
    # a group window of an hour: only the shutdown's drain (up to 5 s) can send it before exit
    receiver = Receiver()
    try:
        cfg = tmp_path / "gradwatch.yaml"
        _config(cfg, receiver.url(), group_wait="1h")
        logdir = tmp_path / "logdir"
        logdir.mkdir()
        d = Daemon(watch_args(logdir, tmp_path / "state", "--config", str(cfg)), str(tmp_path))
        d.wait_ready()
        writer.write(logdir / "run", 100, {"gradients/actor_cnn_norm": 60000.0})
        d.wait_alert(rule="gradient_explosion", run="run")
        wait_for(lambda: outbox_rows(str(tmp_path / "state")), "the notification committed to the outbox")
        assert not receiver.requests  # still inside its group window
        assert d.stop() == 0
        assert [a[1] for a in _firing(receiver.requests)] == ["gradient_explosion"]
        assert _all_sent(tmp_path / "state")
    finally:
        receiver.stop()


def test_sighup_picks_up_a_rotated_secret_file(tmp_path):
    # a Kubernetes Secret update rewrites the mounted file; the YAML does not change
    old, new = Receiver(), Receiver()
    try:
        url_file = tmp_path / "hook-url"
        url_file.write_text(old.url() + "\n")
        cfg = tmp_path / "gradwatch.yaml"
        cfg.write_text(
            f"notifiers:\n  - name: hook\n    type: webhook\n    url_file: {url_file}\n    group_wait: 0s\n"
        )
        logdir = tmp_path / "logdir"
        write_scalars("tensorboardX", str(logdir / "a"), [("gradients/actor_cnn_norm", 1, 99999.0)])
        d = Daemon(watch_args(logdir, tmp_path / "state", "--config", str(cfg)), str(tmp_path))
        d.wait_ready()
        old.wait_for(1, timeout=30)
        url_file.write_text(new.url() + "\n")
        d.signal(signal.SIGHUP)
        d.wait_err("reloaded")
        write_scalars("tensorboardX", str(logdir / "b"), [("gradients/actor_cnn_norm", 1, 99999.0)])
        got = new.wait_for(1, timeout=30)
        assert [a["labels"]["run"] for r in got for a in json.loads(r.body)["alerts"]][:1] == ["b"]
        assert all(json.loads(r.body)["alerts"][0]["labels"]["run"] == "a" for r in old.requests)
        assert d.stop() == 0
    finally:
        old.stop()
        new.stop()
