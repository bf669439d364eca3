"""sd_notify against a real AF_UNIX datagram socket, the way systemd listens."""

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid

import pytest

from gradwatch.daemon import sdnotify


@pytest.fixture
def notify_socket(monkeypatch):
    """A bound datagram socket in a short path (AF_UNIX paths stop at 107 bytes)."""
    d = tempfile.mkdtemp(prefix="gw-")
    path = os.path.join(d, "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield srv
    srv.close()
    shutil.rmtree(d)


def recv(srv: socket.socket) -> str:
    return srv.recv(4096).decode()


def test_messages_arrive_as_systemd_reads_them(notify_socket):
    assert sdnotify.ready("watching 3 runs")
    assert sdnotify.status("catching up: 10 of 12 files")
    assert sdnotify.watchdog()
    assert sdnotify.stopping()
    assert [recv(notify_socket) for _ in range(4)] == [
        "READY=1\nSTATUS=watching 3 runs",
        "STATUS=catching up: 10 of 12 files",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_reloading_carries_monotonic_time(notify_socket):
    assert sdnotify.reloading()
    lines = recv(notify_socket).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(usec) > 0


def test_status_stays_one_line(notify_socket):
    # a newline in STATUS would make systemd read the rest as another assignment
    assert sdnotify.ready("line one\nREADY=0")
    assert recv(notify_socket) == "READY=1\nSTATUS=line one READY=0"


def test_abstract_namespace(monkeypatch):
    name = f"gw-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind("\0" + name)
        srv.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert recv(srv) == "READY=1"


def test_child_process_notifies_like_a_service(notify_socket):
    # the daemon is a separate process under systemd: the variable is inherited
    code = "from gradwatch.daemon import sdnotify; import sys; sys.exit(0 if sdnotify.ready('up') else 1)"
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), timeout=60)
    assert p.returncode == 0
    assert recv(notify_socket) == "READY=1\nSTATUS=up"


def test_no_socket_is_a_quiet_no_op(monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with caplog.at_level(logging.DEBUG, logger="gradwatch.sdnotify"):
        assert sdnotify.ready() is False
        assert sdnotify.watchdog() is False
    assert caplog.records == []


def test_missing_socket_warns_once_and_never_raises(monkeypatch, caplog):
    monkeypatch.setattr(sdnotify, "_warned", set())
    d = tempfile.mkdtemp(prefix="gw-")
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(d, "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="gradwatch.sdnotify"):
        assert sdnotify.ready() is False
        assert sdnotify.watchdog() is False
    shutil.rmtree(d)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0] and "gone.sock" in warnings[0]


def test_unsupported_address_is_reported(monkeypatch, caplog):
    monkeypatch.setattr(sdnotify, "_warned", set())
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="gradwatch.sdnotify"):
        assert sdnotify.ready() is False
    assert "not a unix socket path" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),  # WatchdogSec=30s: ping every 15 s
        ("30000000", "self", 15.0),
        ("30000000", "1", None),  # meant for another process
        ("0", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert sdnotify.watchdog_interval() == expected


def test_bad_watchdog_usec_is_reported(monkeypatch, caplog):
    monkeypatch.setattr(sdnotify, "_warned", set())
    monkeypatch.setenv("WATCHDOG_USEC", "thirty")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with caplog.at_level(logging.WARNING, logger="gradwatch.sdnotify"):
        assert sdnotify.watchdog_interval() is None
    assert "WATCHDOG_USEC='thirty' is not a number" in caplog.text
