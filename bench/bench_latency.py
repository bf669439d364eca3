"""Latency of ``gradwatch watch``: from a writer's flush to the console line and to the stop-file.

    .venv/bin/python bench/bench_latency.py                    # inotify, then --poll 0.2; 200 alerts each
    .venv/bin/python bench/bench_latency.py --mode inotify --alerts 500
    .venv/bin/python bench/bench_latency.py --json results.json

Set-up: ``--runs`` runs exist before the daemon starts (one event file each, one healthy point),
so every alert is an append to a file the daemon already follows, as in a live training run.
For alert i the bench appends one critical value to run i and flushes (t0), then waits for the
daemon's console line for that step (read from the daemon's stdout pipe, t1) and for
``run_i/gradwatch-stop.json`` (stat-ed every 0.2 ms, t2). The next
alert waits until the daemon has printed the resolution of this one, and a random pause
(0-50 ms; with polling 0 to one interval) keeps the writes out of step with the poll timer.
The console line comes after the stop-file: the daemon writes (and fsyncs) the stop-file
before it commits the batch and prints.

Records come from bench_reader.scalar_event, which
tests/test_scalars.py::test_bench_generator_writes_what_the_writers_write holds byte-identical
to what tensorboardX writes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench_reader import scalar_event  # noqa: E402
from tensorboard.compat.proto import event_pb2  # noqa: E402

from gradwatch.events.framing import frame  # noqa: E402

TAG = "gradients/actor_cnn_norm"
RULES = """
rules:
  - name: bench_probe
    match: {tags: ["gradients/actor_cnn_norm"]}
    thresholds: {warning: 10000, critical: 50000}
    stop: critical
"""


def record(step: int, value: float) -> bytes:
    # bench_reader's generator, which a test holds byte-identical to tensorboardX's records
    return frame(scalar_event("simple", TAG, step, value, time.time()))


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


class Console(threading.Thread):
    """Reads the daemon's console lines as they come; (step, verb, arrival time) into a queue."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: queue.SimpleQueue = queue.SimpleQueue()

    def run(self) -> None:
        for line in self.stream:
            t = time.perf_counter()
            parts = line.split()
            if len(parts) > 7 and parts[1] in ("FIRING", "RESOLVED"):
                step = next((int(p[5:]) for p in parts if p.startswith("step=")), None)
                run = next((p[4:] for p in parts if p.startswith("run=")), None)
                self.lines.put((run, step, parts[1], t))

    def wait(self, run: str, step: int, verb: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {verb} line for {run} step {step}")
            got = self.lines.get(timeout=left)
            if got[:3] == (run, step, verb):
                return got[3]


def wait_file(path: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stop-file {path}")
        time.sleep(0.0002)
    return time.perf_counter()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def measure(mode: str, alerts: int, runs: int, poll: float) -> dict:
    work = tempfile.mkdtemp(prefix=f"gradwatch-bench-latency-{mode}-")
    logdir = os.path.join(work, "logdir")
    files = []
    for i in range(runs):
        run_dir = os.path.join(logdir, f"run{i:04d}")
        os.makedirs(run_dir)
        path = os.path.join(run_dir, "events.out.tfevents.1700000000.bench")
        with open(path, "wb") as f:
            f.write(
                frame(
                    event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
                )
            )
            f.write(record(0, 100.0))
        files.append(open(path, "ab", buffering=0))  # noqa: SIM115 - held open like a trainer's writer
    rules = os.path.join(work, "rules.yaml")
    with open(rules, "w") as f:
        f.write(RULES)
    args = [sys.executable, "-m", "gradwatch", "watch", logdir, "--listen", "", "--rules", rules]
    args += ["--state-dir", os.path.join(work, "state")]
    if mode == "poll":
        args += ["--poll", str(poll)]
    err = open(os.path.join(work, "daemon.err"), "w")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, cwd=ROOT)
    console = Console(proc.stdout)
    console.start()
    try:
        deadline = time.monotonic() + 60
        while "watching" not in _read(err.name):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(_read(err.name))
            time.sleep(0.05)
        to_console, to_stop = [], []
        for k in range(alerts):
            i = k % runs
            step = 1 + k // runs
            run = f"run{i:04d}"
            stop = os.path.join(logdir, run, "gradwatch-stop.json")
            if os.path.exists(stop):
                os.remove(stop)  # as the trainer's StopFile.clear() does before it carries on
            # uniform over the poll interval, so every phase of the timer is sampled
            time.sleep(random.uniform(0, poll if mode == "poll" else 0.05))
            data = record(2 * step, 1e6)
            t0 = time.perf_counter()
            files[i].write(data)  # unbuffered: this is the flush
            t2 = wait_file(stop)
            t1 = console.wait(run, 2 * step, "FIRING")
            to_console.append(t1 - t0)
            to_stop.append(t2 - t0)
            files[i].write(record(2 * step + 1, 100.0))
            console.wait(run, 2 * step + 1, "RESOLVED")
    finally:
        proc.terminate()
        proc.wait(30)
        for f in files:
            f.close()
        err.close()
        shutil.rmtree(work, ignore_errors=True)

    def summary(xs: list[float]) -> dict:
        ms = [x * 1000 for x in xs]
        return {
            "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2),
        }

    return {
        "mode": mode if mode == "inotify" else f"poll {poll:g}s",
        "alerts": alerts,
        "console": summary(to_console),
        "stop_file": summary(to_stop),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("inotify", "poll", "both"), default="both")
    p.add_argument("--alerts", type=int, default=200)
    p.add_argument("--runs", type=int, default=200, help="runs watched (alert i goes to run i mod runs)")
    p.add_argument("--poll", type=float, default=0.2, help="poll interval for --mode poll")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args()
    modes = ("inotify", "poll") if args.mode == "both" else (args.mode,)
    results = [measure(m, args.alerts, args.runs, args.poll) for m in modes]
    print(f"{'mode':<12} {'alerts':>6}  {'console p50/p99/max ms':>24}  {'stop-file p50/p99/max ms':>26}")
    for r in results:
        c, s = r["console"], r["stop_file"]
        print(
            f"{r['mode']:<12} {r['alerts']:>6}  {c['p50_ms']:>8} {c['p99_ms']:>7} {c['max_ms']:>7}  "
            f"{s['p50_ms']:>10} {s['p99_ms']:>7} {s['max_ms']:>7}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
