"""The columnar reader gives the per-point reader's points, grouped per tag and batch, offsets exact."""

from __future__ import annotations

import os
import random
import struct

import numpy as np
import pytest
from tensorboard.compat.proto import types_pb2
from test_records import DAMAGED, Recorder, flip, header
from test_scalars import TENSOR_CASES, load_bench, random_events, writer_points
from writers import (
    WRITERS,
    event,
    file_version,
    metadata,
    simple,
    tensor,
    tensor_value,
    write_events,
    write_scalars,
)

from gradwatch.events import records, scalars
from gradwatch.events.columns import Columns
from gradwatch.events.framing import frame
from gradwatch.events.logdir import LogdirReader
from gradwatch.events.scalars import EventFileReader
from gradwatch.events.source import LocalFile

WALL = 1_700_000_000.0


def _write(path, n_steps: int, tags=("a/grad_norm", "b/loss")) -> None:
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(path), flush_secs=3600, max_queue=10_000)
    for step in range(n_steps):
        for k, tag in enumerate(tags):
            w.add_scalar(tag, step * 1.5 + k, step)
    w.close()


def _flatten(batches):
    return [(c.tag, s, w, v) for columns in batches for c in columns for s, w, v in c.points()]


def _file(d):
    return next(str(p) for p in d.iterdir() if "tfevents" in p.name)


def test_columns_hold_the_per_point_readers_points_in_file_order_per_tag(tmp_path):
    _write(tmp_path, 3000)
    path = _file(tmp_path)
    expected = list(EventFileReader(path).read(final=True))
    batches = list(EventFileReader(path).read_columns(final=True))
    got = _flatten(batches)
    assert sorted(got, key=lambda p: (p[0], p[1])) == sorted(expected, key=lambda p: (p[0], p[1]))
    for columns in batches:
        for c in columns:
            assert c.steps.dtype == np.int64 and c.values.dtype == np.float64
            assert list(c.steps) == sorted(c.steps)  # file order within a tag


def test_each_yield_leaves_the_offset_past_whole_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 4096)
    _write(tmp_path, 2000)
    path = _file(tmp_path)
    reader = EventFileReader(path)
    seen = 0
    for columns in reader.read_columns(final=True):
        seen += sum(len(c) for c in columns)
        # a fresh reader from this offset reads exactly the points not yet seen
        rest = sum(1 for _ in EventFileReader(path, reader.offset).read(final=True))
        assert seen + rest == 4000
    assert seen == 4000


def test_logdir_columns_name_the_run(tmp_path):
    _write(tmp_path / "r1", 10)
    _write(tmp_path / "r2", 10)
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    runs = {run for run, _ in reader.read_all_columns(final=True)}
    assert runs == {"r1", "r2"}


# ---------------------------------------------------------------- the bulk decoder == the per-point reader
#
# Every event file the reader's own tests use goes through both readers: the same points
# per tag (compared by their bits), the same offset at the end, the same problems. Each
# case runs twice: with the default threshold (short batches are decoded one record at a
# time) and with every batch decoded in bulk, however short (``_BULK_MIN_RECORDS`` = 1).


@pytest.fixture(params=["bulk", "default"])
def bulk(request, monkeypatch):
    if request.param == "bulk":
        monkeypatch.setattr(scalars, "_BULK_MIN_RECORDS", 1)
    return request.param


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def by_tag(points) -> dict[str, list[tuple[int, bytes, bytes]]]:
    out: dict = {}
    for tag, step, wall_time, value in points:
        out.setdefault(tag, []).append((step, bits(wall_time), bits(value)))
    return out


def columns_points(batches) -> list[tuple[str, int, float, float]]:
    """The points of read_columns' batches, checking each batch's shape on the way."""
    out = []
    for columns in batches:
        assert columns, "a batch without points was yielded"
        assert len({c.tag for c in columns}) == len(columns), "a tag twice in one batch"
        for c in columns:
            assert c.steps.dtype == np.int64 and c.wall_times.dtype == np.float64
            assert c.values.dtype == np.float64 and len(c.wall_times) == len(c.values) == len(c) > 0
            out.extend((c.tag, s, w, v) for s, w, v in c.points())
    return out


