"""Log line formatters for stderr: text and ``--log-format json``.

Both escape what a record carries (its arguments, a message without
arguments, the exception text) with :func:`gradwatch.fmt.escape`, so a run
name holding a newline or a terminal escape cannot forge a log line or
recolour the operator's terminal, whichever call site logged it. Only the
format string of a call with arguments is kept as written: it is ours.
"""

from __future__ import annotations

import logging
import numbers
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from gradwatch.fmt import escape, json_dumps, rfc3339  # rfc3339: re-exported (actions)

TEXT_FORMAT = "gradwatch: %(levelname)s: %(message)s"
# another library's record (watchdog, urllib3, the object-store clients) names its logger
OTHERS_TEXT_FORMAT = "gradwatch: %(levelname)s: %(name)s: %(message)s"
# watchdog (>= 6) logs this ERROR when an inotify event arrives while its observer stops: on
# shutdown, a reload, a fall-back to polling. That event is one the next rescan finds anyway.
WATCHDOG_STOP_RACE = "InotifyEmitter.queue_events() called when the thread is inactive"


class _Escaped:
    """An argument shown through ``%s`` or ``%r`` only as escaped text."""

    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __str__(self) -> str:
        return escape(self._obj)

    def __repr__(self) -> str:
        return escape(repr(self._obj))


def _escape_arg(arg: Any) -> Any:
    # numbers keep working with %d and %.2f; everything else may hold a name
    if isinstance(arg, numbers.Number):
        return arg
    return _Escaped(arg)


def escaped_message(record: logging.LogRecord) -> str:
    """The record's message with every argument (or the whole argument-less message) escaped."""
    args = record.args
    if not args:
        return escape(record.msg)  # an f-string call site: all of it may be untrusted
    if isinstance(args, Mapping):
        escaped: Any = {k: _escape_arg(v) for k, v in args.items()}
    else:
        escaped = tuple(_escape_arg(a) for a in args)
    try:
        return str(record.msg) % escaped
    except (TypeError, ValueError, KeyError):  # a call site's format mistake: show it, not lose the line
        return escape(f"{record.msg} {args!r}")


def _escape_lines(text: str) -> str:
    return "\n".join(escape(line) for line in text.split("\n"))


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def format_exception(ei: Any) -> str:
    """A traceback whose lines are ours, but whose exception messages may quote a run name
    (with newlines in it): each message is escaped whole, then every line."""
    text = "".join(traceback.format_exception(*ei)).rstrip("\n")
    for exc in _chain(ei[1]):
        only = "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
        text = text.replace(only, escape(only))
    return _escape_lines(text)


class TextFormatter(logging.Formatter):
    """``gradwatch: LEVEL: message``, escaped."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        # not logging.Formatter.format: it calls record.getMessage() first, which raises on a call
        # site's format mistake (escaped_message shows those), and it would cache an unescaped
        # traceback in record.exc_text (another handler may have cached its own: ignored here)
        values = dict(vars(record), message=escaped_message(record), name=escape(record.name))
        if self.usesTime():
            values["asctime"] = self.formatTime(record, self.datefmt)
        text = self._fmt % values  # type: ignore[operator]
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text

    def formatException(self, ei) -> str:
        return format_exception(ei)

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message is escaped as in the text format."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escaped_message(record),
        }
        if record.exc_info:
            doc["exception"] = format_exception(record.exc_info)
        return json_dumps(doc)


class OthersHandler(logging.StreamHandler):
    """Other libraries' warnings and errors on stderr, in gradwatch's format and escaped. Without
    a handler Python's last resort prints them raw: a line a JSON log collector cannot parse, and
    a path from the logdir in it could forge a line or act on the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("watchdog") and record.msg == WATCHDOG_STOP_RACE:
            return False
        return super().filter(record)


def setup_logging(verbose: bool = False, quiet: bool = False, fmt: str = "text") -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    # both formatters escape run names and every other argument (gradwatch/logjson.py)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("gradwatch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    others = OthersHandler(sys.stderr)
    others.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(OTHERS_TEXT_FORMAT))
    others.setLevel(logging.ERROR if quiet else logging.WARNING)
    # added beside what else is there (pytest's capture), in place of an earlier call's
    top = logging.getLogger()
    top.handlers[:] = [h for h in top.handlers if not isinstance(h, OthersHandler)] + [others]
