"""Whoever reaches the metrics port cannot slow the daemon down (issue 9).

The attack that was measured: 400 connections that send part of a request and are then
closed all at once made the old thread-per-request exporter render /metrics 400 times
(/-/healthy took 14.6 s, RSS 47 -> 581 MB). Each test plays a variant on loopback and counts
what it cost (renders, connections held, peak RSS), never how long it took.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import socket
import urllib.error
import urllib.request

import pytest
from daemon_support import Daemon, Writer, wait_for, watch_args

from gradwatch.daemon.status import Status, series_rows
from gradwatch.exporter.collector import Metrics, MetricsServer
from gradwatch.rules import Series

N_ATTACKERS = 400
PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: gradwatch\r\nAccept: */*\r\n"  # no blank line: not done
COMPLETE = b"GET /metrics HTTP/1.1\r\nHost: gradwatch\r\n\r\n"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Board:
    """What the daemon thread publishes: one Status with 2000 series, replaced on each change."""

    def __init__(self, n_series: int = 2000) -> None:
        series = []
        for i in range(n_series):
            s = Series("run", f"gradients/layer{i}_norm", [])
            s.step, s.wall_time, s.value = i, 1.0, float(i)
            series.append(s)
        self.status = Status(series=series_rows(series))

    def publish(self, **fields) -> None:
        self.status = dataclasses.replace(self.status, **fields)


def open_attackers(port: int, payload: bytes, n: int = N_ATTACKERS) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(payload)
        socks.append(s)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def closed_by_server(s: socket.socket) -> bool:
    """Blocks until the server ends the connection (EOF or reset)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def counted():
    board = Board()
    return board, Metrics(lambda: board.status, process_metrics=False)


def test_half_open_connections_closed_at_once_render_nothing(counted):
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0) as srv:
        socks = open_attackers(srv.port, PARTIAL)
        assert get(srv.url + "/-/healthy") == (200, b"gradwatch is healthy.\n")  # while they hang
        close_all(socks)
        assert get(srv.url + "/-/healthy")[0] == 200
        assert srv.renderer.renders == 0  # no request was complete: nothing to render


def test_many_complete_scrapes_at_once_share_one_render(counted):
    _, metrics = counted
    # a long interval, so "at most once per interval" cannot depend on how loaded this machine is
    with MetricsServer(metrics, "127.0.0.1", 0, render_interval=3600) as srv:
        close_all(open_attackers(srv.port, COMPLETE))  # asked, then gone without reading
        assert get(srv.url + "/-/healthy")[0] == 200
        status, body = get(srv.url + "/metrics")
        assert status == 200 and b'gradwatch_scalar_value{run="run",tag="gradients/layer1999_norm"}' in body
        assert srv.renderer.renders == 1


def test_varying_name_filters_share_one_render_and_keep_the_plain_body_cached(counted):
    """Review 5: name[] values were part of the cache key as sent (unsorted, repeated): each
    distinct set forced a render, and at 16 keys the plain /metrics body was evicted."""
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0, render_interval=3600) as srv:
        status, plain = get(srv.url + "/metrics")
        assert status == 200
        for i in range(100):
            query = f"name[]=gradwatch_scalar_value&name[]=gradwatch_ready&name[]=x{i}"
            status, body = get(f"{srv.url}/metrics?{query}")
            assert status == 200 and b"gradwatch_ready 0.0" in body and b"gradwatch_scalar_value{" in body
            assert b"gradwatch_rules" not in body  # filtered
        # the same set in another order, repeated, is the same cache entry
        key_count = len(srv.renderer._cache)
        get(f"{srv.url}/metrics?name[]=x99&name[]=gradwatch_ready&name[]=gradwatch_scalar_value&name[]=x99")
        assert len(srv.renderer._cache) == key_count
        assert srv.renderer.renders == 1
        assert any(not names for _, _, names in srv.renderer._cache)  # the plain body was kept
        assert get(srv.url + "/metrics") == (200, plain)


def test_a_scrape_after_the_interval_renders_again(counted):
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0, render_interval=0) as srv:
        for _ in range(3):
            assert get(srv.url + "/metrics")[0] == 200
        assert srv.renderer.renders == 3  # cached bytes are never served past their interval


def test_a_change_the_daemon_pushes_is_never_hidden_by_the_cache(counted):
    board, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0, render_interval=3600) as srv:
        assert b"gradwatch_ready 0.0" in get(srv.url + "/metrics")[1]
        # as the daemon does after its catch-up (and on alerts, reloads): a rare change, counted
        board.publish(ready=True, changes=board.status.changes + 1)
        assert b"gradwatch_ready 1.0" in get(srv.url + "/metrics")[1]
        assert srv.renderer.renders == 2


