import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


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
        pytest.skip(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
    return path
