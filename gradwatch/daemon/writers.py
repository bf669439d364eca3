"""Actions beyond notifications: the stop-file and TensorBoard alert flags."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterator

from tensorboard.compat.proto import event_pb2, summary_pb2

from gradwatch.alerts import ESCALATED, FIRING, RESOLVED, AlertEvent
from gradwatch.events.framing import frame
from gradwatch.events.logdir import FLAGS_DIR
from gradwatch.fmt import json_number
from gradwatch.logjson import rfc3339
from gradwatch.severity import SEVERITY_NAMES, Severity
from gradwatch.trainer import DEFAULT_STOP_FILE, stop_file_path

log = logging.getLogger("gradwatch.actions")

MAX_MORE_REASONS = 20
# An existing stop-file bigger than this is not gradwatch's: replaced, never read in full.
MAX_STOP_FILE_BYTES = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at a file name must not block the daemon on open
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def stop_path(template: str, logdir: str, run: str) -> str:
    """The stop-file path for ``run`` (the rule lives in gradwatch.trainer, shared with training code)."""
    return stop_file_path(logdir, run, template)


class Refused(Exception):
    """A trainer-controlled name below the logdir is not what gradwatch writes through (a symlink...)."""


def _check_component(name: str) -> None:
    if name in ("", ".", "..") or "/" in name:
        raise Refused(f"unexpected path component {name!r}")


def _refuse_link(name: str, dir_fd: int, e: OSError) -> None:
    """Turn an O_NOFOLLOW failure into Refused when ``name`` is a symlink; otherwise re-raise."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        raise e from None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{name} is a symbolic link") from None
    raise e


def open_child_dir(dir_fd: int, name: str, create: bool = False) -> int:
    """A directory fd for ``name`` inside ``dir_fd``, never following a symlink; mkdir it if ``create``."""
    _check_component(name)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        _refuse_link(name, dir_fd, e)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:  # swapped for a link between mkdir and open
        _refuse_link(name, dir_fd, e)
        raise


