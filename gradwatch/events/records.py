"""TFRecord framing: a tail reader for one event file.

A TFRecord is ``uint64 length | uint32 masked_crc32c(length) | payload |
uint32 masked_crc32c(payload)``, little endian. The tail reader resumes at a
byte offset, yields each complete and verified payload, waits on a partial
record at EOF (the writer may still be writing it), and resynchronises past
corruption instead of stopping the way TensorBoard's own loader does.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import ClassVar

import google_crc32c

log = logging.getLogger("gradwatch.events")

HEADER_BYTES = 12
FOOTER_BYTES = 4
# A record larger than this is treated as a corrupt header even when the
# length CRC matches: no allocation is ever sized by an untrusted field.
DEFAULT_MAX_RECORD_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_unpack_crc = _CRC.unpack_from
_crc32c = google_crc32c.value

# Problem kinds reported through ``on_problem`` (and counted in metrics).
CORRUPT = "corrupt_record"
TRUNCATED = "truncated_record"
ZERO_PADDING = "zero_padding"
SHRUNK = "file_shrunk"
UNDECODABLE = "undecodable_record"

ProblemHandler = Callable[[str, str, int, str], None]


def masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One TFRecord around ``payload`` (used by tests and the flag writer)."""
    header = _LENGTH.pack(len(payload))
    return header + _CRC.pack(masked_crc32c(header)) + payload + _CRC.pack(masked_crc32c(payload))


def _log_problem(kind: str, path: str, offset: int, detail: str) -> None:
    log.warning("%s: offset %d: %s: %s", path, offset, kind.replace("_", " "), detail)


