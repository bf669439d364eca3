"""Loopback HTTP receivers and a real Alertmanager, for tests that deliver notifications.

``Receiver`` is a ThreadingHTTPServer on 127.0.0.1 that records every request
and answers from a script (status, headers, body, "hang" or "trickle"), then
200 "ok". It binds port 0 first and exposes ``port`` (no port handed out and
bound later by someone else); ``Receiver(listening=False)`` holds its port but
refuses connections until ``start()``: a receiver that is down, then comes up.
``refused_port()`` holds a port nobody answers on. ``Alertmanager`` runs the
real ``prometheus-alertmanager`` binary on a port it picks itself (read back
from its log), routing everything to a webhook URL with group_wait 0s and
group_interval 1s. Import as ``from receivers import Receiver`` (tests/ is not
a package).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gradwatch.alerts import AlertEvent


def free_port() -> int:
    """A port nothing listens on right now. Racy (the port is free only until someone binds it):
    kept for tests/test_daemon_delivery.py; new tests use ``Receiver(listening=False)`` or
    ``refused_port()``, which hold their port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port held by a bound socket that never listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Response:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the receiver stops): a receiver that times out
    # send the response one byte every ``trickle`` seconds, as a slow-loris receiver does;
    # "status": from the status line on, "body": headers at once, then the body
    trickle: float = 0.0
    trickle_from: str = "status"


class Receiver:
    """Records requests; answers scripted responses in order, then ``default``."""

    def __init__(self, port: int = 0, default: Response | None = None, *, listening: bool = True) -> None:
        self.requests: list[Request] = []
        # per trickled response: how many bytes went out before the client hung up (or all)
        self.trickled: list[int] = []
        self.default = default or Response()
        self._script: list[Response] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Request("POST", self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    resp = receiver._script.pop(0) if receiver._script else receiver.default
                if resp.hang:
                    receiver._release.wait(30)
                    self.close_connection = True
                    return
                data = resp.body.encode()
                head = [f"HTTP/1.1 {resp.status} {self.responses.get(resp.status, ('',))[0]}"]
                head += [f"{k}: {v}" for k, v in resp.headers.items()]
                head += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}"]
                raw = ("\r\n".join(head) + "\r\n\r\n").encode() + data
                if resp.trickle:
                    self.close_connection = True
                    self._trickle(raw, resp)
                    return
                self.wfile.write(raw)

            def _trickle(self, raw: bytes, resp: Response) -> None:
                sent = 0
                if resp.trickle_from == "body":
                    sent = raw.index(b"\r\n\r\n") + 4
                    self.wfile.write(raw[:sent])
                try:
                    for i in range(sent, len(raw)):
                        if receiver._release.wait(resp.trickle):
                            break
                        self.wfile.write(raw[i : i + 1])
                        self.wfile.flush()
                        sent += 1
                except OSError:  # the client gave up and closed the connection
                    pass
                with receiver._lock:
                    receiver.trickled.append(sent)

            def log_message(self, *args: Any) -> None:
                pass

        # bound at once (the port is ours), listening only from start(): before that,
        # connections are refused as by a receiver that is down
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.server_bind()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="receiver", daemon=True
        )
        if listening:
            self.start()

    def start(self) -> None:
        """Listen and answer (a receiver made with ``listening=False`` comes up)."""
        self._server.server_activate()
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, *responses: Response) -> None:
        with self._lock:
            self._script.extend(responses)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Request]:
        wait_until(lambda: self.count() >= n, timeout, what=f"{n} request(s) at the receiver")
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        self._release.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


AM_CONFIG = """\
route:
  receiver: hook
  group_by: ['alertname', 'run']
  group_wait: {group_wait}
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs: [{{url: '{url}', send_resolved: true}}]
"""


class Alertmanager:
    """The real Alertmanager on 127.0.0.1 (no gossip, storage in a temp dir).

    ``port=0`` (the default): Alertmanager binds a free port itself and ``port`` is read
    from its "Listening on" log line, so no other process can take it in between.
    """

    def __init__(self, binary: str, webhook_url: str, port: int = 0, group_wait: str = "0s") -> None:
        self.dir = tempfile.mkdtemp(prefix="gw-am-")
        config = os.path.join(self.dir, "am.yml")
        with open(config, "w") as f:
            f.write(AM_CONFIG.format(url=webhook_url, group_wait=group_wait))
        self._log_path = os.path.join(self.dir, "am.log")
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={self.dir}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=info",  # for the "Listening on" line
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.port = wait_until(self._listening, 15, 0.05, "Alertmanager's listening address")
            self.url = f"http://127.0.0.1:{self.port}"
            wait_until(self._ready, 15, 0.05, "Alertmanager /-/ready")
        except AssertionError:
            self.stop()
            raise

    def _listening(self) -> int | None:
        with open(self._log_path, errors="replace") as f:
            m = re.search(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', f.read())
        if m is None and self.proc.poll() is not None:
            self._ready()  # raises with the log
        return int(m.group(1)) if m else None

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            with open(self._log_path, errors="replace") as f:
                raise AssertionError(f"Alertmanager exited with {self.proc.returncode}: {f.read()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: what Alertmanager currently holds."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_event(
    rule: str = "GradientExplosion",
    run: str = "exp1",
    tag: str = "gradients/actor_cnn_norm",
    kind: str = "firing",
    severity: str = "critical",
    *,
    previous: str | None = None,
    step: int = 300,
    value: float = 826256.0,
    threshold: float | None = 50000.0,
    starts_at: float | None = None,
    ends_at: float | None = None,
    seq: int = 1,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    catchup: bool = False,
) -> AlertEvent:
    """An AlertEvent as the lifecycle produces it (labels and annotations filled in)."""
    now = time.time()
    all_labels = {"alertname": rule, "severity": severity, "run": run, "tag": tag}
    all_labels.update(labels or {})
    all_annotations = {
        "summary": f"{tag} = {value} at step {step} on run {run}: {severity}",
        "recommendation": "Stop training and lower the learning rate or clip gradients.",
    }
    all_annotations.update(annotations or {})
    return AlertEvent(
        rule=rule,
        run=run,
        tag=tag,
        kind=kind,
        severity=severity,
        previous=previous,
        step=step,
        value=value,
        wall_time=now,
        threshold=threshold,
        starts_at=starts_at if starts_at is not None else now,
        ends_at=ends_at if ends_at is not None else (now if kind == "resolved" else None),
        labels=all_labels,
        annotations=all_annotations,
        catchup=catchup,
        seq=seq,
    )


def crossing_and_recovery(run: str) -> list[AlertEvent]:
    """The events the daemon gets from one batch of points holding a crossing and its recovery
    (the packaged rules: gradient_explosion and gradient_growth fire, then both resolve)."""
    from gradwatch.alerts import AlertBook
    from gradwatch.config.rulefiles import load_rules
    from gradwatch.engine import Engine

    rules = load_rules()
    book = AlertBook(rules, live=True)
    engine = Engine(rules, book)
    now = time.time()
    for step, value in enumerate((5_191, 130_486, 900, 800, 700, 600, 500), start=1):
        engine.observe(run, "gradients/actor_cnn_norm", step * 100, now + step, float(value))
    events = book.take_events()
    assert [e.kind for e in events if e.rule == "gradient_explosion"] == ["firing", "resolved"]
    return events
