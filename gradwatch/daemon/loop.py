"""``gradwatch watch``: wiring, the watch loop, signals, systemd notify.

One thread reads and evaluates (this loop); the watcher, the HTTP endpoint
and each notification channel have their own. Every batch commits file
offsets, rule states, alert states and queued notifications in one SQLite
transaction, so a restart (also after kill -9) neither repeats nor misses a
notification. The console line comes first, before the commit: it never
waits for the state DB, and a kill -9 in between prints it again. Commits
happen between files, never inside one: the offset of a record holding
several values is only exact once all of them are observed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TextIO

from gradwatch.alerts import ACTIVE, FIRING, AlertBook, AlertEvent, alert_key
from gradwatch.config import (
    Config,
    build_notifiers,
    check_stop_file_template,
    listen_usage,
    load_config,
    parse_listen,
)
from gradwatch.daemon import sdnotify
from gradwatch.daemon.watcher import MARKERS, NEW_DIR, POLL, RESCAN, Watcher, dir_snapshot
from gradwatch.daemon.writers import FlagWriter, StopFileWriter
from gradwatch.engine import Engine
from gradwatch.events.logdir import (
    UNREADABLE_DIRECTORY,
    UNREADABLE_FILE,
    LogdirError,
    LogdirReader,
    ProblemLog,
    scan,
)
from gradwatch.fmt import escape as clean_name
from gradwatch.notify.console import ConsoleNotifier
from gradwatch.rulefile import load_rules
from gradwatch.rules import SEVERITIES, Rule, Series
from gradwatch.state import StateDB, StateError, restore_series, rule_signature
from gradwatch.yamlconf import ConfigError, Problem

log = logging.getLogger("gradwatch")

# points between two looks at the stop flag and the systemd watchdog while reading one big file
BATCH_POINTS = 50_000
TICK_SECONDS = 1.0
# most seconds between two commits when no alert changes (offsets and series states only)
COMMIT_EVERY = 1.0
# inotify delivers within a millisecond; a change older than this that it never reported was missed
MISSED_AFTER = 2.0
# an inotify observer that dies again this soon after a restart is given up for polling
WATCHER_RESTART_WINDOW = 60.0


class Daemon:
    """``config_loader`` re-creates the configuration on SIGHUP (file plus command-line flags)."""

    def __init__(
        self,
        config: Config,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        config_loader: Callable[[], Config] | None = None,
    ) -> None:
        if not config.logdir:
            raise ConfigError(
                [
                    Problem(
                        config.source or "gradwatch watch",
                        0,
                        "logdir",
                        "no logdir to watch: give one on the command line or as `logdir:` in the config file",
                    )
                ]
            )
        self.config = config
        self.logdir = os.path.abspath(config.logdir)
        self.clock = clock
        self._loader = config_loader
        self.rules: list[Rule] = load_rules(config.rules)
        self.problems = ProblemLog()
        try:
            self.state = StateDB(config.resolved_state_dir())
        except StateError as e:
            raise ConfigError([Problem("gradwatch watch", 0, "state_dir", str(e))]) from None
        try:
            self._setup(out)
        except BaseException:
            self.state.close()
            raise

    def _setup(self, out: TextIO | None) -> None:
        config = self.config
        self.first_start = self.state.meta("catchup_done") is None
        self.book = AlertBook(self.rules, clock=self.clock, live=True)
        self.book.restore(self.state.alerts())
        saved_files = self.state.files()
        self._saved_files: dict[str, str] | None = {p: run for p, (run, _) in saved_files.items()}
        self._saved_series = self.state.series()
        # series with an absence rule: the only ones the 1 s tick has to look at
        self._absent: dict[tuple[str, str], Series] = {}
        self._known_runs: set[str] = set(self._saved_files.values())
        self.engine = Engine(
            self.rules, self.book, config.export_tags, on_new_series=self._new_series, problems=self.problems
        )
        self.reader = LogdirReader(self.logdir, {p: o for p, (_, o) in saved_files.items()}, self.problems)
        # series of earlier runs come back at once, so a stall or a resolution needs no new point first
        for run, tag in list(self._saved_series):
            self.engine.series(run, tag)
        self._saved_series = {}
        self.console = ConsoleNotifier(out, fmt="json" if config.log_format == "json" else "auto")
        self.stopper = StopFileWriter(
            self.logdir, config.stop_file, config.stop_severity, config.stop_severity_override
        )
        self.flags = FlagWriter(self.logdir) if config.tensorboard_flags else None
        self.watcher = Watcher(self.logdir, config.poll)
        self.notifiers = build_notifiers(config)
        self.outbox = self._make_outbox(self.notifiers)
        self.metrics = self._make_metrics()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._closed = False
        self._watching = False
        self._dirty_runs: set[str] = set()
        self._dirty_files: set[str] = set()
        self._forgotten_files: set[str] = set()
        self._forgotten_runs: set[str] = set()
        # path -> (size, mtime_ns) seen just before the last read: polls read only what changed
        self._seen: dict[str, tuple[int, int]] = {}
        self._unreadable: set[str] = set()
        self._unreadable_dirs: set[str] = set()
        self._missing: dict[str, float] = {}  # run -> monotonic time it was first missed
        self._logdir_missing_since: float | None = None
        # the logdir did not exist at start-up: all of it is written after we started, nothing is history
        self._logdir_created_after_start = False
        # runs already checked for "no series matches any rule" (each is warned about once)
        self._checked_runs: set[str] = set()
        self._dirs: dict[str, int] = {}  # polling: directory -> mtime_ns
        self._want_rescan = False
        # a file whose reading a stop interrupted: nothing since the last commit may be committed
        self._abandoned: str | None = None
        self._last_rescan = 0.0
        self._drained_at = time.time()
        self._watcher_restarted = -WATCHER_RESTART_WINDOW
        self._console_failed = False
        self._db_error: str | None = None
        # transitions printed and acted on, whose notifications wait for a commit that works
        self._unsaved_events: list[AlertEvent] = []
        self._last_ping = time.monotonic()
        self._committed_at = 0.0
        self._watchdog_every: float | None = None
        self.points = 0
        self.records = 0  # TFRecords verified, for gradwatch_records_read_total
        self.transitions = 0

    # -- optional parts ------------------------------------------------------
    def _make_outbox(self, notifiers: list):
        if not notifiers:
            return None
        from gradwatch.notify.outbox import Outbox

        return Outbox(self.state.path, notifiers, max_age=self.config.outbox_max_age)

    def _make_metrics(self):
        if not self.config.listen:
            return None
        try:
            from gradwatch.metrics import Metrics
        except ImportError:
            log.warning("metrics exporter not available in this build")
            return None
        return Metrics(self)

    # -- series state --------------------------------------------------------
    def _new_series(self, s: Series) -> None:
        saved = self._saved_series.pop((s.run, s.tag), None)
        if saved is not None:
            try:
                restore_series(s, saved)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("saved state of %s %s is unreadable (%s); starting it afresh", s.run, s.tag, e)
        for i, rule in enumerate(s.rules):
            # an alert firing from before (restart, reload) must be able to resolve
            alert = self.book.alerts.get(alert_key(rule.name, s.run, s.tag))
            if alert is not None and alert.state == ACTIVE:
                s.ranks[i] = alert.rank
            if rule.kind == "absent":
                self._absent[(s.run, s.tag)] = s
        self._known_runs.add(s.run)

    # -- reading -------------------------------------------------------------
    def read_file(self, path: str, st: os.stat_result | None = None) -> int:
        """Read what is new in one known event file; returns the number of points."""
        entry = self.reader.readers.get(path)
        if entry is None or self._abandoned is not None:
            return 0
        run, reader = entry
        if st is None:
            try:
                st = os.stat(path)
            except OSError as e:
                self._read_error(path, e)
                return 0
        # recorded before reading: bytes appended while we read show up as a change next time
        self._seen[path] = (st.st_size, st.st_mtime_ns)
        observe = self.engine.observe
        n = 0
        check_at = BATCH_POINTS
        records_before = reader.tail.records
        points = reader.read()
        try:
            for tag, step, wall_time, value in points:
                observe(run, tag, step, wall_time, value)
                n += 1
                if n == check_at:
                    # a long catch-up still answers systemd's watchdog and SIGTERM
                    check_at += BATCH_POINTS
                    self._ping()
                    if self._stop.is_set():
                        self._abandoned = path
                        break
        except OSError as e:
            self._read_error(path, e)
        except Exception:
            if path not in self._unreadable:
                log.exception("%s: offset %d: cannot read this file; will retry", path, reader.offset)
            self._unreadable.add(path)
            self._seen.pop(path, None)
        else:
            if path in self._unreadable:
                self._unreadable.discard(path)
                log.info("%s: readable again", path)
        finally:
            points.close()
            self.records += reader.tail.records - records_before
        if n:
            self._dirty_runs.add(run)
            self.points += n
        self._dirty_files.add(path)
        return n

    def _read_error(self, path: str, e: OSError) -> None:
        self._seen.pop(path, None)  # so the next poll or safety check tries again
        if isinstance(e, (FileNotFoundError, NotADirectoryError)):
            self._want_rescan = True  # the rescan tells a deleted file from a deleted run
            return
        self._unreadable.add(path)
        self.problems(UNREADABLE_FILE, path, -1, f"{e.strerror or e}; will retry")

    def rescan(self, periodic: bool = False) -> None:
        """Find new and vanished runs and files; read the new files."""
        self._last_rescan = time.monotonic()
        self._want_rescan = False
        unreadable: set[str] = set()

        def problems(kind: str, path: str, offset: int, detail: str) -> None:
            if kind == UNREADABLE_DIRECTORY:
                unreadable.add(path)
            self.problems(kind, path, offset, detail)

        # polling: directory times from *before* the scan, so what appears during it shows as a change
        dirs = dir_snapshot(self.logdir) if self.watcher.mode == "poll" else None
        try:
            runs = scan(self.logdir, problems)  # type: ignore[arg-type]
        except LogdirError as e:
            self._logdir_gone(str(e))
            return
        if self._logdir_missing_since is not None:
            self._logdir_back()
        fixed = self._unreadable_dirs - unreadable
        self._unreadable_dirs = unreadable
        if fixed:
            log.info("readable again: %s", ", ".join(sorted(fixed)))
            if self.watcher.mode == "inotify" and self.ready.is_set():
                # inotify could not watch them while they were locked
                log.info("re-adding inotify watches")
                self._restart_watcher()
        readers = self.reader.readers
        found: set[str] = set()
        new: list[str] = []
        for run, paths in runs.items():
            for p in paths:
                found.add(p)
                if p not in readers:
                    self.reader.reader(run, p)
                    self._known_runs.add(run)
                    new.append(p)
        if self._saved_files is not None:
            # offsets saved for files deleted while we were not running
            self._forgotten_files.update(
                p for p, run in self._saved_files.items() if p not in found and run in runs
            )
            self._saved_files = None
        log.debug("rescanned %s: %d runs, %d new event files", self.logdir, len(runs), len(new))
        self._update_missing(runs, found)
        if periodic and new and self.watcher.mode == "inotify" and self.ready.is_set():
            self._check_missed_new(new)
        if self.watcher.mode == "poll":
            self._dirs = dirs if dirs is not None else dir_snapshot(self.logdir)
        for p in new:
            if self._stop.is_set():
                break  # catching up when told to stop: the rest is read next time
            self.read_file(p)
            self._ping()
            # between files offsets are exact: a long catch-up keeps its progress
            self.checkpoint(lazy=True)

    def _check_missed_new(self, new: list[str]) -> None:
        limit = self._drained_at - MISSED_AFTER
        for p in new:
            try:
                ctime = os.stat(p).st_ctime
            except OSError:
                continue
            if self.watcher.started_at < ctime < limit:
                self._inotify_missed(f"it never reported the new file {p}")
                return

    def _inotify_missed(self, what: str) -> None:
        self._poll_instead(f"{what}; out of inotify watches, or a network filesystem")

    def _poll_instead(self, reason: str) -> None:
        self.watcher.fall_back(reason)
        self._dirs = dir_snapshot(self.logdir)
        # what appeared while inotify did not see it, since the last scan, is found by the next one
        self._want_rescan = True

    def check_files(self, periodic: bool = False) -> None:
        """Read every known file that changed since we last read it (polling, safety net)."""
        missed = 0
        limit = self._drained_at - MISSED_AFTER
        for path, (run, _) in list(self.reader.readers.items()):
            if run in self._missing:
                continue
            try:
                st = os.stat(path)
            except OSError as e:
                self._read_error(path, e)
                continue
            if (st.st_size, st.st_mtime_ns) != self._seen.get(path):
                if periodic and path not in self._unreadable and st.st_mtime < limit and path in self._seen:
                    missed += 1
                self.read_file(path, st)
        if missed and self.watcher.mode == "inotify":
            self._inotify_missed(f"it did not report changes to {missed} event file(s)")

    def _dirs_changed(self) -> bool:
        for d, mtime in self._dirs.items():
            try:
                if os.stat(d).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return not self._dirs

    def _update_missing(self, runs: dict[str, list[str]], found: set[str]) -> None:
        for p, (run, _) in list(self.reader.readers.items()):
            if p not in found and run in runs:
                # one event file of a run that is still there: nothing to wait for
                self._forget_file(p)
        now = time.monotonic()
        for run in self._known_runs:
            if run in runs:
                if self._missing.pop(run, None) is not None:
                    log.info("run %s is back", run)
            elif run not in self._missing and not self._run_unreadable(run):
                self._missing[run] = now
                log.info(
                    "run %s has no event files any more; forgetting it in %gs unless it comes back",
                    run,
                    self.config.forget_after,
                )
        for run in [r for r in self._missing if self._run_unreadable(r)]:
            del self._missing[run]
        self._expire_missing(now)

    def _run_unreadable(self, run: str) -> bool:
        """The run directory exists but cannot be listed: keep its state, retry later."""
        path = self.logdir if run == "." else os.path.join(self.logdir, run)
        try:
            os.stat(path)
        except PermissionError:
            return True
        except OSError:
            return False
        return not os.access(path, os.R_OK | os.X_OK)

    def _expire_missing(self, now: float) -> None:
        for run, since in list(self._missing.items()):
            if now - since >= self.config.forget_after:
                self._forget_run(run)

    def _forget_file(self, path: str) -> None:
        self.reader.forget(path)
        self._seen.pop(path, None)
        self._unreadable.discard(path)
        self._dirty_files.discard(path)
        self._forgotten_files.add(path)

    def _forget_run(self, run: str) -> None:
        self._missing.pop(run, None)
        self._known_runs.discard(run)
        for p in [p for p, (r, _) in self.reader.readers.items() if r == run]:
            self._forget_file(p)
        self.engine.forget_run(run)
        self._absent = {k: s for k, s in self._absent.items() if k[0] != run}
        self._dirty_runs.discard(run)
        dropped = self.book.drop_run(run)
        # committed with the next checkpoint, together with the alert states
        self._forgotten_runs.add(run)
        log.info(
            "run %s disappeared %gs ago; forgot it%s",
            run,
            self.config.forget_after,
            f" and its {dropped} alert(s)" if dropped else "",
        )

    def _logdir_gone(self, reason: str) -> None:
        if self._logdir_missing_since is not None:
            return
        self._logdir_missing_since = time.monotonic()
        log.warning("%s; waiting for it to come back", reason)
        self.watcher.stop()
        # every run is now missing; they are forgotten after forget_after unless the logdir returns
        self._update_missing({}, set())

    def _logdir_back(self) -> None:
        log.info("%s is back; watching it again", self.logdir)
        self._logdir_missing_since = None
        self._restart_watcher()

    def _restart_watcher(self) -> None:
        self.watcher.stop()
        poll = self.config.poll or (self.watcher.poll if self.watcher.mode == "poll" else None)
        self.watcher = Watcher(self.logdir, poll)
        self.watcher.start()
        if self.watcher.mode == "poll":
            self._dirs = dir_snapshot(self.logdir)

    def _handle(self, changed: set[str]) -> None:
        readers = self.reader.readers
        rescan = RESCAN in changed or self._want_rescan or self._logdir_missing_since is not None
        if POLL in changed and self._logdir_missing_since is None:
            self.check_files()
            rescan = rescan or self._dirs_changed()
        for path in changed:
            if path in readers:
                self.read_file(path)
            elif path not in MARKERS:
                rescan = True  # a file we do not know yet
        if rescan:
            self.rescan()
            if NEW_DIR in changed:
                self._check_watches()
        elif time.monotonic() - self._last_rescan >= self.config.rescan_interval:
            self.rescan(periodic=True)
            if self._logdir_missing_since is None:
                self.check_files(periodic=True)
                self._check_watches()

    def _check_watches(self) -> None:
        """inotify: poll at once when a directory went unwatched (out of watches), not ~25 s later."""
        if self._watching and self.watcher.mode == "inotify":
            reason = self.watcher.unwatched_reason()
            if reason is not None:
                self._poll_instead(reason)

    # -- committing and acting ----------------------------------------------
    def checkpoint(self, meta: dict[str, str] | None = None, lazy: bool = False) -> bool:
        """Commit offsets, series and alert states and queued notifications; then act on the events.

        ``lazy``: without alert events, commit at most every COMMIT_EVERY seconds (a busy writer
        must not cost a commit per flush; points not committed are read again after a crash,
        and they hold no transition: a transition is always committed at once).
        Returns False when the state DB refused (the work is kept and committed next time).
        """
        if self._abandoned is not None:
            return False
        if lazy and not self.book.events and time.monotonic() - self._committed_at < COMMIT_EVERY:
            return True
        events = self.book.take_events()
        changes = self.book.take_changes()
        if not (
            events
            or self._unsaved_events
            or changes
            or meta
            or self._dirty_files
            or self._dirty_runs
            or self._forgotten_files
            or self._forgotten_runs
        ):
            return True
        for e in events:
            self._stop_file(e)
        self._stop_files_still_wanted()
        # the operator hears of a transition when it is decided, whatever the state DB says (a full
        # disk); a kill -9 before the commit below prints it again after the restart: at-least-once
        self._act(events, self._render(events))
        unsaved = self._unsaved_events + events
        readers = self.reader.readers
        rows = []
        for p in self._dirty_files:
            entry = readers.get(p)
            if entry is not None:
                rows.append((p, entry[0], entry[1].offset))
        series = [
            s for run in self._dirty_runs for s in self.engine.runs.get(run, {}).values() if s is not None
        ]
        state = self.state
        try:
            state.begin()
            state.forget_files(list(self._forgotten_files))
            for run in self._forgotten_runs:
                state.forget_run(run)
            state.save_offsets(rows)
            state.save_series(series)
            state.save_alerts(changes)
            for key, value in (meta or {}).items():
                state.set_meta(key, value)
            if self.outbox is not None and unsaved:
                self.outbox.enqueue(state.conn, unsaved)
            state.commit()
        except sqlite3.Error as e:
            self._rollback()
            # keep the rest for the next attempt; the operator is told now, not when the disk has room
            self.book.changed.update(changes)
            self._unsaved_events = unsaved
            self._save_failed(e)
            return False
        except BaseException:
            self._rollback()
            raise
        self._committed_at = time.monotonic()
        self._unsaved_events = []
        self._saved()
        self._dirty_files.clear()
        self._dirty_runs.clear()
        self._forgotten_files.clear()
        self._forgotten_runs.clear()
        if unsaved and self.outbox is not None:
            self.outbox.wake()
        return True

    def _save_failed(self, e: sqlite3.Error) -> None:
        if str(e) != self._db_error:
            self._db_error = str(e)
            log.error(
                "cannot save state to %s: %s; retrying (alerts still reach the console; "
                "notifications wait until it works)",
                self.state.path,
                e,
            )
            # what `systemctl status gradwatch` shows
            sdnotify.status(f"cannot save state to {self.state.path}: {e}; notifications wait")
        if self.metrics is not None:
            self.metrics.state_save_failed(self._db_error)

    def _saved(self) -> None:
        if self._db_error is None:
            return
        self._db_error = None
        log.info("state saved to %s again", self.state.path)
        sdnotify.status(self._watching_status())
        if self.metrics is not None:
            self.metrics.state_save_failed(None)

    def _rollback(self) -> None:
        try:
            self.state.rollback()
        except sqlite3.Error as e:
            log.debug("rollback: %s", e)

    def _stop_file(self, e: AlertEvent) -> None:
        rule = self.book.rules.get(e.rule)
        self.stopper.handle(e, rule.stop if rule is not None else None)

    def _stop_files_still_wanted(self) -> None:
        """Write the stop-file again for a run that logs on while its stopping alert still fires.

        An operator deletes a stale stop-file and restarts the run; if the restarted run is still
        diverging, no new transition happens (the alert never resolved), yet it must be stopped.
        """
        if not self._dirty_runs:
            return
        for alert in self.book.firing():
            if alert.run not in self._dirty_runs or alert.clear_points:
                continue  # no new point, or the last point was back to normal (keep_firing_for)
            rule = self.book.rules.get(alert.rule)
            if rule is None:
                continue
            if not self.stopper.stops(alert.rank, rule.stop):
                continue
            if not self.stopper.exists(alert.run):  # never through a trainer's symlink
                self.stopper.handle(self.book.event(rule, alert, FIRING, None), rule.stop)

    def _severities(self, rule_name: str) -> tuple[str, ...]:
        rule = self.book.rules.get(rule_name)
        if rule is None:
            return ("warning", "critical")
        mine = {sev for _, sev, _ in rule.levels}
        return tuple(s for s in SEVERITIES if s in mine)

    def _render(self, events: list[AlertEvent]) -> str:
        try:
            return self.console.render(events)
        except Exception:  # a bug in a template must not lose the commit
            log.exception("cannot render alerts for the console")
            return ""

    def _act(self, events: list[AlertEvent], text: str) -> None:
        """Console, flags and metrics when a transition is decided, before and whatever the commit."""
        if not events:
            return
        try:
            self.console.write(text)
        except (OSError, ValueError) as e:  # stdout closed or a broken pipe: keep watching
            if not self._console_failed:
                self._console_failed = True
                log.error("cannot print alerts on the console: %s", e)
        self.transitions += len(events)
        for e in events:
            if self.flags is not None:
                self.flags.handle(e, self._severities(e.rule))
            if self.metrics is not None:
                self.metrics.transition(e)

    # -- lifecycle -----------------------------------------------------------
    def catch_up(self) -> bool:
        """Read everything written so far; on a first start notify only what is still firing at the end.

        Returns False when stopped before the end (the next start goes on from the saved offsets).
        """
        t0 = time.monotonic()
        # what a trainer wrote before we started is history; into a logdir we waited for, nothing is
        history = self.first_start and not self._logdir_created_after_start
        self.book.suppress = history
        try:
            self.rescan()
        finally:
            self.book.suppress = False
        if self._stop.is_set():
            self.checkpoint()
            return False
        summary = self.book.catchup_summary() if history and self.config.catchup_notify else []
        self.book.events.extend(summary)
        self.checkpoint(meta={"catchup_done": "1"})
        self.first_start = False
        log.info(
            "caught up on %s: %d runs, %d files, %d points in %.2fs; %d series watched; %d alerts firing",
            self.logdir,
            len({r for r, _ in self.reader.readers.values()}),
            len(self.reader.readers),
            self.points,
            time.monotonic() - t0,
            self.series_watched,
            len(self.book.firing()),
        )
        runs = list(self.engine.runs)
        self._checked_runs.update(runs)
        if self.series_watched == 0 and (tags := self._unmatched_tags(runs)):
            log.warning(
                "no series matches any rule (%d rules loaded): nothing here can alert; tags seen: %s. "
                "Point the rules' match: at your tag names (docs/rules.md)",
                len(self.rules),
                tags,
            )
        return True

    @property
    def series_watched(self) -> int:
        """Series (run, tag) that at least one rule evaluates."""
        return sum(1 for s in self.engine.all_series() if s.rules)

    def _unmatched_tags(self, runs: list[str], most: int = 20) -> str:
        """The tags of ``runs`` that no rule matches, escaped, for a log line ("" if none)."""
        tags = sorted(
            {
                tag
                for run in runs
                for tag, s in self.engine.runs.get(run, {}).items()
                if s is None or not s.rules
            }
        )
        more = f" and {len(tags) - most} more" if len(tags) > most else ""
        return ", ".join(clean_name(t) for t in tags[:most]) + more

    def _check_new_runs(self) -> None:
        """Warn once about a run that appeared after the catch-up and has no series any rule matches."""
        for run in self.engine.runs.keys() - self._checked_runs:
            self._checked_runs.add(run)
            if any(s is not None and s.rules for s in self.engine.runs[run].values()):
                continue
            tags = self._unmatched_tags([run])
            if tags:
                log.warning("run %s: no series matches any rule; tags seen: %s", clean_name(run), tags)

    def start_services(self) -> None:
        if self.metrics is not None:
            host, port = parse_listen(self.config.listen or "")  # type: ignore[misc]
            try:
                self.metrics.serve(host, port)
            except OSError as e:
                raise ListenError(self.config.listen or "", e) from None
        if self.outbox is not None:
            self.outbox.start()

    def run(self) -> None:
        """Catch up, then follow the logdir until ``stop()``."""
        self._watchdog_every = sdnotify.watchdog_interval()
        try:
            self.start_services()
            if self._wait_for_logdir():
                # watching starts before the catch-up, so nothing written meanwhile is missed
                self.watcher.start()
                self._watching = True
                if self.watcher.mode == "poll":
                    self._dirs = dir_snapshot(self.logdir)
                if self.catch_up():
                    self._loop()
        finally:
            self.shutdown()

    def _wait_for_logdir(self) -> bool:
        told = False
        while not self._stop.is_set():
            problem = _logdir_problem(self.logdir)
            if problem is None:
                return True
            if not told:
                told = True
                self._logdir_created_after_start = True
                log.warning("%s: %s; waiting for it", self.logdir, problem)
                # up and doing its job: systemd must not time the start out
                sdnotify.ready(f"waiting for {self.logdir} ({problem})")
            self.watcher.wait(min(TICK_SECONDS, self._watchdog_every or TICK_SECONDS))
            self._ping()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
        return False

    def _loop(self) -> None:
        self.ready.set()
        if self.metrics is not None:
            self.metrics.set_ready(True)
        sdnotify.ready(self._watching_status())
        log.info("watching %s (%s)", self.logdir, self.watcher.mode)
        last_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(TICK_SECONDS, self._last_rescan + self.config.rescan_interval - now)
            if self._watchdog_every:
                timeout = min(timeout, self._last_ping + self._watchdog_every - now)
            changed = self.watcher.wait(max(0.01, timeout))
            self._drained_at = time.time()
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            now = time.monotonic()
            try:
                self._handle(changed)
                if now - last_tick >= TICK_SECONDS:
                    last_tick = now
                    self._tick(now)
            except Exception:
                # a bug must not stop the watch; what was read is not read again
                log.exception("internal error while watching %s; going on", self.logdir)
            self.checkpoint(lazy=True)
            self._ping()
            if not self.watcher.alive and self._logdir_missing_since is None:
                self._watcher_died()

    def _tick(self, now: float) -> None:
        self.book.tick(self._absent.values())
        self._check_new_runs()
        if self._missing:
            self._expire_missing(now)
        if self.outbox is not None and hasattr(self.outbox, "resend_firing"):
            self.outbox.resend_firing(self.book)

    def _watching_status(self) -> str:
        return f"watching {len(self.reader.readers)} event files in {self.logdir}"

    def _ping(self) -> None:
        if self._watchdog_every and time.monotonic() - self._last_ping >= self._watchdog_every:
            sdnotify.watchdog()
            self._last_ping = time.monotonic()

    def _watcher_died(self) -> None:
        now = time.monotonic()
        if now - self._watcher_restarted < WATCHER_RESTART_WINDOW:
            self._poll_instead("the inotify observer stopped twice within a minute")
        else:
            log.warning("file watcher stopped; restarting it")
            self._watcher_restarted = now
            self._restart_watcher()
        # whatever happened while nobody watched
        self.rescan()
        self.check_files()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        sdnotify.stopping()
        self.watcher.stop()
        if self._abandoned is not None:
            log.info(
                "stopped while reading %s; what was read since the last commit is read again next time",
                self._abandoned,
            )
        try:
            self.checkpoint()
        finally:
            if self.outbox is not None:
                self.outbox.stop(timeout=5)
            if self.metrics is not None:
                self.metrics.stop()
            self.state.close()
            log.info("stopped")

    def stop(self) -> None:
        self._stop.set()
        self.watcher.wake()

    def request_reload(self) -> None:
        self._reload.set()
        self.watcher.wake()

    # -- reload --------------------------------------------------------------
    def _load_config(self) -> Config:
        if self._loader is not None:
            return self._loader()
        if self.config.source:
            config = load_config(self.config.source)
            config.logdir = config.logdir or self.config.logdir
            return config
        return dataclasses.replace(self.config, channels=None)  # fresh channels: the old ones close

    def reload(self) -> bool:
        """SIGHUP: new rules and config; an invalid one is reported and the old one kept."""
        sdnotify.reloading("reloading the configuration")
        ok = self._reload_config()
        sdnotify.ready(self._watching_status())
        if self.metrics is not None:
            self.metrics.config_reloaded(ok)
        return ok

    def _reload_config(self) -> bool:
        log.info("reloading the configuration")
        loading = self.config.source or "the command line"
        try:
            config = self._load_config()
            loading = ", ".join(config.rules or ["the packaged default rules"])
            rules = load_rules(config.rules)
        except (ConfigError, LogdirError) as e:
            log.error("reload failed, keeping the running configuration:\n%s", e)
            return False
        except Exception as e:
            # an OSError, a RecursionError from a deeply nested YAML, a bug: SIGHUP must never kill us
            log.error("reload failed, keeping the running configuration: %s: %s", loading, _reason(e))
            log.debug("reload failure", exc_info=True)
            return False
        try:
            self._apply(config, rules)
        except Exception:
            log.exception("internal error while applying the reloaded configuration; going on")
            return False
        return True

    def _apply(self, config: Config, rules: list[Rule]) -> None:
        old = self.config
        fixed = {
            "logdir": (os.path.abspath(old.logdir or ""), os.path.abspath(config.logdir or old.logdir or "")),
            "state_dir": (old.resolved_state_dir(), config.resolved_state_dir()),
            "listen": (old.listen, config.listen),
            "log_format": (old.log_format, config.log_format),
        }
        for name, (before, after) in fixed.items():
            if before != after:
                log.warning("%s changed to %r: takes effect after a restart", name, after)
            setattr(config, name, getattr(old, name))
        self.config = config
        for name in self.book.reload_rules(rules):
            log.info("rule %s is gone after the reload; its alerts are resolved", name)
        self.rules = rules
        self._rematch(rules)
        self.engine.export_tags = config.export_tags
        # the same writer: its counters and once-per-run problem log survive a reload
        self.stopper.configure(config.stop_file, config.stop_severity, config.stop_severity_override)
        if config.tensorboard_flags and self.flags is None:
            self.flags = FlagWriter(self.logdir)
        elif not config.tensorboard_flags:
            self.flags = None
        if config.poll != old.poll:
            if self._watching and self._logdir_missing_since is None:
                self._restart_watcher()
                log.info("now watching %s (%s)", self.logdir, self.watcher.mode)
            elif not self._watching:
                self.watcher = Watcher(self.logdir, config.poll)
        if config.notifiers or old.notifiers:
            # always: a rotated *_file secret (a Kubernetes Secret update) changes no YAML;
            # queued notifications stay in the state DB and go out through the new channels
            self._replace_outbox(build_notifiers(config))
        log.info("reloaded: %d rules", len(rules))

    def _rematch(self, rules: list[Rule]) -> None:
        """Series match the new rules; a rule that did not change keeps its state (streaks, windows)."""
        old_runs = self.engine.runs
        self.engine.rules = rules
        self.engine.runs = {}
        self._absent = {}
        for run, tags in old_runs.items():
            for tag, old in tags.items():
                s = self.engine.series(run, tag)
                if s is None or old is None:
                    continue
                s.step, s.wall_time, s.value = old.step, old.wall_time, old.value
                before = {r.name: j for j, r in enumerate(old.rules)}
                for i, rule in enumerate(s.rules):
                    j = before.get(rule.name)
                    if j is not None and rule_signature(old.rules[j]) == rule_signature(rule):
                        s.states[i] = old.states[j]
                        s.ranks[i] = old.ranks[j]
            self._dirty_runs.add(run)

    def _replace_outbox(self, notifiers: list) -> None:
        if self.outbox is not None:
            self.outbox.stop(timeout=2)
        self.notifiers = notifiers
        self.outbox = self._make_outbox(notifiers)
        if self.outbox is not None:
            self.outbox.start()
        log.info("notifiers: %s", ", ".join(n.name for n in notifiers) or "console only")


def _reason(e: BaseException) -> str:
    """One line for a log: what failed and why, without a traceback."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}"


