"""Names are bytes on Linux: a run directory that is not valid UTF-8 is watched, saved and shown escaped."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import urllib.request

from daemon_support import Daemon, wait_for, watch_args
from receivers import Receiver

TAG = "gradients/actor_cnn_norm"
# b"run-\xff" as Python names it (surrogateescape), the form every os function takes back
RUN = os.fsdecode(b"run-\xff")


def _saved_runs(state_dir) -> set[bytes]:
    db = sqlite3.connect(os.path.join(state_dir, "gradwatch.db"))
    try:
        db.text_factory = bytes
        return {bytes(r) for (r,) in db.execute("SELECT run FROM files")}
    finally:
        db.close()


def test_a_run_named_with_invalid_utf8_is_watched_and_survives_a_restart(tmp_path, writer):
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    state = tmp_path / "state"
    receiver = Receiver()
    cfg = tmp_path / "gradwatch.yaml"
    hook = f"{{name: hook, type: webhook, url: '{receiver.url()}', group_wait: 0s}}"
    cfg.write_text(f"notifiers:\n  - {hook}\n")
    args = watch_args(logdir, state, "--config", str(cfg))
    first = Daemon([*args, "--listen", "127.0.0.1:0"], str(tmp_path), name="first")
    first.wait_ready()
    writer.write(os.path.join(logdir, RUN), 100, {TAG: 60000.0})
    fired = first.wait_alert(rule="gradient_explosion")
    assert fired["run"] == "run-\\xff", fired  # shown escaped, never the raw byte
    # and as a label: the exposition format escapes the backslash once more
    address = re.search(r"/-/ready on (\S+)", first.err()).group(1)
    # the status behind /metrics is published after the loop's iteration that printed the alert
    wait_for(lambda: 'run="run-\\\\xff"' in _scrape(address), "the run's label on /metrics")
    assert first.stop() == 0
    assert "Traceback" not in first.err(), first.err()
    assert _saved_runs(state) == {b"run-\xff"}  # the bytes on disk, not a replacement character

    second = Daemon(args, str(tmp_path), name="second")
    second.wait_ready()
    writer.write(os.path.join(logdir, RUN), 200, {TAG: 1.0})
    resolved = second.wait_alert(rule="gradient_explosion", verb="RESOLVED")
    assert (resolved["run"], resolved["step"]) == ("run-\\xff", "200")
    assert second.stop() == 0
    assert "Traceback" not in second.err(), second.err()
    # the name came back from the state DB as the same bytes: no second FIRING after the restart
    assert not [a for a in second.alerts() if a["verb"] == "FIRING"], second.out()
    # the webhook got both, the name as a JSON \\udcff escape: valid JSON, the same str in Python
    got = [(a["status"], a["labels"]["run"]) for r in receiver.requests for a in json.loads(r.body)["alerts"]]
    assert ("firing", RUN) in got and ("resolved", RUN) in got, got
    receiver.stop()


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()
