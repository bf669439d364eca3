"""The real daemon speaks systemd's notify protocol (Type=notify, WatchdogSec).

systemd is not PID 1 here, so the test plays systemd's part: it binds the
AF_UNIX datagram socket that systemd would pass in NOTIFY_SOCKET and reads
what `gradwatch watch` sends.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from writers import write_scalars


@pytest.fixture
def notify_socket():
    # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="gw-")
    path = os.path.join(d, "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(0.2)
    yield srv, path
    srv.close()
    shutil.rmtree(d, ignore_errors=True)


def _messages(srv, until, deadline_s=20.0):
    """Datagrams received until ``until(messages)`` holds or the deadline passes."""
    got = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not until(got):
        try:
            got.append(srv.recv(4096).decode())
        except TimeoutError:
            continue
    return got


def _watch(tmp_path, logdir, env) -> subprocess.Popen:
    state = str(tmp_path / "state")
    return subprocess.Popen(
        [sys.executable, "-m", "gradwatch", "watch", str(logdir), "--listen", "", "--state-dir", state],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_ready_after_catch_up_then_watchdog_pings_then_stopping(tmp_path, notify_socket):
    srv, path = notify_socket
    logdir = tmp_path / "logdir"
    write_scalars("tensorboardX", str(logdir / "run1"), [("gradients/actor_cnn_norm", 100, 5191.0)])
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000", PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    proc = _watch(tmp_path, logdir, env)
    try:
        got = _messages(srv, lambda m: sum(x == "WATCHDOG=1" for x in m) >= 2)
        ready = [m for m in got if m.startswith("READY=1")]
        assert ready, f"no READY=1 among {got!r}"
        assert "STATUS=" in ready[0] and str(logdir) in ready[0]
        # READY comes first: the catch-up is done before systemd considers the unit started
        assert got.index(ready[0]) == 0
        assert got.count("WATCHDOG=1") >= 2
        # systemctl reload: RELOADING=1 (with the monotonic time systemd wants), then READY=1 again
        proc.send_signal(signal.SIGHUP)
        reload = _messages(srv, lambda m: any(x.startswith("READY=1") for x in m))
        reloading = [m for m in reload if m.startswith("RELOADING=1")]
        assert reloading and "MONOTONIC_USEC=" in reloading[0], reload
        assert reload.index(reloading[0]) < next(i for i, m in enumerate(reload) if m.startswith("READY=1"))
        proc.send_signal(signal.SIGTERM)
        tail = _messages(srv, lambda m: any(x.startswith("STOPPING=1") for x in m))
        assert any(m.startswith("STOPPING=1") for m in tail)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert "Traceback" not in out


def test_without_notify_socket_nothing_is_sent_and_daemon_runs(tmp_path):
    logdir = tmp_path / "logdir"
    write_scalars("tensorboardX", str(logdir / "run1"), [("loss", 1, 0.5)])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = _watch(tmp_path, logdir, env)
    try:
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "watching" in line:
                break
        assert any("watching" in line for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