def _logdir_problem(logdir: str) -> str | None:
    if not os.path.isdir(logdir):
        return "not a directory" if os.path.exists(logdir) else "no such directory"
    if not os.access(logdir, os.R_OK | os.X_OK):
        return "permission denied"
    return None


# -- command line -----------------------------------------------------------------


def add_arguments(sub) -> None:
    w = sub.add_parser("watch", help="follow a logdir live and alert (the daemon)")
    w.add_argument("logdir", nargs="?", help="the logdir to watch (or `logdir:` in --config)")
    w.add_argument("--config", metavar="FILE", help="gradwatch.yaml")
    w.add_argument(
        "--rules", action="append", metavar="FILE|DIR", help="rule file, directory or glob (repeatable)"
    )
    w.add_argument("--state-dir", metavar="DIR", help="where the state DB lives (default: per logdir)")
    w.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="metrics/health endpoint (default 127.0.0.1:9723; every interface: 0.0.0.0:PORT; '' off)",
    )
    w.add_argument("--poll", type=float, metavar="SECONDS", help="poll instead of inotify (NFS, network FS)")
    w.add_argument(
        "--stop-file", metavar="TEMPLATE", help="stop-file path template ({run_dir}, {run}, {logdir})"
    )
    w.add_argument("--stop-severity", choices=("info", "warning", "critical", "never"))
    w.add_argument("--tensorboard-flags", action="store_true", help="write alerts/<rule>/<severity> flags")
    w.add_argument("--log-format", choices=("text", "json"), default=None)
    w.set_defaults(func=cmd_watch)

    c = sub.add_parser("config", help="validate a gradwatch.yaml")
    csub = c.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    cc = csub.add_parser("check", help="validate a config file (secrets are never printed)")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)

    d = sub.add_parser("demo", help="simulate an exploding run and watch gradwatch catch it")
    d.add_argument("--keep", metavar="DIR", help="write the demo logdir here and keep it")
    d.add_argument("--speed", type=float, default=1.0, help="faster (>1) or slower (<1) than real time")
    d.set_defaults(func=cmd_demo)


