"""What the follower of a bucket (s3://, gs://) knows beyond files: whether listing works, and
which bytes the lister thread fetches so that the loop never waits for a GET.

A listing that fails is reported once per outage (in the log and as an unreadable directory in
gradwatch_read_problems_total) and said to be over when one works again. Before the first
listing the catch-up has nothing to read: the start waits for one, as for a local logdir that
is not there yet, answering the watchdog and SIGTERM.

Once caught up, the loop reads an object only from bytes the lister fetched ahead with the
listing that showed it changed (``prefetch``, on the lister's thread): an object without them
waits for a later listing, and one that holds more than was fetched is fetched on from where
the loop got to. A slow or hanging store then holds the lister, not the loop's ticks,
reloads and shutdown. The first catch-up still reads with GETs of its own (nothing else is
due before it ends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gradwatch.daemon import sdnotify
from gradwatch.daemon.listing import ListingPoller
from gradwatch.daemon.reading import FileReads
from gradwatch.events.logdir import UNREADABLE_DIRECTORY, LogdirReader, ProblemLog
from gradwatch.events.remote import (
    BLOCK_BYTES,
    PREFETCH_BYTES,
    Block,
    ObjectStat,
    RemoteError,
    RemoteLogdir,
    run_and_name,
)
from gradwatch.events.shard import Shard

log = logging.getLogger("gradwatch")

# RecordTail first compares the bytes just before its offset with those it read last time
CHECKED_BEFORE_OFFSET = 4


class Bucket:
    """A remote logdir's listing outages, the wait for its first listing, and its reads off the loop."""

    def __init__(
        self,
        logdir: str,
        remote: RemoteLogdir | None,
        reader: LogdirReader,
        reads: FileReads,
        problems: ProblemLog,
        stopping: threading.Event,
        ready: threading.Event,
        ping: Callable[[], None],
        shard: Callable[[], Shard | None],
    ) -> None:
        self.logdir = logdir
        self.remote = remote
        self.reader = reader
        self.reads = reads
        self.problems = problems
        self._stopping = stopping
        self._ready = ready
        self._ping = ping
        self._shard = shard  # the config's, which a reload may change
        self.down = False  # the last listing failed (reported once per outage)
        # objects whose last block ended inside one record: the next block is this long
        self._longer: dict[str, int] = {}
        # the lister's passes, and the pass that last fetched (or failed to fetch) each object:
        # least recently fetched first, so neither the bytes one listing may fetch nor an object
        # whose GET always fails holds the objects listed after them back for ever
        self._passes = 0
        self._fetched_in: dict[str, int] = {}
        # objects whose last GET failed: after every other object, however long ago they were tried
        # (more of them than a pass tries would otherwise fill every pass before a run that changed)
        self._failing: set[str] = set()

    # -- on the lister thread --------------------------------------------------
    def prefetch(
        self, listing: dict[str, ObjectStat]
    ) -> tuple[dict[str, Block], tuple[str, RemoteError] | None]:
        """The new bytes of each object ``listing`` shows changed since the loop read it, from where
        the loop's reader is (runs on the lister thread: it only looks up the loop's dicts)."""
        remote = self.remote
        assert remote is not None  # the prefetch of a bucket's ListingPoller
        wanted = []
        for url, st in listing.items():
            start = self._fetch_from(remote, url, st)
            if start is not None and start < st.st_size:
                wanted.append((url, start, self._longer.get(url, BLOCK_BYTES)))
        fetched_in, failing = self._fetched_in, self._failing
        # stable: listing order among equals
        wanted.sort(key=lambda w: (w[0] in failing, fetched_in.get(w[0], -1)))
        blocks, failed, failed_urls = remote.fetch_blocks(listing, wanted, PREFETCH_BYTES)
        self._passes += 1
        self._fetched_in = {url: n for url, n in fetched_in.items() if url in listing}
        self._fetched_in.update(dict.fromkeys([*blocks, *failed_urls], self._passes))
        self._failing = {url for url in failing if url in listing and url not in blocks} | set(failed_urls)
        return blocks, failed

    def _fetch_from(self, remote: RemoteLogdir, url: str, st: ObjectStat) -> int | None:
        entry = self.reader.readers.get(url)
        if entry is None:
            shard = self._shard()
            owned = shard is None or shard.owns(run_and_name(remote.relative(url))[0])
            return 0 if owned else None  # a new object: the loop follows it at this listing's rescan
        if self.reads.seen.get(url) == (st.st_size, st.st_mtime_ns):
            return None  # read as it is listed
        offset = entry[1].offset
        if st.st_size < offset:
            return 0  # shrunk (replaced by a shorter object): RecordTail reads it again from 0
        return max(0, offset - CHECKED_BEFORE_OFFSET)

    # -- on the loop -------------------------------------------------------------
    def waits(self, path: str) -> bool:
        """Whether a changed object is left for a later listing: caught up on a bucket, and no bytes
        were fetched ahead from where its reader is (the loop makes no GET of its own); the next
        listing then fetches them."""
        remote = self.remote
        if remote is None or not self._ready.is_set() or self._fetched_here(remote, path):
            return False
        self.reads.seen.pop(path, None)  # changed for the lister, whatever the next listing says
        return True

    def _fetched_here(self, remote: RemoteLogdir, path: str) -> bool:
        block = remote.blocks.get(path)
        entry = self.reader.readers.get(path)
        if block is None or entry is None:
            return False
        offset = entry[1].offset
        if block[0] <= max(0, offset - CHECKED_BEFORE_OFFSET) and offset <= block[0] + len(block[1]):
            return True
        if block[0] == 0 and remote.sizes.get(path, offset) < offset:
            return True  # fetched from 0, listed shorter than the offset: RecordTail sees it shrunk
        # fetched for an offset the reader has left (the catch-up read on meanwhile): read as the
        # end of the object, it would look shrunk
        del remote.blocks[path]
        return False

    def after_read(self, path: str) -> None:
        """An object read from bytes fetched ahead: when it holds more, the next listing fetches
        on from where its reader got to (a longer block when the reader got nowhere in this one)."""
        remote = self.remote
        if remote is None:
            return
        block = remote.blocks.get(path)
        entry = self.reader.readers.get(path)
        if block is not None and entry is not None and entry[1].offset < block[0]:
            # found rewritten, the reader starts again at 0, before the bytes fetched: the next
            # listing fetches from there (the loop makes no GET of its own)
            self.reads.seen.pop(path, None)
            self._longer.pop(path, None)
            return
        if not remote.short(path):
            self._longer.pop(path, None)
            return
        self.reads.seen.pop(path, None)  # so the lister and the next pass see it as changed
        block_at, data = remote.blocks[path]
        if entry is not None and entry[1].offset <= block_at + CHECKED_BEFORE_OFFSET:
            self._longer[path] = 2 * len(data)  # one record longer than the block
        else:
            self._longer.pop(path, None)

    def forget(self, path: str) -> None:
        self._longer.pop(path, None)

    def wait_for_first_listing(self, poller: ListingPoller) -> None:
        """The catch-up needs the bucket's listing: wait for one as for a local logdir that is
        not there yet, answering the watchdog and SIGTERM, with the poller's backoff."""
        while not self._stopping.is_set():
            error = poller.first_listing()
            if error is None:
                self.back()
                return
            if not self.down:
                sdnotify.ready(f"waiting for {self.logdir}")  # up and doing its job
            self.failed(error)
            deadline = time.monotonic() + poller.next_delay()
            while not self._stopping.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                self._ping()
                if time.monotonic() >= deadline:
                    break

    def failed(self, error: str) -> None:
        """A listing failed: once per outage in the log and gradwatch_read_problems_total."""
        if not self.down:
            self.down = True
            detail = error.removeprefix(f"{self.logdir}: ")
            self.problems.again(UNREADABLE_DIRECTORY, self.logdir, f"{detail}; retrying with backoff")

    def back(self) -> None:
        if self.down:
            self.down = False
            log.info("%s: listing works again", self.logdir)
