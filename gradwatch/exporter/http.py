"""The exporter's HTTP side: ``/metrics``, ``/-/healthy``, ``/-/ready`` and an index page.

Whoever can reach the port must not be able to slow the watch loop (issue 9: 400
half-open connections closed at once made a thread-per-request server render
/metrics 400 times; /-/healthy took 14.6 s, RSS went 47 -> 581 MB). So:

* one asyncio loop on one thread serves every connection: an idle or slow
  client costs a coroutine and a small buffer, never a thread;
* a request head must arrive whole within ``header_timeout`` and fit in
  ``MAX_HEAD`` bytes, or the connection is closed; at ``max_connections`` open
  connections the oldest one still sending its head is dropped for the new one;
* /-/healthy and /-/ready are answered by the loop itself, so they answer while
  clients hold connections open;
* /metrics is rendered (collected) on one worker thread, at most once per
  ``render_interval`` whatever the format or ``name[]`` filter, and every
  request in that interval gets the same bytes; at most ``max_metrics_in_flight`` /metrics responses are being
  rendered or sent at once, more get 503 with ``Retry-After``;
* every response closes its connection (Prometheus reconnects per scrape
  cheaply), and a client that does not take its response within
  ``write_timeout`` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry

from gradwatch.daemon.status import Status
from gradwatch.exporter.render import RENDER_INTERVAL, Headers, MetricsRenderer
from gradwatch.fmt import escape


class Served(Protocol):
    """What the server needs of gradwatch.exporter.collector.Metrics (no import back up to it)."""

    registry: CollectorRegistry

    @property
    def changes(self) -> int: ...

    def status(self) -> Status: ...


log = logging.getLogger("gradwatch.metrics")

MAX_CONNECTIONS = 512
MAX_METRICS_IN_FLIGHT = 4
HEADER_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_HEAD = 16 * 1024  # request line and headers; Prometheus sends a few hundred bytes


class _Request(NamedTuple):
    method: str
    path: str
    query: str
    headers: dict[str, str]


def parse_head(head: bytes) -> _Request | None:
    """The request line and headers of ``head`` (ending in a blank line); None if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    url = urlsplit(parts[1])
    return _Request(parts[0], url.path or "/", url.query, headers)


