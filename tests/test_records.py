"""TFRecord framing: tail reading, resuming, and damaged files.

Every damaged file gets a defined result, a counted problem, one log line with
file and offset, and no crash or hang (inputs are small and each read runs
under a hang guard).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import struct
import threading
import tracemalloc

import pytest

from gradwatch.events import records
from gradwatch.events.framing import _verified_numpy, _verified_py, frame, masked_crc32c
from gradwatch.events.logdir import ProblemLog
from gradwatch.events.records import CHUNK_BYTES, RecordTail


def payload(i: int, size: int | None = None) -> bytes:
    body = f"record {i} ".encode()
    return (body * (1 + (size or 40) // len(body)))[: size or 40 + i % 7]


def header(length: int) -> bytes:
    h = struct.pack("<Q", length)
    return h + struct.pack("<I", masked_crc32c(h))


class Recorder:
    """An on_problem handler that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str, int, str]] = []

    def __call__(self, kind: str, path: str, offset: int, detail: str) -> None:
        self.reports.append((kind, path, offset, detail))

    @property
    def kinds(self) -> list[tuple[str, int]]:
        return [(k, off) for k, _, off, _ in self.reports]


def read_guarded(tail: RecordTail, final: bool = False, timeout: float = 60.0) -> list[bytes]:
    """tail.read() in a thread: a hang fails the test instead of stalling the suite."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(list(tail.read(final))), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"read of {tail.path} did not finish"
    assert out, "read raised (see the thread's traceback above)"
    return out[0]


def write(path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def test_every_record_with_its_exact_offset(tmp_path):
    path = tmp_path / "events.out.tfevents.1"
    payloads = [payload(i) for i in range(100)] + [b"", payload(100, CHUNK_BYTES + 12345), payload(101)]
    write(path, b"".join(map(frame, payloads)))
    tail = RecordTail(str(path))
    ends = []
    got = []
    for p in tail.read():
        got.append(p)
        ends.append(tail.offset)
    assert got == payloads
    assert ends == [sum(len(p) + 16 for p in payloads[: i + 1]) for i in range(len(payloads))]
    assert tail.records == len(payloads) and tail.problems == {}


def test_many_chunks_and_both_checksum_paths(tmp_path):
    """A few MiB of records: batches long enough for the numpy check cross chunk borders."""
    path = tmp_path / "events.out.tfevents.1"
    payloads = [payload(i, 20 + i % 90) for i in range(60_000)]
    write(path, b"".join(map(frame, payloads)))
    assert os.path.getsize(path) > 3 * CHUNK_BYTES
    tail = RecordTail(str(path))
    assert read_guarded(tail) == payloads
    assert tail.offset == os.path.getsize(path)


@pytest.mark.parametrize("seed", range(20))
def test_numpy_and_python_checksum_checks_agree(seed):
    rng = random.Random(seed)
    batch = [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 200))]
    lead = rng.randbytes(rng.randrange(0, 20))
    buf = bytearray(lead + b"".join(map(frame, batch)))
    if rng.random() < 0.8:  # damage one payload or footer byte
        i = rng.randrange(len(batch))
        start = len(lead) + sum(len(p) + 16 for p in batch[:i]) + 12
        buf[start + rng.randrange(len(batch[i]) + 4)] ^= 1 << rng.randrange(8)
    want = _verified_py(bytes(buf), len(lead), batch)
    assert _verified_numpy(bytes(buf), len(lead), batch) == want


def test_tail_reads_only_new_bytes_and_resumes_from_an_offset(tmp_path):
    path = tmp_path / "events.out.tfevents.1"
    first = [payload(i) for i in range(5)]
    write(path, b"".join(map(frame, first)))
    tail = RecordTail(str(path))
    assert list(tail.read()) == first
    saved = tail.offset
    assert list(tail.read()) == []  # nothing new, nothing again

    # Garble what was already read (same size, same last bytes): a reader that
    # went back over it would report corruption or yield other records.
    with open(path, "r+b") as f:
        f.write(b"\xa5" * (saved - 4))
    more = [payload(i) for i in range(5, 9)]
    write(path, b"".join(map(frame, more)), "ab")
    assert list(tail.read()) == more
    assert tail.problems == {}

    # A new reader resuming at the saved offset (a daemon restart) reads the rest only.
    resumed = RecordTail(str(path), saved)
    assert list(resumed.read()) == more
    assert resumed.offset == tail.offset == os.path.getsize(path)


def test_partial_record_is_awaited_then_read(tmp_path, caplog):
    """A record written in pieces: nothing is reported while it grows, it is read once complete."""
    path = tmp_path / "events.out.tfevents.1"
    write(path, frame(payload(0)))
    problems = Recorder()
    tail = RecordTail(str(path), on_problem=problems)
    assert list(tail.read()) == [payload(0)]
    end0 = tail.offset
    record = frame(payload(1, 3000))
    cuts = [0, 5, 12, 13, 1500, len(record) - 4, len(record) - 1, len(record)]
    with caplog.at_level(logging.DEBUG, logger="gradwatch.events"):
        for a, b in itertools.pairwise(cuts):
            assert list(tail.read()) == []
            assert tail.offset == end0
            write(path, record[a:b], "ab")
        assert list(tail.read()) == [payload(1, 3000)]
    assert problems.reports == [] and caplog.records == []
    assert tail.offset == os.path.getsize(path)


def test_partial_record_at_the_end_of_a_finished_file_is_reported_once(tmp_path, caplog):
    path = tmp_path / "events.out.tfevents.1"
    whole = b"".join(frame(payload(i)) for i in range(3))
    write(path, whole + frame(payload(3))[:30])
    with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
        tail = RecordTail(str(path))
        assert read_guarded(tail, final=True) == [payload(i) for i in range(3)]
    assert tail.problems == {"truncated_record": 1}
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: offset {len(whole)}: truncated record: "
        "30 bytes at end of file do not form a complete record"
    ]
    assert tail.offset == os.path.getsize(path)


def test_shrunk_replaced_and_rsynced_files(tmp_path):
    path = tmp_path / "events.out.tfevents.1"
    write(path, b"".join(frame(payload(i)) for i in range(4)))
    problems = Recorder()
    tail = RecordTail(str(path), on_problem=problems)
    assert len(list(tail.read())) == 4

    # truncated and rewritten, shorter: read again from the start
    write(path, frame(b"new start"))
    assert list(tail.read()) == [b"new start"]
    assert problems.kinds == [("file_shrunk", 4 * (40 + 16) + sum(range(4)))]

    # replaced by another file, larger than what was read
    other = tmp_path / "other"
    write(other, b"".join(frame(payload(i, 100)) for i in range(3)))
    os.replace(other, path)
    assert list(tail.read()) == [payload(i, 100) for i in range(3)]
    assert problems.kinds[1:] == [("file_replaced", len(frame(b"new start")))]

    # an rsync'd copy (same bytes, then more) renamed over it: only the new records
    copy = tmp_path / "copy"
    write(copy, path.read_bytes() + frame(b"appended"))
    os.replace(copy, path)
    assert list(tail.read()) == [b"appended"]
    assert len(problems.reports) == 2


def records_of(n: int) -> list[bytes]:
    return [frame(payload(i)) for i in range(n)]


def at(recs: list[bytes], i: int) -> int:
    return sum(map(len, recs[:i]))


def flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0x10
    return bytes(b)


R = records_of(6)
GOOD = b"".join(R)
HUGE_VALID = header(200 << 20)  # under the 256 MiB limit, its length CRC right
OVER_LIMIT = header(1 << 40)
GARBAGE = random.Random(7).randbytes(64 << 10)

# name -> (file bytes, payload indexes read, problems when final, problems while tailing)
DAMAGED = {
    "zero-byte file": (b"", [], [], []),
    "truncated mid-header": (GOOD + R[0][:7], range(6), [("truncated_record", len(GOOD))], []),
    "truncated mid-payload": (GOOD + R[0][:30], range(6), [("truncated_record", len(GOOD))], []),
    "truncated mid-footer": (GOOD + R[0][:-2], range(6), [("truncated_record", len(GOOD))], []),
    "payload CRC flip in the middle": (
        flip(GOOD, at(R, 2) + 20),
        [0, 1, 3, 4, 5],
        [("corrupt_record", at(R, 2))],
        [("corrupt_record", at(R, 2))],
    ),
    "length CRC flip in the middle": (
        flip(GOOD, at(R, 3) + 9),
        [0, 1, 2, 4, 5],
        [("corrupt_record", at(R, 3))],
        [("corrupt_record", at(R, 3))],
    ),
    "footer flip in the middle": (
        flip(GOOD, at(R, 4) - 1),
        [0, 1, 2, 4, 5],
        [("corrupt_record", at(R, 3))],
        [("corrupt_record", at(R, 3))],
    ),
    "random garbage": (GARBAGE, [], [("corrupt_record", 0)], [("corrupt_record", 0)]),
    "garbage, then records": (GARBAGE + GOOD, range(6), [("corrupt_record", 0)], [("corrupt_record", 0)]),
    "length over the limit": (
        R[0] + OVER_LIMIT + GOOD,
        [0, 0, 1, 2, 3, 4, 5],
        [("corrupt_record", len(R[0]))],
        [("corrupt_record", len(R[0]))],
    ),
    "huge valid length at the end": (
        GOOD + HUGE_VALID + b"x" * 100,
        range(6),
        [("truncated_record", len(GOOD))],
        [],
    ),
    "huge valid length, then records": (
        R[0] + HUGE_VALID + GOOD,
        [0, 0, 1, 2, 3, 4, 5],
        [("corrupt_record", len(R[0]))],
        [("corrupt_record", len(R[0]))],
    ),
    "zero-padded tail": (GOOD + b"\0" * 5000, range(6), [("zero_padding", len(GOOD))], []),
    "short zero-padded tail": (GOOD + b"\0" * 5, range(6), [("zero_padding", len(GOOD))], []),
    "zeros, then records": (
        GOOD + b"\0" * 5000 + R[0],
        [*range(6), 0],
        [("corrupt_record", len(GOOD))],
        [("corrupt_record", len(GOOD))],
    ),
}


# Under 4 GiB the resync scan jumps between candidate headers; above, it tests every byte.
@pytest.mark.parametrize("limit", [records.DEFAULT_MAX_RECORD_BYTES, 1 << 33], ids=["jumping", "bytewise"])
@pytest.mark.parametrize("final", [True, False], ids=["final", "tailing"])
@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_file(name, final, limit, tmp_path, caplog):
    data, read_back, when_final, when_tailing = DAMAGED[name]
    path = tmp_path / "events.out.tfevents.1"
    write(path, data)
    problems = Recorder()
    counted = ProblemLog()

    def on_problem(*report) -> None:
        problems(*report)
        counted(*report)  # counts and logs, as the daemon does

    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
            tail = RecordTail(str(path), max_record_bytes=limit, on_problem=on_problem)
            got = read_guarded(tail, final)
            again = read_guarded(tail, final)  # a second poll reports nothing new
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == [payload(i) for i in read_back]
    assert again == []
    want = when_final if final else when_tailing
    assert problems.kinds == want
    assert tail.problems == counted.counts == {kind: 1 for kind, _ in want}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(want)
    for line, (kind, offset) in zip(lines, want):
        assert line.startswith(f"{path}: offset {offset}: {kind.replace('_', ' ')}: ")
    # no allocation sized by a length field: a few chunks at most
    assert peak < 4 * CHUNK_BYTES + 2 * len(data), f"peak allocation {peak} bytes"
    if final:
        assert tail.offset == len(data)  # the whole file is accounted for
    elif not want:
        # awaiting whatever follows the last complete record
        assert tail.offset == sum(len(frame(payload(i))) for i in read_back)


def test_each_problem_is_one_log_line_with_file_and_offset(tmp_path, caplog):
    path = tmp_path / "events.out.tfevents.1"
    write(path, R[0] + flip(R[1], 20) + R[2] + R[3][:9])
    with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
        tail = RecordTail(str(path))
        assert read_guarded(tail, final=True) == [payload(0), payload(2)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: offset {len(R[0])}: corrupt record: bad payload checksum")
    assert lines[1].startswith(f"{path}: offset {at(R, 3)}: truncated record: ")


def test_corruption_appearing_while_tailing(tmp_path):
    """A bad record arrives between polls; the records after it are still read."""
    path = tmp_path / "events.out.tfevents.1"
    write(path, R[0])
    problems = Recorder()
    tail = RecordTail(str(path), on_problem=problems)
    assert list(tail.read()) == [payload(0)]
    write(path, flip(R[1], 30) + R[2][:10], "ab")
    assert list(tail.read()) == []
    write(path, R[2][10:] + R[3], "ab")
    assert list(tail.read()) == [payload(2), payload(3)]
    assert problems.kinds == [("corrupt_record", len(R[0]))]


def test_fifo_named_like_an_event_file_is_not_opened_for_reading(tmp_path):
    path = tmp_path / "events.out.tfevents.fifo"
    os.mkfifo(path)
    with pytest.raises(OSError, match="not a regular file"):
        read_guarded_raising(RecordTail(str(path)))


def read_guarded_raising(tail: RecordTail) -> None:
    errors: list = []

    def run() -> None:
        try:
            list(tail.read())
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "opening the FIFO blocked"
    if errors:
        raise errors[0]


def test_record_limit_is_per_reader(tmp_path):
    """A header learned by a reader with a larger limit is not trusted by one with a smaller."""
    path = tmp_path / "events.out.tfevents.1"
    big = frame(payload(0, 5000))
    write(path, big + R[1])
    assert list(RecordTail(str(path)).read()) == [payload(0, 5000), payload(1)]
    problems = Recorder()
    small = RecordTail(str(path), max_record_bytes=1000, on_problem=problems)
    assert list(small.read(final=True)) == [payload(1)]
    assert problems.kinds == [("corrupt_record", 0)]
    assert records.DEFAULT_MAX_RECORD_BYTES > 5000
