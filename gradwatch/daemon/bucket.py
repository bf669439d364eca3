"""What the follower of a bucket (s3://, gs://) knows beyond files: whether listing works.

A listing that fails is reported once per outage (in the log and as an unreadable directory in
gradwatch_read_problems_total) and said to be over when one works again. Before the first
listing the catch-up has nothing to read: the start waits for one, as for a local logdir that
is not there yet, answering the watchdog and SIGTERM.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gradwatch.daemon import sdnotify
from gradwatch.daemon.listing import ListingPoller
from gradwatch.events.logdir import UNREADABLE_DIRECTORY, ProblemLog

log = logging.getLogger("gradwatch")


class Bucket:
    """A remote logdir's listing outages, and the wait for its first listing."""

    def __init__(
        self, logdir: str, problems: ProblemLog, stopping: threading.Event, ping: Callable[[], None]
    ) -> None:
        self.logdir = logdir
        self.problems = problems
        self._stopping = stopping
        self._ping = ping
        self.down = False  # the last listing failed (reported once per outage)

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
