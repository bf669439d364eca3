"""Which paths may have changed: inotify through watchdog, or a polling timer.

The watcher only says *where* to look; the daemon reads. inotify can drop
events (queue overflow), runs out of watches, and sees nothing of writes made
by another host on a network filesystem, so polling is both a mode of its own
(``--poll``) and the automatic fallback, and the daemon also checks every
known file at a slow periodic rescan as a safety net.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

from gradwatch.events.logdir import FLAGS_DIR, is_event_file

log = logging.getLogger("gradwatch.watch")

# markers on the queue besides paths (a path never starts with NUL); ``wait`` turns them into Changes
_RESCAN = "\0rescan"
_NEW_DIR = "\0newdir"
DEFAULT_POLL = 1.0
# seconds a directory may stay unwatched before we stop blaming watchdog's queue for it
UNWATCHED_GRACE = 2.0

# Events we never need: our own reads open and close the files.
_IGNORED = frozenset(("opened", "closed_no_write"))


@dataclass(frozen=True)
class Changes:
    """What may have changed since the last ``wait``: event files, and what to look at besides."""

    paths: frozenset[str] = frozenset()  # event files written, created, moved or deleted
    rescan: bool = False  # directories changed: look for new or vanished runs and files
    poll: bool = False  # polling: stat every known file and directory now
    new_dir: bool = False  # inotify: a directory appeared; did watchdog manage to watch it?
    # a remote logdir: why its last listing failed (None: it worked, or none was due)
    list_error: str | None = None
    # a remote logdir: the object whose GET the lister made for this listing failed, and why
    get_failed: tuple[str, OSError] | None = None

    @classmethod
    def _of(cls, items: set[str], poll: bool = False) -> Changes:
        return cls(
            frozenset(i for i in items if not i.startswith("\0")),
            rescan=_RESCAN in items,
            poll=poll,
            new_dir=_NEW_DIR in items,
        )


class Watcher:
    """Change notifications for one logdir; ``wait`` returns paths and markers."""

    def __init__(self, logdir: str, poll: float | None = None) -> None:
        self.logdir = logdir
        self.poll = poll
        self.mode = "poll" if poll else "inotify"
        self.started_at = 0.0
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._observer = None
        self._next_poll = 0.0
        self._dirs: dict[str, int] = {}  # polling: directory -> mtime_ns

    def start(self) -> None:
        """Start watching; falls back to polling when inotify is unavailable."""
        self.started_at = time.time()
        if self.mode == "inotify":
            try:
                self._start_inotify()
            except (OSError, ImportError) as e:
                self.fall_back(getattr(e, "strerror", None) or str(e))
            else:
                # watchdog ignores a failed watch below the root: out of watches must be seen here
                reason = self.unwatched_reason()
                if reason is None:
                    return
                self.fall_back(reason)
        self._next_poll = time.monotonic()

    def fall_back(self, reason: str, poll: float | None = None) -> None:
        """Switch to polling (inotify failed or missed changes)."""
        self.stop()
        self.mode = "poll"
        self.poll = poll or self.poll or DEFAULT_POLL
        self._next_poll = time.monotonic()
        log.warning(
            "inotify unavailable for %s (%s); polling every %gs instead "
            "(raise fs.inotify.max_user_watches / max_user_instances, or use --poll on network filesystems)",
            self.logdir,
            reason,
            self.poll,
        )
        self._dirs = dir_snapshot(self.logdir)

    # -- polling: directory times show new runs and files without listing every directory
    def dir_times(self) -> dict[str, int] | None:
        """Polling: every directory's mtime now (taken before a scan, so what appears during it
        shows as a change next time); None with inotify."""
        return dir_snapshot(self.logdir) if self.mode == "poll" else None

    def remember_dirs(self, dirs: dict[str, int] | None) -> None:
        """Polling: compare later polls with ``dirs`` (None: with the directories as they are now)."""
        if self.mode == "poll":
            self._dirs = dirs if dirs is not None else dir_snapshot(self.logdir)

    def dirs_changed(self) -> bool:
        """Polling: a directory changed (or vanished) since ``remember_dirs``."""
        for d, mtime in self._dirs.items():
            try:
                if os.stat(d).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return not self._dirs

    def _start_inotify(self) -> None:
        from watchdog.events import (
            DirAttribEvent,
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileAttribEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers.inotify import InotifyObserver

        q = self._queue
        logdir = self.logdir
        # inotify reports paths under the real directory; the daemon knows them under ``logdir``
        real = os.path.realpath(logdir)
        flags = os.path.join(real, FLAGS_DIR) + os.sep

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # called on watchdog's thread
                kind = event.event_type
                if kind in _IGNORED:
                    return
                path = event.dest_path if kind == "moved" else event.src_path
                if isinstance(path, bytes):
                    path = os.fsdecode(path)
                if path.startswith(flags):
                    return  # our own TensorBoard alert flags
                if event.is_directory:
                    if kind != "modified":
                        q.put(_RESCAN)
                    if kind in ("created", "moved"):
                        q.put(_NEW_DIR)
                    return
                if not is_event_file(os.path.basename(path)):
                    return
                if real != logdir and (path == real or path.startswith(real + os.sep)):
                    path = logdir + path[len(real) :]
                q.put(path)
                if kind in ("created", "moved", "deleted"):
                    q.put(_RESCAN)

        wanted = [
            FileCreatedEvent,
            FileModifiedEvent,
            FileClosedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileAttribEvent,
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            DirAttribEvent,
        ]
        observer = InotifyObserver()
        try:
            # without open/close events our own reads do not wake watchdog's threads
            observer.schedule(Handler(), real, recursive=True, event_filter=wanted)
        except TypeError:  # watchdog < 4 has no event_filter
            observer.schedule(Handler(), real, recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def unwatched_reason(self) -> str | None:
        """Why inotify does not see every directory of the logdir, or None when it does.

        watchdog adds a watch for each new directory and drops the error when the kernel refuses
        (ENOSPC once fs.inotify.max_user_watches is used up): the kernel's list of our watches
        (/proc/self/fdinfo) is compared with the directories, and one watch is tried here to get
        the kernel's reason. A directory created a moment ago may still be on watchdog's queue:
        it counts only once the kernel says ENOSPC or it has gone unwatched for a while.
        """
        if self.mode != "inotify" or self._observer is None:
            return None
        watched = _inotify_watched_inodes()
        if watched is None:
            return None  # no /proc: the periodic safety net still notices missed changes
        dirs = dir_snapshot(self.logdir)
        missing = [d for d in dirs if _inode(d) not in watched and _inode(d) is not None]
        if not missing:
            return None
        what = f"{len(missing)} of {len(dirs)} directories unwatched, e.g. {missing[0]}"
        error = _try_watch(missing[0])
        if error == errno.ENOSPC:
            return f"inotify watch limit reached: {what}"
        if any(_age(d) > UNWATCHED_GRACE for d in missing):
            return f"inotify does not watch every directory ({what})"
        return None

    @property
    def alive(self) -> bool:
        return self.mode == "poll" or (self._observer is not None and self._observer.is_alive())

    def wait(self, timeout: float) -> Changes:
        """What may have changed; blocks up to ``timeout`` seconds."""
        if self.mode == "poll":
            delay = self._next_poll - time.monotonic()
            if delay > 0:
                try:
                    # woken early by ``wake`` (signals, shutdown)
                    return Changes._of(self._drain({self._queue.get(timeout=min(delay, timeout))}))
                except queue.Empty:
                    if delay > timeout:
                        return Changes()
            self._next_poll = time.monotonic() + (self.poll or DEFAULT_POLL)
            return Changes._of(self._drain(set()), poll=True)
        out: set[str] = set()
        try:
            out.add(self._queue.get(timeout=timeout))
        except queue.Empty:
            return Changes()
        return Changes._of(self._drain(out))

    def _drain(self, out: set[str]) -> set[str]:
        while True:
            try:
                out.add(self._queue.get_nowait())
            except queue.Empty:
                return out

    def wake(self) -> None:
        """Make ``wait`` return now (signals, shutdown)."""
        self._queue.put(_RESCAN)

    def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            try:
                observer.stop()
                if observer is not threading.current_thread() and observer.is_alive():
                    observer.join(timeout=5)
            except (OSError, RuntimeError) as e:  # a watch on a directory that is gone
                log.debug("stopping the inotify observer: %s", e)


def dir_snapshot(logdir: str) -> dict[str, int]:
    """Every directory under ``logdir`` (not our flags) -> its mtime, for polling.

    A new run or event file changes its parent directory's mtime, so a poll
    stats these instead of listing every directory each time.
    """
    out: dict[str, int] = {}
    for dirpath, dirnames, _ in os.walk(logdir):
        if dirpath == logdir and FLAGS_DIR in dirnames:
            dirnames.remove(FLAGS_DIR)
        try:
            out[dirpath] = os.stat(dirpath).st_mtime_ns
        except OSError:
            continue
    return out


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_ctime
    except OSError:
        return 0.0


def _inotify_watched_inodes() -> set[int] | None:
    """Inode numbers that this process's inotify instances watch, from /proc/self/fdinfo."""
    inodes: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                lines = [line for line in f if line.startswith("inotify wd:")]
        except OSError:
            continue  # closed meanwhile
        for line in lines:
            # "inotify wd:3 ino:1a2b sdev:800001 mask:... ": the inode in hexadecimal
            fields = dict(part.split(":", 1) for part in line.split()[1:] if ":" in part)
            if "ino" in fields:
                inodes.add(int(fields["ino"], 16))
    return inodes


def _try_watch(path: str) -> int | None:
    """errno of adding an inotify watch on ``path`` in an instance of our own (None: it worked)."""
    libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded: no ldconfig subprocess
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return ctypes.get_errno()
    try:
        in_create = 0x100
        if libc.inotify_add_watch(fd, os.fsencode(path), in_create) < 0:
            return ctypes.get_errno()
        return None
    finally:
        os.close(fd)
