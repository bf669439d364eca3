"""TFRecord framing: ``uint64 length | uint32 masked_crc32c(length) | payload |
uint32 masked_crc32c(payload)``, little endian; writing one record, and checking
the payload checksums of a batch of records at once (the reader's hot path)."""

from __future__ import annotations

import bisect
import itertools
import re
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import google_crc32c

if TYPE_CHECKING:
    import numpy as np

HEADER_BYTES = 12
FOOTER_BYTES = 4

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_crc32c = google_crc32c.value
_ZERO4 = b"\0" * 4
_ZERO12 = b"\0" * 12
NONZERO = re.compile(rb"[^\x00]")

# what scan_for_record found
FOUND = "found"
PARTIAL = "partial"
NONE = "none"


def masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One TFRecord around ``payload`` (used by tests and the flag writer)."""
    header = _LENGTH.pack(len(payload))
    return header + _CRC.pack(masked_crc32c(header)) + payload + _CRC.pack(masked_crc32c(payload))


# Batches at least this long are checked with numpy: one C call per record
# (the CRC) instead of a dozen bytecodes (CRC, unpack, mask, compare).
NUMPY_MIN_BATCH = 32


def _verified_py(buf: bytes, first: int, batch: list[bytes]) -> int:
    pos = first
    for i, payload in enumerate(batch):
        stop = pos + HEADER_BYTES + len(payload)
        if _CRC.unpack_from(buf, stop)[0] != masked_crc32c(payload):
            return i
        pos = stop + FOOTER_BYTES
    return len(batch)


def payload_lengths(batch: list[bytes]):
    """The length of each payload, as an int64 numpy array."""
    import numpy as np  # tensorboard's own dependency; imported when a batch is long enough

    return np.fromiter(map(len, batch), np.int64, count=len(batch))


def batch_lengths(batch: list[bytes], runs: list[tuple[int, np.ndarray]]):
    """payload_lengths of a batch part of which was taken as runs of repeating lengths
    (``(first index, their lengths)`` each, as repeat_walked gives them): known without a
    len() per record."""
    import numpy as np  # tensorboard's own dependency; imported when a batch is long enough

    pieces = []
    i = 0
    for start, lengths in runs:
        if start > i:
            pieces.append(payload_lengths(batch[i:start]))
        pieces.append(lengths)
        i = start + len(lengths)
    if i < len(batch):
        pieces.append(payload_lengths(batch[i:]))
    return np.concatenate(pieces)


def _verified_numpy(buf: bytes, first: int, batch: list[bytes], lengths=None) -> int:
    import numpy as np  # tensorboard's own dependency; imported when a batch is long enough

    k = len(batch)
    crcs = np.fromiter(map(_crc32c, batch), np.uint32, count=k)
    masked = crcs >> 15  # masked in place: uint32 wraps like & 0xFFFFFFFF
    crcs <<= 17
    masked |= crcs
    masked += np.uint32(0xA282EAD8)
    footers = (payload_lengths(batch) if lengths is None else lengths) + (HEADER_BYTES + FOOTER_BYTES)
    np.cumsum(footers, out=footers)
    footers += first - FOOTER_BYTES
    # every footer at once: a view with a uint32 at each byte offset, indexed by where they are
    footer_at = np.ndarray((len(buf) - FOOTER_BYTES + 1,), "<u4", buffer=buf, strides=(1,))
    wrong = masked != footer_at[footers]
    first_wrong = int(wrong.argmax())
    return first_wrong if wrong[first_wrong] else k


def verified_prefix(buf: bytes, first: int, batch: list[bytes], lengths=None) -> int:
    """How many of ``batch`` (records framed back to back in ``buf`` from
    ``first``) have a valid payload checksum, before the first that does not;
    ``lengths``: the payloads' (payload_lengths), when already known."""
    if len(batch) < NUMPY_MIN_BATCH:
        return _verified_py(buf, first, batch)
    return _verified_numpy(buf, first, batch, lengths)


