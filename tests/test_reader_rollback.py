"""read_columns when reading fails part-way, its batch sizes, a template edge case, short records.

* A read that fails (OSError) leaves the reader exactly as its last yield left it (or as
  the call found it): offset, resync flag, per-file problem counts, records counted, and
  a retry reads what is left with every point once and every problem counted once.
* A batch of columns ends at about _COLUMN_BATCH_BYTES whatever the read's chunk or budget.
* A template learnt while another tag of its event belonged to another plugin is not used
  once that tag is a scalar again.
* The bulk decoder reads payloads in the bytes they were framed from, never past them.
"""

from __future__ import annotations

import os
import random
import threading

import pytest
from test_columns import Both, by_tag, columns_points
from test_records import Recorder, flip
from test_scalars import load_bench
from writers import event, file_version, metadata, simple, tensor, tensor_value, write_events

from gradwatch.events import decoder as decoder_module
from gradwatch.events import records, scalars
from gradwatch.events.framing import frame
from gradwatch.events.scalars import EventFileReader, ScalarDecoder, TemplateStore
from gradwatch.events.source import LocalFile

WALL = 1_700_000_000.0


def damaged_file(tmp_path) -> str:
    """Scalars, then records without points (histogram-like tensors of another plugin, an
    undecodable record, a corrupt one), then scalars again: problems and point-less stretches
    where a read can fail."""
    payloads = [file_version()]
    payloads += [event([simple(f"t{i % 3}", i * 0.5)], step=i, wall_time=WALL + i) for i in range(600)]
    payloads.append(event([tensor_value("h", tensor(float_val=[0.0]), metadata("histograms"))], step=1))
    payloads += [event([tensor_value("h", tensor(float_val=[i] * 40))], step=i) for i in range(300)]
    payloads.append(b"\xff\xff\xff\xff not a protobuf")
    payloads += [event([simple(f"t{i % 3}", -i)], step=1000 + i, wall_time=WALL) for i in range(600)]
    data = b"".join(map(frame, payloads))
    mid = len(data) * 2 // 3
    data = flip(data, mid) + b"".join(
        frame(event([simple("late", i)], step=i, wall_time=WALL)) for i in range(400)
    )
    path = str(tmp_path / "events.out.tfevents.1")
    with open(path, "wb") as f:
        f.write(data)
    return path


class FailingAt(LocalFile):
    """A local file whose ``fail_at``-th call (reads, sizes, preads together) fails once."""

    calls = 0
    fail_at = 0

    def _tick(self) -> None:
        FailingAt.calls += 1
        if FailingAt.calls == FailingAt.fail_at:
            raise OSError(5, "Input/output error")

    def size(self) -> int:
        self._tick()
        return super().size()

    def read(self, size: int) -> bytes:
        self._tick()
        return super().read(size)

    def pread(self, size: int, offset: int) -> bytes:
        self._tick()
        return super().pread(size, offset)


def state(reader: EventFileReader) -> tuple:
    tail = reader.tail
    return (tail.offset, tail.resyncing, dict(tail.problems), tail.records, reader.undecodable)


@pytest.fixture
def small_batches(monkeypatch):
    # many chunks and batches in a small file: a failure can land anywhere
    monkeypatch.setattr(records, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 6000)


def clean_reading(path: str) -> tuple[list, tuple, int]:
    FailingAt.calls, FailingAt.fail_at = 0, 0
    reader = EventFileReader(path, on_problem=Recorder(), opener=FailingAt)
    points = columns_points(reader.read_columns(final=True))
    return points, state(reader), FailingAt.calls


