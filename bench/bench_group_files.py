"""Whether the daemon's catch-up would gain from deciding several files' batches in one
``Engine.observe_many`` call: the packaged rules over every point of a logdir (decoded first,
not timed), in groups of one file's batches (what the daemon does) and of ``--files`` files'.

    .venv/bin/python bench/bench_group_files.py bench/data/runs --files 8 --repeat 3

CPU seconds of the rules alone, min of ``--repeat``, with check's sink (FindingSink) and with
the daemon's (AlertBook, as during a first catch-up: transitions kept, nothing sent).
"""

from __future__ import annotations

import argparse
import glob
import os
import time

from gradwatch.alerts import AlertBook
from gradwatch.config.rulefiles import load_rules
from gradwatch.engine import Engine
from gradwatch.events.scalars import EventFileReader
from gradwatch.oneshot.findings import FindingSink


def decoded(logdir: str) -> list[list[tuple]]:
    """Per event file, the (run, tag, steps, wall_times, values) of each batch read from it."""
    files = []
    for path in sorted(glob.glob(os.path.join(logdir, "*", "events.out.tfevents.*"))):
        run = os.path.basename(os.path.dirname(path))
        batches = EventFileReader(path).read_columns(final=True)
        files.append([(run, c.tag, c.steps, c.wall_times, c.values) for cols in batches for c in cols])
    return files


def rules_cpu(files: list[list[tuple]], per_call: int, sink_kind: str) -> float:
    rules = load_rules()
    if sink_kind == "check":
        sink = FindingSink()
    else:
        sink = AlertBook(rules)
        sink.suppress = True  # a first catch-up: history, nothing sent
    engine = Engine(rules, sink)
    start = time.process_time()
    for i in range(0, len(files), per_call):
        engine.observe_many([batch for f in files[i : i + per_call] for batch in f])
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir")
    parser.add_argument("--files", type=int, default=8, help="files per observe_many call")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = decoded(args.logdir)
    print(f"{len(files)} files, {sum(len(b[2]) for f in files for b in f):,} points")
    for sink in ("check", "daemon"):
        for per_call in (1, args.files):
            best = min(rules_cpu(files, per_call, sink) for _ in range(args.repeat))
            print(f"{sink:6} sink, {per_call} file(s) a call: {best:.3f} CPU s")


if __name__ == "__main__":
    main()
