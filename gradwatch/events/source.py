"""Where the record reader's bytes come from: a local event file, opened the way an
untrusted logdir requires (never through a symlink, never a FIFO), or any object
with the same few methods (an object in a bucket: events/remote.py)."""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol


class NotRegularFile(OSError):
    """An event-file name that is a FIFO, socket or device: never opened for reading."""


class ByteSource(Protocol):
    """What RecordTail reads from: a local file, or an object in a bucket (remote.py).

    Opened once per ``read`` call and used as a context manager; ``size`` is
    what the file holds now, ``read`` goes on from ``seek``, ``pread`` reads
    elsewhere without moving. ``next_data``/``hole_start`` find sparse-file holes;
    a source that has none answers ``offset`` and None.
    """

    def __enter__(self) -> ByteSource: ...
    def __exit__(self, *exc: object) -> None: ...
    def size(self) -> int: ...
    def seek(self, offset: int) -> None: ...
    def read(self, size: int) -> bytes: ...
    def pread(self, size: int, offset: int) -> bytes: ...
    def next_data(self, offset: int) -> int | None: ...
    def hole_start(self, offset: int) -> int | None: ...


class LocalFile:
    """A local event file, opened the way an untrusted logdir requires."""

    __slots__ = ("_f", "fd")

    def __init__(self, path: str) -> None:
        # O_NONBLOCK: opening a FIFO that happens to be named like an event
        # file must not block the reader until some writer shows up.
        # O_NOFOLLOW: a trainer's symlink must not make a root daemon read someone else's file.
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._f = open(self.fd, "rb", buffering=0)  # noqa: SIM115 (closed by __exit__)
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            self._f.close()
            raise NotRegularFile(errno.EINVAL, "not a regular file", path)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def seek(self, offset: int) -> None:
        self._f.seek(offset)

    def read(self, size: int) -> bytes:
        return self._f.read(size)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def next_data(self, offset: int) -> int | None:
        return _next_data(self.fd, offset)

    def hole_start(self, offset: int) -> int | None:
        """Where the first hole at or after ``offset`` begins (None: cannot tell)."""
        try:
            return os.lseek(self.fd, offset, os.SEEK_HOLE)
        except OSError:
            return None


def _next_data(fd: int, offset: int) -> int | None:
    """Where data (not a hole) starts at or after ``offset``; None when only a hole is
    left. Filesystems without SEEK_DATA report all of the file as data."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return offset
        raise
