"""Reading known event files: what is new in one, a byte budget per turn, into the engine.

Per file it keeps the size and mtime seen before the last read (a poll reads only what changed),
whether it is unreadable (reported once, retried), and whether a read stopped at the budget
(``read_again``: the loop goes round every other file, then on with this one). Totals of
records and points feed the status snapshot.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator

from gradwatch.daemon.catchup import Decoded
from gradwatch.daemon.unit_of_work import UnitOfWork
from gradwatch.engine import Engine
from gradwatch.events.columns import Columns
from gradwatch.events.logdir import UNREADABLE_FILE, LogdirReader, ProblemLog
from gradwatch.events.records import DEFAULT_READ_BUDGET
from gradwatch.events.remote import RemoteError

log = logging.getLogger("gradwatch")

# points (whole batches of them) between two looks at the stop flag and the systemd watchdog while
# reading one big file
BATCH_POINTS = 50_000
READ_BUDGET = DEFAULT_READ_BUDGET  # bytes of one file per turn of the loop; then the others


class FileReads:
    """Reads one known file at a time; ``vanished()`` is called when a file or its run is gone."""

    def __init__(
        self,
        reader: LogdirReader,
        engine: Engine,
        problems: ProblemLog,
        uow: UnitOfWork,
        stopping: threading.Event,
        ping: Callable[[], None],
        vanished: Callable[[], None],
        stat: Callable[[str], os.stat_result] = os.stat,
    ) -> None:
        self.reader = reader
        self.engine = engine
        self.problems = problems
        self.uow = uow
        self._stopping = stopping
        self._ping = ping
        self._vanished = vanished
        self._stat = stat  # a remote logdir's objects: their listing's size and version
        # path -> (size, mtime_ns) seen just before the last read: polls read only what changed
        self.seen: dict[str, tuple[int, int]] = {}
        self.unreadable: set[str] = set()
        self.read_again: set[str] = set()  # files whose last read stopped at READ_BUDGET
        # a file whose reading a stop interrupted: nothing since the last commit may be committed
        self.abandoned: str | None = None
        self._observed = 0  # points of the last read pass
        self.points = 0
        self.records = 0  # TFRecords verified, for gradwatch_records_read_total
        self.store_errors = 0  # failed GETs of a remote logdir's objects

    def read_file(
        self,
        path: str,
        st: os.stat_result | None = None,
        decoded: Decoded | None = None,
        budget: int | None = None,
    ) -> int:
        """Read what is new in one known event file, ``budget`` (READ_BUDGET) bytes of it; returns
        the number of points (the rest is read on the next turn: ``read_again``). With ``decoded``,
        the file's batches come from the catch-up's child (catchup.py), read to the end there."""
        entry = self.reader.readers.get(path)
        if entry is None or self.abandoned is not None:
            return 0
        run, reader = entry
        if decoded is not None:
            seen = decoded.stat
        else:
            if st is None:
                try:
                    st = self._stat(path)
                except OSError as e:
                    self.read_error(path, e)
                    return 0
            seen = (st.st_size, st.st_mtime_ns)
        # recorded before reading: bytes appended while we read show up as a change next time
        if seen is not None:
            self.seen[path] = seen
        records_before = reader.tail.records
        if decoded is not None:
            batches = decoded.batches()
        else:
            batches = reader.read_columns(budget=budget or READ_BUDGET)
        try:
            self._observe(run, path, batches)
        except OSError as e:
            self.read_error(path, e)
        except Exception:
            if path not in self.unreadable:
                log.exception("%s: offset %d: cannot read this file; will retry", path, reader.offset)
            self.unreadable.add(path)
            self.seen.pop(path, None)
        else:
            if path in self.unreadable:
                self.unreadable.discard(path)
                log.info("%s: readable again", path)
        finally:
            batches.close()
            self.records += reader.tail.records - records_before
            if reader.pending:
                self.read_again.add(path)
        n = self._observed
        self.uow.read(run, path, n)
        self.points += n
        return n

    def _observe(self, run: str, path: str, batches: Iterator[list[Columns]]) -> None:
        """The hot loop: every batch of a read pass into the engine, the batch's series together;
        the count lands in ``_observed`` even when the reader fails halfway (what was observed is
        marked dirty). A stop is looked at between batches: a batch is observed whole or not at all."""
        observe_many = self.engine.observe_many
        n = 0
        check_at = BATCH_POINTS
        try:
            # a read that fails inside a batch leaves the reader as it was after the last batch it
            # handed over (read_columns rolls back itself): nothing to undo here
            for columns in batches:
                # the batch's series decided together (Engine.observe_many): the same sink calls
                observe_many([(run, c.tag, c.steps, c.wall_times, c.values) for c in columns])
                n += sum(map(len, columns))
                if n >= check_at:
                    # a long catch-up still answers systemd's watchdog and SIGTERM
                    check_at = n + BATCH_POINTS
                    self._ping()
                    if self._stopping.is_set():
                        self.abandoned = path
                        break
        finally:
            self._observed = n

    def read_error(self, path: str, e: OSError) -> None:
        self.seen.pop(path, None)  # so the next poll or safety check tries again
        if isinstance(e, RemoteError):
            self.store_errors += 1  # a pass over a bucket stops at its first failed GET
        if isinstance(e, (FileNotFoundError, NotADirectoryError)):
            self._vanished()  # the rescan tells a deleted file from a deleted run
            return
        self.unreadable.add(path)
        self.problems(UNREADABLE_FILE, path, -1, f"{e.strerror or e}; will retry")

    def forget(self, path: str) -> None:
        self.seen.pop(path, None)
        self.unreadable.discard(path)
