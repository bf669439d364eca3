"""Where the metrics endpoint listens is said, never implied (issue 9).

``--listen :9723`` used to bind every interface without a word. Now it is a usage error (exit
3) that names both choices; the bound address is logged, with a warning when it is not
loopback.
"""

from __future__ import annotations

import re

import pytest
from daemon_support import Daemon, run_gradwatch, watch_args

from gradwatch.exporter.http import is_loopback


def test_listen_without_a_host_is_a_usage_error_that_names_the_choices(tmp_path):
    done = run_gradwatch("watch", str(tmp_path), "--state-dir", str(tmp_path / "s"), "--listen", ":9723")
    assert done.returncode == 3
    assert "--listen: ':9723' has no host" in done.stderr
    assert "127.0.0.1:9723" in done.stderr and "0.0.0.0:9723" in done.stderr and "[::]:9723" in done.stderr
    assert "Traceback" not in done.stderr


def test_listen_without_a_host_in_the_config_file_names_file_and_line(tmp_path):
    config = tmp_path / "gradwatch.yaml"
    config.write_text(f"logdir: {tmp_path}\nlisten: ':9723'\n")
    done = run_gradwatch("watch", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 3
    assert f"{config}:2: listen: ':9723' has no host" in done.stderr


@pytest.mark.parametrize(
    ("listen", "warned"),
    [("127.0.0.1:0", False), ("0.0.0.0:0", True)],
)
def test_the_bound_address_is_logged_and_a_non_loopback_one_warned_about(tmp_path, listen, warned):
    (tmp_path / "logdir").mkdir()
    daemon = Daemon([*watch_args(tmp_path / "logdir", tmp_path / "state"), "--listen", listen], str(tmp_path))
    try:
        err = daemon.wait_err(r"serving /metrics, /-/healthy and /-/ready on ")
        bound = re.escape(listen.split(":")[0]) + r":[1-9]\d*\n"  # the port the kernel chose
        assert re.search(r"INFO: serving /metrics, /-/healthy and /-/ready on " + bound, err)
        daemon.wait_ready()
    finally:
        daemon.stop()
    warning = re.search(r"WARNING: the metrics endpoint listens on (\S+), not only on loopback", daemon.err())
    assert bool(warning) == warned
    if warned:
        assert warning.group(1).startswith("0.0.0.0:")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True)],
        *[("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gradwatch.example.com", False)],
    ],
)
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback
