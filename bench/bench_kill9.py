"""kill -9 the real daemon again and again: is any notification lost or sent twice?

    .venv/bin/python bench/bench_kill9.py                  # 20 kills, 4 writers, receiver answers in 0.3 s
    .venv/bin/python bench/bench_kill9.py --kills 3 --cycles 6 --json out.json

Set-up: a webhook receiver on 127.0.0.1 (in this process, so it outlives every daemon) that
answers each POST after ``--delay`` seconds and records it; ``gradwatch watch`` with one rule
(warning above 10) and that webhook; 4 tensorboardX writer processes, one run each, writing
``--cycles`` cycles of 7 points, one point every ``--pace`` seconds and flushed:

    step 100k     1        (healthy)
    step 100k+10  50       FIRING of cycle k
    ...           50
    step 100k+50  1        RESOLVED of cycle k
    step 100k+60  1

While the writers write, the daemon is killed with SIGKILL ``--kills`` times at random moments
(0.3-2.5 s after each start, so also during start-up and catch-up) and restarted after a
random ``--down``/2 to ``--down`` seconds (0.25-0.5 s): a long one lets a writer finish whole
cycles meanwhile, so the restart queues several transitions of one alert at once. When the
writers are done, one last daemon runs until every queued notification is sent, then stops
with SIGTERM.

Counting, from what the receiver got (each alert carries its step in an annotation):

* lost FIRING: a cycle whose firing never reached the receiver as ``firing``;
* lost RESOLVED: a cycle whose resolution never reached the receiver;
* duplicates: the same (run, status, step) received twice. The documented at-least-once gap is
  a kill between the receiver's answer and the outbox's mark, after which the next daemon sends
  the row again: a copy with a kill between it and the one before is inside that window; a
  copy without (one daemon sending twice) is unexplained.

The script exits 1 when anything was lost or duplicated outside the window.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TAG = "gradients/actor_cnn_norm"
RULE = "kill9"
RULES = f"""
rules:
  - name: {RULE}
    match: {{tags: ["{TAG}"]}}
    thresholds: {{warning: 10}}
    stop: never
    annotations: {{step: "{{step}}"}}
"""
# (step offset in a cycle, value): fires at +10, resolves at +50
CYCLE = [(0, 1.0), (10, 50.0), (20, 50.0), (30, 50.0), (40, 50.0), (50, 1.0), (60, 1.0)]
FIRES_AT, RESOLVES_AT = 10, 50

WRITER = r"""
import os, sys, time
sys.modules["torch"] = None  # tensorboardX works without it and starts faster
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.summary import scalar
import json
run_dir, tag, cycles, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cycle = json.loads(sys.argv[5])
os.makedirs(run_dir, exist_ok=True)
w = EventsWriter(os.path.join(run_dir, "events"), "")
for k in range(1, cycles + 1):
    for offset, value in cycle:
        w.write_event(Event(summary=scalar(tag, value), step=100 * k + offset, wall_time=time.time()))
        w.flush()
        time.sleep(pace)
w.close()
"""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a daemon killed mid-request resets its connection: expected here, not news


class SlowReceiver:
    """Records every POST body with its arrival time and answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        lock = threading.Lock()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    got.append((arrived, json.loads(body)))
                time.sleep(delay)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the daemon was killed while waiting for the answer: the at-least-once gap

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_daemon(work: str, logdir: str, config: str, n: int) -> subprocess.Popen:
    with open(os.path.join(work, f"daemon-{n}.err"), "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gradwatch", "watch", logdir, "--config", config, "--listen", ""],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def wait_log(path: str, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, errors="replace") as f:
            if needle in f.read():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{needle!r} not in {path} after {timeout:g} s")


def outbox_state(state_dir: str) -> tuple[int, int]:
    """(rows, pending rows) of the daemon's outbox."""
    db = sqlite3.connect(os.path.join(state_dir, "gradwatch.db"), timeout=30)
    try:
        rows = db.execute("SELECT COUNT(*), SUM(state = 'pending') FROM notify_outbox").fetchone()
    except sqlite3.OperationalError:
        return 0, 0  # no table yet
    finally:
        db.close()
    return rows[0], rows[1] or 0


