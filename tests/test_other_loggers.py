"""Other libraries' log records (watchdog, urllib3, botocore, gcsfs) go to stderr the way
gradwatch's own do: in the chosen format, escaped, at WARNING and above (ERROR with --quiet).
Before, Python's last resort printed them raw: a line a JSON log collector could not parse,
and a logdir path in one could forge a line. watchdog's stop race (an ERROR it logs when an
inotify event arrives while the daemon stops its observer) is not shown at all. (conftest's
keep_logging puts the loggers back after each test.)"""

from __future__ import annotations

import json
import logging
import queue

import pytest

from gradwatch.logjson import OthersHandler, setup_logging

FORGED = "r0\ngradwatch: CRITICAL: forged \x1b[31mred"
SHOWN = "r0\\x0agradwatch: CRITICAL: forged \\x1b[31mred"  # one line, the ESC shown, not sent


def test_another_librarys_warning_is_one_escaped_json_line(capsys):
    setup_logging(fmt="json")
    # not urllib3's loggers: secrets other tests registered are scrubbed from those (config/secrets.py)
    logging.getLogger("botocore.endpoint").warning("Connection pool is full, discarding %s", FORGED)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    doc = json.loads(lines[0])
    assert doc["level"] == "warning" and doc["logger"] == "botocore.endpoint"
    assert doc["message"] == f"Connection pool is full, discarding {SHOWN}"


def test_another_librarys_warning_in_text_names_its_logger(capsys):
    setup_logging()
    logging.getLogger("botocore.credentials").warning(FORGED)
    assert capsys.readouterr().err == f"gradwatch: WARNING: botocore.credentials: {SHOWN}\n"


def test_other_libraries_info_is_not_shown_and_quiet_keeps_only_errors(capsys):
    setup_logging(verbose=True)  # gradwatch's own debug lines, not every library's
    logging.getLogger().setLevel(logging.DEBUG)  # as a caller or pytest may set it
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection")
    logging.getLogger("gcsfs").info("listing")
    assert capsys.readouterr().err == ""
    setup_logging(quiet=True)
    logging.getLogger("s3fs").warning("retrying")
    logging.getLogger("s3fs").error("gave up")
    assert capsys.readouterr().err == "gradwatch: ERROR: s3fs: gave up\n"


def test_gradwatch_lines_are_written_once(capsys):
    setup_logging()
    setup_logging()  # a reload or a second call replaces the handlers, never adds one
    logging.getLogger("gradwatch").warning("state cannot be saved")
    logging.getLogger("watchdog.observers").warning("a watch failed")
    assert capsys.readouterr().err.splitlines() == [
        "gradwatch: WARNING: state cannot be saved",
        "gradwatch: WARNING: watchdog.observers: a watch failed",
    ]
    assert sum(isinstance(h, OthersHandler) for h in logging.getLogger().handlers) == 1


def test_watchdogs_stop_race_is_not_shown_its_other_errors_are(tmp_path, capsys):
    """watchdog's own code path: an inotify emitter asked for events while it is not running."""
    pytest.importorskip("watchdog.observers.inotify")  # Linux
    from watchdog.observers.api import ObservedWatch
    from watchdog.observers.inotify import InotifyEmitter

    setup_logging()
    emitter = InotifyEmitter(queue.Queue(), ObservedWatch(str(tmp_path), recursive=True))
    emitter.queue_events(0.01)  # not started: watchdog logs its stop-race ERROR
    logging.getLogger("watchdog.observers.inotify").error("Inotify watch limit reached")
    shown = capsys.readouterr().err
    assert shown == "gradwatch: ERROR: watchdog.observers.inotify: Inotify watch limit reached\n"


def test_urllib3s_warning_is_shown_with_the_webhook_token_scrubbed(capsys):
    """urllib3 quotes request paths at WARNING (retries); its loggers scrub every registered secret
    (config/secrets.py) before this handler formats the line."""
    from gradwatch.config.secrets import secret_url

    token = "Zq7Kw2Lm9Xv4Rt8Np3Bs6Hd1"
    secret_url(f"https://hooks.slack.com/services/T9Q/B9Q/{token}")
    setup_logging(fmt="json")
    logging.getLogger("urllib3.connectionpool").warning("Retrying: broken: /services/T9Q/B9Q/%s", token)
    (line,) = capsys.readouterr().err.splitlines()
    message = json.loads(line)["message"]
    # how much of the path goes depends on the secrets other tests registered; the token always
    assert message.startswith("Retrying: broken: ") and message.endswith("***"), message
    assert token[:4] not in message


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    "msg, args",
    [("retries: %d", ("x",)), ("%(host)s failed", ({"url": "u"},)), ("%s and %s", ("one",))],
    ids=["wrong_type", "missing_key", "too_few"],
)
def test_a_librarys_format_mistake_is_shown_not_a_logging_error(msg, args, fmt, capsys):
    """logging would print a 'Logging error' traceback block (non-JSON lines) and lose the record."""
    setup_logging(fmt=fmt)
    # pytest's capture handlers raise on such a record: gradwatch's handler alone, as in the daemon
    top = logging.getLogger()
    top.handlers[:] = [h for h in top.handlers if isinstance(h, OthersHandler)]
    logging.getLogger("botocore.endpoint").warning(msg, *args)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    shown = json.loads(lines[0])["message"] if fmt == "json" else lines[0]
    assert msg in shown


def test_a_logger_name_is_escaped_in_text_lines(capsys):
    setup_logging()
    logging.getLogger(FORGED).warning("hi")
    assert capsys.readouterr().err == f"gradwatch: WARNING: {SHOWN}: hi\n"
