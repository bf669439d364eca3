"""TFRecord framing: a tail reader for one event file.

A TFRecord is ``uint64 length | uint32 masked_crc32c(length) | payload |
uint32 masked_crc32c(payload)``, little endian. The tail reader resumes at a
byte offset, yields each complete and verified payload, waits on a partial
record at EOF (the writer may still be writing it), and resynchronises past
corruption instead of stopping the way TensorBoard's own loader does.

What it does with each kind of damage (each reported once, with its offset):

* bad length CRC, length over ``max_record_bytes``, bad payload CRC:
  ``corrupt_record``; the scan for the next record with both CRCs valid
  starts one byte further on;
* a record whose length runs past EOF: awaited, unless complete records
  follow it (then its length was corrupt); at the end of a finished file
  (``final``) a ``truncated_record``;
* zero bytes to EOF (a preallocated tail): awaited; ``zero_padding`` when
  final; a hole of a sparse file (``truncate -s 8G``) is never read: found
  with ``SEEK_DATA``, reported once as ``sparse_hole``, and awaited like zeros;
* the file shorter than the offset, or the bytes last read changed (replaced
  or rewritten, not appended to): ``file_shrunk`` / ``file_replaced``, read
  again from the start. An rsync'd copy with the same bytes and more is
  simply read on.

Memory is bounded by the file: no read is ever sized by a length field
beyond what the file holds. Work is bounded per call: ``read(budget=N)``
stops once about N bytes were read, with ``offset`` exact and ``pending``
set, so a caller can go round its files and one file never starves others.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from gradwatch.events.file_bytes import SPENT as _SPENT
from gradwatch.events.file_bytes import FileBytes
from gradwatch.events.framing import (
    _CRC,
    _LENGTH,
    FOOTER_BYTES,
    HEADER_BYTES,
    NONZERO,
    NUMPY_MIN_BATCH,
    batch_cuts,
    batch_lengths,
    masked_crc32c,
    payload_lengths,
    repeat_walked,
    scan_for_record,
    verified_prefix,
)
from gradwatch.events.framing import FOUND as _FOUND
from gradwatch.events.framing import NONE as _NONE
from gradwatch.events.framing import PARTIAL as _PARTIAL
from gradwatch.events.problems import (  # re-exported: where callers have always found them
    CORRUPT,
    REPLACED,
    SHRUNK,
    SPARSE_HOLE,
    TRUNCATED,
    UNDECODABLE,
    ZERO_PADDING,
    ProblemHandler,
    log_problem,
)
from gradwatch.events.source import ByteSource, LocalFile

if TYPE_CHECKING:
    import numpy as np

# A record larger than this is treated as a corrupt header even when the
# length CRC matches: no allocation is ever sized by an untrusted field.
DEFAULT_MAX_RECORD_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20
# Records walked header by header before the reader looks for a repeating run of record
# lengths (a writer logging the same tags every step: up to half this many tags), and
# how many runs may take fewer records than that before it stops looking in a read.
_WALK_BEFORE_RUN = 128
_RUN_MISSES = 3
# Records walked before the next run is tried after one took at least a walk's worth (at least
# four periods of its pattern): a writer's pattern goes on in the next chunk, or a byte longer.
_WALK_AFTER_RUN = 16
# What the daemon reads of one file before it turns to the others (about
# 0.2 s of work); one-shot commands read without a budget.
DEFAULT_READ_BUDGET = 16 << 20


__all__ = [
    "CORRUPT",
    "REPLACED",
    "SHRUNK",
    "SPARSE_HOLE",
    "TRUNCATED",
    "UNDECODABLE",
    "ZERO_PADDING",
    "Frames",
    "ProblemHandler",
    "RecordTail",
]


class Frames(NamedTuple):
    """A batch of records framed back to back, as read_frames yields them."""

    start: int  # file offset of the first record
    payloads: list[bytes]
    lengths: np.ndarray | None  # the payloads' lengths (int64) when the checksum check took them
    at_cut: bool  # the batch ends at a cut (read_frames' ``batch_bytes``)
    buf: bytes  # what the records were framed from: the first one's header is at buf[at]
    at: int


class RecordTail(FileBytes):
    """Reads the verified records of one file, from ``offset`` on.

    ``read()`` can be called again and again; each call yields only records
    that were completed since the last one. ``offset`` always points just past
    the last record yielded (or the resync scan position), so it is what to
    persist. ``problems`` counts each problem kind; every problem is reported
    once, with file and offset, through ``on_problem``.
    """

    # max_record_bytes -> {header bytes -> length}, shared by every reader:
    # scalar files repeat a handful of record lengths, so most headers are
    # verified by one lookup instead of a CRC call. A wrong header can never be
    # in the map, nor one whose length is over the reader's limit.
    _header_caches: ClassVar[dict[int, dict[bytes, int]]] = {}

    def __init__(
        self,
        path: str,
        offset: int = 0,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        on_problem: ProblemHandler | None = None,
        opener: Callable[[str], ByteSource] | None = None,
    ) -> None:
        self.path = path
        # how ``path`` is opened: a local file unless the logdir is remote (remote.py)
        self._open = opener or LocalFile
        self.offset = offset
        self.max_record_bytes = max_record_bytes
        self.on_problem = on_problem or log_problem
        self.problems: dict[str, int] = {}
        self.records = 0
        # Bytes read from the file, all calls together; ``pending``: the last
        # call stopped at its budget with more of the file still to read.
        self.bytes_read = 0
        self.pending = False
        self._budget_left: int | None = None
        self._call_start = offset  # where the current read call started
        # Zeros already verified past the last record: (where they start,
        # verified up to), so a long zero tail is checked once, not per call.
        self._zeros: tuple[int, int] = (-1, -1)
        self._hole_reported_at = -1
        # While resynchronising, ``offset`` is the scan position and the
        # corruption that started the scan has already been reported.
        self.resyncing = False
        self._known = self._header_caches.setdefault(max_record_bytes, {})
        # (file offset, 4 bytes read there): if those bytes change, the file
        # was rewritten under us, not merely appended to.
        self._seen: tuple[int, bytes] | None = None

    def checkpoint(self) -> tuple:
        """What a read changes, to ``rollback`` to when the consumer could not keep what it read."""
        return (
            self.offset,
            self.resyncing,
            dict(self.problems),
            self.records,
            self._seen,
            self._zeros,
            self._hole_reported_at,
        )

    def rollback(self, checkpoint: tuple) -> None:
        """Back to ``checkpoint()``'s state: the records after it are read (and their problems
        counted) again by the next read."""
        (
            self.offset,
            self.resyncing,
            problems,
            self.records,
            self._seen,
            self._zeros,
            self._hole_reported_at,
        ) = checkpoint
        self.problems = dict(problems)

    def report_problem(self, kind: str, offset: int, detail: str) -> None:
        self.problems[kind] = self.problems.get(kind, 0) + 1
        self.on_problem(kind, self.path, offset, detail)

    def _header_length(self, header: bytes) -> int | None:
        length = self._known.get(header)
        if length is not None:
            return length
        if _CRC.unpack_from(header, 8)[0] != masked_crc32c(header[:8]):
            return None
        length = _LENGTH.unpack_from(header)[0]
        if length > self.max_record_bytes:
            return None
        if len(self._known) > 65536:
            self._known.clear()
        self._known[header] = length
        return length

    def read(self, final: bool = False, budget: int | None = None) -> Iterator[bytes]:
        """Yield each new verified payload.

        With ``final`` (a one-shot read of a finished file) leftover bytes at
        EOF are reported as a truncated record instead of awaited. With a
        ``budget`` the call stops after reading about that many bytes (at
        least one chunk), sets ``pending`` and resumes there next time.
        Raises OSError when the file cannot be opened; the caller decides
        whether that is "gone" or "retry later".
        """
        for start, batch in self.read_batches(final, budget):
            end = start
            for payload in batch:
                end += len(payload) + 16
                self.offset = end
                yield payload

    def read_batches(
        self, final: bool = False, budget: int | None = None
    ) -> Iterator[tuple[int, list[bytes]]]:
        """Like ``read()``, a list of payloads at a time: ``(offset of the first, payloads)``.

        After each yield ``offset`` is just past the last payload of the
        batch; a consumer that stops part-way sets ``offset`` itself (each
        record is ``len(payload) + 16`` bytes).
        """
        for frames in self.read_frames(final, budget):
            yield frames.start, frames.payloads

    def read_frames(
        self, final: bool = False, budget: int | None = None, batch_bytes: int | None = None
    ) -> Iterator[Frames]:
        """Like ``read_batches()``, a Frames at a time: with each batch's payload lengths
        when the checksum check computed them, whether the batch ends at a cut, and the
        bytes the records were framed from.

        With ``batch_bytes`` a batch also ends (a cut) at the first record that
        ends ``batch_bytes`` or more after the last cut (the call's start at
        first), whatever was read at once.
        """
        with self._open(self.path) as f:
            size = self._check_rewritten(f)
            f.seek(self.offset)
            self.pending = False
            self._budget_left = budget
            self._call_start = self.offset
            yield from self._batches(f, final, batch_bytes, size)

    def _check_rewritten(self, f: ByteSource) -> int:
        """Start again from 0 when the file shrank or was rewritten; returns its size."""
        size = f.size()
        if size < self.offset:
            self._restart(SHRUNK, f"file is now {size} bytes; reading it again from the start")
        elif self._seen is not None and f.pread(4, self._seen[0]) != self._seen[1]:
            # Same size or larger but other bytes where our last record ended:
            # replaced or rewritten, not appended to (an rsync'd copy keeps them).
            self._restart(REPLACED, "bytes already read have changed; reading it again from the start")
        return size

    def _restart(self, kind: str, detail: str) -> None:
        self.report_problem(kind, self.offset, detail)
        self.offset = 0
        self.resyncing = False
        self._seen = None
        self._zeros = (-1, -1)
        self._hole_reported_at = -1

    # measured hot path (bench/bench_reader.py): one function keeps the loop's state in locals
    def _batches(  # noqa: C901, PLR0915
        self, f: ByteSource, final: bool, batch_bytes: int | None, size: int
    ) -> Iterator[Frames]:
        # The hot loop keeps everything in locals; ``offset`` is exact at every
        # yield and at every return, never set by a ``finally`` (a consumer
        # that stops part-way through a batch has set it itself).
        known = self._known
        verified = verified_prefix
        walk = _WALK_BEFORE_RUN  # records walked one at a time before a repeating run is tried
        misses = 0  # runs tried that took fewer records than were walked before them
        base = self.offset  # file offset of buf[0]
        # no more than the file held (``size``; more is read on): a read allocates all it may return,
        # and a 1 MiB buffer for a 300 KB file costs page faults (bench/data/runs: 0.03 s of 0.6)
        buf = self._read(f, min(CHUNK_BYTES, max(size - base, 0)))
        pos = 0
        cut = None if batch_bytes is None else base + batch_bytes  # where the batch ends at the latest
        while True:
            if self.resyncing:
                pos, status = self._scan(buf, pos)
                if status is not _FOUND:
                    need = 1
                    if status is _PARTIAL:  # all of that record at once, not a chunk at a time
                        need = pos + 16 + self._header_length(buf[pos : pos + 12]) - len(buf)
                    if status is _NONE and not NONZERO.search(buf, pos):
                        buf, base, pos = self._past_hole(f, buf, base, pos)
                    more = self._read_more(
                        f, buf, base, pos, need, base + pos > self._call_start, CHUNK_BYTES
                    )
                    if more is None:
                        self._stop_at_budget(base + pos)
                        return
                    if more:
                        buf = more
                        base += pos
                        pos = 0
                    elif status is _PARTIAL and (final or self._valid_record_follows(buf, pos)):
                        pos += 1  # that record can never complete: not a record
                    else:
                        # Scan again from here later; a finished file's rest is skipped.
                        self.offset = base + (len(buf) if final else pos)
                        return
                    continue
                self.resyncing = False
            n = len(buf)
            first = pos
            batch: list[bytes] = []
            append = batch.append
            runs: list[tuple[int, np.ndarray]] = []  # (first index, lengths) of each run taken
            while True:
                # 12 = header bytes, 16 = header + footer (literals: this loop is hot)
                for _ in range(walk):
                    if n - pos < 16:
                        break
                    length = known.get(buf[pos : pos + 12])
                    if length is None:
                        break
                    stop = pos + 12 + length
                    if stop + 4 > n:
                        break
                    append(buf[pos + 12 : stop])
                    pos = stop + 4
                else:
                    # ``walk`` records in a row: if their lengths repeat, take the
                    # records that go on repeating them at once
                    taken, pos, taken_lengths, p = repeat_walked(buf, pos, batch[-walk:])
                    if taken:
                        runs.append((len(batch), taken_lengths))
                        batch += taken
                    if len(taken) < walk:
                        misses += 1
                        if misses >= _RUN_MISSES:
                            walk = sys.maxsize  # not a repeating file: walk the rest
                    else:
                        # the next run (a step's varint one byte longer, the next chunk)
                        # most likely repeats as this one did: a few periods show it
                        walk = min(_WALK_BEFORE_RUN, max(4 * p, _WALK_AFTER_RUN))
                    continue
                break
            lengths = None
            if len(batch) >= NUMPY_MIN_BATCH:
                lengths = batch_lengths(batch, runs) if runs else payload_lengths(batch)
            if batch:
                good = verified(buf, first, batch, lengths)
                if good < len(batch):
                    # the slow path below finds the bad checksum again and reports it
                    del batch[good:]
                    lengths = None
                    pos = first + sum(map(len, batch)) + 16 * good
            if batch:
                if cut is None or base + pos < cut:
                    parts = [(0, len(batch), base + pos, False)]
                else:  # batches that end at the records reaching each cut
                    parts, cut = batch_cuts(batch, lengths, base + first, cut, batch_bytes)
                start = base + first
                for i, j, end, at_cut in parts:
                    self.offset = end
                    self.records += j - i
                    self._seen = (end - 4, buf[end - base - 4 : end - base])
                    whole = j - i == len(batch)
                    yield Frames(
                        start,
                        batch if whole else batch[i:j],
                        lengths if whole or lengths is None else lengths[i:j],
                        at_cut,
                        buf,
                        start - base,
                    )
                    start = end
            # Out of the fast loop: a header not seen before, a bad record, or
            # the end of what has been read.
            if n - pos >= HEADER_BYTES:
                length = self._header_length(buf[pos : pos + HEADER_BYTES])
                if length is None:
                    eof = self._zeros_to_eof(f, buf, base, pos, CHUNK_BYTES)
                    if eof is _SPENT:
                        self._stop_at_budget(base + pos)
                        return
                    if eof is not None:
                        if final and self._hole_reported_at != base + pos:
                            self.report_problem(
                                ZERO_PADDING, base + pos, f"{eof - base - pos} zero bytes at end of file"
                            )
                        self.offset = eof if final else base + pos
                        return
                    self._start_resync(base + pos, "bad length checksum or impossible length")
                    pos += 1
                    continue
                stop = pos + HEADER_BYTES + length
                if stop + FOOTER_BYTES <= n:
                    if _CRC.unpack_from(buf, stop)[0] == masked_crc32c(buf[pos + HEADER_BYTES : stop]):
                        continue  # a new record length, now known: the fast loop takes it
                    self._start_resync(base + pos, f"bad payload checksum ({length}-byte record)")
                    pos += 1
                    continue
                need = stop + FOOTER_BYTES - n
            else:
                need = HEADER_BYTES - (n - pos)
            more = self._read_more(f, buf, base, pos, need, base + pos > self._call_start, CHUNK_BYTES)
            if more is None:
                self._stop_at_budget(base + pos)
                return
            if more:
                buf = more
                base += pos
                pos = 0
                continue
            # At EOF, with all that is left of the file in ``buf``.
            if n - pos >= HEADER_BYTES and self._valid_record_follows(
                buf, pos, None if final else CHUNK_BYTES
            ):
                # Complete records after one that claims to run past the end
                # of the file: its length was corrupt, the file was not cut.
                self._start_resync(base + pos, f"{length}-byte record runs past the end of the file")
                pos += 1
                continue
            self._at_eof(buf, base, pos, final)
            return

    def _valid_record_follows(self, buf: bytes, pos: int, within: int | None = CHUNK_BYTES) -> bool:
        """Whether a complete, valid record starts after ``pos`` (within ``within`` bytes).

        A record header whose record cannot complete is trusted only until
        then: a writer never writes a record after an unfinished one.
        """
        return self._scan(buf, pos + 1, None if within is None else pos + 1 + within)[1] is _FOUND

    def _start_resync(self, offset: int, detail: str) -> None:
        self.report_problem(CORRUPT, offset, detail + "; skipping to the next valid record")
        self.resyncing = True

    def _scan(self, buf: bytes, pos: int, end: int | None = None) -> tuple[int, str]:
        return scan_for_record(buf, pos, end, self._header_length, self.max_record_bytes < 1 << 32)