def count(got: list[tuple[float, dict[str, Any]]], runs: list[str], cycles: int, kills: list[float]) -> dict:
    """Lost FIRING / RESOLVED per alert and duplicates, from what the receiver got."""
    arrivals: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for arrived, doc in got:
        for a in doc["alerts"]:
            arrivals[(a["labels"]["run"], a["status"], int(a["annotations"]["step"]))].append(arrived)
    lost_firing: dict[str, list[int]] = {}
    lost_resolved: dict[str, list[int]] = {}
    for run in runs:
        for k in range(1, cycles + 1):
            if (run, "firing", 100 * k + FIRES_AT) not in arrivals:
                lost_firing.setdefault(run, []).append(k)
            if (run, "resolved", 100 * k + RESOLVES_AT) not in arrivals:
                lost_resolved.setdefault(run, []).append(k)
    in_window = unexplained = 0
    for times in arrivals.values():
        for first, again in itertools.pairwise(sorted(times)):
            # sent again by the next daemon: the one that sent it died before marking it sent
            if any(first <= t <= again for t in kills):
                in_window += 1
            else:
                unexplained += 1
    return {
        "expected_firing": len(runs) * cycles,
        "expected_resolved": len(runs) * cycles,
        "lost_firing": sum(len(v) for v in lost_firing.values()),
        "lost_resolved": sum(len(v) for v in lost_resolved.values()),
        "lost_firing_by_alert": lost_firing,
        "lost_resolved_by_alert": lost_resolved,
        "duplicates_in_at_least_once_window": in_window,
        "duplicates_unexplained": unexplained,
        "requests": len(got),
    }


def run(
    kills: int = 20,
    writers: int = 4,
    cycles: int = 20,
    pace: float = 0.3,
    delay: float = 0.3,
    down: float = 0.5,
    seed: int | None = None,
    keep: str | None = None,
) -> dict[str, Any]:
    rnd = random.Random(seed)
    work = keep or tempfile.mkdtemp(prefix="gradwatch-kill9-")
    logdir = os.path.join(work, "logdir")
    state = os.path.join(work, "state")
    os.makedirs(logdir, exist_ok=True)
    receiver = SlowReceiver(delay)
    config = os.path.join(work, "gradwatch.yaml")
    rules = os.path.join(work, "rules.yaml")
    with open(rules, "w") as f:
        f.write(RULES)
    with open(config, "w") as f:
        f.write(
            f"rules: [{rules}]\nstate_dir: {state}\nnotifiers:\n"
            f"  - {{name: hook, type: webhook, url: '{receiver.url}', group_wait: 0s, timeout: 5s}}\n"
        )
    started = 0
    daemon = start_daemon(work, logdir, config, started)
    kill_times: list[float] = []
    procs: list[subprocess.Popen] = []
    try:
        # a first start reads existing files as history: start the writers once it has caught up
        wait_log(os.path.join(work, "daemon-0.err"), "watching ")
        runs = [f"run{i}" for i in range(writers)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WRITER,
                    os.path.join(logdir, r),
                    TAG,
                    str(cycles),
                    str(pace),
                    json.dumps(CYCLE),
                ],
                cwd=ROOT,
            )
            for r in runs
        ]
        while len(kill_times) < kills:
            time.sleep(rnd.uniform(0.3, 2.5))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            kill_times.append(time.monotonic())
            time.sleep(rnd.uniform(down / 2, down))
            started += 1
            daemon = start_daemon(work, logdir, config, started)
        writers_done_during_kills = all(p.poll() is not None for p in procs)
        for p in procs:
            p.wait()
        # everything written is read and every transition queued once the count is complete
        expected_rows = 2 * writers * cycles
        deadline = time.monotonic() + 120 + expected_rows * delay
        while time.monotonic() < deadline:
            rows, pending = outbox_state(state)
            if rows >= expected_rows and pending == 0:
                break
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        result = count(receiver.got, runs, cycles, kill_times)
        result.update(
            kills=len(kill_times),
            writers=writers,
            cycles=cycles,
            delay_s=delay,
            down_s=down,
            writers_done_during_kills=writers_done_during_kills,
            outbox_rows=outbox_state(state)[0],
            workdir=work if keep else None,
        )
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        receiver.stop()
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--cycles", type=int, default=20, help="fire/resolve cycles per writer")
    ap.add_argument("--pace", type=float, default=0.3, help="seconds between two points of a writer")
    ap.add_argument("--delay", type=float, default=0.3, help="seconds the receiver takes to answer")
    ap.add_argument(
        "--down", type=float, default=0.5, help="most seconds the daemon stays dead (at least half of it)"
    )
    ap.add_argument("--seed", type=int)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    result = run(
        args.kills, args.writers, args.cycles, args.pace, args.delay, args.down, args.seed, args.keep
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    bad = result["lost_firing"] + result["lost_resolved"] + result["duplicates_unexplained"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
