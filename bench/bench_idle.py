"""What ``gradwatch watch`` costs while nothing happens, and how fast it catches up on history.

    .venv/bin/python bench/bench_idle.py            # idle (inotify and --poll 1), catch-up 200 MB
    .venv/bin/python bench/bench_idle.py --idle-seconds 120 --catchup-mb 50,200
    .venv/bin/python bench/bench_idle.py --skip-idle --catchup-mb 1000

Idle: a logdir of ``--runs`` runs x ``--tags`` tags (every tag matched by the default rules, so
the engine holds runs x tags series), the daemon caught up and watching, nothing written for
``--idle-seconds`` (long enough to include periodic rescans, 30 s apart by default). CPU is
the daemon's utime + stime from /proc/PID/stat over that window, as % of one core; memory is
VmRSS (and VmHWM, the peak) from /proc/PID/status.

Catch-up: a first start on a logdir holding ``--catchup-mb`` megabytes of scalar events
(100 runs, 5 tags as in bench_reader.py). MB/s and points/s use the catch-up time the daemon
reports in its "caught up" log line (which states the points it read); the time from process
start to that line is printed beside it ("with start-up"). Data is generated once into
bench/data/daemon-* (git ignores bench/data/) by bench_reader.scalar_event, which a test holds
byte-identical to tensorboardX's records.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
sys.path.insert(0, ROOT)

from bench_reader import scalar_event  # noqa: E402
from tensorboard.compat.proto import event_pb2  # noqa: E402

from gradwatch.events.framing import frame  # noqa: E402

CATCHUP_TAGS = (
    "gradients/actor_cnn_norm",
    "gradients/actor_mlp_norm",
    "gradients/critic_cnn_norm",
    "gradients/critic_mlp_norm",
    "train/q_value",
)
HEADER = frame(event_pb2.Event(wall_time=1_700_000_000.0, file_version="brain.Event:2").SerializeToString())


def scalar(tag: str, step: int, value: float, wall_time: float) -> bytes:
    # bench_reader's generator, which a test holds byte-identical to tensorboardX's records
    return frame(scalar_event("simple", tag, step, value, wall_time))


def write_run(path: str, tags: list[str], steps: int, seed: int) -> int:
    """One event file: ``steps`` steps of every tag; healthy values (nothing fires)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = [HEADER]
    for step in range(steps):
        for t, tag in enumerate(tags):
            value = 100.0 + ((seed * 7919 + step * 31 + t) % 1000) / 10
            out.append(scalar(tag, step, value, 1_700_000_000.0 + step))
    data = b"".join(out)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def idle_logdir(runs: int, tags: int, steps: int) -> str:
    path = os.path.join(DATA, f"daemon-idle-{runs}x{tags}x{steps}")
    if os.path.isdir(path):
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    names = [f"gradients/layer{i:02d}_norm" for i in range(tags)]
    for r in range(runs):
        write_run(
            os.path.join(tmp, f"exp{r // 100:02d}", f"run{r:04d}", "events.out.tfevents.1.bench"),
            names,
            steps,
            r,
        )
    os.rename(tmp, path)
    return path


def catchup_logdir(megabytes: int) -> tuple[str, int]:
    path = os.path.join(DATA, f"daemon-catchup-{megabytes}mb")
    if not os.path.isdir(path):
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        runs = 100
        per_run = megabytes * 1_000_000 // runs
        # one run's file, then copies with the seed changed in the values only: fast to generate
        record = len(scalar(CATCHUP_TAGS[0], 100_000, 123.4, 1.0))
        steps = per_run // (record * len(CATCHUP_TAGS))
        first = os.path.join(tmp, "run000", "events.out.tfevents.1.bench")
        write_run(first, list(CATCHUP_TAGS), steps, 0)
        for r in range(1, runs):
            dst = os.path.join(tmp, f"run{r:03d}", "events.out.tfevents.1.bench")
            os.makedirs(os.path.dirname(dst))
            shutil.copyfile(first, dst)
        os.rename(tmp, path)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return path, size


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


def start(logdir: str, work: str, *extra: str) -> tuple[subprocess.Popen, str]:
    err = os.path.join(work, "daemon.err")
    args = [sys.executable, "-m", "gradwatch", "watch", logdir, "--listen", ""]
    args += ["--state-dir", os.path.join(work, "state"), *extra]
    with open(err, "w") as e:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=e, cwd=ROOT)
    return proc, err


