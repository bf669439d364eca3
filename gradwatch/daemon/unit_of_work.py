"""The unit of work: what changed since the last commit, and the commit itself.

Offsets, series states, alert states, forgotten files and runs, and the
notifications of the transitions decided meanwhile go into one SQLite
transaction, so a restart (also after kill -9) neither repeats nor misses a
notification. When the state DB refuses (a full disk) everything is kept and
written again by the next attempt; the transitions' notifications wait in
memory until then.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping

from gradwatch import history as alert_history
from gradwatch.alerts import AlertEvent
from gradwatch.daemon import sdnotify
from gradwatch.engine import Engine
from gradwatch.events.logdir import LogdirReader
from gradwatch.store import StateDB

log = logging.getLogger("gradwatch")

# most seconds between two commits when no alert changes (offsets and series states only)
COMMIT_EVERY = 1.0


class UnitOfWork:
    """Dirty and forgotten sets plus the commit that saves them in one transaction."""

    def __init__(self, state: StateDB, status_line: Callable[[], str]) -> None:
        self.state = state
        self._status_line = status_line  # what systemd shows once saving works again
        self.dirty_runs: set[str] = set()
        self.dirty_files: set[str] = set()
        self.forgotten_files: set[str] = set()
        self.forgotten_runs: set[str] = set()
        # transitions printed and acted on, whose notifications wait for a commit that works
        self.unsaved_events: list[AlertEvent] = []
        self.committed_at = 0.0
        self.db_error: str | None = None  # SQLite's message while commits fail
        self.save_errors = 0  # commits that failed, for gradwatch_state_save_errors_total
        self.series_version = 0  # bumped whenever a series may have changed (the status snapshot)

    # -- marking -------------------------------------------------------------
    def read(self, run: str, path: str, points: int) -> None:
        """A read pass over ``path``: its offset moved; ``points`` new points changed the run's series."""
        if points:
            self.dirty_runs.add(run)
            self.series_version += 1
        self.dirty_files.add(path)

    def touch_run(self, run: str) -> None:
        """The run's series changed without a read (reload re-matched its rules)."""
        self.dirty_runs.add(run)
        self.series_version += 1

    def forget_file(self, path: str) -> None:
        self.dirty_files.discard(path)
        self.forgotten_files.add(path)

    def forget_run(self, run: str) -> None:
        """Committed with the next checkpoint, together with the alert states."""
        self.dirty_runs.discard(run)
        self.forgotten_runs.add(run)
        self.series_version += 1

    # -- committing ----------------------------------------------------------
    def due(self) -> bool:
        return time.monotonic() - self.committed_at >= COMMIT_EVERY

    def has_work(self) -> bool:
        return bool(
            self.unsaved_events
            or self.dirty_files
            or self.dirty_runs
            or self.forgotten_files
            or self.forgotten_runs
        )

    def commit(
        self,
        events: list[AlertEvent],
        changes: Iterable,
        meta: Mapping[str, str] | None,
        reader: LogdirReader,
        engine: Engine,
        outbox,
    ) -> bool:
        """One transaction; False (everything kept for the next attempt) when SQLite refuses."""
        unsaved = self.unsaved_events + events
        state = self.state
        try:
            state.begin()
            self._write(events, changes, meta, reader, engine)
            if outbox is not None and unsaved:
                outbox.enqueue(state.conn, unsaved)
            state.commit()
        except sqlite3.Error as e:
            self._rollback()
            # keep the rest for the next attempt; the operator is told now, not when the disk has room
            self.unsaved_events = unsaved
            self._save_failed(e)
            return False
        except BaseException:
            self._rollback()
            raise
        self._committed(unsaved, outbox)
        return True

    def _write(
        self,
        events: list[AlertEvent],
        changes: Iterable,
        meta: Mapping[str, str] | None,
        reader: LogdirReader,
        engine: Engine,
    ) -> None:
        readers = reader.readers
        rows = []
        for p in self.dirty_files:
            entry = readers.get(p)
            if entry is not None:
                rows.append((p, entry[0], entry[1].offset))
        series = [s for run in self.dirty_runs for s in engine.runs.get(run, {}).values() if s is not None]
        state = self.state
        state.forget_files(list(self.forgotten_files))
        for run in self.forgotten_runs:
            state.forget_run(run)
        state.save_offsets(rows)
        state.save_series(series)
        state.save_alerts(changes)
        if events:
            alert_history.record(state.conn, events, time.time())  # `gradwatch alerts` reads it
        for key, value in (meta or {}).items():
            state.set_meta(key, value)

    def _committed(self, unsaved: list[AlertEvent], outbox) -> None:
        self.committed_at = time.monotonic()
        self.unsaved_events = []
        self._saved()
        self.dirty_files.clear()
        self.dirty_runs.clear()
        self.forgotten_files.clear()
        self.forgotten_runs.clear()
        if unsaved and outbox is not None:
            outbox.wake()

    def _save_failed(self, e: sqlite3.Error) -> None:
        self.save_errors += 1
        if str(e) != self.db_error:
            self.db_error = str(e)
            log.error(
                "cannot save state to %s: %s; retrying (alerts still reach the console; "
                "notifications wait until it works)",
                self.state.path,
                e,
            )
            # what `systemctl status gradwatch` shows
            sdnotify.status(f"cannot save state to {self.state.path}: {e}; notifications wait")

    def _saved(self) -> None:
        if self.db_error is None:
            return
        self.db_error = None
        log.info("state saved to %s again", self.state.path)
        sdnotify.status(self._status_line())

    def _rollback(self) -> None:
        try:
            self.state.rollback()
        except sqlite3.Error as e:
            log.debug("rollback: %s", e)