def scan_for_record(
    buf: bytes,
    pos: int,
    end: int | None,
    header_length: Callable[[bytes], int | None],
    sparse: bool,
) -> tuple[int, str]:
    """Find the next record from ``pos`` (starting before ``end``): (where, FOUND | PARTIAL | NONE).

    FOUND: a complete record with both checksums valid starts there;
    PARTIAL: a valid header whose record does not fit in ``buf``;
    NONE: nothing before the last 11 bytes, where the scan goes on later.
    ``header_length`` gives a header's length, or None for an invalid one; ``sparse``: valid
    lengths are under 4 GiB, so their four high bytes are zero and the scan jumps from one
    such spot to the next instead of testing every byte.
    """
    last = len(buf) - HEADER_BYTES
    if end is not None:
        last = min(last, end - 1)
    while pos <= last:
        if sparse:
            at = buf.find(_ZERO4, pos + 4)
            if at < 0 or at - 4 > last:
                break
            pos = at - 4
            if buf[pos : pos + 12] == _ZERO12:
                # 12 zero bytes are never a header; skip the zero run.
                m = NONZERO.search(buf, pos + 12)
                if m is None:
                    break
                pos = m.start() - 11
                continue
        length = header_length(buf[pos : pos + HEADER_BYTES])
        if length is not None:
            stop = pos + HEADER_BYTES + length
            if stop + FOOTER_BYTES > len(buf):
                return pos, PARTIAL
            if _CRC.unpack_from(buf, stop)[0] == masked_crc32c(buf[pos + HEADER_BYTES : stop]):
                return pos, FOUND
        pos += 1
    return max(pos, len(buf) - HEADER_BYTES + 1), NONE


# ---------------------------------------------------------------- framing runs of records at once

# Most records framed by one call of ``repeating_run`` (bounds its arrays: 4 MiB at most).
MAX_RUN_RECORDS = 1 << 16