def test_a_failed_read_leaves_the_state_of_its_last_yield(small_batches, tmp_path):
    """Wherever the file fails (every call of the reading, in turn), the reader is left as
    its last yield left it; before any yield, as the call found it."""
    path = damaged_file(tmp_path)
    _, _, calls = clean_reading(path)
    assert calls > 20
    for fail_at in range(1, calls + 1):
        FailingAt.calls, FailingAt.fail_at = 0, fail_at
        reader = EventFileReader(path, on_problem=Recorder(), opener=FailingAt)
        handed = state(reader)
        with pytest.raises(OSError, match="Input/output error"):
            for _ in reader.read_columns(final=True):
                handed = state(reader)
        assert state(reader) == handed, f"failing at call {fail_at}"


def test_a_retried_read_reads_every_point_and_counts_every_problem_once(small_batches, tmp_path):
    path = damaged_file(tmp_path)
    want, want_state, calls = clean_reading(path)
    assert want_state[2] and want_state[4]  # problems and an undecodable record to count
    for fail_at in range(1, calls + 1):
        FailingAt.calls, FailingAt.fail_at = 0, fail_at
        reader = EventFileReader(path, on_problem=Recorder(), opener=FailingAt)
        got = []
        with pytest.raises(OSError, match="Input/output error"):
            for columns in reader.read_columns(final=True):
                got += columns_points([columns])
        got += columns_points(reader.read_columns(final=True))
        assert by_tag(got) == by_tag(want), f"failing at call {fail_at}"
        assert state(reader) == want_state, f"failing at call {fail_at}"


def test_a_failed_read_of_a_shrunk_file_counts_the_shrink_once(tmp_path):
    """The restart of a shrunk file is part of the read that failed: rolled back, then
    noticed (and counted) again by the retry, once in all."""
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(b"".join(frame(event([simple("a", i)], step=i, wall_time=WALL)) for i in range(500)))
    reader = EventFileReader(str(path), on_problem=Recorder(), opener=FailingAt)
    FailingAt.calls, FailingAt.fail_at = 0, 0
    assert len(columns_points(reader.read_columns(final=False))) == 500
    path.write_bytes(b"".join(frame(event([simple("a", i)], step=i, wall_time=WALL)) for i in range(100)))
    FailingAt.calls, FailingAt.fail_at = 0, 2  # the size, then the first read fails
    before = state(reader)
    with pytest.raises(OSError):
        list(reader.read_columns(final=False))
    assert state(reader) == before
    assert len(columns_points(reader.read_columns(final=False))) == 100
    assert reader.tail.problems == {records.SHRUNK: 1}
    assert reader.offset == os.path.getsize(path)


def reassigned_tag_file(tmp_path, first_plugin: str, later_plugin: str) -> str:
    """A tensor tag "x" of ``first_plugin``, logged without metadata with a scalar between its
    records (batches with points), then given to ``later_plugin`` by one record's metadata."""
    payloads = [file_version()]
    payloads.append(event([tensor_value("x", tensor(float_val=[0.0]), metadata(first_plugin))], step=0))
    for i in range(1, 200):
        payloads.append(event([tensor_value("x", tensor(float_val=[float(i)]))], step=i, wall_time=WALL + i))
        payloads.append(event([simple("z", float(i))], step=i, wall_time=WALL + i))
    payloads.append(event([tensor_value("x", tensor(float_val=[-1.0]), metadata(later_plugin))], step=200))
    payloads += [event([simple("y", float(i))], step=i, wall_time=WALL + i) for i in range(300)]
    return write_events(str(tmp_path / f"events.out.tfevents.{first_plugin}"), payloads)


