"""Reading a logdir's runs on several cores, for the one-shot commands.

Runs are independent (a series never spans two runs), so a one-shot command
can read and evaluate groups of runs in forked children and merge what they
return in run order, which gives exactly what one process reading the runs in
order gives. A logdir too small to gain from it, or a machine with one core,
is read in the calling process: a single file never pays for a fork.
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Below this many bytes of event files a fork costs more than it saves.
MIN_PARALLEL_BYTES = 32 << 20


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # read (and reported) by whoever reads it


def split_runs(runs: dict[str, list[str]], cores: int | None = None) -> list[dict[str, list[str]]]:
    """Groups of runs of about equal bytes, one per core; one group when it is not worth it.

    Deterministic: the same runs and sizes always give the same groups, and each
    group keeps the runs in name order.
    """
    cores = usable_cores() if cores is None else cores
    sizes = {run: sum(map(_size, paths)) for run, paths in runs.items()}
    n = min(cores, len(runs))
    if n < 2 or sum(sizes.values()) < MIN_PARALLEL_BYTES:
        return [dict(runs)] if runs else []
    loads = [0] * n
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