def test_slow_clients_are_dropped_after_the_header_timeout(counted):
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0, header_timeout=1) as srv:
        socks = open_attackers(srv.port, PARTIAL[:10])  # slowloris: a few bytes, then nothing
        try:
            assert get(srv.url + "/-/healthy")[0] == 200
            assert all(closed_by_server(s) for s in socks)
        finally:
            close_all(socks)


def test_at_the_connection_limit_the_oldest_unfinished_request_makes_room(counted):
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0, max_connections=50, header_timeout=3600) as srv:
        socks = open_attackers(srv.port, PARTIAL, n=200)
        try:
            assert get(srv.url + "/-/healthy")[0] == 200  # the 201st connection is served
            # the first 151 were dropped to stay at 50 open connections
            assert all(closed_by_server(s) for s in socks[:151])
        finally:
            close_all(socks)


def test_at_the_limit_with_every_connection_answered_a_new_one_is_refused():
    """Review 26: with no open connection still sending its head, new ones were admitted past
    max_connections. Five scrapes whose render is held (a status source that blocks) fill the
    five slots past their head; the sixth connection is closed, not served."""
    import threading

    release = threading.Event()
    board = Board(n_series=10)

    def blocking_status() -> Status:
        release.wait(60)
        return board.status

    metrics = Metrics(blocking_status, process_metrics=False)
    with MetricsServer(metrics, "127.0.0.1", 0, max_connections=5, max_metrics_in_flight=5) as srv:
        held = open_attackers(srv.port, COMPLETE, n=5)
        try:
            wait_for(lambda: len(srv._open) == 5 and not srv._reading, "five connections past their head")
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sixth:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    sixth.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: gradwatch\r\n\r\n")
                assert closed_by_server(sixth)
            release.set()
            assert all(s.recv(12) == b"HTTP/1.1 200" for s in held)  # the five are still served
        finally:
            release.set()
            close_all(held)


def test_too_many_metrics_responses_at_once_get_503(counted):
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0, max_metrics_in_flight=0) as srv:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + "/metrics", timeout=30)
        assert (err.value.code, err.value.headers["Retry-After"]) == (503, "1")
        assert get(srv.url + "/-/healthy")[0] == 200


def test_malformed_and_oversized_requests_get_an_answer(counted):
    _, metrics = counted
    with MetricsServer(metrics, "127.0.0.1", 0) as srv:
        for payload, status in (
            (b"NONSENSE\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        ):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    s.sendall(payload)
                assert s.recv(64).split(b" ")[1] == status


# -- the real daemon ------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


def test_the_attack_on_a_real_daemon_costs_no_memory_and_delays_no_alert(tmp_path):
    logdir = tmp_path / "logdir"
    writer = Writer()
    # 2,000 tracked series: a /metrics body of ~300 KB, as a busy sidecar serves
    writer.write(str(logdir / "big"), 1, {f"gradients/layer{i}_norm": 1.0 for i in range(2000)})
    daemon = Daemon(
        [*watch_args(logdir, tmp_path / "state"), "--listen", "127.0.0.1:0"], str(tmp_path), verbose=True
    )
    try:
        daemon.wait_ready()
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", daemon.wait_err(r"serving /metrics")).group(1))
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/metrics")[0] == 200
        before = peak_rss_kib(daemon.proc.pid)
        for payload in (PARTIAL, COMPLETE, PARTIAL, COMPLETE):
            socks = open_attackers(port, payload)
            assert get(base + "/-/healthy")[0] == 200  # answers while they are open
            close_all(socks)
        # the watch loop was not held up: a new critical point is still alerted on the console
        writer.write(str(logdir / "exploding"), 200, {"gradients/actor_cnn_norm": 130486.0})
        daemon.wait_alert(run="exploding", rule="gradient_explosion")
        grown_mib = (peak_rss_kib(daemon.proc.pid) - before) / 1024
        assert grown_mib < 40, f"peak RSS grew by {grown_mib:.0f} MiB under the attack"
        # once per interval (1 s) at most for the same state: judged on the daemon's own clock,
        # as it logs each render, never on how long this loaded machine took
        renders = [
            (int(change), float(at))
            for change, at in re.findall(
                r"metrics: rendered .*change (\d+) at monotonic ([\d.]+) s", daemon.err()
            )
        ]
        assert renders, daemon.err()[-2000:]
        for (change, at), (next_change, next_at) in itertools.pairwise(renders):
            assert next_change != change or next_at - at >= 0.999, renders
    finally:
        writer.stop()
        daemon.stop()
    wait_for(lambda: daemon.proc.poll() is not None, "the daemon to exit")