@pytest.mark.parametrize("batch_bytes", [1500, 2300, 6000])
@pytest.mark.parametrize("plugins", [("scalars", "histograms"), ("histograms", "scalars")])
def test_a_retried_read_decodes_the_replayed_records_with_their_own_decisions(
    plugins, batch_bytes, monkeypatch, tmp_path
):
    """A read that fails after decoding, past its last yield, the record that gives "x" to
    another plugin: the retry decodes the records before it as "x"'s earlier plugin says,
    not as the later one (no point lost or invented)."""
    monkeypatch.setattr(records, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", batch_bytes)
    path = reassigned_tag_file(tmp_path, *plugins)
    want = list(EventFileReader(path).read(final=True))
    _, _, calls = clean_reading(path)
    for fail_at in range(1, calls + 1):
        FailingAt.calls, FailingAt.fail_at = 0, fail_at
        reader = EventFileReader(path, on_problem=Recorder(), opener=FailingAt)
        got = []
        try:
            for columns in reader.read_columns(final=True):
                got += columns_points([columns])
        except OSError:
            got += columns_points(reader.read_columns(final=True))
        assert by_tag(got) == by_tag(want), f"failing at call {fail_at}"


def test_a_decoder_rolled_back_keeps_no_decision_nor_template_of_the_records_after_its_checkpoint():
    """Past the checkpoint "x" is given back to the scalars plugin and a template of its
    metadata-less tensors learnt; rolled back, "x" is the histograms plugin's again, and such
    a tensor is no point (the template, if kept, would say it is)."""
    decoder = ScalarDecoder()
    x = lambda step, meta=None: event(  # noqa: E731
        [tensor_value("x", tensor(float_val=[float(step)]), meta)], step=step, wall_time=WALL + step
    )
    decoder.decode(x(0, metadata("histograms")))
    decoder.decode(event([tensor_value("y", tensor(float_val=[1.0]))], step=0))
    decoder.checkpoint()
    assert len(decoder.decode(x(1, metadata("scalars")))) == 1
    assert [len(decoder.decode(x(s))) for s in range(2, 6)] == [1] * 4
    assert decoder.by_template(x(6)) is not None  # learnt past the checkpoint
    decoder.decode(event([tensor_value("y", tensor(float_val=[1.0]), metadata("images"))], step=1))
    decoder.decode(event([tensor_value("y", tensor(float_val=[1.0]), metadata("pr_curves"))], step=1))
    decoder.decode(event([tensor_value("y", tensor(float_val=[1.0]), metadata("scalars"))], step=1))
    decoder.decode(event([tensor_value("w", tensor(float_val=[1.0]))], step=1))
    decoder.rollback()  # "y" was a scalar at the checkpoint, whatever it was in between
    assert decoder._tensor_tags == {"x": False, "y": True}
    assert decoder.by_template(x(7)) is None
    assert decoder.decode(x(7)) == []
    assert len(decoder.decode(event([tensor_value("y", tensor(float_val=[2.0]))], step=2))) == 1


# ---------------------------------------------------------------- batch sizes


def batch_spans(reader: EventFileReader, budget: int | None, batch_bytes: int | None = None) -> list[int]:
    spans = []
    start = reader.offset
    for _ in reader.read_columns(final=True, budget=budget, batch_bytes=batch_bytes):
        spans.append(reader.offset - start)
        start = reader.offset
    return spans


@pytest.mark.parametrize("budget", [None, 16 << 20, 1 << 20], ids=["no budget", "16 MiB", "1 MiB"])
def test_a_batch_ends_at_the_batch_size_whatever_the_read_size(budget, monkeypatch, tmp_path):
    """Records of a few dozen bytes: each batch but the last of a read call spans the batch
    size and at most one record more, however much the call reads."""
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 700 << 10)  # not a multiple of a read
    bench = load_bench()
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(bench.event_records("simple", bench.bench_points(120_000, seed=3), WALL))
    reader = EventFileReader(str(path))
    calls = []
    while True:
        calls.append(batch_spans(reader, budget))
        if not reader.pending:
            break
    assert sum(map(sum, calls)) == os.path.getsize(path)
    size = scalars._COLUMN_BATCH_BYTES
    assert sum(map(len, calls)) > 3
    for spans in calls:
        assert all(size <= span <= size + 200 for span in spans[:-1]), spans
        assert spans[-1] <= size + 200, spans


