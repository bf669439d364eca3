"""Out of inotify watches: the daemon switches to polling at once, not at the next periodic rescan.

The daemon runs in a user namespace whose watch limit is 20 (tests/daemon_support.py), so
inotify_add_watch really fails with ENOSPC. watchdog swallows that error for subdirectories,
so without a check of its own the daemon says "(inotify)" while runs go unwatched. The
periodic rescan (the old, slow safety net) is set to an hour: only the immediate fallback
can deliver the alert.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import require_binary
from daemon_support import Daemon, inotify_watch_limit, watch_args

TAG = "gradients/actor_cnn_norm"
LIMIT = 20
RUNS = 30  # directories: more than LIMIT watches


@pytest.fixture
def limited():
    require_binary("unshare")
    probe = subprocess.run([*inotify_watch_limit(LIMIT), "true"], capture_output=True, text=True)
    # as root (here and in CI) a user namespace of our own is always possible
    assert probe.returncode == 0, f"cannot lower the inotify limit in a user namespace: {probe.stderr}"
    return inotify_watch_limit(LIMIT)


def _start(tmp_path, limited) -> Daemon:
    cfg = tmp_path / "gradwatch.yaml"
    cfg.write_text("rescan_interval: 3600s\n")
    args = watch_args(tmp_path / "logdir", tmp_path / "state", "--config", str(cfg))
    return Daemon(args, str(tmp_path), prefix=limited)


def _runs(writer, logdir, n: int) -> None:
    for i in range(n):
        writer.write(logdir / f"run{i:02d}", 1, {TAG: 1.0})


def test_more_directories_than_watches_at_start_up_polls_from_the_start(tmp_path, writer, limited):
    logdir = tmp_path / "logdir"
    _runs(writer, logdir, RUNS)
    d = _start(tmp_path, limited)
    err = d.wait_err(r"watching .* \(poll\)|watching .* \(inotify\)")
    assert "(poll)" in err, err
    assert "inotify watch limit reached" in err, err
    writer.write(logdir / f"run{RUNS - 1:02d}", 2, {TAG: 60000.0})  # an append in the last directory
    d.wait_alert(rule="gradient_explosion", run=f"run{RUNS - 1:02d}", severity="CRITICAL")
    assert d.stop() == 0


def test_running_out_of_watches_while_running_switches_to_polling_at_once(tmp_path, writer, limited):
    logdir = tmp_path / "logdir"
    _runs(writer, logdir, 3)
    d = _start(tmp_path, limited)
    d.wait_err(r"watching .* \(inotify\)")
    _runs(writer, logdir, RUNS)
    d.wait_err("inotify watch limit reached")
    writer.write(logdir / f"run{RUNS - 1:02d}", 2, {TAG: 60000.0})
    d.wait_alert(rule="gradient_explosion", run=f"run{RUNS - 1:02d}", severity="CRITICAL")
    assert d.stop() == 0
