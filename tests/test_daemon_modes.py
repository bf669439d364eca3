"""``gradwatch watch`` in its other modes: polling, JSON logs, a logdir that appears late, and
permission errors (real ones: the daemon runs without CAP_DAC_OVERRIDE, so root obeys chmod)."""

from __future__ import annotations

import json
import os
import re
import shutil

from conftest import require_binary, require_root
from daemon_support import Daemon, wait_for, watch_args

TAG = "gradients/actor_cnn_norm"


def test_polling_json_logs_and_a_logdir_created_late(tmp_path, writer):
    logdir = tmp_path / "not-yet"
    d = Daemon(watch_args(logdir, tmp_path / "state", "--poll", "0.2", "--log-format", "json"), str(tmp_path))
    try:
        d.wait_err(r"no such directory; waiting for it")
        writer.write(logdir / "run", 100, {TAG: 5191.0})
        d.wait_ready()
        writer.write(logdir / "run", 200, {TAG: 130486.0})
        wait_for(lambda: [a for a in d.json_alerts() if a["rule"] == "gradient_explosion"], "the alert")
        writer.write(logdir / "run-2", 300, {TAG: 20000.0})  # a new run found by polling
        wait_for(lambda: [a for a in d.json_alerts() if a["run"] == "run-2"], "the new run's alert")
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.kill()

    (fired, growth, new_run) = sorted(d.json_alerts(), key=lambda a: (a["step"], a["rule"]))
    assert (fired["kind"], fired["severity"], fired["status"], fired["step"], fired["value"]) == (
        "firing",
        "critical",
        "firing",
        200,
        130486.0,
    )
    assert fired["threshold"] == 50000.0 and fired["labels"]["run"] == "run"
    assert "gradient clipping" in fired["annotations"]["recommendation"]
    assert growth["rule"] == "gradient_growth" and new_run["severity"] == "warning"
    # every log line is a JSON object too
    logs = [json.loads(line) for line in d.err().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(logs[0])
    assert any(x["message"].endswith("(poll)") for x in logs)


def test_permission_errors_are_logged_once_retried_and_never_fatal(tmp_path, writer):
    require_root()
    setpriv = require_binary("setpriv")
    logdir = tmp_path / "logdir"
    writer.write(logdir / "locked-run", 100, {TAG: 60000.0})
    writer.write(logdir / "locked-file", 100, {TAG: 60000.0})
    writer.write(logdir / "open", 100, {TAG: 1.0})
    writer.close(logdir / "locked-run")
    writer.close(logdir / "locked-file")
    (locked_file,) = (logdir / "locked-file").glob("*tfevents*")
    os.chmod(logdir / "locked-run", 0)
    os.chmod(locked_file, 0)
    config = tmp_path / "gradwatch.yaml"
    config.write_text("rescan_interval: 200ms\n")
    # root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH is refused by chmod like any user
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    d = Daemon(
        watch_args(logdir, tmp_path / "state", "--config", str(config)),
        str(tmp_path),
        prefix=drop,
        verbose=True,
    )
    try:
        d.wait_ready()
        # several rescans later: each problem still logged once
        d.wait_err(r"rescanned ", count=5)
        err = d.err()
        assert len(re.findall(rf"{logdir / 'locked-run'}: unreadable directory: Permission denied", err)) == 1
        assert len(re.findall(rf"{locked_file}: unreadable file: Permission denied; will retry", err)) == 1
        assert not d.alerts()

        os.chmod(logdir / "locked-run", 0o755)
        os.chmod(locked_file, 0o644)
        d.wait_alert(run="locked-run", rule="gradient_explosion")
        d.wait_alert(run="locked-file", rule="gradient_explosion")
        d.wait_err(rf"{locked_file}: readable again")
        d.wait_err(r"re-adding inotify watches")
        # the directory that was locked is watched again: a new point arrives through inotify
        writer.write(logdir / "locked-run", 200, {TAG: 1.0})
        d.wait_alert(run="locked-run", rule="gradient_explosion", verb="RESOLVED")
        assert "polling" not in d.err()
        assert d.stop() == 0
    finally:
        for path, mode in ((logdir / "locked-run", 0o755), (locked_file, 0o644)):
            if path.exists():
                os.chmod(path, mode)
        if d.proc.poll() is None:
            d.kill()
    shutil.rmtree(logdir)


def test_a_listen_address_in_use_or_unusable_is_a_clear_error_not_a_traceback(tmp_path):
    import socket
    import subprocess
    import sys

    (tmp_path / "logdir").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for listen, code, words in (
            (f"127.0.0.1:{port}", 1, "another process"),
            ("nosuchhost.invalid:9999", 3, "check the host part"),
        ):
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gradwatch",
                    "watch",
                    str(tmp_path / "logdir"),
                    "--state-dir",
                    str(tmp_path / "state"),
                    "--listen",
                    listen,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert p.returncode == code, p.stderr
            assert words in p.stderr and listen in p.stderr
            assert "Traceback" not in p.stderr