class Both:
    """A per-point and a columnar reader of one file, read in step, each with its Recorder."""

    def __init__(self, path: str, offset: int = 0, **options) -> None:
        self.points = EventFileReader(path, offset, on_problem=Recorder(), **options)
        self.columns = EventFileReader(path, offset, on_problem=Recorder(), **options)

    def read(self, final: bool = True, budget: int | None = None) -> int:
        """One read call of each; asserts they read the same. Returns how many points."""
        want = [(point, self.points.offset) for point in self.points.read(final, budget)]
        got = [(columns, self.columns.offset) for columns in self.columns.read_columns(final, budget)]
        assert by_tag(columns_points(c for c, _ in got)) == by_tag(p for p, _ in want)
        # Each yield is what group_points makes of the per-point reader's points of the
        # records before the offset it left: tags in order of first point, file order.
        i = 0
        for columns, offset in got:
            span = []
            while i < len(want) and want[i][1] <= offset:
                span.append(want[i][0])
                i += 1
            assert [(c.tag, by_tag((c.tag, *p) for p in c.points())) for c in columns] == [
                (c.tag, by_tag((c.tag, *p) for p in c.points())) for c in group_points(span)
            ]
        assert self.columns.offset == self.points.offset
        assert self.columns.pending == self.points.pending
        assert self.columns.tail.on_problem.reports == self.points.tail.on_problem.reports
        assert self.columns.tail.problems == self.points.tail.problems
        assert self.columns.undecodable == self.points.undecodable
        return len(want)


def assert_same_reading(path: str, final: bool = True, **options) -> int:
    """Both readers of ``path``, twice (the second call reads nothing new). Returns the points."""
    both = Both(path, **options)
    n = both.read(final)
    assert both.read(final) == 0
    return n


def scalar_records(n: int, tags: int = 3, wall_time: float = WALL) -> list[bytes]:
    return [
        frame(event([simple(f"t{i % tags}", i * 0.5)], step=i, wall_time=wall_time + i)) for i in range(n)
    ]


S = scalar_records(300)
GOOD = b"".join(S)
MID = sum(map(len, S[:150]))  # where record 150 starts
GARBAGE = random.Random(7).randbytes(64 << 10)

# test_records' damaged files, with records that hold scalars (long enough for the bulk path)
DAMAGED_SCALARS = {
    "truncated mid-header": GOOD + S[0][:7],
    "truncated mid-payload": GOOD + S[0][:30],
    "truncated mid-footer": GOOD + S[0][:-2],
    "payload CRC flip in the middle": flip(GOOD, MID + 20),
    "length CRC flip in the middle": flip(GOOD, MID + 9),
    "footer flip in the middle": flip(GOOD, MID - 1),
    "garbage, then records": GARBAGE + GOOD,
    "records, garbage, records": GOOD + GARBAGE + GOOD,
    "length over the limit": GOOD[:MID] + header(1 << 40) + GOOD,
    "huge valid length at the end": GOOD + header(200 << 20) + b"x" * 100,
    "huge valid length, then records": GOOD[:MID] + header(200 << 20) + GOOD,
    "zero-padded tail": GOOD + b"\0" * 5000,
    "zeros, then records": GOOD + b"\0" * 5000 + GOOD,
    "undecodable in the middle": GOOD[:MID] + frame(b"\xff\xff\xff\xff not a protobuf") + GOOD[MID:],
    "empty payload in the middle": GOOD[:MID] + frame(b"") + GOOD[MID:],
}


@pytest.mark.parametrize("final", [True, False], ids=["final", "tailing"])
@pytest.mark.parametrize("name", [*DAMAGED_SCALARS, *(f"records: {n}" for n in DAMAGED)])
def test_damaged_files_read_the_same_in_columns(name, final, bulk, tmp_path):
    data = DAMAGED_SCALARS[name] if name in DAMAGED_SCALARS else DAMAGED[name.split(": ", 1)[1]][0]
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(data)
    assert_same_reading(str(path), final)