def test_a_batch_size_can_be_asked_for(tmp_path):
    bench = load_bench()
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(bench.event_records("simple", bench.bench_points(20_000, seed=3), WALL))
    spans = batch_spans(EventFileReader(str(path)), None, batch_bytes=100 << 10)
    assert len(spans) > 5 and all(100 << 10 <= span <= (100 << 10) + 200 for span in spans[:-1])


def test_batches_cut_inside_a_read_read_the_same_as_per_point(monkeypatch, tmp_path):
    """Cut batches keep offsets, problems and points exact (the per-point reader's)."""
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 3000)
    rng = random.Random(5)
    payloads = [event([simple(f"t{rng.randrange(4)}", i)], step=i, wall_time=WALL) for i in range(3000)]
    payloads[1500] = b"\xff\xff not an event"
    path = write_events(str(tmp_path / "events.out.tfevents.1"), payloads)
    both = Both(path)
    assert both.read(final=True) == 2999
    assert both.columns.undecodable == 1


def test_a_few_records_after_a_skipped_stretch_past_the_batch_size_are_read(monkeypatch, tmp_path):
    """Corrupt bytes skipped past where the batch was to end, then fewer records than the
    numpy checks take: the batch ends after its first record, and reading goes on."""
    monkeypatch.setattr(scalars, "_COLUMN_BATCH_BYTES", 200)
    records_ = [frame(event([simple("a", i)], step=i, wall_time=WALL)) for i in range(25)]
    junk = b"\x01" * 300  # no header anywhere in it: skipped by the resync scan
    data = b"".join([*records_[:5], junk, *records_[5:15], junk, *records_[15:]])
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(data)
    reader = EventFileReader(str(path), on_problem=Recorder())
    got = []
    done = threading.Thread(target=lambda: got.extend(columns_points(reader.read_columns(final=True))))
    done.daemon = True
    done.start()
    done.join(60)
    assert not done.is_alive(), "the read did not finish"
    assert [p[1] for p in got] == list(range(25))
    assert reader.tail.problems == {records.CORRUPT: 2}


# ---------------------------------------------------------------- a template and another tag's decision


def test_a_template_learnt_while_another_tag_was_elsewhere_is_not_used_once_it_is_a_scalar(tmp_path):
    """Events of a scalar "a" and a metadata-less tensor "h": while "h" belongs to another
    plugin they hold one point, once "h" is given back to the scalars plugin two."""
    both_values = [
        event([simple("a", i), tensor_value("h", tensor(float_val=[7.0]))], step=i, wall_time=WALL + i)
        for i in range(300)
    ]
    payloads = [event([tensor_value("h", tensor(float_val=[0.0]), metadata("pr_curves"))], step=0)]
    payloads += both_values[:150]
    payloads.append(event([tensor_value("h", tensor(float_val=[1.0]), metadata("scalars"))], step=150))
    payloads += both_values[150:]
    path = write_events(str(tmp_path / "events.out.tfevents.1"), payloads)
    got = list(EventFileReader(path).read(final=True))
    assert len([p for p in got if p[0] == "a"]) == 300
    assert len([p for p in got if p[0] == "h"]) == 1 + 150
    columns = columns_points(EventFileReader(path).read_columns(final=True))
    assert by_tag(columns) == by_tag(got)


