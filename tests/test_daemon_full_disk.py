"""The state directory's filesystem fills up: alerts still reach the console, health says so, nothing is lost.

The state directory is a real 2 MB tmpfs filled with a file (we run as root here and in CI),
so SQLite really gets "database or disk is full". The daemon, the writer and the webhook
receiver are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.error
import urllib.request

import pytest
from daemon_support import Daemon, outbox_rows, wait_for
from fs_support import fill, tmpfs
from receivers import Receiver
from test_systemd_notify_daemon import notify_socket as systemd_socket  # noqa: F401 - a fixture

TAG = "gradients/actor_cnn_norm"
RULE = "gradient_explosion"


def statuses(srv) -> list[str]:
    """STATUS= lines the daemon sent so far."""
    srv.setblocking(False)
    out = []
    while True:
        try:
            message = srv.recv(4096).decode()
        except BlockingIOError:
            return out
        out += [line[len("STATUS=") :] for line in message.splitlines() if line.startswith("STATUS=")]


@pytest.fixture
def small_state_dir(tmp_path):
    with tmpfs(str(tmp_path / "state"), "2M") as state:
        yield state


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(base: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", get(base + "/metrics")[1], re.M)
    return float(m.group(1)) if m else None


def delivered(receiver: Receiver) -> list[tuple[str, str, str]]:
    out = []
    for r in list(receiver.requests):
        for a in json.loads(r.body)["alerts"]:
            out.append((a["status"], a["labels"]["alertname"], a["labels"]["run"]))
    return out


def test_a_full_state_disk_prints_alerts_reports_it_and_delivers_everything_later(
    tmp_path,
    writer,
    small_state_dir,
    systemd_socket,  # noqa: F811 - the imported fixture
):
    srv, socket_path = systemd_socket  # systemd's side of NOTIFY_SOCKET
    seen = [""]

    def last_status() -> str:
        seen.extend(statuses(srv))
        return seen[-1]

    receiver = Receiver()
    cfg = tmp_path / "gradwatch.yaml"
    hook = f"{{name: hook, type: webhook, url: '{receiver.url()}', group_wait: 0s}}"
    cfg.write_text(f"notifiers:\n  - {hook}\n")
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    args = [str(logdir), "--state-dir", str(small_state_dir), "--listen", "127.0.0.1:0", "--config", str(cfg)]
    d = Daemon(args, str(tmp_path), env={"NOTIFY_SOCKET": socket_path})
    d.wait_ready()
    base = "http://" + re.search(r"/-/ready on (\S+)", d.err()).group(1)
    assert get(base + "/-/healthy")[0] == 200

    filler = fill(small_state_dir)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(receiver.stop)
        writer.write(logdir / "a", 100, {TAG: 60000.0})
        # the operator sees it at once, whatever the state DB says
        d.wait_alert(rule="gradient_explosion", run="a", verb="FIRING")
        d.wait_err(r"cannot save state to .*full")
        # said, not failed: a liveness probe's restart would not start again on a full disk
        _, body = wait_for(lambda: "cannot save" in (s := get(base + "/-/healthy"))[1] and s, "/-/healthy")
        assert body == "gradwatch is running but cannot save its state: database or disk is full\n", body
        # still ready (it reads and alerts), and says why notifications wait
        ready = "gradwatch is ready but cannot save its state: database or disk is full\n"
        assert get(base + "/-/ready") == (200, ready)
        assert metric(base, "gradwatch_state_save_failing") == 1
        assert metric(base, "gradwatch_state_save_errors_total") >= 1
        # and `systemctl status` says so
        wait_for(lambda: "cannot save state" in last_status(), "STATUS= saying the state cannot be saved")
        writer.write(logdir / "a", 200, {TAG: 1.0})
        d.wait_alert(rule="gradient_explosion", run="a", verb="RESOLVED")
        assert ("firing", "gradient_explosion", "a") not in delivered(receiver)  # nothing committed yet

        os.unlink(filler)
        # both transitions go out, in order, once a commit works
        wait_for(
            lambda: outbox_rows(small_state_dir) == [(RULE, "firing", "sent"), (RULE, "resolved", "sent")],
            f"both transitions sent once space is back; outbox: {outbox_rows(small_state_dir)}",
        )
        # in two requests: one payload holds one state per alert, and neither may be lost
        assert delivered(receiver) == [("firing", RULE, "a"), ("resolved", RULE, "a")]
        assert get(base + "/-/healthy") == (200, "gradwatch is healthy.\n")
        assert get(base + "/-/ready") == (200, "gradwatch is ready.\n")
        assert last_status().startswith("watching "), seen
        assert metric(base, "gradwatch_state_save_failing") == 0
        d.wait_err("state saved to .* again")
        # each console line once: printed when decided, not again when finally committed
        lines = [(a["verb"], a["rule"]) for a in d.alerts() if a["rule"] == "gradient_explosion"]
        assert lines == [("FIRING", "gradient_explosion"), ("RESOLVED", "gradient_explosion")], d.out()
        assert d.stop() == 0