def http_response(status: str, headers: Headers, body: bytes, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
_INDEX = b"""<html><head><title>gradwatch</title></head><body>
<h1>gradwatch</h1>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/-/healthy">/-/healthy</a></li>
<li><a href="/-/ready">/-/ready</a></li></ul></body></html>
"""
_BAD_REQUEST = http_response("400 Bad Request", _TEXT, b"bad request\n")
_TOO_LARGE = http_response("431 Request Header Fields Too Large", _TEXT, b"request head too large\n")
_BUSY = http_response(
    "503 Service Unavailable", [*_TEXT, ("Retry-After", "1")], b"too many /metrics requests at once\n"
)


def simple_response(request: _Request, ready: bool, state_save_error: str | None = None) -> bytes:
    """Every answer but /metrics': cheap, given by the loop itself."""
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        return http_response("405 Method Not Allowed", [*_TEXT, ("Allow", "GET, HEAD")], b"use GET\n")
    if request.path == "/-/healthy":
        if state_save_error is None:
            return http_response("200 OK", _TEXT, b"gradwatch is healthy.\n", head_only)
        # said, not failed: a liveness probe's restart cannot free the disk, and a daemon that
        # cannot open its state DB does not start at all (no alerts whatsoever)
        body = f"gradwatch is running but cannot save its state: {escape(state_save_error)}\n".encode()
        return http_response("200 OK", _TEXT, body, head_only)
    if request.path == "/-/ready":
        if ready and state_save_error is not None:
            # still ready: it reads, alerts on the console and writes stop-files; a probe that
            # failed would not free the disk either (docs/operating.md, "A full state disk")
            body = f"gradwatch is ready but cannot save its state: {escape(state_save_error)}\n".encode()
            return http_response("200 OK", _TEXT, body, head_only)
        if ready:
            return http_response("200 OK", _TEXT, b"gradwatch is ready.\n", head_only)
        body = b"gradwatch is catching up on existing event files.\n"
        return http_response("503 Service Unavailable", _TEXT, body, head_only)
    if request.path == "/":
        return http_response("200 OK", [("Content-Type", "text/html; charset=utf-8")], _INDEX, head_only)
    return http_response(
        "404 Not Found", _TEXT, b"not found; try /metrics, /-/healthy or /-/ready\n", head_only
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


class MetricsServer:
    """Serves a :class:`~gradwatch.exporter.collector.Metrics` over HTTP on a background thread."""

    def __init__(
        self,
        metrics: Served,
        host: str = "127.0.0.1",
        port: int = 9723,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_metrics_in_flight: int = MAX_METRICS_IN_FLIGHT,
        header_timeout: float = HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        render_interval: float = RENDER_INTERVAL,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.max_connections = max_connections
        self.max_metrics_in_flight = max_metrics_in_flight
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.renderer = MetricsRenderer(metrics.registry, render_interval, lambda: metrics.changes)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        # open connections still sending their head, oldest first (dict keeps insertion order)
        self._reading: dict[asyncio.StreamWriter, None] = {}
        self._open: set[asyncio.StreamWriter] = set()
        self._metrics_in_flight = 0
        self._failed: Exception | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; raises OSError (e.g. address in use) with the address in the message."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._sock = socket.create_server((self.host, self.requested_port), family=family, backlog=128)
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {self.address_text()}: {e.strerror or e}") from None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gradwatch-render")
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="gradwatch-http", daemon=True)
        self._thread.start()
        started.wait()
        if self._failed is not None:
            self.stop()
            raise OSError(f"cannot serve on {self.address_text()}: {self._failed}")
        log.info("serving /metrics, /-/healthy and /-/ready on %s", self.address_text())
        if not is_loopback(self.host):
            log.warning(
                "the metrics endpoint listens on %s, not only on loopback: whoever reaches this port "
                "reads run names and values (docs/deployment.md, threat model)",
                self.address_text(),
            )

    def _run(self, started: threading.Event) -> None:
        assert self._loop is not None and self._sock is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(self._sock, started))
        except Exception as e:  # before serving (after, _handle keeps every error to itself)
            self._failed = e
        finally:
            started.set()
            self._loop.close()

    async def _serve(self, sock: socket.socket, started: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_HEAD)
        started.set()
        await self._stopping.wait()
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await server.wait_closed()

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(self._stopping.set)  # type: ignore[union-attr]
        thread.join(timeout)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._sock is not None:
            self._sock.close()
        self._loop = self._thread = self._executor = self._sock = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("MetricsServer.port is known only after start()")
        return self._sock.getsockname()[1]

    def address_text(self) -> str:
        port = self.port if self._sock is not None else self.requested_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    # -- one connection ---------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            writer.transport.abort()  # refused: every connection at the limit is being answered
            return
        done = False
        try:
            await self._answer(reader, writer)
            done = True
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or was too slow: nothing to tell it
        except Exception:
            log.debug("metrics: error serving a request", exc_info=True)
        finally:
            self._reading.pop(writer, None)
            self._open.discard(writer)
            if done:
                writer.close()
            else:
                writer.transport.abort()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Track a new connection; at the limit, drop the oldest one still sending its head, or
        refuse this one (False) when every open connection is already being answered."""
        if len(self._open) >= self.max_connections:
            if not self._reading:
                return False
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            oldest.transport.abort()
        self._open.add(writer)
        self._reading[writer] = None
        return True

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except asyncio.LimitOverrunError:
            head = None
        self._reading.pop(writer, None)
        request = parse_head(head) if head is not None else None
        if head is None:
            response = _TOO_LARGE
        elif request is None:
            response = _BAD_REQUEST
        elif request.path == "/metrics" and request.method in ("GET", "HEAD"):
            await self._send_metrics(request, writer)
            return
        else:
            status = self.metrics.status()
            response = simple_response(request, status.ready, status.state_save_error)
        await self._send(writer, response)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def _send_metrics(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        if self._metrics_in_flight >= self.max_metrics_in_flight:
            await self._send(writer, _BUSY)
            return
        self._metrics_in_flight += 1  # until sent: a client that does not read holds its body
        try:
            names = tuple(parse_qs(request.query).get("name[]", ()))
            headers, body = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                self.renderer.render,
                request.headers.get("accept", ""),
                request.headers.get("accept-encoding", ""),
                names,
            )
            await self._send(writer, http_response("200 OK", headers, body, request.method == "HEAD"))
        finally:
            self._metrics_in_flight -= 1


__all__ = ["MetricsRenderer", "MetricsServer", "is_loopback"]
