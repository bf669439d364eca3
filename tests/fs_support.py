"""A real small filesystem to fill: the full-disk tests of the daemon and the store share it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator

from conftest import require_root


@contextlib.contextmanager
def tmpfs(directory: str, size: str) -> Iterator[str]:
    """``directory`` (created) as a tmpfs of ``size`` until the block ends."""
    require_root()  # to mount it
    os.makedirs(directory, exist_ok=True)
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory], capture_output=True, text=True
    )
    # root can mount a tmpfs, here and in CI: a failure is a broken test machine, not a skip
    assert got.returncode == 0, f"cannot mount a tmpfs at {directory}: {got.stderr}"
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", directory], check=False)


def fill(directory: str) -> str:
    """Write a file until the filesystem is full; returns its path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return path
