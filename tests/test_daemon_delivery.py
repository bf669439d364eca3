"""End to end: the real daemon delivers through its durable outbox across an outage and a kill -9.

The receiver is down when the alert fires; the daemon is killed with SIGKILL
while the notification is still queued; the receiver comes up; the restarted
daemon delivers it, exactly once, and never sends it again.
"""

import json
import signal
import time

from daemon_support import Daemon, watch_args
from receivers import Receiver, free_port, wait_until
from writers import write_scalars

SEED = [(100, 5191.0), (200, 130486.0), (300, 826256.0)]
EXPLOSION = ("firing", "gradient_explosion", "gradients/actor_cnn_norm")


def _config(path, port: int) -> None:
    path.write_text(
        "notifiers:\n"
        "  - name: hook\n"
        "    type: webhook\n"
        f"    url: http://127.0.0.1:{port}/hook\n"
        "    group_wait: 0s\n"
        "    timeout: 2s\n"
    )


def _firing(requests):
    out = []
    for r in requests:
        doc = json.loads(r.body)
        out += [(a["status"], a["labels"]["alertname"], a["labels"]["tag"]) for a in doc["alerts"]]
    return out


def test_outage_then_kill_9_then_recovery_delivers_once(tmp_path):
    port = free_port()
    cfg = tmp_path / "gradwatch.yaml"
    _config(cfg, port)
    logdir = tmp_path / "logdir"
    state = tmp_path / "state"
    write_scalars("tensorboardX", str(logdir / "warmup"), [("loss", 1, 0.5)])

    first = Daemon(watch_args(logdir, state, "--config", str(cfg)), str(tmp_path), name="first")
    first.wait_ready()
    write_scalars(
        "tensorboardX", str(logdir / "exploding"), [("gradients/actor_cnn_norm", s, v) for s, v in SEED]
    )
    first.wait_alert(rule="gradient_explosion", run="exploding")
    # the delivery failed (nobody listens) and the notification waits in the outbox
    first.wait_err(r"hook: .*(refused|failed|retry)", timeout=30)
    first.signal(signal.SIGKILL)
    first.proc.wait(10)

    with Receiver(port) as receiver:
        second = Daemon(watch_args(logdir, state, "--config", str(cfg)), str(tmp_path), name="second")
        second.wait_ready()
        wait_until(
            lambda: (
                ("firing", "gradient_explosion", "gradients/actor_cnn_norm") in _firing(receiver.requests)
            ),
            timeout=30,
            what="the queued alert delivered after the restart",
        )
        # give a duplicate every chance to show up: a few dispatcher cycles
        time.sleep(3)
        got = _firing(receiver.requests)
        assert got.count(EXPLOSION) == 1, got
        assert got.count(("firing", "gradient_growth", "gradients/actor_cnn_norm")) == 1, got
        # the restarted daemon did not re-evaluate what the first had committed: no second console line
        assert not [a for a in second.alerts() if a.get("rule") == "gradient_explosion"]
        assert second.stop() == 0

        third = Daemon(watch_args(logdir, state, "--config", str(cfg)), str(tmp_path), name="third")
        third.wait_ready()
        time.sleep(2)
        assert _firing(receiver.requests) == got, "a restart after delivery must not send again"
        assert third.stop() == 0


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
