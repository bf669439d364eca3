"""What a poll of an s3:// logdir costs in requests, against a real moto_server on loopback.

    .venv/bin/pip install s3fs 'moto[server]'
    .venv/bin/python bench/bench_remote.py --runs 10,1000,2500

For each N: N runs of one small event file are uploaded, then gradwatch lists
the logdir (``scan``) and reads every run (``read_logdir``); the requests are
counted in moto's own access log, so nothing on gradwatch's side is trusted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time

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


def event_file(run: int) -> bytes:
    e = _Event(wall_time=1.0, step=1)
    e.summary.value.add(tag="loss", simple_value=float(run))
    return frame(e.SerializeToString())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="10,1000,2500")
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
