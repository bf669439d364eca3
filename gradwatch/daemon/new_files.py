"""Reading the event files a scan found: live a budget per turn, at the first catch-up each to its end.

At the first catch-up the later files of a big logdir are handed to a forked child that decodes
them meanwhile (catchup.py); their batches are taken back here in file order, and the files a
failed child had not finished are read by this process. Between files the progress is
checkpointed: offsets are exact there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gradwatch.daemon import catchup
from gradwatch.daemon.bucket import Bucket
from gradwatch.daemon.reading import FileReads
from gradwatch.events.logdir import LogdirReader, ProblemLog
from gradwatch.events.parallel import ChildFailed, ForkStream, file_size

log = logging.getLogger("gradwatch")


class NewFiles:
    """Reads files just found by a scan (``read``). A bucket's objects are not split with a child
    (their size is the listing's, and the child would GET them again), and once caught up they
    are read from the bytes its lister fetched (``bucket``)."""

    def __init__(
        self,
        reader: LogdirReader,
        reads: FileReads,
        problems: ProblemLog,
        stopping: threading.Event,
        ready: threading.Event,
        ping: Callable[[], None],
        checkpoint: Callable[..., bool],
        bucket: Bucket,
    ) -> None:
        self.reader = reader
        self.reads = reads
        self.problems = problems
        self._stopping = stopping
        self._ready = ready
        self._ping = ping
        self._checkpoint = checkpoint
        self._bucket = bucket

    def read(self, new: list[str]) -> None:
        here, ahead = new, []
        if not self._ready.is_set() and self._bucket.remote is None:
            readers = self.reader.readers
            left = {p: max(0, file_size(p) - readers[p][1].offset) for p in new}
            here, ahead = catchup.split(new, left)
        # the first catch-up of a big logdir: a child decodes the later files meanwhile
        stream = catchup.stream_files(ahead, self.reader.readers, self._ping) if ahead else None
        try:
            for p in here:
                if self._stopping.is_set():
                    return  # catching up when told to stop: the rest is read next time
                if self._ready.is_set():
                    if self._bucket.waits(p):
                        continue  # its bytes come with a later listing, fetched off the loop
                    failed = self.reads.store_errors
                    self.reads.read_file(p)  # live: a budget per turn, round robin with every other file
                    self._bucket.after_read(p)
                    if self.reads.store_errors != failed:
                        return  # a failed GET: the other new objects are read at the next poll
                else:
                    self._read_through(p)  # the first catch-up reads each file to its end
                self._after_file()
            if stream is not None:
                log.debug("catch-up: %d of %d files read ahead by pid %d", len(ahead), len(new), stream.pid)
                self._take_decoded(stream, ahead)
        finally:
            if stream is not None:
                stream.close()

    def _take_decoded(self, stream: ForkStream, paths: list[str]) -> None:
        """The child's files, in its order, each as if this process had read it through; when
        the child fails, the files it had not finished are read here."""
        done: set[str] = set()
        try:
            for path, messages in catchup.by_file(stream):
                if self._stopping.is_set():
                    return
                entry = self.reader.readers.get(path)
                if entry is None:
                    continue
                decoded = catchup.Decoded(entry[1], messages, self.problems, self._ping, self._stopping)
                self.reads.read_file(path, decoded=decoded)
                self._after_file()
                if decoded.failed is not None:
                    raise decoded.failed
                if decoded.done:
                    done.add(path)
        except ChildFailed as e:
            stream.close()
            log.warning("catch-up: %s; reading its files here", e)
            for p in paths:
                if p not in done and not self._stopping.is_set():
                    self._read_through(p)
                    self._after_file()

    def _after_file(self) -> None:
        self._ping()
        # between files offsets are exact: a long catch-up keeps its progress
        self._checkpoint(lazy=True)

    def _read_through(self, path: str) -> None:
        """Read ``path`` to its end a budget at a time, so a multi-GB file of images still answers
        systemd's watchdog and SIGTERM and keeps its progress (offsets are exact between reads)."""
        read_again = self.reads.read_again
        while not self._stopping.is_set():
            self.reads.read_file(path, budget=catchup.CATCHUP_BUDGET)
            if path not in read_again:
                return
            read_again.discard(path)
            self._ping()
            self._checkpoint(lazy=True)
