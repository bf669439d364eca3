"""One escaping for every human-facing output (issue 9): a run name is the trainer's to choose.

A run directory named with a newline, a terminal escape and a bidi override must not forge a
log line, recolour the terminal or reorder text, on stderr (text and JSON log formats), on the
console, or in `gradwatch check` / `gradwatch report` text.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from daemon_support import Daemon, Writer, run_gradwatch, watch_args
from writers import write_scalars

from gradwatch.fmt import escape, json_dumps, json_number
from gradwatch.logjson import JsonFormatter, TextFormatter

# what a hostile trainer names its run: a forged log line, red text, a right-to-left override
EVIL_RUN = "evil\ngradwatch: CRITICAL: FIRING forged \x1b[31mred\u202egnp.exe"
EVIL_SHOWN = "evil\\x0agradwatch: CRITICAL: FIRING forged \\x1b[31mred\\u202egnp.exe"
TAG = "gradients/actor_cnn_norm"
# a directory name that is not UTF-8 (byte 0xff), as Python sees it: surrogateescape
BYTES_RUN = b"bytes-\xff".decode("utf-8", "surrogateescape")


def raw_dangers(text: str) -> list[str]:
    """Characters that must never reach a human unescaped (newline aside, which layout uses)."""
    return [c for c in text if c != "\n" and escape(c) != c]


# -- the function -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\x0ab"),
        ("a\rb", "a\\x0db"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x00\x7f", "\\x00\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI: one byte that starts an escape sequence on some terminals
        ("\u202e", "\\u202e"),
        ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        (b"run-\xff".decode("utf-8", "surrogateescape"), "run-\\xff"),  # the undecodable byte
        ("\ud800", "\\ud800"),  # a lone surrogate that is no escaped byte
    ],
)
def test_escape_shows_controls_bidi_and_undecodable_bytes(raw, shown):
    assert escape(raw) == shown
    escape(raw).encode("utf-8")  # always printable as UTF-8


def test_escape_keeps_printable_text_of_any_script():
    text = "td3/seed-1 Lauf-ü 学习率 🚀 \\x1b tab-free"
    assert escape(text) == text


def test_nonfinite_numbers_have_one_json_spelling():
    assert [json_number(v) for v in (float("nan"), float("inf"), -float("inf"), 1.5, None)] == [
        "NaN",
        "Infinity",
        "-Infinity",
        1.5,
        None,
    ]
    assert json.loads(json_dumps({"a": [float("inf")], "b": (float("nan"),)})) == {
        "a": ["Infinity"],
        "b": ["NaN"],
    }


# -- log formatters, whichever call site logged ------------------------------------------


def _format(formatter: logging.Formatter, msg: object, *args: object, exc: BaseException | None = None):
    record = logging.LogRecord("gradwatch.x", logging.WARNING, __file__, 1, msg, args or None, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, None)
    return formatter.format(record)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_every_kind_of_log_argument_is_escaped(formatter):
    def message(*a, **kw) -> str:
        text = _format(formatter, *a, **kw)
        return json.loads(text)["message"] if isinstance(formatter, JsonFormatter) else text

    assert EVIL_SHOWN in message("stop-file written: %s", EVIL_RUN)  # a str argument
    assert EVIL_SHOWN in message("cannot read: %s", ValueError(EVIL_RUN))  # an object's str
    assert repr(EVIL_RUN) in message("%r", EVIL_RUN)  # %r still works (repr escapes on its own)
    assert EVIL_SHOWN in message(f"an f-string call site: {EVIL_RUN}")  # no arguments
    assert EVIL_SHOWN in message("%(run)s", {"run": EVIL_RUN})  # mapping arguments
    assert "3 files, 2.50 s" in message("%d files, %.2f s", 3, 2.5)  # numbers still format
    assert "\nsecond line" in message("first\nsecond line %s", "x")  # our own format string is kept
    for text in (message("%s", EVIL_RUN), message(EVIL_RUN)):
        assert not raw_dangers(text), text


def test_exception_text_is_escaped_line_by_line():
    try:
        raise ValueError(EVIL_RUN)
    except ValueError as e:
        exc = e
    text = _format(TextFormatter(), "cannot open", exc=exc)
    assert f"ValueError: {EVIL_SHOWN}" in text
    assert not raw_dangers(text)
    assert not any(line.startswith("gradwatch: CRITICAL") for line in text.splitlines())


def test_a_traceback_another_handler_cached_is_escaped_again():
    try:
        raise ValueError(EVIL_RUN)
    except ValueError as e:
        record = logging.LogRecord(
            "gradwatch", logging.ERROR, __file__, 1, "failed", None, (ValueError, e, None)
        )
    logging.Formatter().format(record)  # e.g. pytest's caplog handler, first in line: caches exc_text
    assert not raw_dangers(TextFormatter().format(record))


# -- a real daemon ------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_run_name_cannot_forge_a_log_line_of_the_real_daemon(tmp_path, log_format):
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    writer = Writer()
    daemon = Daemon(watch_args(logdir, tmp_path / "state", "--log-format", log_format), str(tmp_path))
    try:
        daemon.wait_ready()
        writer.write(str(logdir / EVIL_RUN), 200, {TAG: 130486.0})  # critical: writes the stop-file
        daemon.wait_err("stop-file written")
    finally:
        writer.stop()
        daemon.stop()
    err, out = daemon.err(), daemon.out()
    if log_format == "json":
        messages = [json.loads(line)["message"] for line in err.splitlines()]
        err = "\n".join(messages)
    # the stop-file line names the run, escaped; nothing else starts a line with the forged text
    assert [m for m in err.splitlines() if "stop-file written" in m and EVIL_SHOWN in m]
    assert not [line for line in err.splitlines() if line.startswith("gradwatch: CRITICAL")]
    assert not raw_dangers(err)
    # the console (stdout) shows the alert with the same escaping; JSON lines keep the name exact
    assert not raw_dangers(out)
    if log_format == "json":
        assert EVIL_RUN in [json.loads(line)["run"] for line in out.splitlines()]
    else:
        assert f"run={EVIL_SHOWN}" in out


# -- check and report text ------------------------------------------------------------


@pytest.fixture(scope="module")
def evil_logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("evil")
    write_scalars("tensorboardX", str(logdir / EVIL_RUN), [(TAG, 100, 5191.0), (TAG, 200, 130486.0)])
    write_scalars("tensorboardX", str(logdir / "baseline"), [(TAG, 100, 10.0), (TAG, 200, 11.0)])
    write_scalars("tensorboardX", str(logdir / BYTES_RUN), [(TAG, 100, 20.0), (TAG, 200, 30.0)])
    return logdir


def test_check_text_shows_the_run_name_escaped(evil_logdir):
    done = run_gradwatch("check", str(evil_logdir))
    assert done.returncode == 2, done.stderr  # CRITICAL
    assert f"run {EVIL_SHOWN}" in done.stdout
    assert not raw_dangers(done.stdout + done.stderr)


def test_report_text_shows_the_run_name_escaped(evil_logdir):
    done = run_gradwatch("report", str(evil_logdir), "--tag", TAG)
    assert done.returncode == 0, done.stderr
    assert EVIL_SHOWN in done.stdout and "bytes-\\xff" in done.stdout  # the byte, not a traceback
    assert not raw_dangers(done.stdout + done.stderr)
    assert len(done.stdout.splitlines()) == 2 + 2  # tag, header, two steps: no line forged


def test_report_usage_errors_show_run_names_escaped(evil_logdir):
    done = run_gradwatch("report", str(evil_logdir), "--tag", TAG, "--run", "baseline", "--run", "nomatch")
    assert done.returncode == 3
    assert f"runs with it: baseline, bytes-\\xff, {EVIL_SHOWN}" in done.stderr
    assert not raw_dangers(done.stderr)


def test_console_json_and_text_escape_through_one_function():
    from test_console import event

    from gradwatch.notify.console import ConsoleNotifier

    out = io.StringIO()
    ConsoleNotifier(out, fmt="line").send([event(run=EVIL_RUN, value=float("inf"))])
    assert EVIL_SHOWN in out.getvalue() and not raw_dangers(out.getvalue())
    out = io.StringIO()
    ConsoleNotifier(out, fmt="json").send([event(run=EVIL_RUN, value=float("inf"))])
    doc = json.loads(out.getvalue())
    assert doc["value"] == "Infinity"  # as check --json and export write it, not "inf"
