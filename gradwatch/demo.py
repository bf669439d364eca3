"""``gradwatch demo``: watch the founding incident happen again, in seconds.

Writes three simulated runs into a temporary logdir while the real daemon
watches it: the seed's exploding TD3 run (actor CNN gradient norm 5,191 ->
130,486 -> 826,256 -> 2,860,755 -> 7,475,702 over steps 100..500), a run with
a brief spike that recovers (warning, then resolved), and a healthy run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import TextIO

from tensorboard.compat.proto import event_pb2, summary_pb2

from gradwatch.config import Config
from gradwatch.daemon import Daemon
from gradwatch.events.framing import frame
from gradwatch.fmt import human

EXPLODING = "td3-lr3e-3-exploding"
SEED_TAG = "gradients/actor_cnn_norm"
SEED_STEPS = [100, 200, 300, 400, 500]
SEED_ACTOR_CNN = [5191.0, 130486.0, 826256.0, 2860755.0, 7475702.0]


class DemoWriter:
    """A minimal TensorBoard event writer (simple_value scalars), as any trainer would write."""

    def __init__(self, run_dir: str) -> None:
        os.makedirs(run_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = os.path.join(run_dir, name)
        self._f = open(self.path, "ab")  # noqa: SIM115 - kept open like a real writer
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, ev: event_pb2.Event) -> None:
        self._f.write(frame(ev.SerializeToString()))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
        )
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _series(step_index: int) -> dict[str, dict[str, float]]:
    i = step_index
    return {
        EXPLODING: {
            SEED_TAG: SEED_ACTOR_CNN[i],
            "gradients/actor_mlp_norm": [310.0, 2900.0, 14800.0, 61000.0, 240000.0][i],
            "gradients/critic_cnn_norm": [820.0, 1900.0, 7400.0, 31000.0, 98000.0][i],
            "gradients/critic_mlp_norm": [95.0, 410.0, 2200.0, 9100.0, 40500.0][i],
            "q_values/mean": [12.0, 410.0, 35000.0, 1.9e6, 1.1e7][i],
        },
        "td3-lr3e-4-spike": {
            "gradients/actor_cnn_norm": [420.0, 12800.0, 640.0, 380.0, 350.0][i],
            "gradients/critic_mlp_norm": [88.0, 95.0, 90.0, 84.0, 80.0][i],
        },
        "td3-lr1e-4-healthy": {
            "gradients/actor_cnn_norm": [130.0, 118.0, 109.0, 101.0, 97.0][i],
            "gradients/critic_mlp_norm": [40.0, 38.0, 35.0, 33.0, 31.0][i],
        },
    }


def _wait_read(daemon: Daemon, points: int, timeout: float) -> None:
    """Until the daemon has read and acted on ``points`` points (however fast the demo ran).

    The status snapshot is published after the commit that follows a read, so once it counts
    them, the console line and the stop-file of any transition they caused are written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.status.points < points:
        time.sleep(0.02)


def add_arguments(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="simulate an exploding run and watch gradwatch catch it")
    d.add_argument("--keep", metavar="DIR", help="write the demo logdir here and keep it")
    d.add_argument("--speed", type=float, default=1.0, help="faster (>1) or slower (<1) than real time")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.keep, args.speed)


def run_demo(keep: str | None = None, speed: float = 1.0, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    # the logdir is kept (a path printed and then deleted would lead nowhere): check and report it after
    logdir = keep or tempfile.mkdtemp(prefix="gradwatch-demo-")
    os.makedirs(logdir, exist_ok=True)
    state_dir = tempfile.mkdtemp(prefix="gradwatch-demo-state-")
    pause = 0.6 / max(speed, 0.01)
    out.write(f"gradwatch demo: watching {logdir} (kept afterwards; --keep DIR chooses where)\n")
    out.write("Three TD3 runs log gradient norms every 100 steps; gradwatch watches from the outside.\n\n")
    out.flush()
    cfg = Config(logdir=logdir, state_dir=state_dir, listen=None)
    daemon = Daemon(cfg, out=out)
    thread = threading.Thread(target=daemon.run, name="gradwatch-daemon", daemon=True)
    thread.start()
    daemon.ready.wait(30)
    writers = {run: DemoWriter(os.path.join(logdir, run)) for run in _series(0)}
    stop_file = os.path.join(logdir, EXPLODING, "gradwatch-stop.json")
    last_step = 0  # the last step the exploding run wrote
    written = 0  # points written so far, by every run
    try:
        for i, step in enumerate(SEED_STEPS):
            out.write(f"--- step {step} ---\n")
            out.flush()
            for run, values in _series(i).items():
                if run == EXPLODING:
                    if os.path.exists(stop_file):
                        continue  # the trainer saw the stop-file and stopped
                    last_step = step
                writers[run].scalars(step, values)
                written += len(values)
            # a real trainer's steps take seconds; at --speed 50 on a loaded machine the simulated
            # one must not outrun the daemon, or the story depends on the scheduler
            _wait_read(daemon, written, timeout=10)
            time.sleep(pause)
    finally:
        for w in writers.values():
            w.close()
        _wait_read(daemon, written, timeout=10)
        daemon.stop()
        thread.join(10)
    shutil.rmtree(state_dir, ignore_errors=True)
    out.write("\n" + outcome(last_step, os.path.exists(stop_file)) + "\n")
    if os.path.exists(stop_file):
        with open(stop_file, encoding="utf-8") as f:
            reason = json.load(f)
        out.write(f"\nStop-file written for the exploding run: {stop_file}\n")
        out.write(json.dumps({k: reason[k] for k in ("alert", "severity", "tag", "step", "value")}, indent=2))
        out.write("\nA trainer calling gradwatch.trainer.should_stop(path) stops at its next step.\n")
    quoted = shlex.quote(logdir)
    out.write(
        f"\nThe runs are kept in {logdir}:\n"
        f"  gradwatch check {quoted}\n"
        f"  gradwatch report {quoted} --tag {SEED_TAG}\n"
        "\nNext: gradwatch watch YOUR_LOGDIR   (one-shot: gradwatch check YOUR_LOGDIR)\n"
    )
    return 0


def outcome(last_step: int, stopped: bool) -> str:
    """What happened to the exploding run, in one sentence."""
    final = f"{human(SEED_ACTOR_CNN[-1])} at step {SEED_STEPS[-1]}"
    # decided on the stop-file alone: one written at the last step still stopped the run
    # (and the lines after this one say it was written)
    if stopped and last_step < SEED_STEPS[-1]:
        return (
            f"{EXPLODING} stopped after step {last_step}; unattended its {SEED_TAG} "
            f"would have reached {final}."
        )
    if stopped:
        return f"{EXPLODING} was stopped at its last step {last_step}; its {SEED_TAG} reached {final}."
    return f"{EXPLODING} was not stopped (no stop-file was written); its {SEED_TAG} reached {final}."
