"""Runs and event files under a logdir.

A run is the directory, relative to the logdir, holding files whose basename
contains ``tfevents`` (TensorBoard's rule; ``*.profile-empty`` files are never
read); ``.`` is the logdir itself. A run may hold several event files (a
restarted writer): all are read, in name order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from gradwatch.events import records
from gradwatch.events.columns import Columns
from gradwatch.events.records import DEFAULT_MAX_RECORD_BYTES
from gradwatch.events.remote import RemoteError, RemoteLogdir, endpoint_options, is_remote, run_and_name
from gradwatch.events.scalars import EventFileReader, TemplateStore
from gradwatch.events.shard import Shard

log = logging.getLogger("gradwatch.events")

# Problem kinds this module reports, beside the record-level ones of records.py.
UNREADABLE_DIRECTORY = "unreadable_directory"
UNREADABLE_FILE = "unreadable_file"
VANISHED_FILE = "vanished_file"
# Every problem kind the reader reports (counted in gradwatch_read_problems_total).
PROBLEM_KINDS = (
    records.CORRUPT,
    records.TRUNCATED,
    records.ZERO_PADDING,
    records.SHRUNK,
    records.REPLACED,
    records.UNDECODABLE,
    records.SPARSE_HOLE,
    UNREADABLE_DIRECTORY,
    UNREADABLE_FILE,
    VANISHED_FILE,
)

# Where gradwatch writes its own TensorBoard alert flags; never read back.
FLAGS_DIR = "_gradwatch"


class LogdirError(Exception):
    """The logdir itself cannot be used (missing, not a directory, unreadable)."""


def is_event_file(name: str) -> bool:
    return "tfevents" in name and not name.endswith(".profile-empty")


def run_of(logdir: str, dirpath: str) -> str:
    rel = os.path.relpath(dirpath, logdir)
    return "." if rel == "." else rel.replace(os.sep, "/")


@dataclass
class ProblemLog:
    """Counts problems by kind and logs each (kind, file, offset) once."""

    counts: dict[str, int] = field(default_factory=dict)
    _seen: set[tuple[str, str, int]] = field(default_factory=set)

    def __call__(self, kind: str, path: str, offset: int, detail: str) -> None:
        key = (kind, path, offset)
        if key in self._seen:
            return
        if len(self._seen) > 100_000:
            self._seen.clear()
        self._seen.add(key)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        where = f"{path}: offset {offset}" if offset >= 0 else path
        log.warning("%s: %s: %s", where, kind.replace("_", " "), detail)

    def again(self, kind: str, path: str, detail: str) -> None:
        """Count and log a problem reported before, for a new episode of it (a store's outage)."""
        self._seen.discard((kind, path, -1))
        self(kind, path, -1, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def scan(logdir: str, problems: ProblemLog, shard: Shard | None = None) -> dict[str, list[str]]:
    """{run: [event file paths in name order]} for the whole logdir (of the runs ``shard`` owns).

    A remote logdir (``s3://...``, remote.py) is listed with one request per
    1,000 objects; its paths are URLs.
    """
    return _owned(_scan_remote(logdir) if is_remote(logdir) else _scan_local(logdir, problems), shard)


def _owned(runs: dict[str, list[str]], shard: Shard | None) -> dict[str, list[str]]:
    return runs if shard is None else {run: paths for run, paths in runs.items() if shard.owns(run)}


def _scan_local(logdir: str, problems: ProblemLog) -> dict[str, list[str]]:
    if not os.path.isdir(logdir):
        raise LogdirError(f"{logdir}: {'not a directory' if os.path.exists(logdir) else 'no such directory'}")
    if not os.access(logdir, os.R_OK | os.X_OK):
        raise LogdirError(f"{logdir}: permission denied")

    def on_error(err: OSError) -> None:
        problems(UNREADABLE_DIRECTORY, err.filename or logdir, -1, err.strerror or str(err))

    runs: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(logdir, onerror=on_error):
        if dirpath == logdir and FLAGS_DIR in dirnames:
            dirnames.remove(FLAGS_DIR)
        dirnames.sort()
        files = sorted(n for n in filenames if is_event_file(n))
        if files:
            runs[run_of(logdir, dirpath)] = [os.path.join(dirpath, n) for n in files]
    return runs


_remote_logdirs: dict[str, RemoteLogdir] = {}


def remote_logdir(url: str, endpoint_url: str | None = None) -> RemoteLogdir:
    """The one RemoteLogdir of ``url`` in this process: scan lists it, readers open its objects
    with the sizes of that listing (no request per file to learn its size). ``endpoint_url``
    (MinIO, an emulator) replaces the SDK's own endpoint; given once, before the first use."""
    remote = _remote_logdirs.get(url)
    if remote is None or endpoint_url is not None:
        try:
            remote = _remote_logdirs[url] = RemoteLogdir(url, endpoint_options(url, endpoint_url))
        except RemoteError as e:
            raise LogdirError(str(e)) from e
    return remote


def _scan_remote(url: str) -> dict[str, list[str]]:
    remote = remote_logdir(url)
    try:
        remote.list_event_files()
    except RemoteError as e:
        raise LogdirError(str(e)) from e
    return remote_runs(remote)


def scan_listed(remote: RemoteLogdir, shard: Shard | None = None) -> dict[str, list[str]]:
    """``scan`` of a remote logdir from the listing in use, without a request: the daemon lists
    on its poller thread (daemon/watcher.py) and hands each listing to the loop."""
    return _owned(remote_runs(remote), shard)


def remote_runs(remote: RemoteLogdir) -> dict[str, list[str]]:
    """{run: [event file URLs in name order]} of the listing in use."""
    runs: dict[str, list[str]] = {}
    for path in sorted(remote.sizes):
        run, name = run_and_name(remote.relative(path))
        if is_event_file(name) and FLAGS_DIR not in (run, run.partition("/")[0]):
            runs.setdefault(run, []).append(path)
    return runs


class LogdirReader:
    """Keeps one tail reader per event file; resumes from saved offsets."""

    def __init__(
        self,
        logdir: str,
        offsets: dict[str, int] | None = None,
        problems: ProblemLog | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        shard: Shard | None = None,
    ) -> None:
        self.logdir = logdir
        self.shard = shard
        # objects of a remote logdir are read with ranged GETs; local files with os.open
        self._opener = remote_logdir(logdir).open if is_remote(logdir) else None
        self.problems = problems or ProblemLog()
        self.readers: dict[str, tuple[str, EventFileReader]] = {}
        self._offsets = dict(offsets or {})
        self.max_record_bytes = max_record_bytes
        # templates learnt in one file serve every file from its first record (scalars.py)
        self.templates = TemplateStore()

    def reader(self, run: str, path: str) -> EventFileReader:
        entry = self.readers.get(path)
        if entry is None:
            r = EventFileReader(
                path,
                self._offsets.pop(path, 0),
                self.templates,
                on_problem=self.problems,
                max_record_bytes=self.max_record_bytes,
                opener=self._opener,
            )
            entry = self.readers[path] = (run, r)
        return entry[1]

    def refresh(self) -> dict[str, list[str]]:
        runs = scan(self.logdir, self.problems, self.shard)
        for run, paths in runs.items():
            for p in paths:
                self.reader(run, p)
        return runs

    def forget(self, path: str) -> None:
        self.readers.pop(path, None)

    def read_file(
        self, path: str, final: bool = False, budget: int | None = None
    ) -> Iterator[tuple[str, str, int, float, float]]:
        """New points of one file; with a ``budget`` (bytes) it may stop early and
        set the reader's ``pending`` (see RecordTail.read)."""
        run, reader = self.readers[path]
        try:
            yield from reader.read_run(run, final, budget)
        except FileNotFoundError:
            self.problems(VANISHED_FILE, path, -1, "file disappeared while being read")
            self.forget(path)
        except OSError as e:
            self.problems(UNREADABLE_FILE, path, -1, e.strerror or str(e))

    def read_file_columns(
        self, path: str, final: bool = False, budget: int | None = None
    ) -> Iterator[tuple[str, list[Columns]]]:
        """New points of one file as (run, one Columns per tag) a batch at a time; problems
        as for ``read_file``."""
        run, reader = self.readers[path]
        try:
            for columns in reader.read_columns(final, budget):
                yield run, columns
        except FileNotFoundError:
            self.problems(VANISHED_FILE, path, -1, "file disappeared while being read")
            self.forget(path)
        except OSError as e:
            self.problems(UNREADABLE_FILE, path, -1, e.strerror or str(e))

    def read_all_columns(self, final: bool = False) -> Iterator[tuple[str, list[Columns]]]:
        """``read_all`` in columns: (run, one Columns per tag) a batch of records at a time."""
        for path in sorted(self.readers, key=lambda p: (self.readers[p][0], p)):
            yield from self.read_file_columns(path, final)

    def read_all(self, final: bool = False) -> Iterator[tuple[str, str, int, float, float]]:
        """Every new point of every known file, run by run, files in name order."""
        for path in sorted(self.readers, key=lambda p: (self.readers[p][0], p)):
            yield from self.read_file(path, final)

    def offsets(self) -> dict[str, int]:
        return {p: r.offset for p, (_, r) in self.readers.items()}


def read_logdir(
    logdir: str, problems: ProblemLog | None = None, shard: Shard | None = None
) -> Iterator[tuple[str, str, int, float, float]]:
    """One-shot: every scalar point of a finished logdir as (run, tag, step, wall_time, value)."""
    reader = LogdirReader(logdir, problems=problems, shard=shard)
    reader.refresh()
    yield from reader.read_all(final=True)
