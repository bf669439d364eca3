import logging
import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"
# the Debian package of each system binary the tests use
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "setpriv": "util-linux",
    "systemd-analyze": "systemd",
    "systemd-sysusers": "systemd",
}


@pytest.fixture(autouse=True)
def keep_logging():
    # cli.main (called in-process by many tests) configures the "gradwatch" logger:
    # give the next test the logger it had, so caplog and handlers do not leak across tests
    logger = logging.getLogger("gradwatch")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(autouse=True, scope="module")
def no_daemon_left_behind():
    """Kill every `gradwatch watch` a test module started and did not stop (a failed assertion)."""
    yield
    from daemon_support import kill_leftovers

    kill_leftovers()


@pytest.fixture(scope="module")
def writer():
    """A tensorboardX writer process driven over stdin (tests/daemon_support.py), one per module."""
    from daemon_support import Writer

    w = Writer()
    yield w
    w.stop()


def require_binary(name: str) -> str:
    """Path of a system binary the test needs; in CI its absence is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run should have installed it")
        pytest.skip(f"{name} is not installed (.ci/run installs it: {PACKAGES.get(name, name)})")
    return path


def require_root() -> None:
    """For a test that plays a root daemon against an unprivileged trainer; in CI (root) it must run."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("this test needs root (the daemon side of an attack); CI runs as root")
        pytest.skip("needs root: it plays a root daemon against a trainer running as nobody")
