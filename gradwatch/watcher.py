"""Which paths may have changed: inotify through watchdog, or polling.

The watcher only says *where* to look; the daemon reads. inotify can drop
events (queue overflow) and is not available on NFS, so polling is both a
mode of its own (``--poll``) and the automatic fallback, and the daemon also
rescans periodically as a safety net.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from gradwatch.events.logdir import is_event_file

log = logging.getLogger("gradwatch.watch")

RESCAN = "\0rescan"  # marker: directories changed, look for new runs/files
ALL = "\0all"  # marker (polling): check every known file


class Watcher:
    def __init__(self, logdir: str, poll: float | None = None) -> None:
        self.logdir = logdir
        self.poll = poll
        self.mode = "poll" if poll else "inotify"
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._observer = None
        self._next_poll = 0.0

    def start(self) -> None:
        """Start watching; falls back to polling when inotify is unavailable."""
        if self.mode == "inotify":
            try:
                self._start_inotify()
                return
            except (OSError, ImportError) as e:
                self.mode = "poll"
                self.poll = self.poll or 1.0
                log.warning(
                    "inotify unavailable for %s (%s); polling every %gs instead "
                    "(raise fs.inotify.max_user_watches / max_user_instances to use inotify)",
                    self.logdir,
                    getattr(e, "strerror", None) or e,
                    self.poll,
                )
        self._next_poll = time.monotonic()

    def _start_inotify(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver

        q = self._queue

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # called on watchdog's thread
                kind = event.event_type
                if kind in ("opened", "closed_no_write"):
                    return
                if event.is_directory:
                    if kind != "modified":
                        q.put(RESCAN)
                    return
                path = event.dest_path if kind == "moved" else event.src_path
                if isinstance(path, bytes):
                    path = os.fsdecode(path)
                if is_event_file(os.path.basename(path)):
                    q.put(path)
                    if kind in ("created", "moved", "deleted"):
                        q.put(RESCAN)

        observer = InotifyObserver()
        observer.schedule(Handler(), self.logdir, recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    @property
    def alive(self) -> bool:
        return self.mode == "poll" or (self._observer is not None and self._observer.is_alive())

    def wait(self, timeout: float) -> set[str]:
        """Paths (or markers) that may have changed; blocks up to ``timeout`` seconds."""
        if self.mode == "poll":
            delay = self._next_poll - time.monotonic()
            if delay > 0:
                try:
                    # woken early by ``wake`` or a signal
                    return self._drain({self._queue.get(timeout=min(delay, timeout))})
                except queue.Empty:
                    if delay > timeout:
                        return set()
            self._next_poll = time.monotonic() + (self.poll or 1.0)
            return self._drain({ALL, RESCAN})
        out: set[str] = set()
        try:
            out.add(self._queue.get(timeout=timeout))
        except queue.Empty:
            return out
        return self._drain(out)

    def _drain(self, out: set[str]) -> set[str]:
        while True:
            try:
                out.add(self._queue.get_nowait())
            except queue.Empty:
                return out

    def wake(self) -> None:
        """Make ``wait`` return now (signals, shutdown)."""
        self._queue.put(RESCAN)

    def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            if observer is not threading.current_thread():
                observer.join(timeout=5)
