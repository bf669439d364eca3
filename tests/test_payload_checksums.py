"""Every record's payload checksum is checked where records are framed in bulk (runs of
repeating lengths, the numpy check of long batches): a file written by a real writer with
one payload byte changed, wherever that record is, loses exactly that record, reported once
at its offset, by the record reader and by the columns reader alike.

(test_records' numpy/python agreement test damages the framed bytes but checks the payloads
as they were written, so it sees footer damage only.)
"""

from __future__ import annotations

import struct

import pytest
from test_records import Recorder

from gradwatch.events.records import CORRUPT, RecordTail
from gradwatch.events.scalars import EventFileReader

STEPS = 400
TAGS = ("gradients/actor_cnn_norm", "gradients/actor_mlp_norm", "train/q_value")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[bytes, list[int]]:
    """A tensorboardX file of STEPS steps of TAGS: its bytes and where each record starts."""
    from tensorboardX import SummaryWriter

    logdir = tmp_path_factory.mktemp("written")
    w = SummaryWriter(str(logdir), flush_secs=3600, max_queue=100_000)
    for step in range(STEPS):
        for k, tag in enumerate(TAGS):
            w.add_scalar(tag, step * 0.5 + k, step)
    w.close()
    data = next(p for p in logdir.iterdir() if "tfevents" in p.name).read_bytes()
    starts, at = [], 0
    while at < len(data):
        starts.append(at)
        at += struct.unpack_from("<Q", data, at)[0] + 16
    assert at == len(data) and len(starts) == 1 + STEPS * len(TAGS)
    return data, starts


# the first scalar record (walked header by header), one in the first run, one deep in a
# run, the last one
@pytest.mark.parametrize("which", [1, 150, 700, -1])
def test_a_changed_payload_byte_loses_that_record_alone(which, written, tmp_path):
    data, starts = written
    which %= len(starts)
    start = starts[which]
    length = struct.unpack_from("<Q", data, start)[0]
    damaged = bytearray(data)
    damaged[start + 12 + length - 2] ^= 0x04  # in the value: still decodes, to another value
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(bytes(damaged))

    good = path.with_name("events.out.tfevents.0")
    good.write_bytes(data)
    all_payloads = list(RecordTail(str(good)).read(final=True))
    all_points = list(EventFileReader(str(good)).read(final=True))

    problems = Recorder()
    tail = RecordTail(str(path), on_problem=problems)
    assert list(tail.read(final=True)) == all_payloads[:which] + all_payloads[which + 1 :]
    assert problems.kinds == [(CORRUPT, start)]
    assert tail.offset == len(data)

    problems = Recorder()
    reader = EventFileReader(str(path), on_problem=problems)
    got = [
        (c.tag, s, w, v)
        for columns in reader.read_columns(final=True)
        for c in columns
        for s, w, v in c.points()
    ]
    want = all_points[: which - 1] + all_points[which:]  # the file-version record holds no point
    assert sorted(got) == sorted(want)
    assert problems.kinds == [(CORRUPT, start)]
    assert reader.offset == len(data)
