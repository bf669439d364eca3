"""The daemon says what it watches: unmatched tags are named; a logdir created after start is live."""

from __future__ import annotations

import re
import urllib.request

from daemon_support import Daemon, wait_for, watch_args

GRAD = "gradients/actor_cnn_norm"


def _scrape(base: str, name: str) -> float | None:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        m = re.search(rf"^{name} (\S+)$", r.read().decode(), re.M)
    return float(m.group(1)) if m else None


def test_tags_that_no_rule_matches_are_named_at_catch_up_and_for_a_new_run(tmp_path, writer):
    logdir = tmp_path / "logdir"
    writer.write(logdir / "first", 1, {"loss": 0.5, "accuracy": 0.9})
    args = [str(logdir), "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0"]
    d = Daemon(args, str(tmp_path))
    d.wait_ready()
    err = d.err()
    assert re.search(
        r"caught up on .*: 1 runs, 1 files, 2 points in [\d.]+s; 0 series watched; 0 alerts firing", err
    )
    warning = re.search(r"WARNING: no series matches any rule.*", err)
    assert warning, err
    assert "accuracy" in warning.group(0) and "loss" in warning.group(0)
    base = "http://" + re.search(r"/-/ready on (\S+)", err).group(1)
    assert _scrape(base, "gradwatch_series_watched") == 0

    writer.write(logdir / "second", 1, {"val/loss": 0.7})
    later = d.wait_err(r"WARNING: run second: no series matches any rule.*val/loss")
    writer.write(logdir / "third", 1, {GRAD: 10.0})
    wait_for(lambda: _scrape(base, "gradwatch_series_watched") == 1, "one series watched")
    writer.write(logdir / "fourth", 1, {"lr": 0.001})
    # runs are checked in the order they appear: once "fourth" is told, "third" was looked at
    err = d.wait_err(r"WARNING: run fourth: no series matches any rule.*lr")
    assert "run third" not in err[len(later) :]
    assert d.stop() == 0


def test_a_logdir_created_after_start_up_is_live_not_history(tmp_path, writer):
    logdir = tmp_path / "logdir"  # not there yet: the daemon waits for it
    d = Daemon(watch_args(logdir, tmp_path / "state"), str(tmp_path))
    d.wait_err("no such directory; waiting for it")
    writer.write(logdir / "run", 100, {GRAD: 60000.0})
    fired = d.wait_alert(rule="gradient_explosion", run="run")
    assert fired["verb"] == "FIRING"
    assert "(active at start-up)" not in fired["rest"], fired  # written after the daemon started
    assert d.stop() == 0
