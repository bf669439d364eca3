"""A record cut by the end of a read chunk: its start is read again with the next chunk
(one copy instead of a read and a concatenation), and nothing else changes: every byte
counted once, and the bytes already read are the ones used."""

from __future__ import annotations

import os
import random

from writers import write_events

from gradwatch.events.framing import HEADER_BYTES
from gradwatch.events.records import CHUNK_BYTES, RecordTail


def payloads(rng: random.Random, total: int) -> list[bytes]:
    out, size = [], 0
    while size < total:
        out.append(
            rng.randbytes(rng.choice([30, 40, rng.randrange(9_000, 30_000), rng.randrange(100_000, 300_000)]))
        )
        size += len(out[-1]) + 16
    return out


def test_records_across_chunks_are_read_whole_and_every_byte_counted_once(tmp_path):
    rng = random.Random(7)
    want = payloads(rng, 6 * CHUNK_BYTES)
    path = write_events(str(tmp_path / "events.out.tfevents.1.h"), want)
    problems = []
    tail = RecordTail(path, on_problem=lambda *a: problems.append(a))
    got = list(tail.read(final=True))
    assert got == want
    assert problems == []
    assert tail.offset == os.path.getsize(path)
    assert tail.bytes_read == os.path.getsize(path)

    # the same a budget at a time (each call reads again from the last record it yielded)
    tail = RecordTail(path, on_problem=lambda *a: problems.append(a))
    got = []
    calls = 0
    while True:
        calls += 1
        got += tail.read(final=True, budget=CHUNK_BYTES)
        if not tail.pending:
            break
    assert got == want
    assert problems == []
    assert calls >= 6


def test_bytes_already_read_are_used_even_when_the_file_changed_since(tmp_path):
    """The start of a record read with one chunk is kept as read, as when it was
    concatenated with the next: the bytes read again are used only when they match."""
    size = 1000
    first = [bytes([i % 251]) * size for i in range(CHUNK_BYTES // (size + 16))]
    cut = len(first) * (size + 16)  # where the record the first chunk cuts starts
    assert cut + HEADER_BYTES < CHUNK_BYTES < cut + 16 + 50_000
    big = random.Random(3).randbytes(50_000)
    path = write_events(str(tmp_path / "events.out.tfevents.1.h"), [*first, big, b"after"])
    problems = []
    tail = RecordTail(path, on_problem=lambda *a: problems.append(a))
    got = []
    for i, payload in enumerate(tail.read(final=True)):
        if i == 0:
            # while the reader holds the first chunk: the cut record's header changes on disk
            with open(path, "r+b") as f:
                f.seek(cut)
                f.write(b"\xff" * HEADER_BYTES)
        got.append(payload)
    assert got == [*first, big, b"after"]
    assert problems == []
