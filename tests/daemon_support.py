"""Helpers for the daemon tests: a real writer and a real ``gradwatch watch``, both in subprocesses.

The writer is tensorboardX driven over stdin (one JSON command per line, answered once the
data is flushed to disk), so a test decides exactly what is on disk and when. It uses
tensorboardX's own ``EventsWriter`` and ``summary.scalar``, the two pieces ``SummaryWriter.add_scalar``
is made of, because ``SummaryWriter.flush()`` does not wait for its background queue. torch is
blocked in the writer process only to start it in well under a second; tensorboardX writes the
same bytes without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from receivers import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

WRITER = r"""
import json, os, sys, time
sys.modules["torch"] = None  # tensorboardX works without it and starts 2 s faster
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.summary import scalar

writers = {}
count = {}

def writer(d):
    w = writers.get(d)
    if w is None:
        os.makedirs(d, exist_ok=True)
        count[d] = count.get(d, 0) + 1
        # a restarted writer opens a second event file in the same run directory
        w = writers[d] = EventsWriter(os.path.join(d, "events"), f".{os.getpid()}.{count[d]}")
    return w

for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd.get("op", "write")
    d = cmd.get("dir")
    if op == "write":
        w = writer(d)
        for step, scalars in cmd["points"]:
            for tag, value in scalars.items():
                w.write_event(Event(summary=scalar(tag, float(value)), step=step, wall_time=time.time()))
        w.flush()
    elif op in ("close", "restart"):
        w = writers.pop(d, None)
        if w is not None:
            w.close()
        if op == "restart":
            writer(d).flush()
    elif op == "exit":
        break
    print(json.dumps({"ok": True}), flush=True)
for w in writers.values():
    w.close()
"""


class Writer:
    """A tensorboardX writer process; each call returns once its points are flushed to disk."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-c", WRITER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"writer process ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def write(self, run_dir: str, step: int, scalars: dict[str, float]) -> None:
        self._call({"dir": str(run_dir), "points": [[step, scalars]]})

    def write_many(self, run_dir: str, points: list[tuple[int, dict[str, float]]]) -> None:
        self._call({"dir": str(run_dir), "points": [[s, v] for s, v in points]})

    def restart(self, run_dir: str) -> None:
        """Close the run's writer and open a new one: a second event file in the same run."""
        self._call({"op": "restart", "dir": str(run_dir)})

    def close(self, run_dir: str) -> None:
        self._call({"op": "close", "dir": str(run_dir)})

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """receivers.wait_until with ``what`` first, as the daemon tests read best."""
    return wait_until(predicate, timeout, interval, what)


ALERT_LINE = re.compile(
    r"^(?P<time>\S+) (?P<verb>FIRING|RESOLVED|ESCALATED|DE-ESCALATED|STILL FIRING) "
    r"(?P<severity>[A-Z]+(?: -> [A-Z]+)?) (?P<rule>\S+) run=(?P<run>\S+) tag=(?P<tag>\S+) "
    r"step=(?P<step>-?\d+) value=(?P<value>\S+) threshold=(?P<threshold>\S+)(?P<rest>.*)$"
)


def parse_alert_lines(text: str) -> list[dict[str, str]]:
    """The console's one-line-per-transition format, as dicts; other lines are ignored."""
    out = []
    for line in text.splitlines():
        m = ALERT_LINE.match(line)
        if m:
            out.append(m.groupdict())
    return out


STARTED: list[Daemon] = []


def kill_leftovers() -> None:
    """Kill every daemon a test started and did not stop (a failed assertion on the way)."""
    while STARTED:
        d = STARTED.pop()
        if d.proc.poll() is None:
            d.kill()


class Daemon:
    """``python -m gradwatch watch ...`` with stdout and stderr going to files."""

    def __init__(
        self,
        args: list[str],
        workdir: str,
        name: str = "daemon",
        prefix: list[str] | None = None,
        verbose: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        self._out = open(self.out_path, "ab")  # noqa: SIM115 - closed in stop()
        self._err = open(self.err_path, "ab")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1", **(env or {}))
        self.proc = subprocess.Popen(
            [*(prefix or []), PYTHON, "-m", "gradwatch", *(["-v"] if verbose else []), "watch", *args],
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
        )
        STARTED.append(self)

    def out(self) -> str:
        with open(self.out_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def err(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def alerts(self) -> list[dict[str, str]]:
        return parse_alert_lines(self.out())

    def json_alerts(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out().splitlines():
            if line.startswith("{"):
                # the last line may be half written when the process was killed
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_err(self, pattern: str, timeout: float = 30.0, count: int = 1) -> str:
        rx = re.compile(pattern)

        def found() -> str | None:
            self._check_alive()
            text = self.err()
            return text if len(rx.findall(text)) >= count else None

        return wait_for(found, f"{pattern!r} in the daemon's log:\n{self.err()[-3000:]}", timeout)

    def wait_alert(self, timeout: float = 30.0, **fields: str) -> dict[str, str]:
        def found() -> dict[str, str] | None:
            self._check_alive()
            for a in self.alerts():
                if all(a.get(k) == v for k, v in fields.items()):
                    return a
            return None

        try:
            return wait_for(found, f"an alert with {fields}", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\nconsole:\n{self.out()[-3000:]}\nlog:\n{self.err()[-3000:]}") from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_err(r"(INFO: |\"message\": \")watching ", timeout)

    def _check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"daemon exited with {code}:\n{self.err()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0, sig: int | None = None) -> int:
        """SIGTERM (or ``sig``) and wait; returns the exit code (kills it if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if sig is None else sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon did not stop within {timeout}s on SIGTERM") from None
        self._out.close()
        self._err.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._out.close()
        self._err.close()


def run_gradwatch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A one-shot ``python -m gradwatch ARGS`` (check, report, a watch that must refuse to start)."""
    return subprocess.run(
        [PYTHON, "-m", "gradwatch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def watch_args(logdir: str, state_dir: str, *extra: str) -> list[str]:
    return [str(logdir), "--state-dir", str(state_dir), "--listen", "", *extra]


def event_files(run_dir: str) -> list[str]:
    return sorted(os.path.join(run_dir, n) for n in os.listdir(run_dir) if "tfevents" in n)


def inotify_watch_limit(max_watches: int) -> list[str]:
    """A command prefix: run in a user namespace of its own whose inotify watch limit is ``max_watches``.

    ``/proc/sys/user/max_inotify_watches`` is per user namespace, so the daemon really runs
    out of watches (ENOSPC from inotify_add_watch) while fs.inotify.max_user_watches, which every
    other process on the machine shares, stays as it is.
    """
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        f'echo {max_watches} > /proc/sys/user/max_inotify_watches && exec "$@"',
        "sh",
    ]


def outbox_rows(state_dir: str) -> list[tuple[str, str, str]]:
    """(alertname, kind, state) of every row of the daemon's notification outbox, in queue order.

    A row is only ever sent while it is pending: with none pending, nothing more goes out
    (webhook and Slack channels do not re-send on their own).
    """
    db = sqlite3.connect(os.path.join(state_dir, "gradwatch.db"))
    try:
        rows = db.execute("SELECT event, state FROM notify_outbox ORDER BY id").fetchall()
    finally:
        db.close()
    return [(json.loads(event)["rule"], json.loads(event)["kind"], state) for event, state in rows]
