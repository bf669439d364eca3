"""Actions beyond notifications: the stop-file and TensorBoard alert flags."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time

from tensorboard.compat.proto import event_pb2, summary_pb2

from gradwatch.alerts import ESCALATED, FIRING, RESOLVED, AlertEvent
from gradwatch.events.logdir import FLAGS_DIR
from gradwatch.events.records import frame
from gradwatch.logjson import rfc3339
from gradwatch.rules import RANK, SEVERITIES, json_number

log = logging.getLogger("gradwatch.actions")

DEFAULT_STOP_FILE = "{run_dir}/gradwatch-stop.json"
MAX_MORE_REASONS = 20


def stop_path(template: str, logdir: str, run: str) -> str:
    run_dir = os.path.normpath(os.path.join(logdir, run))
    safe_run = run.replace("/", "__") if run != "." else "_root"
    return template.format(run_dir=run_dir, run=safe_run, logdir=logdir)


def atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gradwatch-stop.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("alert", "run", "tag", "severity", "step"))


class StopFileWriter:
    """Writes the stop-file a trainer checks (gradwatch.trainer.should_stop).

    The first reason is never overwritten: later alerts for the same run are
    appended under ``more`` (bounded).
    """

    def __init__(
        self, logdir: str, template: str = DEFAULT_STOP_FILE, default_severity: str | None = "critical"
    ):
        self.logdir = logdir
        self.template = template
        self.default_severity = default_severity
        self.written = 0
        self.errors = 0

    def stops(self, rank: int, rule_stop: str | None) -> bool:
        """Whether an alert at severity ``rank`` stops training (the rule's ``stop:``, else the default)."""
        sev = rule_stop or self.default_severity
        return sev in SEVERITIES and rank >= RANK[sev]

    def handle(self, event: AlertEvent, rule_stop: str | None) -> str | None:
        """Write (or extend) the stop-file when ``event`` warrants it; returns the path written."""
        if event.kind not in (FIRING, ESCALATED):
            return None
        if not self.stops(RANK.get(event.severity, 0), rule_stop):
            return None
        path = stop_path(self.template, self.logdir, event.run)
        reason = {
            "alert": event.rule,
            "severity": event.severity,
            "run": event.run,
            "tag": event.tag,
            "step": event.step,
            "value": json_number(event.value),
            "threshold": json_number(event.threshold),
            "time": rfc3339(time.time()),
            "message": " ".join(
                v for k, v in event.annotations.items() if k in ("summary", "recommendation") and v
            ),
        }
        try:
            doc = self._existing(path)
            if doc is None:
                doc = dict(reason, more=[])
            else:
                more = doc.get("more")
                if not isinstance(more, list):
                    more = doc["more"] = []
                if any(_same(r, reason) for r in [doc, *more] if isinstance(r, dict)):
                    return path  # replayed after a restart: already recorded
                if len(more) >= MAX_MORE_REASONS:
                    return path
                more.append(reason)
            atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
        except OSError as e:
            self.errors += 1
            log.error("cannot write stop-file %s: %s", path, e.strerror or e)
            return None
        self.written += 1
        log.warning("stop-file written: %s (%s %s on %s)", path, event.severity, event.rule, event.run)
        return path

    @staticmethod
    def _existing(path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            return doc if isinstance(doc, dict) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a human's `touch`: replaced by a proper reason


class FlagWriter:
    """TensorBoard alert flags: ``alerts/<rule>/<severity>`` 0/1 scalars.

    Written under ``<logdir>/_gradwatch/<run>/`` so they show next to the
    series in TensorBoard; the reader never reads that directory.
    """

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self._files: dict[str, str] = {}
        self.errors = 0

    def _path(self, run: str) -> str:
        path = self._files.get(run)
        if path is None:
            directory = os.path.join(self.logdir, FLAGS_DIR, run)
            os.makedirs(directory, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.gradwatch"
            path = os.path.join(directory, name)
            with open(path, "ab") as f:
                ev = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
                f.write(frame(ev.SerializeToString()))
            # remembered only once the header is there: a failed first write is retried whole
            self._files[run] = path
        return path

    def handle(self, event: AlertEvent, severities: tuple[str, ...] = ("warning", "critical")) -> None:
        """One 0/1 flag per severity of the rule (``severities``): 1 for the active one."""
        active = "" if event.kind == RESOLVED else event.severity
        values = [
            summary_pb2.Summary.Value(
                tag=f"alerts/{event.rule}/{sev}", simple_value=1.0 if sev == active else 0.0
            )
            for sev in severities
        ]
        ev = event_pb2.Event(
            wall_time=event.wall_time or time.time(),
            step=event.step,
            summary=summary_pb2.Summary(value=values),
        )
        try:
            with open(self._path(event.run), "ab") as f:
                f.write(frame(ev.SerializeToString()))
        except OSError as e:
            self.errors += 1
            if self.errors == 1:
                log.error("cannot write TensorBoard alert flags under %s: %s", self.logdir, e.strerror or e)
