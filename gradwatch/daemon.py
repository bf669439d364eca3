"""``gradwatch watch``: wiring, the watch loop, signals, systemd notify.

One thread reads and evaluates (this loop); the watcher, the HTTP endpoint
and each notification channel have their own. Every batch commits file
offsets, rule states, alert states and queued notifications in one SQLite
transaction, so a restart (also after kill -9) neither repeats nor misses a
notification.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TextIO

from gradwatch.actions import FlagWriter, StopFileWriter
from gradwatch.alerts import AlertBook, AlertEvent
from gradwatch.config import Config, build_notifiers, load_config, parse_listen
from gradwatch.engine import Engine
from gradwatch.events.logdir import LogdirError, LogdirReader, ProblemLog, scan
from gradwatch.notify.console import ConsoleNotifier
from gradwatch.rulefile import load_rules
from gradwatch.rules import Rule, Series
from gradwatch.state import StateDB, restore_series
from gradwatch.watcher import ALL, RESCAN, Watcher
from gradwatch.yamlconf import ConfigError

log = logging.getLogger("gradwatch")

# points between two commits while catching up on a large history
BATCH_POINTS = 50_000
TICK_SECONDS = 1.0


class Daemon:
    def __init__(self, config: Config, out: TextIO | None = None, clock=time.time) -> None:
        if not config.logdir:
            raise ConfigError([])
        self.config = config
        self.logdir = config.logdir
        self.clock = clock
        self.rules: list[Rule] = load_rules(config.rules)
        self.problems = ProblemLog()
        self.state = StateDB(config.resolved_state_dir())
        self.first_start = self.state.meta("catchup_done") is None
        self.book = AlertBook(self.rules, clock=clock, live=True)
        self.book.restore(self.state.alerts())
        self._saved_series = self.state.series()
        self.engine = Engine(self.rules, self.book, config.export_tags, on_new_series=self._new_series)
        self.reader = LogdirReader(self.logdir, self.state.offsets(), self.problems)
        self.console = ConsoleNotifier(out, fmt="json" if config.log_format == "json" else "auto")
        self.stopper = StopFileWriter(self.logdir, config.stop_file, config.stop_severity)
        self.flags = FlagWriter(self.logdir) if config.tensorboard_flags else None
        self.watcher = Watcher(self.logdir, config.poll)
        self.notifiers = build_notifiers(config)
        self.outbox = self._make_outbox()
        self.metrics = self._make_metrics()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._dirty_runs: set[str] = set()
        self._dirty_files: set[str] = set()
        self._missing_since: dict[str, float] = {}
        self._last_rescan = 0.0
        self.points = 0
        self.transitions = 0

    # -- optional parts ------------------------------------------------------
    def _make_outbox(self):
        if not self.notifiers:
            return None
        from gradwatch.notify.outbox import Outbox

        return Outbox(self.state.path, self.notifiers, max_age=self.config.outbox_max_age)

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
            restore_series(s, saved)
        # an alert firing from before (restart, reload) must be able to resolve
        for i, rule in enumerate(s.rules):
            alert = self.book.alerts.get(f"{rule.name}\x1f{s.run}\x1f{s.tag}")
            if alert is not None and alert.state == "firing" and rule.kind != "absent":
                s.ranks[i] = alert.rank

    # -- reading -------------------------------------------------------------
    def read_file(self, path: str) -> int:
        if path not in self.reader.readers:
            return 0
        run = self.reader.readers[path][0]
        n = 0
        observe = self.engine.observe
        for run_, tag, step, wall_time, value in self.reader.read_file(path):
            observe(run_, tag, step, wall_time, value)
            n += 1
            if n % BATCH_POINTS == 0:
                self._dirty_runs.add(run)
                self._dirty_files.add(path)
                self.checkpoint()
        if n:
            self._dirty_runs.add(run)
        self._dirty_files.add(path)
        self.points += n
        return n

    def rescan(self) -> None:
        self._last_rescan = time.monotonic()
        try:
            runs = scan(self.logdir, self.problems)
        except LogdirError as e:
            if not self._missing_since.get("\0logdir"):
                log.warning("%s; waiting for it", e)
                self._missing_since["\0logdir"] = self.clock()
            return
        self._missing_since.pop("\0logdir", None)
        known = set()
        for run, paths in runs.items():
            for p in paths:
                known.add(p)
                if p not in self.reader.readers:
                    self.reader.reader(run, p)
                    self.read_file(p)
        self._forget_vanished(runs, known)

    def _forget_vanished(self, runs: dict[str, list[str]], known: set[str]) -> None:
        now = self.clock()
        gone_files = [p for p in self.reader.readers if p not in known]
        for p in gone_files:
            run = self.reader.readers[p][0]
            if run not in runs:
                self._missing_since.setdefault(run, now)
            else:
                self.reader.forget(p)
                self.state.forget_files([p])
        for run in list(self._missing_since):
            if run.startswith("\0") or run in runs:
                self._missing_since.pop(run, None) if run in runs else None
                continue
            if now - self._missing_since[run] >= self.config.forget_after:
                self._forget_run(run)

    def _forget_run(self, run: str) -> None:
        log.info("run %s disappeared %.0f s ago; forgetting it", run, self.config.forget_after)
        self._missing_since.pop(run, None)
        for p in [p for p, (r, _) in self.reader.readers.items() if r == run]:
            self.reader.forget(p)
        self.engine.forget_run(run)
        for key in [k for k, a in self.book.alerts.items() if a.run == run]:
            del self.book.alerts[key]
            self.book.changed.add(key)
        self.state.begin()
        self.state.forget_run(run)
        self.state.save_alerts(self.book.take_changes())
        self.state.commit()

    def read_changed(self, changed: set[str]) -> None:
        if RESCAN in changed or time.monotonic() - self._last_rescan >= self.config.rescan_interval:
            self.rescan()
        if ALL in changed:
            for path in list(self.reader.readers):
                self.read_file(path)
            return
        for path in changed:
            if path in (RESCAN, ALL):
                continue
            if path not in self.reader.readers:
                self.rescan()
            self.read_file(path)

    # -- committing and acting ----------------------------------------------
    def checkpoint(self) -> None:
        events = self.book.take_events()
        changes = self.book.take_changes()
        if not (events or changes or self._dirty_files or self._dirty_runs):
            return
        for e in events:
            self._stop_file(e)
        rows = [
            (p, self.reader.readers[p][0], self.reader.readers[p][1].offset)
            for p in self._dirty_files
            if p in self.reader.readers
        ]
        series = [
            s for run in self._dirty_runs for s in self.engine.runs.get(run, {}).values() if s is not None
        ]
        self.state.begin()
        try:
            self.state.save_offsets(rows)
            self.state.save_series(series)
            self.state.save_alerts(changes)
            if self.outbox is not None and events:
                self.outbox.enqueue(self.state.conn, events)
            self.state.commit()
        except BaseException:
            self.state.rollback()
            raise
        self._dirty_files.clear()
        self._dirty_runs.clear()
        if events:
            self._after_commit(events)

    def _stop_file(self, e: AlertEvent) -> None:
        rule = self.book.rules.get(e.rule)
        self.stopper.handle(e, rule.stop if rule is not None else None)

    def _after_commit(self, events: list[AlertEvent]) -> None:
        self.transitions += len(events)
        self.console.send(events)
        for e in events:
            if self.flags is not None:
                self.flags.handle(e)
            if self.metrics is not None:
                self.metrics.transition(e)
        if self.outbox is not None:
            self.outbox.wake()

    # -- lifecycle -----------------------------------------------------------
    def catch_up(self) -> None:
        """Read everything written so far; notify only what is still firing at the end."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                scan(self.logdir, self.problems)
                break
            except LogdirError as e:
                if not self._missing_since.get("\0logdir"):
                    log.warning("%s; waiting for it to appear", e)
                    self._missing_since["\0logdir"] = self.clock()
                self._stop.wait(TICK_SECONDS)
        self._missing_since.pop("\0logdir", None)
        if self._stop.is_set():
            return
        self.book.suppress = self.first_start
        self.rescan()
        for path in list(self.reader.readers):
            self.read_file(path)
        self.book.suppress = False
        summary = self.book.catchup_summary() if self.first_start and self.config.catchup_notify else []
        self.book.events.extend(summary)
        self.state.set_meta("catchup_done", "1")
        self.checkpoint()
        log.info(
            "caught up on %s: %d runs, %d files, %d points in %.2fs; %d alerts firing",
            self.logdir,
            len({r for r, _ in self.reader.readers.values()}),
            len(self.reader.readers),
            self.points,
            time.monotonic() - t0,
            len(self.book.firing()),
        )

    def start_services(self) -> None:
        if self.metrics is not None:
            host, port = parse_listen(self.config.listen or "")  # type: ignore[misc]
            self.metrics.serve(host, port)
        if self.outbox is not None:
            self.outbox.start()

    def run(self) -> None:
        """Catch up, then follow the logdir until ``stop()``."""
        self.start_services()
        self.catch_up()
        self.watcher.start()
        self.ready.set()
        if self.metrics is not None:
            self.metrics.set_ready(True)
        _sd_notify(f"READY=1\nSTATUS=watching {len(self.reader.readers)} event files in {self.logdir}")
        log.info("watching %s (%s)", self.logdir, self.watcher.mode)
        watchdog_every = _sd_watchdog_interval()
        last_ping = last_tick = time.monotonic()
        while not self._stop.is_set():
            changed = self.watcher.wait(TICK_SECONDS)
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self.read_changed(changed)
            now = time.monotonic()
            if now - last_tick >= TICK_SECONDS:
                last_tick = now
                self.book.tick(self.engine.all_series())
                if self.outbox is not None and hasattr(self.outbox, "resend_firing"):
                    self.outbox.resend_firing(self.book)
            self.checkpoint()
            if watchdog_every and now - last_ping >= watchdog_every:
                _sd_notify("WATCHDOG=1")
                last_ping = now
            if not self.watcher.alive:
                log.warning("file watcher stopped; restarting it")
                self.watcher.stop()
                self.watcher = Watcher(self.logdir, self.config.poll)
                self.watcher.start()
        self.shutdown()

    def shutdown(self) -> None:
        _sd_notify("STOPPING=1")
        self.watcher.stop()
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

    def reload(self) -> None:
        """SIGHUP: new rules and config; an invalid one is reported and the old one kept."""
        try:
            config = load_config(self.config.source) if self.config.source else self.config
            if self._cli_rules is not None:
                config.rules = self._cli_rules
            rules = load_rules(config.rules)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration:\n%s", e)
            return
        self.rules = rules
        self.engine.rules = rules
        self.book.reload_rules(rules)
        # series re-match the new rules; firing alerts keep their state
        self._saved_series = {}
        self.engine.runs = {}
        for key in [k for k, a in self.book.alerts.items() if a.rule not in self.book.rules]:
            log.info("rule %s is gone after reload; dropping its alert", self.book.alerts[key].rule)
            del self.book.alerts[key]
            self.book.changed.add(key)
        log.info("reloaded: %d rules", len(rules))

    _cli_rules: list[str] | None = None


