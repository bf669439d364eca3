"""Reading a logdir's runs on several cores, for the one-shot commands and the daemon's catch-up.

Runs are independent (a series never spans two runs), so a one-shot command
can read and evaluate groups of runs in forked children and merge what they
return in run order, which gives exactly what one process reading the runs in
order gives. A logdir too small to gain from it, or a machine with one core,
is read in the calling process: a single file never pays for a fork.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import select
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Below this many bytes of event files a fork costs more than it saves.
MIN_PARALLEL_BYTES = 32 << 20
# The first group is read in this process, which then also unpickles the others' results,
# merges them and writes the output (``gradwatch check --json`` on bench/data/runs: about
# 0.09 of 1.05 CPU seconds): it gets this much less than an even share of the bytes.
PARENT_HANDICAP = 0.08


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # read (and reported) by whoever reads it


def split_runs(runs: dict[str, list[str]], cores: int | None = None) -> list[dict[str, list[str]]]:
    """Groups of runs of about equal bytes, one per core (the first, read by this process,
    PARENT_HANDICAP less); one group when it is not worth it.

    Deterministic: the same runs and sizes always give the same groups, and each
    group keeps the runs in name order.
    """
    cores = usable_cores() if cores is None else cores
    sizes = {run: sum(map(file_size, paths)) for run, paths in runs.items()}
    n = min(cores, len(runs))
    if n < 2 or sum(sizes.values()) < MIN_PARALLEL_BYTES:
        return [dict(runs)] if runs else []
    loads = [0] * n
    loads[0] = int(sum(sizes.values()) * PARENT_HANDICAP)  # the first group: this process's
    members: list[list[str]] = [[] for _ in range(n)]
    for run in sorted(runs, key=lambda r: (-sizes[r], r)):  # largest first, to the lightest group
        i = loads.index(min(loads))
        loads[i] += sizes[run]
        members[i].append(run)
    return [{run: runs[run] for run in sorted(group)} for group in members if group]


class ChildFailed(RuntimeError):
    """A forked reader died or raised; its traceback is the message."""


def fork_map(fn: Callable[[dict[str, list[str]]], T], groups: list[dict[str, list[str]]]) -> list[T]:
    """``[fn(g) for g in groups]``, the first in this process and the others in forked
    children (results pickled back through a pipe), in the order of ``groups``."""
    children = [_fork(fn, g) for g in groups[1:]]
    try:
        first = [fn(groups[0])] if groups else []
    except BaseException:
        for pid, fd in children:
            os.close(fd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    return first + _collect_all(children)


def _collect_all(children: list[tuple[int, int]]) -> list[T]:
    """Every child's result in order; after a failure the others are still waited for and
    their pipes closed (no zombie, no open fd), then the first failure is raised."""
    results: list[T] = []
    failure: Exception | None = None
    for pid, fd in children:
        try:
            results.append(_collect(pid, fd))
        except Exception as e:  # ChildFailed, or a payload that does not unpickle
            failure = failure or e
    if failure is not None:
        raise failure
    return results


def _fork(fn: Callable[[dict[str, list[str]]], T], group: dict[str, list[str]]) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    # the child: never returns into the caller's code
    os.close(r)
    status = 0
    try:
        payload = pickle.dumps((True, fn(group)), pickle.HIGHEST_PROTOCOL)
    except BaseException:
        payload = pickle.dumps((False, traceback.format_exc()))
        status = 1
    try:
        with os.fdopen(w, "wb") as f:
            f.write(payload)
    finally:
        os._exit(status)


def _collect(pid: int, fd: int) -> T:
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"reader process {pid} died (wait status {status}) before it returned")
    ok, value = pickle.loads(data)
    if not ok:
        raise ChildFailed(f"reader process {pid} failed:\n{value}")
    return value


# Items a streaming child may hold that its parent has not taken yet: bounds the child's memory
# (an item is a batch of records' columns, a few hundred KB) while it reads ahead of the parent.
STREAM_AHEAD_ITEMS = 64
# A child that sends nothing for this long is taken for hung: ended, and its work done elsewhere.
STREAM_SILENCE_LIMIT = 120.0
# How often a parent waiting on its child calls ``on_wait`` (the daemon pings systemd's watchdog).
STREAM_WAIT_TICK = 1.0
_LENGTH = 8


class ForkStream:
    """The items of ``fn(arg)``, a generator run in a forked child, taken in order by the parent.

    The child runs ahead of the parent by up to STREAM_AHEAD_ITEMS items (a thread of its own
    writes them to the pipe), so the parent can do other work first and then take items that
    are already made. A child that dies, fails or goes silent for STREAM_SILENCE_LIMIT raises
    ChildFailed in the parent; a parent that dies ends its child (the pipe breaks). ``close()``
    stops and reaps the child whether or not everything was taken. While it waits, the parent
    calls ``on_wait`` every STREAM_WAIT_TICK seconds.
    """

    def __init__(
        self, fn: Callable[[T], Iterator[object]], arg: T, on_wait: Callable[[], None] | None = None
    ) -> None:
        r, w = os.pipe()
        self.pid = os.fork()
        if not self.pid:
            os.close(r)
            _stream_child(fn, arg, w)  # never returns
        os.close(w)
        self._fd: int | None = r
        self._buf = bytearray()
        self._on_wait = on_wait

    def __iter__(self) -> Iterator[object]:
        while self._fd is not None:
            size = int.from_bytes(self._take(_LENGTH), "little")
            ok, value = pickle.loads(self._take(size))
            if ok is None:  # the end
                self.close()
                return
            if not ok:
                self.close()
                raise ChildFailed(f"reader process {self.pid} failed:\n{value}")
            yield value

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes from the child: ChildFailed when it dies or hangs first."""
        silent = 0.0
        while len(self._buf) < n:
            fd = self._fd
            if fd is None:
                raise ChildFailed(f"reader process {self.pid} was closed")
            ready, _, _ = select.select([fd], [], [], STREAM_WAIT_TICK)
            if not ready:
                silent += STREAM_WAIT_TICK
                if self._on_wait is not None:
                    self._on_wait()
                if silent >= STREAM_SILENCE_LIMIT:
                    self.close()
                    raise ChildFailed(f"reader process {self.pid} sent nothing for {silent:.0f} s")
                continue
            chunk = os.read(fd, max(n - len(self._buf), 1 << 16))
            if not chunk:
                self.close()
                raise ChildFailed(f"reader process {self.pid} died before it had sent everything")
            self._buf += chunk
            silent = 0.0
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def close(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # finished or not: nothing more is wanted from it
        os.waitpid(self.pid, 0)


def _stream_child(fn: Callable[[T], Iterator[object]], arg: T, fd: int) -> None:
    """The child of ForkStream: pickles each item and hands it to a writer thread."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # a stop signal is for the parent (systemd signals the whole cgroup): it ends this child
        signal.signal(signum, signal.SIG_IGN)
    ahead: queue.Queue[bytes | None] = queue.Queue(STREAM_AHEAD_ITEMS)

    def send() -> None:
        with os.fdopen(fd, "wb") as f:
            while (item := ahead.get()) is not None:
                f.write(len(item).to_bytes(_LENGTH, "little"))
                f.write(item)
                f.flush()

    writer = threading.Thread(target=send, daemon=True)
    writer.start()

    def put(item: bytes | None) -> None:
        while True:
            try:
                ahead.put(item, timeout=1.0)
                return
            except queue.Full:
                if not writer.is_alive():  # the parent is gone (the pipe broke): so is this child
                    os._exit(1)

    status = 0
    try:
        for item in fn(arg):
            put(pickle.dumps((True, item), pickle.HIGHEST_PROTOCOL))
        put(pickle.dumps((None, None)))
    except BaseException:
        put(pickle.dumps((False, traceback.format_exc())))
        status = 1
    put(None)
    try:
        writer.join()
    finally:
        os._exit(status)  # a parent that closed the pipe early ends the writer with EPIPE