class RecordTail:
    """Reads the verified records of one file, from ``offset`` on.

    ``read()`` can be called again and again; each call yields only records
    that were completed since the last one. ``offset`` always points just past
    the last record yielded (or the resync scan position), so it is what to
    persist. ``problems`` counts each problem kind; every problem is reported
    once, with file and offset, through ``on_problem``.
    """

    # Header bytes -> length, shared by every reader: scalar files repeat a
    # handful of record lengths, so most headers are verified by one lookup
    # instead of a CRC call. A wrong header can never be in the map.
    _known_headers: ClassVar[dict[bytes, int]] = {}

    def __init__(
        self,
        path: str,
        offset: int = 0,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        on_problem: ProblemHandler | None = None,
    ) -> None:
        self.path = path
        self.offset = offset
        self.max_record_bytes = max_record_bytes
        self.on_problem = on_problem or _log_problem
        self.problems: dict[str, int] = {}
        self.records = 0
        # While resynchronising, ``offset`` is the scan position and the
        # corruption that started the scan has already been reported.
        self.resyncing = False
        self._pending_tail: str | None = None

    def report_problem(self, kind: str, offset: int, detail: str) -> None:
        self.problems[kind] = self.problems.get(kind, 0) + 1
        self.on_problem(kind, self.path, offset, detail)

    def _header_length(self, header: bytes) -> int | None:
        length = self._known_headers.get(header)
        if length is not None:
            return length
        if _unpack_crc(header, 8)[0] != masked_crc32c(header[:8]):
            return None
        length = _LENGTH.unpack_from(header)[0]
        if length > self.max_record_bytes:
            return None
        if len(self._known_headers) > 65536:
            self._known_headers.clear()
        self._known_headers[header] = length
        return length

    def read(self, final: bool = False) -> Iterator[bytes]:
        """Yield each new verified payload.

        With ``final`` (a one-shot read of a finished file) leftover bytes at
        EOF are reported as a truncated record instead of awaited.
        Raises OSError when the file cannot be opened; the caller decides
        whether that is "gone" or "retry later".
        """
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < self.offset:
                self.report_problem(
                    SHRUNK, self.offset, f"file is now {size} bytes; reading it again from the start"
                )
                self.offset = 0
                self.resyncing = False
            f.seek(self.offset)
            yield from self._records(f, final)

    def _records(self, f, final: bool) -> Iterator[bytes]:
        # The hot loop keeps everything in locals. ``offset`` is exact after
        # every yield (just past the payload yielded); ``records`` is written
        # back when the generator ends or is closed.
        known = self._known_headers
        crc32c = _crc32c
        unpack_crc = _unpack_crc
        base = self.offset
        buf = f.read(CHUNK_BYTES)
        pos = 0
        count = 0
        eof = True  # False only while a yield is outstanding
        try:
            while True:
                if self.resyncing:
                    buf, base, pos, resumed = self._resync(f, buf, base, pos)
                    if not resumed:
                        return
                n = len(buf)
                # 12 = header bytes, 4 = footer bytes (literals: this loop is hot)
                while n - pos >= 12:
                    length = known.get(buf[pos : pos + 12])
                    if length is None:
                        length = self._header_length(buf[pos : pos + 12])
                        if length is None:
                            break
                    start = pos + 12
                    stop = start + length
                    if stop + 4 > n:
                        break
                    payload = buf[start:stop]
                    crc = crc32c(payload)
                    if (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF != unpack_crc(buf, stop)[0]:
                        break
                    pos = stop + 4
                    count += 1
                    self.offset = base + pos
                    eof = False
                    yield payload
                    eof = True
                # Out of the fast loop: need more bytes, or a bad record.
                if n - pos >= HEADER_BYTES:
                    header = buf[pos : pos + HEADER_BYTES]
                    length = self._header_length(header)
                    if length is None:
                        if self._zero_tail(buf, pos, f):
                            return
                        self._start_resync(base + pos, "bad length checksum or impossible length")
                        pos += 1
                        continue
                    end = pos + HEADER_BYTES + length + FOOTER_BYTES
                    if end <= n:
                        self._start_resync(base + pos, f"bad payload checksum ({length}-byte record)")
                        pos += 1
                        continue
                    want = end - n
                else:
                    want = 0
                more = f.read(max(CHUNK_BYTES, want))
                if not more:
                    return
                buf = buf[pos:] + more
                base += pos
                pos = 0
        finally:
            self.offset = base + pos
            self.records += count
            if eof:
                self._at_eof(base, buf, pos, final)

    def _resync(self, f, buf: bytes, base: int, pos: int) -> tuple[bytes, int, int, bool]:
        """Scan for the next valid record; (buf, base, pos, found)."""
        while True:
            found = self._scan(buf, pos)
            if found is not None and not self._scan_needs_more(buf, found):
                self.resyncing = False
                return buf, base, found, True
            pos = found if found is not None else max(pos, len(buf) - HEADER_BYTES + 1)
            more = f.read(CHUNK_BYTES)
            if not more:
                return buf, base, pos, False
            buf = buf[pos:] + more
            base += pos
            pos = 0

    def _at_eof(self, base: int, buf: bytes, pos: int, final: bool) -> None:
        leftover = len(buf) - pos
        if self.resyncing:
            if final:
                # Nothing valid follows: the rest of the file is skipped.
                self.offset = base + len(buf)
            return
        if leftover and final:
            kind = ZERO_PADDING if not buf[pos:].strip(b"\0") else TRUNCATED
            self.report_problem(
                kind, base + pos, f"{leftover} bytes at end of file do not form a complete record"
            )
            self.offset = base + len(buf)

    def _zero_tail(self, buf: bytes, pos: int, f) -> bool:
        """True when everything from ``pos`` to EOF is zero bytes.

        Some filesystems extend a file before its data lands; a zero tail is
        awaited rather than reported while the file may still be written.
        """
        if buf[pos:].strip(b"\0"):
            return False
        here = f.tell()
        rest = f.read(CHUNK_BYTES)
        f.seek(here)
        return not rest.strip(b"\0") and len(rest) < CHUNK_BYTES

    def _start_resync(self, offset: int, detail: str) -> None:
        self.report_problem(CORRUPT, offset, detail + "; skipping to the next valid record")
        self.resyncing = True

    def _scan(self, buf: bytes, pos: int) -> int | None:
        """First position >= pos whose header verifies, or None."""
        header_length = self._header_length
        last = len(buf) - HEADER_BYTES
        while pos <= last:
            length = header_length(buf[pos : pos + HEADER_BYTES])
            if length is not None:
                end = pos + HEADER_BYTES + length + FOOTER_BYTES
                if end > len(buf):
                    return pos  # can't confirm yet: wait for more bytes here
                payload = buf[pos + HEADER_BYTES : end - FOOTER_BYTES]
                if _unpack_crc(buf, end - FOOTER_BYTES)[0] == masked_crc32c(payload):
                    return pos
            pos += 1
        return None

    def _scan_needs_more(self, buf: bytes, pos: int) -> bool:
        length = self._header_length(buf[pos : pos + HEADER_BYTES])
        return length is None or pos + HEADER_BYTES + length + FOOTER_BYTES > len(buf)