def test_sparse_hole_replaced_and_shrunk_files_read_the_same(bulk, tmp_path):
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(GOOD)
    both = Both(str(path))
    assert both.read(final=False) == 300
    with open(path, "r+b") as f:  # a 64 MiB hole, awaited like zeros
        f.truncate(len(GOOD) + (64 << 20))
    assert both.read(final=False) == 0
    with open(path, "ab") as f:  # records after the hole
        f.write(GOOD)
    assert both.read(final=False) == 300
    path.write_bytes(GOOD[: len(GOOD) // 2])  # shrunk
    assert both.read(final=False) > 0
    path.write_bytes(
        b"".join(scalar_records(600, tags=5, wall_time=WALL + 0.5))
    )  # replaced: other bytes, longer
    assert both.read(final=True) > 0
    reports = {kind for kind, *_ in both.columns.tail.on_problem.reports}
    assert {"sparse_hole", "file_shrunk", "file_replaced"} <= reports


@pytest.mark.parametrize("kind", WRITERS)
def test_real_writers_read_the_same_in_columns(kind, bulk, tmp_path):
    points = writer_points() * 8  # odd tags, steps, NaN, -0.0, huge and negative steps
    path = write_scalars(kind, str(tmp_path / "run"), points)
    assert assert_same_reading(path) == len(points)


def hand_built_events() -> list[bytes]:
    """test_scalars' hand-built cases in one file: every tensor dtype and form, several
    values per event, metadata only on a tag's first event, a tag taken over by another
    plugin after its metadata-less tensors were learnt, odd steps and values."""
    payloads = [file_version()]
    for i, (tag, t, _) in enumerate(TENSOR_CASES):
        payloads.append(event([tensor_value(tag, t, metadata())], step=i + 1, wall_time=WALL + i))
        payloads += [event([tensor_value(tag, t)], step=i + 1000 + k, wall_time=WALL + k) for k in range(3)]
    for step in range(1, 80):
        payloads.append(event([simple("a", 1.0), simple("b", step), simple("a", -step)], step=step))
        payloads.append(event([tensor_value("hidden", tensor(float_val=[step]))], step=step, wall_time=WALL))
        if step == 40:  # from here on "hidden"'s metadata-less tensors are not scalars
            payloads.append(event([tensor_value("hidden", tensor(float_val=[0.0]), metadata("pr_curves"))]))
    odd_steps = [-(2**63), -1, 0, None, 1, 127, 128, 16383, 16384, 2**21, 2**49, 2**56 - 1, 2**56, 2**63 - 1]
    odd_values = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45, 3.4028234663852886e38]
    for i, step in enumerate(odd_steps * 3):
        value = odd_values[i % len(odd_values)]
        payloads.append(
            event([simple("simple", value)], step=step, wall_time=None if i % 4 == 3 else WALL + i)
        )
        double = tensor(types_pb2.DT_DOUBLE, double_val=[value])
        payloads.append(event([tensor_value("double", double, metadata())], step=step, wall_time=WALL))
    return payloads


def taken_over(n: int, plugin_at: int) -> list[bytes]:
    """``n`` metadata-less tensors of one tag (scalars: learnt as a template), another
    plugin's metadata for that tag before the ``plugin_at``-th: no scalar from there on."""
    payloads = [
        event([tensor_value("late", tensor(float_val=[i]))], step=i, wall_time=WALL) for i in range(n)
    ]
    payloads.insert(plugin_at, event([tensor_value("late", tensor(float_val=[0.0]), metadata("pr_curves"))]))
    return payloads


def test_a_tag_taken_over_by_another_plugin_reads_the_same(bulk, tmp_path):
    """In one batch, and after the template was learnt in an earlier read."""
    path = write_events(str(tmp_path / "events.out.tfevents.1"), taken_over(2000, 1000))
    assert assert_same_reading(path) == 1000
    both = Both(write_events(str(tmp_path / "events.out.tfevents.2"), taken_over(500, 500)))
    assert both.read(final=False) == 500
    write_events(both.points.path, taken_over(1000, 0), mode="ab")
    assert both.read(final=False) == 0


def test_hand_built_events_read_the_same_in_columns(bulk, tmp_path):
    path = write_events(str(tmp_path / "events.out.tfevents.1"), hand_built_events())
    assert assert_same_reading(path) > 300


def test_random_events_read_the_same_in_columns(bulk, tmp_path):
    """test_scalars' random mix: every float32 bit pattern (signalling NaNs too), steps of
    every varint length, damaged payloads, non-scalar events beside scalar ones."""
    for seed in range(3):
        payloads = random_events(random.Random(seed), 4000)
        path = write_events(str(tmp_path / f"events.out.tfevents.{seed}"), payloads)
        assert assert_same_reading(path) > 1000


@pytest.mark.parametrize("form", ["simple", "tensor"])
def test_bench_files_read_the_same_in_columns(form, tmp_path):
    bench = load_bench()
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(bench.event_records(form, bench.bench_points(30_000, seed=5), WALL))
    assert assert_same_reading(str(path)) == 30_000


def test_budgeted_reads_resume_where_they_stopped(bulk, tmp_path, monkeypatch):
    """Small chunks and a tiny budget: many calls, each ending at an exact offset; together
    they read what one call reads, in columns as per point."""
    monkeypatch.setattr(records, "CHUNK_BYTES", 4096)
    path = write_events(str(tmp_path / "events.out.tfevents.1"), random_events(random.Random(9), 3000))
    both = Both(path)
    total = calls = 0
    while True:
        total += both.read(final=True, budget=1)
        calls += 1
        if not both.columns.pending:
            break
    assert calls > 20
    whole = Both(path)
    assert whole.read(final=True) == total
    # a fresh reader from any offset a budgeted read left reads the rest the same way
    assert Both(path, offset=both.columns.offset).read(final=True) == 0


def test_a_file_read_while_it_is_written_reads_the_same(bulk, tmp_path):
    """Appended in pieces cut anywhere (mid-header, mid-payload), read after each."""
    rng = random.Random(3)
    data = b"".join(map(frame, random_events(rng, 3000)))
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(b"")
    both = Both(str(path))
    cut = 0
    while cut < len(data):
        step = rng.choice([1, 7, 100, 5000, 50_000])
        with open(path, "ab") as f:
            f.write(data[cut : cut + step])
        cut += step
        both.read(final=False)
    both.read(final=True)
    assert both.columns.offset == len(data)


class FailingOnce(LocalFile):
    """A local file whose 4th read fails once, as a disk or a bucket's GET can (EIO)."""

    reads = 0

    def read(self, size: int) -> bytes:
        FailingOnce.reads += 1
        if FailingOnce.reads == 4:
            raise OSError(5, "Input/output error")
        return super().read(size)


def test_a_read_that_fails_part_way_loses_no_point(tmp_path, monkeypatch):
    """Points decoded but not yet yielded when reading fails are read again next time:
    the offset goes back to where the last yield left it."""
    monkeypatch.setattr(records, "CHUNK_BYTES", 4096)  # several chunks to one yield
    path = write_events(str(tmp_path / "events.out.tfevents.1"), random_events(random.Random(4), 2000))
    reader = EventFileReader(path, on_problem=Recorder(), opener=FailingOnce)
    got = []
    with pytest.raises(OSError, match="Input/output error"):
        for columns in reader.read_columns(final=True):
            got += columns_points([columns])
    got += columns_points(reader.read_columns(final=True))
    want = list(EventFileReader(path, on_problem=Recorder()).read(final=True))
    assert by_tag(got) == by_tag(want)
    assert reader.offset == os.path.getsize(path)


class CountingDecoder(scalars.ScalarDecoder):
    """Counts the records decoded one at a time (everything else was decoded in bulk)."""

    __slots__ = ("one_at_a_time",)

    def __init__(self) -> None:
        super().__init__()
        self.one_at_a_time = 0

    def decode(self, payload):
        self.one_at_a_time += 1
        return super().decode(payload)


def test_scalar_records_are_decoded_in_bulk_whatever_their_step(tmp_path):
    """The bulk path decodes steps of every varint length (1 to 10 bytes, negative ones
    too): only a tag's first records go one at a time."""
    steps = [0, 200, 40_000, 2**21 + 1, 2**28 + 1, 2**35 + 1, 2**42 + 1, 2**49 + 1, 2**56 + 1, 2**63 - 1, -3]
    points = [(f"t{i % 4}", steps[i % len(steps)] - i // 100, 0.25 * i, WALL + i) for i in range(20_000)]
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(load_bench().event_records("simple", points, WALL))
    reader = EventFileReader(str(path))
    reader.decoder = CountingDecoder()
    got = columns_points(reader.read_columns(final=True))
    assert by_tag(got) == by_tag(EventFileReader(str(path)).read(final=True))
    assert reader.decoder.one_at_a_time < len(points) / 50


def test_a_replaced_file_is_read_again_a_batch_at_a_time(tmp_path, monkeypatch):
    """A file replaced by another after its reader had gone far into it is read again from
    the start in batches of about _COLUMN_BATCH_BYTES, not all at once at the end."""
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 16 << 10)
    monkeypatch.setattr(records, "CHUNK_BYTES", 4096)  # batches of a few KB
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(b"".join(scalar_records(20_000)))
    both = Both(str(path))
    assert both.read(final=False) == 20_000
    path.write_bytes(b"".join(scalar_records(5000, wall_time=WALL + 0.5)))  # replaced, shorter
    yields = list(both.columns.read_columns(final=False))
    assert sum(len(c) for columns in yields for c in columns) == 5000
    assert len(yields) > 10


def group_points(points: list[tuple[str, int, float, float]]) -> list[Columns]:
    """The oracle (what read_columns once did): points -> one Columns per tag, tags in first-point order."""
    by_tag: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for tag, step, wall_time, value in points:
        cols = by_tag.get(tag)
        if cols is None:
            cols = by_tag[tag] = ([], [], [])
        cols[0].append(step)
        cols[1].append(wall_time)
        cols[2].append(value)
    return [
        Columns(
            tag,
            np.array(steps, dtype=np.int64),
            np.array(walls, dtype=np.float64),
            np.array(values, dtype=np.float64),
        )
        for tag, (steps, walls, values) in by_tag.items()
    ]
