"""``gradwatch watch``: the loop that joins the stages, its lifecycle and its status.

One thread reads and evaluates (this loop); the watcher, the HTTP endpoint
and each notification channel have their own. The follower reads what is new
(gradwatch/daemon/follower.py), the engine and the alert book decide, the
effects act on a transition when it is decided (console, stop-file, flags:
gradwatch/daemon/effects.py), and the unit of work commits offsets, states
and queued notifications in one transaction (gradwatch/daemon/unit_of_work.py).
Commits happen between files, never inside one: the offset of a record
holding several values is only exact once all of them are observed. Once per
iteration the loop publishes an immutable :class:`Status` that the exporter
and the demo read (gradwatch/daemon/status.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TextIO

from gradwatch import history as alert_history
from gradwatch.alerts import ACTIVE, AlertBook, alert_key
from gradwatch.config import Config, parse_listen
from gradwatch.config.rulefiles import load_rules
from gradwatch.config.yaml import ConfigError, Problem
from gradwatch.daemon import reload as reloading
from gradwatch.daemon import sdnotify
from gradwatch.daemon.coverage import RuleCoverage
from gradwatch.daemon.effects import Effects
from gradwatch.daemon.errors import ListenError
from gradwatch.daemon.follower import Follower, logdir_problem
from gradwatch.daemon.status import Status, StatusBoard
from gradwatch.daemon.unit_of_work import UnitOfWork
from gradwatch.daemon.watcher import Watcher
from gradwatch.engine import Engine
from gradwatch.events.logdir import LogdirReader, ProblemLog
from gradwatch.events.remote import is_remote
from gradwatch.notify.registry import build_notifiers
from gradwatch.rules import Rule, Series
from gradwatch.store import StateDB, StateError, restore_series

log = logging.getLogger("gradwatch")

TICK_SECONDS = 1.0


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
            raise ConfigError([Problem(config.source or "gradwatch watch", 0, "logdir", _NO_LOGDIR)])
        self.config = config
        self.logdir = config.logdir if is_remote(config.logdir) else os.path.abspath(config.logdir)
        self.loader = config_loader
        self.rules: list[Rule] = load_rules(config.rules)
        self.problems = ProblemLog()
        try:
            self.state = StateDB(config.resolved_state_dir())
            alert_history.create_schema(self.state.conn)
        except (StateError, sqlite3.Error) as e:
            raise ConfigError([Problem("gradwatch watch", 0, "state_dir", str(e))]) from None
        try:
            self._setup(out, clock)
        except BaseException:
            self.state.close()
            raise

    def _setup(self, out: TextIO | None, clock: Callable[[], float]) -> None:
        config = self.config
        self.first_start = self.state.meta("catchup_done") is None
        self.book = AlertBook(self.rules, clock=clock, live=True)
        self.book.restore(self.state.alerts())
        saved_files = self.state.files()
        self._saved_series = self.state.series()
        # series with an absence rule: the only ones the 1 s tick has to look at
        self.absent: dict[tuple[str, str], Series] = {}
        self.engine = Engine(
            self.rules, self.book, config.export_tags, on_new_series=self._new_series, problems=self.problems
        )
        self.reader = LogdirReader(self.logdir, {p: o for p, (_, o) in saved_files.items()}, self.problems)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.uow = UnitOfWork(self.state, self._watching_status)
        self.follower = Follower(
            self.logdir,
            config,
            self.reader,
            self.engine,
            self.problems,
            self.uow,
            {p: run for p, (run, _) in saved_files.items()},
            self._stop,
            self.ready,
            lambda: self._ping(),  # looked up at each call: tests count pings and commits
            lambda **kw: self.checkpoint(**kw),
            self._forget_run_state,
        )
        # series of earlier runs come back at once, so a stall or a resolution needs no new point first
        for run, tag in list(self._saved_series):
            self.engine.series(run, tag)
        self._saved_series = {}
        self.effects = Effects(self.logdir, config, self.book, out)
        self.outbox = self._make_outbox(build_notifiers(config))
        self._closed = False
        self.coverage = RuleCoverage(self.engine)
        self.watchdog = sdnotify.Watchdog()
        self.board = StatusBoard(len(self.rules))
        self.metrics = self._make_metrics()

    # -- parts other modules look at -----------------------------------------
    @property
    def watcher(self) -> Watcher:
        return self.follower.watcher

    @property
    def stopper(self):
        return self.effects.stopper

    @property
    def status(self) -> Status:
        """The latest snapshot: what the exporter, health and the demo read."""
        return self.board.status

    @property
    def effect_failures(self) -> dict[str, int]:
        return self.effects.failures

    @property
    def points(self) -> int:
        return self.follower.reads.points

    @property
    def series_watched(self) -> int:
        """Series (run, tag) that at least one rule evaluates."""
        return sum(1 for s in self.engine.all_series() if s.rules)

    def _make_outbox(self, notifiers: list):
        if not notifiers:
            return None
        from gradwatch.notify.outbox import Outbox

        return Outbox(self.state.path, notifiers, max_age=self.config.outbox_max_age)

    def _make_metrics(self):
        if not self.config.listen:
            return None
        # the one upward import: the exporter (layer 6) only ever reads this daemon's status snapshot
        from gradwatch.exporter.collector import Metrics

        return Metrics(lambda: self.status, shard=str(self.config.shard or ""))

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
                self.absent[(s.run, s.tag)] = s
        self.follower.known_runs.add(s.run)

    def _forget_run_state(self, run: str) -> int:
        """A run gone for forget_after: its series and alerts go; returns the alerts dropped."""
        self.engine.forget_run(run)
        self.absent = {k: s for k, s in self.absent.items() if k[0] != run}
        self.uow.forget_run(run)
        return self.book.drop_run(run)

    # -- committing and acting ----------------------------------------------
    def checkpoint(self, meta: dict[str, str] | None = None, lazy: bool = False) -> bool:
        """Act on the transitions decided since the last call, then commit everything in one transaction.

        ``lazy``: without alert events, commit at most every COMMIT_EVERY seconds (a busy writer
        must not cost a commit per flush; points not committed are read again after a crash,
        and they hold no transition: a transition is always committed at once).
        Returns False when the state DB refused (the work is kept and committed next time).
        """
        if self.follower.reads.abandoned is not None:
            return False
        if lazy and not self.book.events and not self.uow.due():
            return True
        events = self.book.take_events()
        changes = self.book.take_changes()
        if not (events or changes or meta or self.uow.has_work()):
            return True
        self.effects.before_commit(events, self.uow.dirty_runs)
        self.board.count(events)
        saved = self.uow.commit(events, changes, meta, self.reader, self.engine, self.outbox)
        if not saved:
            self.book.changed.update(changes)  # written again by the next attempt
        self.publish()
        return saved

    def publish(self) -> None:
        """Replace the status snapshot other threads read (gradwatch/daemon/status.py)."""
        outbox = self.outbox
        self.board.publish(
            series_version=self.uow.series_version,
            series=self.engine.all_series,
            rules=self.rules,
            firing=self.book.firing(),
            problems=self.problems.counts,
            outbox=outbox.stats() if outbox is not None else {},
            ready=self.ready.is_set(),
            runs=self.follower.runs,
            files=self.follower.files,
            records=self.follower.reads.records,
            points=self.follower.reads.points,
            state_save_error=self.uow.db_error,
            state_save_errors=self.uow.save_errors,
        )

    # -- lifecycle -----------------------------------------------------------
    def catch_up(self) -> bool:
        """Read everything written so far; on a first start notify only what is still firing at the end.

        Returns False when stopped before the end (the next start goes on from the saved offsets).
        """
        t0 = time.monotonic()
        # what a trainer wrote before we started is history; into a logdir we waited for, nothing is
        history = self.first_start and not self.follower.logdir_created_after_start
        self.book.suppress = history
        try:
            self.follower.rescan()
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
            self.follower.runs,
            self.follower.files,
            self.points,
            time.monotonic() - t0,
            self.series_watched,
            len(self.book.firing()),
        )
        self.coverage.after_catch_up(len(self.rules), self.series_watched)
        return True

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
        self.watchdog.start()
        try:
            self.start_services()
            if self._wait_for_logdir():
                self.follower.start_watching()
                if self.catch_up():
                    self._loop()
        finally:
            self.shutdown()

    def _wait_for_logdir(self) -> bool:
        told = False
        while not self._stop.is_set():
            problem = logdir_problem(self.logdir)
            if problem is None:
                return True
            if not told:
                told = True
                self.follower.logdir_created_after_start = True
                log.warning("%s: %s; waiting for it", self.logdir, problem)
                # up and doing its job: systemd must not time the start out
                sdnotify.ready(f"waiting for {self.logdir} ({problem})")
            self.watcher.wait(min(TICK_SECONDS, self.watchdog.every or TICK_SECONDS))
            self._ping()
            self._reload_if_asked()
        return False

    def _loop(self) -> None:
        self.ready.set()
        self.board.changed()
        self.publish()
        sdnotify.ready(self._watching_status())
        log.info("watching %s (%s)", self.logdir, self.watcher.mode)
        last_tick = time.monotonic()
        follower = self.follower
        while not self._stop.is_set():
            changed = self.watcher.wait(self._wait_timeout())
            follower.drained_at = time.time()
            if self._stop.is_set():
                break
            self._reload_if_asked()
            now = time.monotonic()
            try:
                follower.handle(changed)
                if now - last_tick >= TICK_SECONDS:
                    last_tick = now
                    self._tick(now)
                self.checkpoint(lazy=True)
            except Exception:
                # a bug must not stop the watch; what was read is not read again
                log.exception("internal error while watching %s; going on", self.logdir)
            self.publish()
            self._ping()
            if not self.watcher.alive and follower.logdir_missing_since is None:
                follower.watcher_died()

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        timeout = min(TICK_SECONDS, self.follower.last_rescan + self.config.rescan_interval - now)
        ping_in = self.watchdog.due_in(now)
        if ping_in is not None:
            timeout = min(timeout, ping_in)
        if self.follower.read_again:
            timeout = 0  # a file has more to read: look at the others, then go on with it
        return max(0.01, timeout)

    def _tick(self, now: float) -> None:
        self.book.tick(self.absent.values())
        self.coverage.check_new_runs()
        if self.follower.missing:
            self.follower.expire_missing(now)
        if self.outbox is not None and hasattr(self.outbox, "resend_firing"):
            self.outbox.resend_firing(self.book)

    def _watching_status(self) -> str:
        return f"watching {self.follower.files} event files in {self.logdir}"

    def _ping(self) -> None:
        self.watchdog.ping()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        sdnotify.stopping()
        self.watcher.stop()
        if self.follower.reads.abandoned is not None:
            log.info(
                "stopped while reading %s; what was read since the last commit is read again next time",
                self.follower.reads.abandoned,
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
    def _reload_if_asked(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self.reload()

    def reload(self) -> bool:
        """SIGHUP: new rules and config; an invalid one is reported and the old one kept."""
        sdnotify.reloading("reloading the configuration")
        loaded = reloading.load(self.config, self.loader)
        ok = loaded is not None and self._apply_safely(*loaded)
        sdnotify.ready(self._watching_status())
        self.board.reloaded(ok, len(self.rules))
        return ok

    def _apply_safely(self, config: Config, rules: list[Rule]) -> bool:
        try:
            self._apply(config, rules)
        except Exception:
            log.exception("internal error while applying the reloaded configuration; going on")
            return False
        return True

    def _apply(self, config: Config, rules: list[Rule]) -> None:
        old = self.config
        reloading.keep_fixed_settings(old, config)
        self.config = config
        for name in self.book.reload_rules(rules):
            log.info("rule %s is gone after the reload; its alerts are resolved", name)
        self.rules = rules
        self.absent = {}  # filled again as rematch re-creates each series (_new_series)
        reloading.rematch(self.engine, rules, self.uow)
        self.engine.export_tags = config.export_tags
        self.effects.configure(config)
        self.follower.reconfigure(config)
        if config.notifiers or old.notifiers:
            # always: a rotated *_file secret (a Kubernetes Secret update) changes no YAML;
            # queued notifications stay in the state DB and go out through the new channels
            self._replace_outbox(build_notifiers(config))
        log.info("reloaded: %d rules", len(rules))

    def _replace_outbox(self, notifiers: list) -> None:
        if self.outbox is not None:
            self.outbox.stop(timeout=2)
        self.outbox = self._make_outbox(notifiers)
        if self.outbox is not None:
            self.outbox.start()
        log.info("notifiers: %s", ", ".join(n.name for n in notifiers) or "console only")


_NO_LOGDIR = "no logdir to watch: give one on the command line or as `logdir:` in the config file"
