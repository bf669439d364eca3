"""What a transition does before it is committed: stop-file, console line, TensorBoard flags.

These happen when a transition is decided, whatever the state DB says (a
full disk must silence nothing); a kill -9 before the commit does them again
after the restart: at-least-once. Notifications are not here: they are queued
by the commit (gradwatch/daemon/unit_of_work.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TextIO

from gradwatch.alerts import FIRING, AlertBook, AlertEvent
from gradwatch.config import Config
from gradwatch.daemon.writers import FlagWriter, StopFileWriter
from gradwatch.events.remote import is_remote
from gradwatch.notify.console import ConsoleNotifier
from gradwatch.severity import SEVERITY_NAMES

log = logging.getLogger("gradwatch")


class Effects:
    """The stop-file writer, the console and the flag writer of one daemon."""

    def __init__(self, logdir: str, config: Config, book: AlertBook, out: TextIO | None) -> None:
        self.logdir = logdir
        self.book = book
        self.console = ConsoleNotifier(out, fmt="json" if config.log_format == "json" else "auto")
        self.stopper = StopFileWriter(
            logdir, config.stop_file, config.stop_severity, config.stop_severity_override
        )
        # a bucket is not written to: os paths spelled from its URL would land under the cwd
        self.writes = not is_remote(logdir)
        if not self.writes:
            log.info("%s: a remote logdir: no stop-files or TensorBoard flags are written", logdir)
        self.flags = FlagWriter(logdir) if config.tensorboard_flags and self.writes else None
        self._console_failed = False
        self.failures: dict[str, int] = {}  # side effect -> times it raised (logged once)

    def configure(self, config: Config) -> None:
        """After a reload; the same stop-file writer: its counters and once-per-run problem log survive."""
        self.stopper.configure(config.stop_file, config.stop_severity, config.stop_severity_override)
        if config.tensorboard_flags and self.flags is None and self.writes:
            self.flags = FlagWriter(self.logdir)
        elif not config.tensorboard_flags:
            self.flags = None

    def before_commit(self, events: list[AlertEvent], dirty_runs: set[str]) -> None:
        if self.writes:
            for e in events:
                self._guarded("writing the stop-file", self._stop_file, e)
            self._guarded("rewriting a stop-file", self._stop_files_still_wanted, dirty_runs)
        # the operator hears of a transition when it is decided, whatever the state DB says (a full
        # disk); a kill -9 before the commit prints it again after the restart: at-least-once
        self._act(events, self._render(events))

    def _stop_file(self, e: AlertEvent) -> None:
        rule = self.book.rules.get(e.rule)
        self.stopper.handle(e, rule.stop if rule is not None else None)

    def _stop_files_still_wanted(self, dirty_runs: set[str]) -> None:
        """Write the stop-file again for a run that logs on while its stopping alert still fires.

        An operator deletes a stale stop-file and restarts the run; if the restarted run is still
        diverging, no new transition happens (the alert never resolved), yet it must be stopped.
        """
        if not dirty_runs:
            return
        for alert in self.book.firing():
            if alert.run not in dirty_runs or alert.clear_points:
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
        return tuple(s for s in SEVERITY_NAMES if s in mine)

    def _render(self, events: list[AlertEvent]) -> str:
        try:
            return self.console.render(events)
        except Exception:  # a bug in a template must not lose the commit
            log.exception("cannot render alerts for the console")
            return ""

    def _act(self, events: list[AlertEvent], text: str) -> None:
        """Console and flags when a transition is decided, before and whatever the commit."""
        if not events:
            return
        try:
            self.console.write(text)
        except (OSError, ValueError) as e:  # stdout closed or a broken pipe: keep watching
            if not self._console_failed:
                self._console_failed = True
                log.error("cannot print alerts on the console: %s", e)
        if self.flags is None:
            return
        for e in events:
            self._guarded(
                "writing the TensorBoard alert flags", self.flags.handle, e, self._severities(e.rule)
            )

    def _guarded(self, what: str, effect: Callable[..., object], *args: object) -> None:
        """Run one side effect of a transition. Its failure (a bug, an odd name the OS refuses) is
        logged with its traceback once per kind, then counted: the transition still reaches the
        console and the outbox, and the loop goes on."""
        try:
            effect(*args)
        except Exception:
            n = self.failures.get(what, 0)
            self.failures[what] = n + 1
            if n == 0:
                log.exception("%s failed; the alert still goes to the console and the notifiers", what)