def config_from_args(args) -> Config:
    """The config file (if any) with the command-line flags on top; also what SIGHUP re-reads."""
    cfg = load_config(args.config) if args.config else Config()
    if args.logdir:
        cfg.logdir = args.logdir
    if args.rules:
        cfg.rules = args.rules
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.listen is not None:
        cfg.listen = args.listen or None
        if cfg.listen and parse_listen(cfg.listen) is None:
            raise ConfigError([_usage(f"--listen: {listen_usage(args.listen)}")])
    if args.poll is not None:
        if not args.poll > 0:
            raise ConfigError([_usage("--poll: expected a positive number of seconds")])
        cfg.poll = args.poll
    if args.stop_file:
        try:
            check_stop_file_template(args.stop_file)
        except ValueError as e:
            raise ConfigError(
                [_usage(f"--stop-file: bad template (fields: {{run_dir}}, {{run}}, {{logdir}}): {e}")]
            ) from None
        cfg.stop_file = args.stop_file
    if args.stop_severity:
        cfg.stop_severity = None if args.stop_severity == "never" else args.stop_severity
        cfg.stop_severity_override = True  # flags override files, the rules' `stop:` included
    if args.tensorboard_flags:
        cfg.tensorboard_flags = True
    if args.log_format:
        cfg.log_format = args.log_format
    if not cfg.logdir:
        raise ConfigError([_usage("no logdir: give one on the command line or as `logdir:` in --config")])
    return cfg