@contextlib.contextmanager
def directory_below(base: str, parts: list[str], create: bool = False) -> Iterator[int]:
    """A directory fd for ``base/parts...``: ``base`` is the operator's (followed as given),
    each of ``parts`` is trainer-controlled and walked with O_NOFOLLOW (a symlink raises Refused).
    """
    if create:
        os.makedirs(base, exist_ok=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts:
            child = open_child_dir(fd, name, create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def split_below(logdir: str, path: str) -> tuple[str, list[str], str]:
    """``path`` as (trusted base, trainer-controlled directories, file name).

    Inside the logdir every directory below the logdir is the trainer's; outside it (e.g.
    ``/var/lib/gradwatch-stop/{run}.json``) the directory is the operator's.
    """
    logdir = os.path.normpath(os.path.abspath(logdir))
    path = os.path.normpath(os.path.abspath(path))
    rel = os.path.relpath(path, logdir)
    if rel == "." or rel == ".." or rel.startswith("../"):
        return os.path.dirname(path), [], os.path.basename(path)
    *dirs, name = rel.split("/")
    return logdir, dirs, name


def read_regular_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """Up to ``limit`` + 1 bytes of ``name`` in ``dir_fd``; None if it does not exist.

    Refused for a symlink, anything but a regular file (a FIFO would block) and a file with
    other hard links (it may be someone else's file): its content must never be copied out.
    """
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        _refuse_link(name, dir_fd, e)
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{name} is not a regular file")
        if st.st_nlink != 1:
            raise Refused(f"{name} has {st.st_nlink} hard links")
        return f.read(limit + 1)


def replace_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Atomically make ``name`` in ``dir_fd`` hold ``data``: a new O_EXCL temp file, then rename.

    Renaming replaces a symlink planted at ``name`` itself, never its target.
    """
    tmp = f".gradwatch-stop.{secrets.token_hex(8)}"
    fd = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # not narrowed by the daemon's umask: the trainer reads it
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _describe(e: OSError) -> str:
    """What failed, with the name only when it is not part of the path logged beside it.

    makedirs fails on a parent (an absolute name); the names of dir_fd calls are components of
    the path, or the random temp file's, which would make every repeat look like a new problem.
    """
    what = e.strerror or str(e)
    name = e.filename
    return f"{what}: {name}" if isinstance(name, str) and os.path.isabs(name) else what


class FailureLog:
    """One log line per key (a run) and problem, however often it repeats; counts every time.

    ``counts`` (key -> failures since the last success) is what metrics can show per run.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.counts: dict[str, int] = {}
        self._said: dict[str, str] = {}

    def failed(self, key: str, path: str, problem: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        if self._said.get(key) != problem:
            self._said[key] = problem
            log.error("cannot write %s %s: %s (logged once per run; counted)", self.what, path, problem)

    def succeeded(self, key: str, path: str) -> None:
        failures = self.counts.pop(key, 0)
        if self._said.pop(key, None) is not None:
            log.info("%s %s: written again after %d failed attempt(s)", self.what, path, failures)


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("alert", "run", "tag", "severity", "step"))


class StopFileWriter:
    """Writes the stop-file a trainer checks (gradwatch.trainer.should_stop).

    The first reason is never overwritten: later alerts for the same run are
    appended under ``more`` (bounded). Every directory below the logdir is the
    trainer's, which may be hostile: nothing is followed through a symlink
    (``refused`` counts what was refused, ``errors`` every failed write).

    ``override``: ``default_severity`` applies to every rule, whatever its
    ``stop:`` (a command-line ``--stop-severity`` wins over the rule files).
    """

    def __init__(
        self,
        logdir: str,
        template: str = DEFAULT_STOP_FILE,
        default_severity: str | None = "critical",
        override: bool = False,
    ):
        self.logdir = logdir
        self.configure(template, default_severity, override)
        self.written = 0
        self.errors = 0
        self.refused = 0
        self.problems = FailureLog("stop-file")

    def configure(self, template: str, default_severity: str | None, override: bool = False) -> None:
        """The settings a reload (SIGHUP) may change."""
        self.template = template
        self.default_severity = default_severity
        self.override = override

    def exists(self, run: str) -> bool:
        """Whether ``run``'s stop-file is there, looked up without following a symlink."""
        base, dirs, name = split_below(self.logdir, stop_path(self.template, self.logdir, run))
        try:
            with directory_below(base, dirs) as dir_fd:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (OSError, Refused):
            return False  # then handle() says why, once
        return True

    def stops(self, rank: int, rule_stop: str | None) -> bool:
        """Whether an alert at severity ``rank`` stops training (the rule's ``stop:``, else the default)."""
        sev = self.default_severity if self.override else rule_stop or self.default_severity
        return sev in SEVERITY_NAMES and rank >= Severity.parse(sev)

    def handle(self, event: AlertEvent, rule_stop: str | None) -> str | None:
        """Write (or extend) the stop-file when ``event`` warrants it; returns the path written."""
        if event.kind not in (FIRING, ESCALATED):
            return None
        if not self.stops(Severity.parse(event.severity), rule_stop):
            return None
        path = stop_path(self.template, self.logdir, event.run)
        try:
            if not self._write(path, _reason(event)):
                return path  # replayed after a restart, or already full
        except Refused as e:
            self.refused += 1
            self.problems.failed(event.run, path, f"refused: {e}; left alone")
            return None
        except OSError as e:
            self.errors += 1
            self.problems.failed(event.run, path, _describe(e))
            return None
        self.written += 1
        self.problems.succeeded(event.run, path)
        log.warning("stop-file written: %s (%s %s on %s)", path, event.severity, event.rule, event.run)
        return path

    def _write(self, path: str, reason: dict) -> bool:
        """Add ``reason`` to the stop-file at ``path``; False when there was nothing to add."""
        base, dirs, name = split_below(self.logdir, path)
        with directory_below(base, dirs, create=True) as dir_fd:
            doc = _parse(read_regular_file(dir_fd, name, MAX_STOP_FILE_BYTES))
            if doc is None:
                doc = dict(reason, more=[])
            else:
                more = doc.get("more")
                if not isinstance(more, list):
                    more = doc["more"] = []
                if any(_same(r, reason) for r in [doc, *more] if isinstance(r, dict)):
                    return False  # replayed after a restart: already recorded
                if len(more) >= MAX_MORE_REASONS:
                    return False
                more.append(reason)
            replace_file(dir_fd, name, (json.dumps(doc, indent=2) + "\n").encode())
        return True


def _reason(event: AlertEvent) -> dict:
    return {
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


def _parse(raw: bytes | None) -> dict | None:
    """An existing stop-file's JSON object; None for none, or a human's `touch` (then replaced)."""
    if raw is None or len(raw) > MAX_STOP_FILE_BYTES:
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


class FlagWriter:
    """TensorBoard alert flags: ``alerts/<rule>/<severity>`` 0/1 scalars.

    Written under ``<logdir>/_gradwatch/<run>/`` so they show next to the
    series in TensorBoard; the reader never reads that directory. The trainer
    can write there too: directories are walked without following symlinks,
    each run's event file is created by us (O_EXCL, an unguessable name) and
    appended to only while it is still the file we created.
    """

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        # run -> (file name, (st_dev, st_ino)) of the event file we created
        self._files: dict[str, tuple[str, tuple[int, int]]] = {}
        self.errors = 0
        self.refused = 0
        self.problems = FailureLog("TensorBoard alert flags in")

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
        where = os.path.join(self.logdir, FLAGS_DIR, event.run)
        try:
            self._append(event.run, frame(ev.SerializeToString()))
        except Refused as e:
            self.refused += 1
            self.problems.failed(event.run, where, f"refused: {e}; left alone")
        except OSError as e:
            self.errors += 1
            self.problems.failed(event.run, where, _describe(e))
        else:
            self.problems.succeeded(event.run, where)

    def _append(self, run: str, record: bytes) -> None:
        dirs = [FLAGS_DIR, *(p for p in run.split("/") if p not in ("", "."))]
        with directory_below(self.logdir, dirs, create=True) as dir_fd:
            known = self._files.get(run)
            if known is None:
                self._create(run, dir_fd, record)
                return
            name, identity = known
            try:
                fd = os.open(name, _APPEND_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:  # deleted: start a new file
                del self._files[run]
                self._create(run, dir_fd, record)
                return
            except OSError as e:
                del self._files[run]
                _refuse_link(name, dir_fd, e)
                raise
            with os.fdopen(fd, "ab") as f:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != identity:
                    del self._files[run]  # the next event starts a new file of ours
                    raise Refused(f"{name} was replaced by another file")
                f.write(record)

    def _create(self, run: str, dir_fd: int, record: bytes) -> None:
        # unguessable: the trainer cannot plant a link at the name before we create it
        suffix = f"{socket.gethostname()}.gradwatch.{secrets.token_hex(4)}"
        name = f"events.out.tfevents.{int(time.time())}.{suffix}"
        fd = os.open(name, _CREATE_FLAGS | os.O_APPEND, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "ab") as f:
            header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
            f.write(frame(header.SerializeToString()) + record)
            st = os.fstat(fd)
        # remembered only once the header is there: a failed first write starts a new file
        self._files[run] = (name, (st.st_dev, st.st_ino))