def test_a_template_is_not_learnt_from_an_event_that_decides_another_tags_plugin(monkeypatch, tmp_path):
    """Events of a scalar "a" and a tensor "h" whose metadata gives "h" to the histograms plugin
    hold one point, "a"'s; a template would decode later copies without taking "h" away from
    the scalars plugin again, so once "h" was given back in between, later metadata-less "h"
    tensors would be points although a parse gives "h" to the histograms plugin."""
    both = lambda s: event(  # noqa: E731
        [tensor_value("h", tensor(float_val=[0.0]), metadata("histograms")), simple("a", float(s))],
        step=s,
        wall_time=WALL + s,
    )
    back = event([tensor_value("h", tensor(float_val=[5.0]), metadata("scalars"))], step=50, wall_time=WALL)
    bare = [
        event([tensor_value("h", tensor(float_val=[float(s)]))], step=s, wall_time=WALL + s) for s in (3, 4)
    ]
    path = write_events(str(tmp_path / "events.out.tfevents.1"), [both(0), both(1), back, both(2), *bare])
    got = list(EventFileReader(path).read(final=True))
    columns = columns_points(EventFileReader(path).read_columns(final=True))
    monkeypatch.setattr(decoder_module, "MAX_TEMPLATES", 0)
    parsed = list(EventFileReader(path).read(final=True))
    assert [p[1] for p in parsed if p[0] == "h"] == [50]
    assert got == parsed
    assert by_tag(columns) == by_tag(parsed)


def test_a_template_is_not_learnt_from_an_event_that_gives_its_own_tag_away_after_its_point(
    monkeypatch, tmp_path
):
    """Found in review: ``[x: scalars tensor, x: histograms tensor]`` holds one point, x's, and
    leaves x with the histograms plugin. A template of it replays the point but not that
    decision: in the file, once x was a scalar again, later copies left it one; in a logdir,
    another file took the shared template and its metadata-less x tensors became points."""

    def own_tag_away(s):
        values = [
            tensor_value("x", tensor(float_val=[float(s)]), metadata("scalars")),
            tensor_value("x", tensor(float_val=[0.0]), metadata("histograms")),
        ]
        return event(values, step=s, wall_time=WALL + s)

    def x(s, plugin=None):
        meta = [metadata(plugin)] if plugin else []
        return event([tensor_value("x", tensor(float_val=[s + 0.25]), *meta)], step=s, wall_time=WALL + s)

    one = [file_version(), own_tag_away(1), own_tag_away(2), x(3, "scalars"), own_tag_away(4), x(5), x(6)]
    name = str(tmp_path / "events.out.tfevents.1.")
    a = write_events(name + "a", [file_version(), *map(own_tag_away, (1, 2, 3))])
    b = write_events(name + "b", [file_version(), own_tag_away(10), x(11), x(12)])
    f = write_events(name + "f", one)

    def logdir_b():
        store = TemplateStore()
        list(EventFileReader(a, templates=store).read(final=True))
        return list(EventFileReader(b, templates=store).read(final=True))

    got_f = list(EventFileReader(f).read(final=True))
    columns_f = columns_points(EventFileReader(f).read_columns(final=True))
    got_b = logdir_b()
    monkeypatch.setattr(decoder_module, "MAX_TEMPLATES", 0)
    parsed_f = list(EventFileReader(f).read(final=True))
    parsed_b = list(EventFileReader(b).read(final=True))
    assert [p[1] for p in parsed_f] == [1, 2, 3, 4] and [p[1] for p in parsed_b] == [10]
    assert got_f == parsed_f and by_tag(columns_f) == by_tag(parsed_f)
    assert got_b == parsed_b


# ---------------------------------------------------------------- bulk decoding in the framed bytes


@pytest.mark.parametrize(
    "last", [b"", event(step=5), event(step=5, wall_time=WALL)], ids=["empty", "step", "11 bytes"]
)
def test_a_short_last_record_is_decoded_where_it_was_framed(last, tmp_path):
    """The bulk decoder reads each payload inside the bytes it was framed from, a few bytes
    past a short record's end (its step as one word): a short record at the very end of
    those bytes must not be read past them."""
    payloads = [event([simple(f"t{i % 3}", i)], step=i, wall_time=WALL + i) for i in range(300)]
    path = write_events(str(tmp_path / "events.out.tfevents.1"), [*payloads, last])
    both = Both(path)
    assert both.read(final=True) == 300
    assert both.columns.offset == os.path.getsize(path)