def _usage(message: str) -> Problem:
    return Problem("gradwatch watch", 0, "", message)


class ListenError(Exception):
    """The metrics/health endpoint cannot listen where it was told to."""

    def __init__(self, listen: str, error: OSError) -> None:
        self.in_use = error.errno == errno.EADDRINUSE
        hint = (
            "another process (another gradwatch?) listens there: give this one its own --listen "
            "HOST:PORT, or --listen '' to turn the endpoint off"
            if self.in_use
            else "check the host part of --listen / listen:"
        )
        reason = error.strerror or str(error)
        if "cannot listen" in reason:  # the exporter's own message already names the address
            super().__init__(f"{reason}; {hint}")
        else:
            super().__init__(f"cannot listen on {listen}: {reason}; {hint}")


def cmd_watch(args) -> int:
    from gradwatch.cli import setup_logging

    cfg = config_from_args(args)
    setup_logging(args.verbose, args.quiet, cfg.log_format)
    daemon = Daemon(cfg, config_loader=lambda: config_from_args(args))
    install_signals(daemon)
    try:
        daemon.run()
    except ListenError as e:
        log.error("%s", e)
        # a port still held by a stopping instance is worth a restart; a wrong address is not
        return 1 if e.in_use else 3
    return 0


def install_signals(daemon: Daemon) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame) -> None:
        daemon.stop()
        # a second Ctrl-C interrupts a shutdown that hangs
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())


def cmd_config_check(args) -> int:
    cfg = load_config(args.file)
    rules = load_rules(cfg.rules)
    notifiers = build_notifiers(cfg)
    names = ", ".join(getattr(n, "name", "?") for n in notifiers) or "console only"
    print(
        f"{args.file}: SUCCESS: logdir {cfg.logdir or '(from the command line)'}, {len(rules)} rules, "
        f"{len(notifiers)} notifiers ({names})"
    )
    return 0


def cmd_demo(args) -> int:
    from gradwatch.demo import run_demo

    return run_demo(args.keep, args.speed)