def wait_log(proc: subprocess.Popen, err: str, pattern: str, timeout: float = 3600) -> re.Match:
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while True:
        with open(err) as f:
            m = rx.search(f.read())
        if m:
            return m
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(err) as f:
                raise RuntimeError(f"daemon: no {pattern!r}:\n" + f.read()[-2000:])
        time.sleep(0.02)


def idle(logdir: str, seconds: float, *extra: str) -> dict:
    work = tempfile.mkdtemp(prefix="gradwatch-bench-idle-")
    proc, err = start(logdir, work, *extra)
    try:
        caught = wait_log(proc, err, r"caught up on .*: (\d+) runs, (\d+) files, (\d+) points in ([\d.]+)s")
        wait_log(proc, err, r"INFO: watching ")
        time.sleep(2)  # let the start-up settle (imports, first GC)
        c0, t0 = proc_cpu(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = proc_cpu(proc.pid), time.monotonic()
        mem = proc_mem(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "mode": "poll " + extra[-1] + "s" if extra else "inotify",
        "runs": int(caught.group(1)),
        "points": int(caught.group(3)),
        "catchup_s": float(caught.group(4)),
        "idle_s": round(t1 - t0, 1),
        "cpu_percent_of_a_core": round(100 * (c1 - c0) / (t1 - t0), 3),
        "rss_mib": round(mem["VmRSS"], 1),
        "peak_rss_mib": round(mem["VmHWM"], 1),
    }


def catchup(megabytes: int) -> dict:
    logdir, size = catchup_logdir(megabytes)
    # page cache warm, as in bench_reader.py: we measure gradwatch, not the disk
    subprocess.run(
        ["cat", *[os.path.join(d, f) for d, _, fs in os.walk(logdir) for f in fs]],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    work = tempfile.mkdtemp(prefix="gradwatch-bench-catchup-")
    t0 = time.monotonic()
    proc, err = start(logdir, work)
    try:
        m = wait_log(proc, err, r"caught up on .*: (\d+) runs, (\d+) files, (\d+) points in ([\d.]+)s")
        wall = time.monotonic() - t0
        mem = proc_mem(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    points, seconds = int(m.group(3)), float(m.group(4))
    return {
        "mb": round(size / 1e6, 1),
        "points": points,
        "catchup_s": seconds,
        "wall_s_with_startup": round(wall, 2),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "points_per_s": round(points / seconds),
        "peak_rss_mib": round(mem["VmHWM"], 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--tags", type=int, default=20)
    p.add_argument("--steps", type=int, default=5, help="points per tag in the idle logdir")
    p.add_argument("--idle-seconds", type=float, default=65.0)
    p.add_argument("--poll", type=float, default=1.0, help="also measure idle with --poll this (0: skip)")
    p.add_argument("--catchup-mb", default="200", help="comma-separated sizes (0: skip)")
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    results: dict = {"idle": [], "catchup": []}
    if not args.skip_idle:
        logdir = idle_logdir(args.runs, args.tags, args.steps)
        results["idle"].append(idle(logdir, args.idle_seconds))
        if args.poll:
            results["idle"].append(idle(logdir, args.idle_seconds, "--poll", f"{args.poll:g}"))
        for r in results["idle"]:
            print(
                f"idle {r['mode']:<10} {r['runs']} runs, {r['points']} points "
                f"(caught up in {r['catchup_s']}s): "
                f"{r['cpu_percent_of_a_core']}% of a core over {r['idle_s']}s, "
                f"RSS {r['rss_mib']} MiB (peak {r['peak_rss_mib']} MiB)"
            )
    for mb in (int(x) for x in args.catchup_mb.split(",") if int(x)):
        r = catchup(mb)
        results["catchup"].append(r)
        print(
            f"catch-up {r['mb']} MB, {r['points']:,} points: {r['catchup_s']}s "
            f"({r['mb_per_s']} MB/s, {r['points_per_s']:,} points/s; "
            f"{r['wall_s_with_startup']}s with start-up), "
            f"peak RSS {r['peak_rss_mib']} MiB"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
