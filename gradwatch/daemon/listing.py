"""The watcher of a bucket: a thread that lists the remote logdir and hands each listing to the loop.

Object stores have no inotify; what changed is what a listing says changed (size or version).
The loop never waits for the network: it takes the newest listing the thread made, with the
new bytes of the changed objects, which the thread fetched too (a slow store holds the thread
for the SDK's retries, never the loop's ticks, reloads and local work).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from gradwatch.daemon.watcher import _RESCAN, Changes
from gradwatch.events.logdir import is_event_file
from gradwatch.events.remote import Block, ObjectStat, RemoteError, RemoteLogdir
from gradwatch.notify.policy import backoff

# a remote logdir: listings are this much apart, jittered so replicas do not list in step
JITTER = 0.2
# and after failed listings at most this much (exponential backoff from the interval)
LIST_BACKOFF_CAP = 60.0

# what the lister fetches for a listing: (blocks, the object and error of a GET that failed)
Prefetch = Callable[[dict[str, ObjectStat]], tuple[dict[str, Block], tuple[str, RemoteError] | None]]


@dataclass(frozen=True)
class Listing:
    """One listing handed to the loop, with the bytes fetched ahead for it."""

    objects: dict[str, ObjectStat]
    blocks: dict[str, Block]
    get_failed: tuple[str, RemoteError] | None = None


class ListingPoller:
    """The watcher of a remote logdir (``s3://``, ``gs://``): object stores have no inotify.

    A thread of its own lists the whole prefix every ``interval`` seconds (jittered by
    ±JITTER) and hands each listing to the loop, which makes it the one in use in ``wait``,
    so the loop reads and stats against one consistent listing and never waits for the
    network to list. Only event files are kept of a listing: a prefix that also holds
    checkpoints costs no memory for them. A failed listing is handed over too (``Changes.list_error``) and the
    next one is tried after an exponential, capped, jittered backoff. With ``prefetch``, the
    thread also fetches what each listing shows new (the follower says which bytes) and hands
    them over with it; a failed GET is handed over as ``Changes.get_failed``.
    """

    mode = "poll"

    def __init__(
        self,
        remote: RemoteLogdir,
        interval: float,
        uniform: Callable[[float, float], float] = random.uniform,
        prefetch: Prefetch | None = None,
    ) -> None:
        self.remote = remote
        self.prefetch = prefetch
        self.logdir = remote.url
        self.poll = interval
        self.started_at = 0.0
        self.failures = 0  # listings failed in a row
        self._uniform = uniform
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        # a listing (or failure) handed over and not taken yet: the loop is busy (a long
        # catch-up), and listing again would only pile up listings and LIST requests
        self.untaken = threading.Event()
        self.lists = 0  # listings asked for by this poller

    def start(self) -> None:
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="gradwatch-lister", daemon=True)
        self._thread.start()

    def next_delay(self) -> float:
        """Seconds until the next listing: the interval ±JITTER, or the backoff after failures."""
        if self.failures:
            return backoff(self.failures, None, self.poll, max(LIST_BACKOFF_CAP, self.poll), self._uniform)
        return self.poll * self._uniform(1 - JITTER, 1 + JITTER)

    def _run(self) -> None:
        while not self._stopped.wait(self.next_delay()):
            if self.untaken.is_set():
                continue
            self.lists += 1
            try:
                objects = self.remote.fetch_listing(is_event_file)
            except RemoteError as e:
                self.failures += 1
                listing: Listing | RemoteError = e
            else:
                self.failures = 0
                listing = self._with_blocks(objects)
            self.untaken.set()
            self._queue.put(listing)

    def _with_blocks(self, objects: dict[str, ObjectStat]) -> Listing:
        if self.prefetch is None:
            return Listing(objects, {})
        blocks, failed = self.prefetch(objects)
        return Listing(objects, blocks, failed)

    def wait(self, timeout: float) -> Changes:
        """The newest listing (now the one in use) or failure since the last call, and wake-ups."""
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return Changes()
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        markers = {i for i in items if isinstance(i, str)}
        outcomes = [i for i in items if not isinstance(i, str)]
        changes = Changes._of(markers)
        if not outcomes:
            return changes
        self.untaken.clear()
        last = outcomes[-1]  # the newest listing says all; older ones are out of date
        if isinstance(last, RemoteError):
            return replace(changes, list_error=str(last))
        self.remote.use(last.objects, last.blocks)  # type: ignore[union-attr]
        return replace(changes, poll=True, get_failed=last.get_failed)  # type: ignore[union-attr]

    def first_listing(self) -> str | None:
        """List now, on the caller's thread (the catch-up needs a listing); the reason it failed."""
        try:
            self.remote.use(self.remote.fetch_listing(is_event_file))
        except RemoteError as e:
            self.failures += 1
            return str(e)
        self.failures = 0
        return None

    def wake(self) -> None:
        self._queue.put(_RESCAN)

    @property
    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stopped.is_set()

    def stop(self) -> None:
        # a listing under way is not waited for: its thread is a daemon and drops the result
        self._stopped.set()

    # what the follower asks any watcher; a bucket has no directories to time or watch
    def dir_times(self) -> None:
        return None

    def remember_dirs(self, dirs: object) -> None:
        return None

    def dirs_changed(self) -> bool:
        return False

    def unwatched_reason(self) -> None:
        return None

    def fall_back(self, reason: str, poll: float | None = None) -> None:
        return None  # already polling