def period(lengths: list[int]) -> int | None:
    """The smallest p with lengths[i] == lengths[i - p] throughout (at most half the list):
    a writer logging the same tags every step repeats its record lengths with that period."""
    for p in range(1, len(lengths) // 2 + 1):
        if lengths[p:] == lengths[:-p]:
            return p
    return None


def header(length: int) -> bytes:
    """The one valid header of a ``length``-byte record."""
    packed = _LENGTH.pack(length)
    return packed + _CRC.pack(masked_crc32c(packed))


def repeating_run(buf: bytes, pos: int, pattern: list[int]) -> tuple[list[bytes], int]:
    """The payloads of the records from ``pos`` whose lengths go on repeating ``pattern``
    (``pattern[0]`` first), and the position after the last of them (see _run)."""
    payloads, end, _ = _run(buf, pos, pattern)
    return payloads, end


def _run(buf: bytes, pos: int, pattern: list[int]) -> tuple[list[bytes], int, np.ndarray]:
    """The payloads of the records from ``pos`` whose lengths go on repeating ``pattern``
    (``pattern[0]`` first), the position after the last of them, and their lengths.

    Each is taken only where the 12 bytes at its predicted start are the valid header
    of its predicted length and the whole record is in ``buf``, up to the first that is
    not: exactly the records a header-by-header walk finds there (their payload
    checksums are checked afterwards, as the walk's are). Verified with numpy for all
    the records at once instead of a dictionary lookup and two slices each.
    """
    import numpy as np

    # One repetition of the pattern (a block) is ``block`` bytes, so the headers of the
    # records at one place in the pattern are ``block`` bytes apart: read through a
    # strided view, compared without gathering them (numpy gathers unaligned items
    # several times slower than it compares them in place).
    p = len(pattern)
    ends = list(itertools.accumulate((n + HEADER_BYTES + FOOTER_BYTES for n in pattern), initial=0))
    block = ends[-1]
    full, rest = divmod(len(buf) - pos, block)
    fits = min(full * p + bisect.bisect_right(ends, rest) - 1, MAX_RUN_RECORDS)
    k = fits
    for j, n in enumerate(pattern[:fits]):
        count = (fits - j + p - 1) // p  # records at place j among the first ``fits``
        at = pos + ends[j]
        # a header: its length (8 bytes) and that length's masked checksum (4)
        wrong = np.ndarray((count,), "<i8", buffer=buf, offset=at, strides=(block,)) != n
        checksum = masked_crc32c(_LENGTH.pack(n))
        wrong |= np.ndarray((count,), "<u4", buffer=buf, offset=at + 8, strides=(block,)) != checksum
        first = int(wrong.argmax())
        if wrong[first]:
            k = min(k, first * p + j)
    lengths = np.tile(np.array(pattern, np.int64), -(-k // p))[:k]
    if not k:
        return [], pos, lengths
    return _payloads(buf, pos, pattern, k), pos + k // p * block + ends[k % p], lengths


def at_every_byte(buf: bytes, dtype: str) -> np.ndarray:
    """A view of ``buf`` with one ``dtype`` item starting at every byte offset (no copy)."""
    import numpy as np

    size = np.dtype(dtype).itemsize
    return np.ndarray((len(buf) - size + 1,), dtype=dtype, buffer=buf, strides=(1,))


_block_formats: dict[tuple[int, ...], tuple[struct.Struct, list[int]]] = {}
# Records unpacked per struct call at least: the pattern is repeated to that many (a tuple
# per unpack costs about as much as 3 records; 32 records: 32 -> 22 ns a record)
_BLOCK_RECORDS = 32


def _payloads(buf: bytes, pos: int, pattern: list[int], k: int) -> list[bytes]:
    """The payloads of the ``k`` records from ``pos`` whose lengths repeat ``pattern``:
    one struct unpack per block of records (the pattern repeated), not a slice each."""
    entry = _block_formats.get(tuple(pattern))
    if entry is None:
        if len(_block_formats) > 64:
            _block_formats.clear()
        lengths = pattern * -(-_BLOCK_RECORDS // len(pattern))
        entry = _block_formats[tuple(pattern)] = (
            struct.Struct("".join(f"12x{n}s4x" for n in lengths)),
            lengths,
        )
    block, lengths = entry
    blocks = k // len(lengths)
    stop = pos + blocks * block.size
    payloads = list(itertools.chain.from_iterable(block.iter_unpack(memoryview(buf)[pos:stop])))
    for n in lengths[: k - blocks * len(lengths)]:  # the last, partial block
        payloads.append(buf[stop + HEADER_BYTES : stop + HEADER_BYTES + n])
        stop += n + HEADER_BYTES + FOOTER_BYTES
    return payloads


def batch_cuts(
    batch: list[bytes], lengths: np.ndarray | None, start: int, cut: int, batch_bytes: int
) -> tuple[list[tuple[int, int, int, bool]], int]:
    """``batch`` (framed from file offset ``start``) in parts that each end at the first
    record ending at or after a cut, the next cut ``batch_bytes`` after that end:
    ([(first index, end index, file offset after, whether it ends at a cut)], next cut).
    A part has at least one record: ``cut`` may be behind ``start`` (a resync skipped
    past it)."""
    if lengths is None:  # a short batch (under NUMPY_MIN_BATCH records)
        ends = list(itertools.accumulate(len(p) + 16 for p in batch))
        first_reaching = bisect.bisect_left
    else:
        import numpy as np  # imported already: ``lengths`` is an array

        ends = np.cumsum(lengths + 16)
        first_reaching = np.searchsorted
    parts = []
    i, n = 0, len(batch)
    while i < n:
        k = max(int(first_reaching(ends, cut - start)), i)
        if k >= n:
            parts.append((i, n, start + int(ends[-1]), False))
            break
        end = start + int(ends[k])
        parts.append((i, k + 1, end, True))
        cut = end + batch_bytes
        i = k + 1
    return parts, cut


def repeat_walked(
    buf: bytes, pos: int, walked: list[bytes]
) -> tuple[list[bytes], int, np.ndarray | None, int]:
    """Records from ``pos`` whose lengths repeat those just ``walked``: (payloads, position
    after, their lengths, the period of the pattern; None and 0 when none repeat). The
    lengths are looked for in the last half of the walk too: a file's first record
    (file_version) is not in its writer's pattern."""
    lengths = list(map(len, walked))
    p = period(lengths) or period(lengths[len(lengths) // 2 :])
    if p is None:
        return [], pos, None, 0
    return (*_run(buf, pos, lengths[-p:]), p)
