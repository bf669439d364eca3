"""Following the logdir: which runs and event files exist, reading what is new in them.

The follower owns what the daemon knows about files and runs (seen sizes,
unreadable files and directories, missing runs, a logdir that went away) and
the watcher that tells it where to look. Reading feeds the engine; what was
read is marked in the unit of work, which commits it between files.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from gradwatch.config import Config
from gradwatch.daemon.bucket import Bucket
from gradwatch.daemon.listing import ListingPoller
from gradwatch.daemon.new_files import NewFiles
from gradwatch.daemon.reading import FileReads
from gradwatch.daemon.unit_of_work import UnitOfWork
from gradwatch.daemon.watcher import Changes, Watcher
from gradwatch.engine import Engine
from gradwatch.events.logdir import (
    UNREADABLE_DIRECTORY,
    LogdirError,
    LogdirReader,
    ProblemLog,
    remote_logdir,
    run_of,
    scan,
    scan_listed,
)
from gradwatch.events.remote import is_remote

log = logging.getLogger("gradwatch")

# inotify delivers within a millisecond; a change older than this that it never reported was missed
MISSED_AFTER = 2.0
# an inotify observer that dies again this soon after a restart is given up for polling
WATCHER_RESTART_WINDOW = 60.0


class Follower:
    """Files and runs of one logdir: new, changed, unreadable, vanished."""

    def __init__(
        self,
        logdir: str,
        config: Config,
        reader: LogdirReader,
        engine: Engine,
        problems: ProblemLog,
        uow: UnitOfWork,
        saved_files: dict[str, str],
        stopping: threading.Event,
        ready: threading.Event,
        ping: Callable[[], None],
        checkpoint: Callable[..., bool],
        forget_run_state: Callable[[str], int],
    ) -> None:
        self.logdir = logdir
        self.config = config  # replaced on reload (poll, forget_after, rescan_interval)
        self.reader = reader
        self.problems = problems
        self.uow = uow
        self._stopping = stopping
        self._ready = ready
        self._ping = ping
        self._forget_run_state = forget_run_state
        # s3://, gs://: listed by a poller thread, stat'ed from its listing (no request per object)
        self.remote = remote_logdir(logdir) if is_remote(logdir) else None
        self._stat = self.remote.stat if self.remote is not None else os.stat
        self.reads = FileReads(
            reader,
            engine,
            problems,
            uow,
            stopping,
            ping,
            self._vanished,
            self._stat,  # type: ignore[arg-type]
        )
        # a remote logdir's listing outages, and the bytes its lister fetches for the loop
        self.bucket = Bucket(
            logdir,
            self.remote,
            reader,
            self.reads,
            problems,
            stopping,
            ready,
            ping,
            lambda: self.config.shard,
        )
        self.new_files = NewFiles(
            reader, self.reads, problems, stopping, ready, ping, checkpoint, self.bucket
        )
        self.watcher: Watcher | ListingPoller = self._new_watcher(config.poll)
        self.watching = False
        self.saved_files: dict[str, str] | None = saved_files  # path -> run, until the first scan
        self.known_runs: set[str] = set(saved_files.values())
        self.unreadable_dirs: set[str] = set()
        self.missing: dict[str, float] = {}  # run -> monotonic time it was first missed
        self.logdir_missing_since: float | None = None
        # the logdir did not exist at start-up: all of it is written after we started, nothing is history
        self.logdir_created_after_start = False
        self.want_rescan = False
        self.last_rescan = 0.0
        self.drained_at = time.time()
        self._watcher_restarted = -WATCHER_RESTART_WINDOW

    # -- reading -------------------------------------------------------------
    def _vanished(self) -> None:
        self.want_rescan = True

    @property
    def read_again(self) -> set[str]:
        """Files whose last read stopped at the byte budget (read on the next turn)."""
        return self.reads.read_again

    def rescan(self, periodic: bool = False) -> None:
        """Find new and vanished runs and files; read the new files."""
        self.last_rescan = time.monotonic()
        self.want_rescan = False
        unreadable: set[str] = set()

        def problems(kind: str, path: str, offset: int, detail: str) -> None:
            if kind == UNREADABLE_DIRECTORY:
                unreadable.add(path)
            self.problems(kind, path, offset, detail)

        # polling: directory times from *before* the scan, so what appears during it shows as a change
        dirs = self.watcher.dir_times()
        if self.remote is not None:
            if self.remote.listed is None:
                return  # never listed (stopped while the store was down): keep every run as it is
            runs = scan_listed(self.remote, self.config.shard)
        else:
            try:
                runs = scan(self.logdir, problems, self.config.shard)  # type: ignore[arg-type]
            except LogdirError as e:
                self._logdir_gone(str(e))
                return
        if self.logdir_missing_since is not None:
            self._logdir_back()
        self._note_unreadable_dirs(unreadable)
        found, new = self._add_files(runs)
        if self.saved_files is not None:
            # offsets saved for files deleted while we were not running
            self.uow.forgotten_files.update(
                p for p, run in self.saved_files.items() if p not in found and run in runs
            )
            self.saved_files = None
        log.debug("rescanned %s: %d runs, %d new event files", self.logdir, len(runs), len(new))
        self._update_missing(runs, found)
        if periodic and new and self.watcher.mode == "inotify" and self._ready.is_set():
            self._check_missed_new(new)
        self.watcher.remember_dirs(dirs)
        self.new_files.read(new)

    def _note_unreadable_dirs(self, unreadable: set[str]) -> None:
        fixed = self.unreadable_dirs - unreadable
        self.unreadable_dirs = unreadable
        if fixed:
            log.info("readable again: %s", ", ".join(sorted(fixed)))
            if self.watcher.mode == "inotify" and self._ready.is_set():
                # inotify could not watch them while they were locked
                log.info("re-adding inotify watches")
                self.restart_watcher()

    def _add_files(self, runs: dict[str, list[str]]) -> tuple[set[str], list[str]]:
        """Readers for event files not followed yet: (every file found, the new ones)."""
        readers = self.reader.readers
        found: set[str] = set()
        new: list[str] = []
        for run, paths in runs.items():
            for p in paths:
                found.add(p)
                if p not in readers:
                    self.reader.reader(run, p)
                    self.known_runs.add(run)
                    new.append(p)
        return found, new

    def _check_missed_new(self, new: list[str]) -> None:
        limit = self.drained_at - MISSED_AFTER
        for p in new:
            try:
                ctime = os.stat(p).st_ctime
            except OSError:
                continue
            if self.watcher.started_at < ctime < limit:
                self._inotify_missed(f"it never reported the new file {p}")
                return

    def _inotify_missed(self, what: str) -> None:
        self.poll_instead(f"{what}; out of inotify watches, or a network filesystem")

    def poll_instead(self, reason: str) -> None:
        self.watcher.fall_back(reason)
        # what appeared while inotify did not see it, since the last scan, is found by the next one
        self.want_rescan = True

    def check_files(self, periodic: bool = False) -> None:
        """Read every known file that changed since we last read it (polling, safety net)."""
        missed = 0
        limit = self.drained_at - MISSED_AFTER
        reads = self.reads
        for path, (run, _) in list(self.reader.readers.items()):
            if run in self.missing:
                continue
            try:
                st = self._stat(path)
            except OSError as e:
                reads.read_error(path, e)
                continue
            if (st.st_size, st.st_mtime_ns) != reads.seen.get(path):
                if self.bucket.waits(path):
                    continue  # its new bytes come with a later listing, fetched off the loop
                if periodic and path not in reads.unreadable and st.st_mtime < limit and path in reads.seen:
                    missed += 1
                failed = reads.store_errors
                reads.read_file(path, st)
                self.bucket.after_read(path)
                if reads.store_errors != failed:
                    # a GET the loop made failed (rare: it reads the bytes the lister fetched): each
                    # further one would hold it for the SDK's retries; the rest wait for the next poll
                    break
        if missed and self.watcher.mode == "inotify":
            self._inotify_missed(f"it did not report changes to {missed} event file(s)")

    # -- runs that vanish ----------------------------------------------------
    def _update_missing(self, runs: dict[str, list[str]], found: set[str]) -> None:
        for p, (run, _) in list(self.reader.readers.items()):
            if p not in found and run in runs:
                # one event file of a run that is still there: nothing to wait for
                self._forget_file(p)
        now = time.monotonic()
        for run in self.known_runs:
            if run in runs:
                if self.missing.pop(run, None) is not None:
                    log.info("run %s is back", run)
            elif run not in self.missing and not self._run_unreadable(run):
                self.missing[run] = now
                log.info(
                    "run %s has no event files any more; forgetting it in %gs unless it comes back",
                    run,
                    self.config.forget_after,
                )
        for run in [r for r in self.missing if self._run_unreadable(r)]:
            del self.missing[run]
        self.expire_missing(now)

    def _run_unreadable(self, run: str) -> bool:
        """The run directory exists but cannot be listed: keep its state, retry later."""
        if self.remote is not None:
            return False  # a bucket lists all or nothing: a failed listing changes no run
        path = self.logdir if run == "." else os.path.join(self.logdir, run)
        try:
            os.stat(path)
        except PermissionError:
            return True
        except OSError:
            return False
        return not os.access(path, os.R_OK | os.X_OK)

    def expire_missing(self, now: float) -> None:
        for run, since in list(self.missing.items()):
            if now - since >= self.config.forget_after:
                self._forget_run(run)

    def _forget_file(self, path: str) -> None:
        self.reader.forget(path)
        self.bucket.forget(path)
        self.reads.forget(path)
        self.uow.forget_file(path)

    def _forget_run(self, run: str) -> None:
        self.missing.pop(run, None)
        self.known_runs.discard(run)
        for p in [p for p, (r, _) in self.reader.readers.items() if r == run]:
            self._forget_file(p)
        dropped = self._forget_run_state(run)
        log.info(
            "run %s disappeared %gs ago; forgot it%s",
            run,
            self.config.forget_after,
            f" and its {dropped} alert(s)" if dropped else "",
        )

    def _logdir_gone(self, reason: str) -> None:
        if self.logdir_missing_since is not None:
            return
        self.logdir_missing_since = time.monotonic()
        log.warning("%s; waiting for it to come back", reason)
        self.watcher.stop()
        # every run is now missing; they are forgotten after forget_after unless the logdir returns
        self._update_missing({}, set())

    def _logdir_back(self) -> None:
        log.info("%s is back; watching it again", self.logdir)
        self.logdir_missing_since = None
        self.restart_watcher()

    # -- the watcher ---------------------------------------------------------
    def start_watching(self) -> None:
        # watching starts before the catch-up, so nothing written meanwhile is missed
        if isinstance(self.watcher, ListingPoller):
            self.bucket.wait_for_first_listing(self.watcher)
        self.watcher.start()
        self.watching = True
        self.watcher.remember_dirs(None)

    def _new_watcher(self, poll: float | None) -> Watcher | ListingPoller:
        if self.remote is not None:
            return ListingPoller(self.remote, self.config.poll_interval, prefetch=self.bucket.prefetch)
        return Watcher(self.logdir, poll)

    def restart_watcher(self) -> None:
        self.watcher.stop()
        poll = self.config.poll or (self.watcher.poll if self.watcher.mode == "poll" else None)
        self.watcher = self._new_watcher(poll)
        self.watcher.start()
        self.watcher.remember_dirs(None)

    def handle(self, changes: Changes) -> None:
        """Read what the watcher says may have changed; rescan when a directory did or it is time."""
        if self.remote is not None:
            self._handle_listing(changes)
            return
        readers = self.reader.readers
        paths = changes.paths | self.reads.read_again  # round robin: what one turn left unread
        self.reads.read_again.clear()
        rescan = changes.rescan or self.want_rescan or self.logdir_missing_since is not None
        if changes.poll and self.logdir_missing_since is None:
            self.check_files()
            rescan = rescan or self.watcher.dirs_changed()
        for path in paths:
            if path in readers:
                self.reads.read_file(path)
            elif self._owned(path):
                rescan = True  # a file we do not know yet
        if rescan:
            self.rescan()
            if changes.new_dir:
                self.check_watches()
        elif time.monotonic() - self.last_rescan >= self.config.rescan_interval:
            self.rescan(periodic=True)
            if self.logdir_missing_since is None:
                self.check_files(periodic=True)
                self.check_watches()

    def _handle_listing(self, changes: Changes) -> None:
        """A remote logdir: each new listing is a whole rescan (new, grown and vanished objects,
        read from the bytes the lister fetched with the listing: no request here)."""
        again = list(self.reads.read_again)  # round robin: what one turn left unread
        self.reads.read_again.clear()
        if changes.list_error is not None:
            self.bucket.failed(changes.list_error)
        elif changes.poll:
            self.bucket.back()
            if changes.get_failed is not None:
                self.reads.read_error(*changes.get_failed)  # reported as a GET the loop made would be
            failed = self.reads.store_errors
            self.rescan()
            if self.reads.store_errors == failed:  # after a failed GET, the rest waits for the next poll
                self.check_files()
        for path in again:
            if path in self.reader.readers and not self.bucket.waits(path):
                self.reads.read_file(path)
                self.bucket.after_read(path)
        if self.remote is not None:
            self.remote.keep_blocks(self.reads.read_again)  # the rest is read: free their bytes

    def _owned(self, path: str) -> bool:
        """Whether a changed path is in a run of this daemon's shard: the other shards' writes
        must not make every replica rescan the whole logdir."""
        shard = self.config.shard
        return shard is None or shard.owns(run_of(self.logdir, os.path.dirname(path)))

    def check_watches(self) -> None:
        """inotify: poll at once when a directory went unwatched (out of watches), not ~25 s later."""
        if self.watching and self.watcher.mode == "inotify":
            reason = self.watcher.unwatched_reason()
            if reason is not None:
                self.poll_instead(reason)

    def watcher_died(self) -> None:
        now = time.monotonic()
        if now - self._watcher_restarted < WATCHER_RESTART_WINDOW:
            self.poll_instead("the inotify observer stopped twice within a minute")
        else:
            log.warning("file watcher stopped; restarting it")
            self._watcher_restarted = now
            self.restart_watcher()
        # whatever happened while nobody watched
        self.rescan()
        self.check_files()

    def reconfigure(self, config: Config) -> None:
        """After a reload: a new poll interval restarts the watcher."""
        old, self.config = self.config, config
        if (config.poll, config.poll_interval) == (old.poll, old.poll_interval):
            return
        if self.watching and self.logdir_missing_since is None:
            self.restart_watcher()
            log.info("now watching %s (%s)", self.logdir, self.watcher.mode)
        elif not self.watching:
            self.watcher = self._new_watcher(config.poll)

    @property
    def files(self) -> int:
        return len(self.reader.readers)

    @property
    def runs(self) -> int:
        return len({run for run, _ in self.reader.readers.values()})


def logdir_problem(logdir: str) -> str | None:
    if is_remote(logdir):
        return None  # a bucket is waited for by its first listing (Follower.start_watching)
    if not os.path.isdir(logdir):
        return "not a directory" if os.path.exists(logdir) else "no such directory"
    if not os.access(logdir, os.R_OK | os.X_OK):
        return "permission denied"
    return None
