"""What a poll of an s3:// logdir costs in requests, against a real moto_server on loopback.

    .venv/bin/pip install s3fs 'moto[server]'
    .venv/bin/python bench/bench_remote.py --runs 10,1000,2500
    .venv/bin/python bench/bench_remote.py --daemon --runs 10,1000 --polls 5 --rewrites 8

For each N: N runs of one small event file are uploaded, then gradwatch lists
the logdir (``scan``) and reads every run (``read_logdir``); the requests are
counted in moto's own access log, so nothing on gradwatch's side is trusted.

``--daemon``: a real ``gradwatch watch s3://...`` at the default poll interval on
N runs; the requests moto served during ``--polls`` polls with nothing new, then
the seconds from each rewrite of one object (a spike, then a calm point: one
console line each) to the daemon's console line.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from gradwatch.config.model import DEFAULT_POLL_INTERVAL
from gradwatch.events.framing import frame
from gradwatch.events.logdir import ProblemLog, read_logdir, remote_logdir, scan
from gradwatch.events.scalars import _Event


class Moto:
    def __init__(self) -> None:
        binary = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in self.proc.stdout:  # type: ignore[union-attr]
            m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.endpoint = f"http://127.0.0.1:{m.group(1)}"
                break
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()

    def requests_after(self, n: int, expect: int) -> list[str]:
        deadline = time.monotonic() + 30
        while len(self.log) < n + expect and time.monotonic() < deadline:
            time.sleep(0.05)
        return [m.group(1) for line in self.log[n:] if (m := re.search(r'"\S*?(GET|HEAD|PUT) ', line))]


def event_file(run: int, tag: str = "loss", step: int = 1) -> bytes:
    e = _Event(wall_time=1.0, step=step)
    e.summary.value.add(tag=tag, simple_value=float(run))
    return frame(e.SerializeToString())


TAG = "gradients/actor_cnn_norm"


class Watch:
    """``gradwatch watch URL`` at the default poll interval; its console lines with their arrival times."""

    def __init__(self, url: str, state_dir: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradwatch", "watch", url, "--state-dir", state_dir, "--listen", ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1"),
        )
        self.lines: list[tuple[float, str]] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line))
            if "INFO: watching " in line:
                self.ready.set()

    def wait_line(self, text: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            time.sleep(0.01)
        raise RuntimeError(f"no {text!r} from the daemon:\n{''.join(text for _, text in self.lines)[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def daemon_row(moto: Moto, fs, n: int, polls: int, rewrites: int) -> str:
    bucket = f"watch-{n}"
    fs.mkdir(bucket)
    fs.pipe({f"{bucket}/logs/run-{i:05d}/events.out.tfevents.1": event_file(i, TAG) for i in range(n)})
    key = f"{bucket}/logs/run-00000/events.out.tfevents.1"
    with tempfile.TemporaryDirectory() as state:
        watch = Watch(f"s3://{bucket}/logs", state)
        try:
            if not watch.ready.wait(120):
                raise RuntimeError("the daemon did not catch up")
            time.sleep(1)
            seen = len(moto.log)
            time.sleep(DEFAULT_POLL_INTERVAL * (polls - 0.5))  # jitter: about `polls` polls
            reqs = moto.requests_after(seen, 0)
            lists, gets = reqs.count("GET") - _object_gets(moto, seen), _object_gets(moto, seen)
            latencies = _rewrite_latencies(watch, fs, key, rewrites)
        finally:
            watch.stop()
    return (
        f"| {n:,} | {lists} LIST in {polls - 0.5:g} intervals | {gets} | "
        f"{statistics.median(latencies):.1f} s | {max(latencies):.1f} s |"
    )


def _object_gets(moto: Moto, seen: int) -> int:
    return sum(1 for line in moto.log[seen:] if re.search(r'"GET /[^?\s]+/events\.out', line))


def _rewrite_latencies(watch: Watch, fs, key: str, rewrites: int) -> list[float]:
    """Seconds from each whole-object rewrite (TF's S3 writer appends so) to its console line."""
    data = fs.cat_file(key)
    latencies = []
    for i in range(rewrites):
        step = 10 + i
        value = 2_860_755.0 if i % 2 == 0 else 100.0  # fires, then resolves: one line each
        data += event_file(int(value), TAG, step)
        time.sleep(DEFAULT_POLL_INTERVAL * (0.3 + (0.37 * i) % 1))  # at spread phases of a poll
        fs.pipe_file(key, data)
        done = time.monotonic()
        at = watch.wait_line(f"gradient_explosion run=run-00000 tag={TAG} step={step} ")
        latencies.append(at - done)
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="10,1000,2500")
    p.add_argument("--daemon", action="store_true", help="a gradwatch watch process on each N")
    p.add_argument("--polls", type=int, default=5)
    p.add_argument("--rewrites", type=int, default=8)
    args = p.parse_args()
    moto = Moto()
    os.environ.update(
        AWS_ENDPOINT_URL=moto.endpoint,
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import s3fs

    fs = s3fs.S3FileSystem()
    if args.daemon:
        print("| runs | requests while nothing is new | GETs of objects | rewrite -> alert, median | max |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        try:
            for n in map(int, args.runs.split(",")):
                print(daemon_row(moto, fs, n, args.polls, args.rewrites), flush=True)
        finally:
            moto.proc.kill()
        return
    print("| runs (one file each) | LIST requests per poll | GETs to read every run | HEADs | poll seconds |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    try:
        for n in map(int, args.runs.split(",")):
            bucket = f"bench-{n}"
            fs.mkdir(bucket)
            fs.pipe({f"{bucket}/logs/run-{i:05d}/events.out.tfevents.1": event_file(i) for i in range(n)})
            url = f"s3://{bucket}/logs"
            remote_logdir(url)
            time.sleep(0.5)
            seen = len(moto.log)
            t = time.perf_counter()
            assert len(scan(url, ProblemLog())) == n
            took = time.perf_counter() - t
            lists = len(moto.requests_after(seen, 1))
            time.sleep(0.5)
            seen = len(moto.log)
            assert sum(1 for _ in read_logdir(url)) == n
            reqs = moto.requests_after(seen, n + 1)
            gets = reqs.count("GET") - lists
            print(f"| {n:,} | {lists} | {gets:,} | {reqs.count('HEAD')} | {took:.2f} |")
    finally:
        moto.proc.kill()


if __name__ == "__main__":
    main()
