"""The daemon's first catch-up on two cores: the later files are decoded ahead in a forked child.

Reading the whole logdir at start-up is the daemon's longest job, and ``gradwatch check``
reads a logdir on every core: the daemon must not be slower. Rules, alerts and state live
in this process, so only the reading moves: a child reads the later files into columns,
exactly as this process's readers would (same code, same offsets, same batches), and
streams them back (events/parallel.py ForkStream); this process reads the first files
itself meanwhile, then takes the child's batches in file order. Points, offsets and
problems therefore reach the engine in the order one process reading the files in turn
gives, so alerts, offsets and commits are the same.

The parent also evaluates every point, so the child gets the larger share of the bytes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from itertools import chain, groupby
from typing import Any

from gradwatch.events.columns import Columns
from gradwatch.events.parallel import MIN_PARALLEL_BYTES, ChildFailed, ForkStream, usable_cores
from gradwatch.events.records import CHUNK_BYTES
from gradwatch.events.scalars import EventFileReader, TemplateStore

log = logging.getLogger("gradwatch")

# The share of the catch-up's bytes this process reads itself: it also evaluates the child's
# points, which costs about half as much as reading them (bench/README.md, "Daemon catch-up").
PARENT_SHARE = 1 / 3
# Bytes of a file per read during the first catch-up (here and in the child): one read chunk, so
# each batch of columns holds one chunk's records. With the live READ_BUDGET (16 MiB) a batch
# spans two chunks (the first ends inside a record), and the catch-up of one big file peaked
# about 9 MiB higher (bench/README.md, "Daemon catch-up"); the time is the same.
CATCHUP_BUDGET = CHUNK_BYTES
# The child's messages travel to the daemon in packs of up to PACK_POINTS points (one batch when
# a batch alone holds more), a pack at least every PACK_SECONDS. The child runs only so many items
# (events/parallel.py STREAM_AHEAD_ITEMS) ahead of the daemon, which takes them after reading its
# own files: one item per message (a batch per 1 MiB read, a progress, a stat and an end per file)
# stopped it after a quarter of its share on files of images (a few hundred points per MiB) or of
# many small files, and the daemon then waited for it. A pack holds at most what one batch of
# dense scalars did, so the child's lead in memory stays as it was.
PACK_POINTS = 16_384
PACK_SECONDS = 0.5
# What a RecordTail knows about its file beyond its offset: handed back from the child so the
# next live read of the file goes on exactly where the child's read ended.
TAIL_STATE = (
    "offset",
    "records",
    "bytes_read",
    "resyncing",
    "problems",
    "_zeros",
    "_hole_reported_at",
    "_seen",
)

# One message of the child's stream: (kind, path, problems reported since the last message, payload)
Message = tuple[str, str, list[tuple[str, str, int, str]], Any]


def split(paths: list[str], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """(files this process reads, files the child reads): the first files up to PARENT_SHARE of
    the bytes here, the rest in the child; everything here when a second core would not pay.
    ``sizes``: the bytes each file has left to read."""
    total = sum(sizes.get(p, 0) for p in paths)
    if len(paths) < 2 or total < MIN_PARALLEL_BYTES or usable_cores() < 2:
        return paths, []
    here = 0
    for i, p in enumerate(paths[:-1]):
        here += sizes.get(p, 0)
        if here >= total * PARENT_SHARE:
            return paths[: i + 1], paths[i + 1 :]
    return paths[:-1], paths[-1:]


def tail_state(reader: EventFileReader) -> dict[str, Any]:
    state = {name: getattr(reader.tail, name) for name in TAIL_STATE}
    # a copy: the message may be pickled (in its pack) after the reader counted more problems
    state["problems"] = dict(reader.tail.problems)
    state["undecodable"] = reader.undecodable
    # which tensor tags are scalars: TF2 writers say it only in a tag's first record
    state["tensor_tags"] = dict(reader.decoder._tensor_tags)
    return state


def restore(reader: EventFileReader, state: dict[str, Any]) -> None:
    for name in TAIL_STATE:
        setattr(reader.tail, name, state[name])
    reader.undecodable = state["undecodable"]
    reader.decoder._tensor_tags.update(state["tensor_tags"])


def decode_files(files: list[tuple[str, int, int]]) -> Iterator[Message]:
    """In the child: each (path, offset, max_record_bytes) read to its end as the daemon's
    catch-up reads it, a budget at a time: a message per batch of columns, and a "progress"
    after each budget, so the daemon hears from the child (and pings systemd) even through
    gigabytes of images; a file that fails ends with "error"."""
    problems: list[tuple[str, str, int, str]] = []
    templates = TemplateStore()  # the child's files share what they learn, as the daemon's do
    for path, offset, max_record_bytes in files:
        problems.clear()
        reader = EventFileReader(
            path,
            offset,
            templates,
            max_record_bytes=max_record_bytes,
            on_problem=lambda *p: problems.append(p),
        )
        try:
            st = os.stat(path)
            yield "stat", path, [], (st.st_size, st.st_mtime_ns)
            while True:
                for columns in reader.read_columns(budget=CATCHUP_BUDGET):
                    yield "batch", path, _taken(problems), (columns, tail_state(reader))
                if not reader.pending:
                    break
                yield "progress", path, _taken(problems), tail_state(reader)
            yield "end", path, _taken(problems), tail_state(reader)
        except OSError as e:
            yield "error", path, _taken(problems), (type(e), e.errno, e.strerror, tail_state(reader))


def packed(messages: Iterator[Message]) -> Iterator[list[Message]]:
    """``messages`` in order, in packs (PACK_POINTS, PACK_SECONDS); ``by_file`` unpacks them."""
    pack: list[Message] = []
    points = 0
    since = time.monotonic()
    for message in messages:
        n = sum(len(c) for c in message[3][0]) if message[0] == "batch" else 0
        if pack and points + n > PACK_POINTS:
            yield pack
            pack, points, since = [], 0, time.monotonic()
        pack.append(message)
        points += n
        if points >= PACK_POINTS or time.monotonic() - since >= PACK_SECONDS:
            yield pack
            pack, points, since = [], 0, time.monotonic()
    if pack:
        yield pack


def _packed_files(files: list[tuple[str, int, int]]) -> Iterator[list[Message]]:
    return packed(decode_files(files))


def _taken(problems: list) -> list:
    out = problems[:]
    problems.clear()
    return out


class Decoded:
    """One file's messages from the child, as the batches FileReads.read_file observes.

    Before each batch is handed over, the parent's reader takes the child's state after it,
    so ``offset`` is exact at every point where the daemon may commit or stop. ``done``: the
    child finished this file; ``failed``: the child failed (died, hung) while sending it.
    """

    def __init__(self, reader: EventFileReader, messages: Iterator[Message], report, ping, stopping) -> None:
        self.reader = reader
        self.report = report  # the daemon's ProblemLog
        self._ping = ping
        self._stopping = stopping
        self.done = False
        self.failed: ChildFailed | None = None
        first = next(messages)
        # (size, mtime_ns) the child saw before reading: what the daemon's polls compare with
        self.stat: tuple[int, int] | None = first[3] if first[0] == "stat" else None
        self.messages = messages if self.stat is not None else chain([first], messages)

    def batches(self) -> Iterator[list[Columns]]:
        try:
            for kind, path, problems, payload in self.messages:
                for problem in problems:
                    self.report(*problem)
                if kind == "batch":
                    columns, state = payload
                    restore(self.reader, state)
                    yield columns
                    continue
                restore(self.reader, payload if kind != "error" else payload[3])
                if kind == "progress":
                    self._ping()
                    if self._stopping.is_set():
                        return  # stopped between two budgets: what was observed is whole
                    continue
                self.done = True
                if kind == "error":
                    error, number, reason, _ = payload
                    raise error(number, reason, path)
        except ChildFailed as e:
            self.failed = e  # not this file's fault: the caller reads the rest itself


def stream_files(
    paths: list[str], readers: dict[str, tuple[str, EventFileReader]], on_wait: Callable[[], None]
) -> ForkStream:
    """Start the child reading ``paths`` from the parent's readers' offsets."""
    files = [(p, readers[p][1].offset, readers[p][1].tail.max_record_bytes) for p in paths]
    return ForkStream(_packed_files, files, on_wait)


def by_file(stream: ForkStream) -> Iterator[tuple[str, Iterator[Message]]]:
    """The stream's messages grouped per file, in the child's file order."""
    return groupby(chain.from_iterable(stream), key=lambda m: m[1])