def _sd_notify(message: str) -> None:
    try:
        from gradwatch import sdnotify
    except ImportError:
        return
    sdnotify.notify(message)


def _sd_watchdog_interval() -> float | None:
    try:
        from gradwatch import sdnotify
    except ImportError:
        return None
    return sdnotify.watchdog_interval()


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
        "--listen", metavar="HOST:PORT", help="metrics/health endpoint (default 127.0.0.1:9723; '' off)"
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
            raise ConfigError([_usage(f"--listen: expected HOST:PORT, got {args.listen!r}")])
    if args.poll is not None:
        if args.poll <= 0:
            raise ConfigError([_usage("--poll: expected a positive number of seconds")])
        cfg.poll = args.poll
    if args.stop_file:
        cfg.stop_file = args.stop_file
    if args.stop_severity:
        cfg.stop_severity = None if args.stop_severity == "never" else args.stop_severity
    if args.tensorboard_flags:
        cfg.tensorboard_flags = True
    if args.log_format:
        cfg.log_format = args.log_format
    if not cfg.logdir:
        raise ConfigError([_usage("no logdir: give one on the command line or as `logdir:` in --config")])
    return cfg


def _usage(message: str):
    from gradwatch.yamlconf import Problem

    return Problem("gradwatch watch", 0, "", message)


def cmd_watch(args) -> int:
    from gradwatch.cli import setup_logging

    cfg = config_from_args(args)
    setup_logging(args.verbose, args.quiet, cfg.log_format)
    daemon = Daemon(cfg)
    daemon._cli_rules = args.rules
    install_signals(daemon)
    daemon.run()
    return 0


def install_signals(daemon: Daemon) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())


def cmd_config_check(args) -> int:
    cfg = load_config(args.file)
    rules = load_rules(cfg.rules)
    notifiers = build_notifiers(cfg)
    print(
        f"{args.file}: SUCCESS: logdir {cfg.logdir or '(from the command line)'}, {len(rules)} rules, "
        f"{len(notifiers)} notifiers ({', '.join(getattr(n, 'name', '?') for n in notifiers) or 'console only'})"
    )
    return 0


def cmd_demo(args) -> int:
    from gradwatch.demo import run_demo

    return run_demo(args.keep, args.speed)
