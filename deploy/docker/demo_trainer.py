"""A stand-in trainer for the compose example: it logs the founding incident.

The actor CNN's gradient norm goes 5,191 -> 130,486 -> 826,256 -> ... one
logged step (100 training steps) every --interval seconds, while it checks
gradwatch's stop-file the way a real training loop would. It exits 0 when
gradwatch asks it to stop, 1 if it reaches --steps unasked.

Replace this service with your trainer: it needs only to write TensorBoard
event files under /logs/<run> and, to be stoppable, check /stop/<run>.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from gradwatch.trainer import StopFile

SEED = [5191.0, 130486.0, 826256.0, 2860755.0, 7475702.0]


def norm_at(k: int) -> float:
    """The seed's norms, then the same exponential growth."""
    if k < len(SEED):
        return SEED[k]
    return SEED[-1] * math.exp(1.0 * (k - len(SEED) + 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logdir", default="/logs")
    p.add_argument("--run", default="td3-exploding")
    p.add_argument("--stop-dir", default="/stop", help="gradwatch's stop_file.path is <stop-dir>/{run}.json")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between logged steps")
    args = p.parse_args(argv)

    stop = StopFile(os.path.join(args.stop_dir, args.run.replace("/", "__") + ".json"))
    if stop.clear():
        print(f"removed a stale stop-file {stop.path}", flush=True)
    writer = EventFileWriter(os.path.join(args.logdir, args.run))
    try:
        for k, step in enumerate(range(100, args.steps + 1, 100)):
            values = {"gradients/actor_cnn_norm": norm_at(k), "q/mean": 11.0 * 10 ** min(k, 6)}
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
            )
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
            writer.flush()  # what a trainer's SummaryWriter does every flush_secs
            print(f"step {step}: gradient norm {values['gradients/actor_cnn_norm']:,.0f}", flush=True)
            deadline = time.monotonic() + args.interval
            while time.monotonic() < deadline:
                reason = stop.check()
                if reason:
                    print(reason, flush=True)
                    return 0
                time.sleep(0.1)
    finally:
        writer.close()
    print(f"reached step {args.steps} without a stop request", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
