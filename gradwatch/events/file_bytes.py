"""A tail reader's bytes of its file: reads under a byte budget, and what lies past the last
record (zeros a filesystem wrote ahead of the data, a hole of a sparse file, a record cut
by the end of the file), each awaited while the file may grow and reported when final.

FileBytes is RecordTail's base (records.py): the framing loop asks it for more bytes and
hands it the end of what it could frame.
"""

from __future__ import annotations

from collections.abc import Callable

from gradwatch.events.framing import HEADER_BYTES, NONZERO
from gradwatch.events.problems import SPARSE_HOLE, TRUNCATED, ZERO_PADDING
from gradwatch.events.source import ByteSource, LocalFile

# What ``_zeros_to_eof`` returns when the budget ran out before EOF
SPENT = object()


class FileBytes:
    """Budgeted reads and the end of the data, over the state RecordTail keeps."""

    # RecordTail's, set in its __init__
    offset: int
    pending: bool
    bytes_read: int
    _budget_left: int | None
    _zeros: tuple[int, int]
    _hole_reported_at: int
    report_problem: Callable[[str, int, str], None]

    def _read_more(
        self, f: ByteSource, buf: bytes, base: int, pos: int, need: int, progressed: bool, chunk: int
    ) -> bytes | None:
        """``buf[pos:]`` (``buf`` starts at file offset ``base``) followed by the file's
        bytes after ``buf``, at least ``need`` of them when the file holds them; b"" when
        the file holds none; None when there are more but this call's budget is spent
        and it has ``progressed`` (the budget bounds work, never progress: a record
        larger than the budget is still read whole).

        Never asks for more than the file holds, so a corrupt length cannot
        make it allocate more than the file's size.
        """
        file_pos = base + len(buf)
        avail = f.size() - file_pos
        if avail <= 0:
            return b""
        if progressed and self._budget_left is not None and self._budget_left <= 0:
            return None
        size = min(avail, max(chunk, need))
        keep = len(buf) - pos
        if keep and type(f) is LocalFile:
            # The bytes kept read again with the new ones, from the page cache: one copy
            # of the chunk instead of a read and a concatenation (a record cut by the end
            # of a chunk is kept every chunk). Used only when they read back the same.
            f.seek(base + pos)
            data = f.read(keep + size)
            if len(data) > keep and data.startswith(buf[pos:]):
                self._spend(len(data) - keep)
                return data
            f.seek(file_pos)
        more = self._read(f, size)
        return buf[pos:] + more if more else b""

    def _read(self, f: ByteSource, size: int) -> bytes:
        data = f.read(size)
        self._spend(len(data))
        return data

    def _spend(self, size: int) -> None:
        self.bytes_read += size
        if self._budget_left is not None:
            self._budget_left -= size

    def _stop_at_budget(self, offset: int) -> None:
        self.offset = offset
        self.pending = True

    def _past_hole(self, f: ByteSource, buf: bytes, base: int, pos: int) -> tuple[bytes, int, int]:
        """While scanning zeros for the next record: jump over a hole after ``buf``.

        Returns (buf, base, pos) to scan on with; the last 11 zero bytes are
        kept, as a header could start in them.
        """
        end = base + len(buf)
        data = f.next_data(end)
        if data is None or data <= end:
            return buf, base, pos
        keep = HEADER_BYTES - 1
        return b"\0" * keep, data - keep, 0

    def _at_eof(self, buf: bytes, base: int, pos: int, final: bool) -> None:
        """What is left from ``pos`` is not a complete record: awaited, or reported when final."""
        leftover = len(buf) - pos
        if not final or not leftover:
            self.offset = base + pos
            return
        kind = ZERO_PADDING if not buf[pos:].strip(b"\0") else TRUNCATED
        self.report_problem(
            kind, base + pos, f"{leftover} bytes at end of file do not form a complete record"
        )
        self.offset = base + len(buf)

    def _zeros_to_eof(
        self, f: ByteSource, buf: bytes, base: int, pos: int, chunk: int
    ) -> int | object | None:
        """The offset of EOF when everything from ``pos`` to there is zero bytes, else
        None; ``SPENT`` when the budget ran out first (checked on from there next time).

        Some filesystems extend a file before its data lands; a zero tail is
        awaited rather than reported while the file may still be written.
        Holes are never read: ``SEEK_DATA`` jumps over them, and the first
        hole is reported once.
        """
        if NONZERO.search(buf, pos):
            return None
        start = base + pos
        at = base + len(buf)
        if self._zeros[0] == start:
            at = max(at, self._zeros[1])
        while True:
            data = f.next_data(at)
            if data is None:  # only a hole from here to EOF
                self._report_hole(f, start, at, f.size())
                return f.size()
            if data > at:
                self._report_hole(f, start, at, data)
                at = data
            data = f.pread(chunk, at)
            self._spend(len(data))
            if not data:
                return at
            if NONZERO.search(data):
                return None
            at += len(data)
            if self._budget_left is not None and self._budget_left <= 0:
                self._zeros = (start, at)  # checked on from here next time: always progress
                return SPENT

    def _report_hole(self, f: ByteSource, start: int, hole: int, end: int) -> None:
        """Report once the hole that ``SEEK_DATA`` skipped from ``hole`` to ``end``."""
        if self._hole_reported_at == start or end <= hole:
            return
        self._hole_reported_at = start
        begins = f.hole_start(start)
        if begins is not None:
            hole = min(hole, begins)  # where it really begins
        self.report_problem(
            SPARSE_HOLE,
            start,
            f"a {end - hole}-byte hole (a sparse file) from offset {hole}: "
            "not read; records written after it will be",
        )
