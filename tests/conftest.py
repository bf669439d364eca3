import logging
import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"
# gcsfs reads this once, at its first import: on (its default), it probes each bucket over gRPC,
# which hangs against the GCS emulator (tests/objectstores.py). Set before any test imports it, so
# no test order can leave it on (the daemons the tests start get it from GcsEmulator.env too).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# the Debian package of each system binary the tests use
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "setpriv": "util-linux",
    "systemd-analyze": "systemd",
    "systemd-sysusers": "systemd",
    "systemd-escape": "systemd",
}


@pytest.fixture(autouse=True)
def keep_logging():
    # cli.main (called in-process by many tests) configures the "gradwatch" logger and adds a
    # handler for other libraries' records to the root logger: give the next test the loggers it
    # had, so caplog and handlers (holding a finished test's captured stderr) do not leak
    logger, top = logging.getLogger("gradwatch"), logging.getLogger()
    saved = (logger.handlers[:], logger.level, logger.propagate)
    saved_top = (top.handlers[:], top.level)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
    top.handlers[:] = saved_top[0]
    top.setLevel(saved_top[1])


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


def require(condition: bool, why: str) -> None:
    """Skip a test this machine cannot run; in CI the same lack is a failure, never a silent skip."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{why}; CI must provide it")
        pytest.skip(why)


def require_binary(name: str) -> str:
    """Path of a system binary the test needs; in CI its absence is a failure, not a skip."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (.ci/run installs it: {PACKAGES.get(name, name)})")
    return path  # type: ignore[return-value]


def require_root() -> None:
    """For tests that play a root daemon against a trainer running as nobody, or drop capabilities
    with setpriv --bounding-set (only root can); CI runs as root."""
    require(os.geteuid() == 0, "this test needs root (setpriv as the untrusted trainer); CI runs as root")


def require_module(name: str) -> None:
    """For tests that need an optional package, e.g. torch (`pip install -e '.[torch]'`)."""
    import importlib.util

    require(importlib.util.find_spec(name) is not None, f"{name} is not installed (pip install {name})")
