"""Event protos -> scalar points, checked against TensorBoard's own reader.

Real writers (tensorboardX, torch simple and tensor forms, tensorboard's Writer)
and hand-built Events (tensorboard's compiled protos) for what writers never
produce; every case is compared point by point with TensorBoard's
EventMultiplexer on the same files and with the values that were written.
"""

from __future__ import annotations

import logging
import math
import os
import random
import struct

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from writers import (
    WRITERS,
    assert_same_series,
    event,
    file_version,
    gradwatch_series,
    metadata,
    reference_series,
    simple,
    stored_tag,
    stored_value,
    tensor,
    tensor_value,
    write_events,
    write_scalars,
)

from gradwatch.events.framing import frame
from gradwatch.events.logdir import ProblemLog
from gradwatch.events.scalars import EventFileReader, NotAnEvent, ScalarDecoder

WALL = 1_700_000_000.0
NAN, INF = float("nan"), float("inf")
TAGS = ["loss", "gradients/actor_cnn_norm", "train loss", "損失/训练 ✓", "a/b/c/d", "τ=0.005"]


def writer_points() -> list[tuple[str, int, float, float]]:
    """Points a real writer can write: odd tags, odd steps, odd values, explicit wall times."""
    values = [0.5, 5191.0, 130486.0, NAN, INF, -INF, 0.0, -0.0, 3.0e37, 1e-40, -2.75]
    steps = [0, 1, 2, 2, -5, 100, 2**21, 2**53 + 1, 2**62, 2**63 - 1, 7]
    points = []
    for i, (step, value) in enumerate(zip(steps, values)):
        for j, tag in enumerate(TAGS):
            points.append((tag, step, value * (j + 1), WALL + i + j / 8))
    return points


def expected(run: str, kind: str, points) -> dict:
    out: dict = {}
    for tag, step, value, wall_time in points:
        out.setdefault((run, stored_tag(kind, tag)), []).append((step, wall_time, stored_value(kind, value)))
    return out


@pytest.mark.parametrize("kind", WRITERS)
def test_real_writer_matches_tensorboard(kind, tmp_path):
    points = writer_points()
    write_scalars(kind, str(tmp_path / "run 1"), points)
    got = gradwatch_series(str(tmp_path))
    assert_same_series(got, reference_series(str(tmp_path)))
    assert_same_series(got, expected("run 1", kind, points))


def test_every_writer_in_one_logdir(tmp_path):
    """One run per writer, plus the logdir itself as run '.', all read in one pass."""
    points = writer_points()[:12]
    want = {}
    for kind in WRITERS:
        write_scalars(kind, str(tmp_path / "by" / kind), points)
        want.update(expected(f"by/{kind}", kind, points))
    write_scalars("tensorboardX", str(tmp_path), points)
    want.update(expected(".", "tensorboardX", points))
    got = gradwatch_series(str(tmp_path))
    assert_same_series(got, reference_series(str(tmp_path)))
    assert_same_series(got, want)


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# (tag, tensor, value gradwatch and TensorBoard both read)
TENSOR_CASES = [
    ("float", tensor(types_pb2.DT_FLOAT, float_val=[1.1]), f32(1.1)),
    ("double", tensor(types_pb2.DT_DOUBLE, double_val=[1.1]), 1.1),
    ("half", tensor(types_pb2.DT_HALF, half_val=[0x3E00]), 1.5),
    ("bfloat16", tensor(types_pb2.DT_BFLOAT16, half_val=[0x4020]), 2.5),
    ("int8", tensor(types_pb2.DT_INT8, int_val=[-7]), -7.0),
    ("int16", tensor(types_pb2.DT_INT16, int_val=[-30000]), -30000.0),
    ("int32", tensor(types_pb2.DT_INT32, int_val=[2**31 - 1]), float(2**31 - 1)),
    ("int64", tensor(types_pb2.DT_INT64, int64_val=[-(2**40)]), float(-(2**40))),
    ("uint8", tensor(types_pb2.DT_UINT8, int_val=[255]), 255.0),
    ("uint16", tensor(types_pb2.DT_UINT16, int_val=[65535]), 65535.0),
    ("uint32", tensor(types_pb2.DT_UINT32, uint32_val=[2**32 - 1]), float(2**32 - 1)),
    ("uint64", tensor(types_pb2.DT_UINT64, uint64_val=[2**63 + 5]), float(2**63 + 5)),
    ("bool", tensor(types_pb2.DT_BOOL, bool_val=[True]), 1.0),
    ("float zero", tensor(types_pb2.DT_FLOAT, float_val=[0.0]), 0.0),
    ("content float", tensor(types_pb2.DT_FLOAT, tensor_content=struct.pack("<f", 0.1)), f32(0.1)),
    ("content double", tensor(types_pb2.DT_DOUBLE, tensor_content=struct.pack("<d", 0.1)), 0.1),
    ("content half", tensor(types_pb2.DT_HALF, tensor_content=struct.pack("<e", -0.5)), -0.5),
    ("content bfloat16", tensor(types_pb2.DT_BFLOAT16, tensor_content=struct.pack("<H", 0xC0A0)), -5.0),
    (
        "content int64",
        tensor(types_pb2.DT_INT64, tensor_content=struct.pack("<q", -(2**50))),
        float(-(2**50)),
    ),
    ("content int32", tensor(types_pb2.DT_INT32, tensor_content=struct.pack("<i", 123456)), 123456.0),
    ("content uint8", tensor(types_pb2.DT_UINT8, tensor_content=b"\xfe"), 254.0),
]


def test_tensor_dtypes_and_forms(tmp_path):
    payloads = [file_version()]
    for i, (tag, t, _) in enumerate(TENSOR_CASES):
        # with metadata (TF2's first event of a tag), then without (every later one)
        payloads.append(event([tensor_value(tag, t, metadata())], step=i + 1, wall_time=WALL + i))
        payloads.append(event([tensor_value(tag, t)], step=i + 1000, wall_time=WALL + i + 0.5))
    write_events(str(tmp_path / "run" / "events.out.tfevents.1.host"), payloads)
    got = gradwatch_series(str(tmp_path))
    want = {
        ("run", tag): [(i + 1, WALL + i, value), (i + 1000, WALL + i + 0.5, value)]
        for i, (tag, _, value) in enumerate(TENSOR_CASES)
    }
    assert_same_series(got, want)
    # Without TensorFlow, TensorBoard's make_ndarray cannot convert these
    # (TypeError); TensorFlow's reads them as above. Compare all the rest.
    ref = reference_series(str(tmp_path))
    unreadable = {"bfloat16", "content bfloat16", "uint32", "uint64"}
    assert not unreadable & {tag for _, tag in ref}
    ref.update({key: want[key] for key in want if key[1] in unreadable})
    assert_same_series(got, ref)


def test_several_values_in_one_event_and_everything_else_ignored(tmp_path):
    image = summary_pb2.Summary.Image(height=1, width=1, colorspace=1, encoded_image_string=b"\x89PNG")
    histo = summary_pb2.HistogramProto(
        min=0, max=1, num=2, sum=1, sum_squares=1, bucket_limit=[1], bucket=[2]
    )
    ignored = [
        summary_pb2.Summary.Value(tag="image", image=image),
        summary_pb2.Summary.Value(tag="histo", histo=histo),
        summary_pb2.Summary.Value(tag="audio", audio=summary_pb2.Summary.Audio(sample_rate=8000)),
        tensor_value("text", tensor(types_pb2.DT_STRING, string_val=[b"hello"]), metadata("text")),
        tensor_value(
            "hparams", tensor(types_pb2.DT_FLOAT, float_val=[0.0]), metadata("hparams", b"\x12\x00")
        ),
        tensor_value("hist2", tensor(types_pb2.DT_FLOAT, (2, 3), float_val=[1] * 6), metadata("histograms")),
        tensor_value("vector", tensor(types_pb2.DT_FLOAT, (2,), float_val=[1, 2]), metadata()),
        tensor_value("one-element", tensor(types_pb2.DT_FLOAT, (1,), float_val=[1]), metadata()),
        tensor_value("string", tensor(types_pb2.DT_STRING, string_val=[b"x"])),
        tensor_value("complex", tensor(types_pb2.DT_COMPLEX64, scomplex_val=[1, 2]), metadata()),
        tensor_value("bad content", tensor(types_pb2.DT_FLOAT, tensor_content=b"\x00" * 3), metadata()),
        tensor_value("no value at all", tensor(types_pb2.DT_FLOAT), metadata()),
    ]
    payloads = [
        file_version(),
        event(graph_def=b"\x0a\x00", wall_time=WALL),
        event(session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START), wall_time=WALL),
        event(
            [simple("a", 1.0), *ignored[:3], simple("b", 2.0), tensor_value("c", tensor(float_val=[3.0]))],
            step=5,
            wall_time=WALL,
        ),
        event(ignored[3:], step=6, wall_time=WALL + 1),
        event([simple("a", 4.0), simple("a", 5.0)], step=7, wall_time=WALL + 2),
    ]
    write_events(str(tmp_path / "events.out.tfevents.1.host"), payloads)
    got = gradwatch_series(str(tmp_path))
    want = {
        (".", "a"): [(5, WALL, 1.0), (7, WALL + 2, 4.0), (7, WALL + 2, 5.0)],
        (".", "b"): [(5, WALL, 2.0)],
        (".", "c"): [(5, WALL, 3.0)],
    }
    assert_same_series(got, want)
    assert_same_series(got, reference_series(str(tmp_path)))


def test_plugin_metadata_only_on_first_event_of_a_tag(tmp_path):
    """TF2 writers send metadata once per tag: the first event decides for all later ones."""
    payloads = [file_version()]
    for step in range(1, 6):
        first = step == 1
        payloads.append(
            event(
                [
                    tensor_value("tf2/loss", tensor(float_val=[step / 4]), metadata() if first else None),
                    tensor_value(
                        "tf2/not-a-scalar",
                        tensor(float_val=[step]),
                        metadata("histograms") if first else None,
                    ),
                ],
                step=step,
                wall_time=WALL + step,
            )
        )
        # one value per event too, so templates are learned for both tags
        payloads.append(event([tensor_value("tf2/alone", tensor(float_val=[step]), None)], step=step))
        payloads.append(event([tensor_value("tf2/hidden", tensor(float_val=[step]), None)], step=step))
        if first:
            # a tag whose only metadata (after it was seen without) names another plugin
            payloads.append(
                event([tensor_value("tf2/hidden", tensor(float_val=[0.0]), metadata("pr_curves"))])
            )
    write_events(str(tmp_path / "run" / "events.out.tfevents.1.host"), payloads)
    got = gradwatch_series(str(tmp_path))
    assert got[("run", "tf2/loss")] == [(s, WALL + s, s / 4) for s in range(1, 6)]
    assert got[("run", "tf2/alone")] == [(s, 0.0, float(s)) for s in range(1, 6)]
    assert got[("run", "tf2/hidden")] == [(1, 0.0, 1.0)]
    assert ("run", "tf2/not-a-scalar") not in got


def test_odd_steps_wall_times_and_values(tmp_path):
    steps = [-(2**63), -1, 0, None, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**53 + 1, 2**63 - 1, 5, 5]
    values = [NAN, INF, -INF, -0.0, 0.0, 1e-45, 3.4028234663852886e38, 1.0]
    payloads = [file_version()]
    want: dict = {}
    for i, step in enumerate(steps):
        value = values[i % len(values)]
        wall_time = None if i % 4 == 3 else WALL + i / 3
        for tag, v in (
            ("simple", simple("simple", value)),
            (
                "tensor",
                tensor_value("tensor", tensor(double_val=[value], dtype=types_pb2.DT_DOUBLE), metadata()),
            ),
        ):
            payloads.append(event([v], step=step, wall_time=wall_time))
            stored = f32(value) if tag == "simple" else value
            want.setdefault(("run", tag), []).append((step or 0, wall_time or 0.0, stored))
    write_events(str(tmp_path / "run" / "events.out.tfevents.1.host"), payloads)
    got = gradwatch_series(str(tmp_path))
    assert_same_series(got, want)
    assert_same_series(got, reference_series(str(tmp_path)))
    # -0.0 stays negative zero
    assert math.copysign(1, got[("run", "simple")][3][2]) == -1


def test_undecodable_payload_between_valid_records(tmp_path, caplog):
    path = str(tmp_path / "events.out.tfevents.1.host")
    good = [event([simple("x", float(i))], step=i, wall_time=WALL) for i in range(1, 4)]
    records = [frame(good[0]), frame(b"\xff\xff\xff\xff not a protobuf"), frame(good[1]), frame(good[2])]
    with open(path, "wb") as f:
        f.write(b"".join(records))
    problems = ProblemLog()
    with caplog.at_level(logging.WARNING, logger="gradwatch.events"):
        got = gradwatch_series(str(tmp_path), problems)
    assert got == {(".", "x"): [(1, WALL, 1.0), (2, WALL, 2.0), (3, WALL, 3.0)]}
    assert problems.counts == {"undecodable_record": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{path}: offset {len(records[0])}: undecodable record: " + lines[0].split(": ", 3)[3]]
    assert "not an Event" in lines[0]


# ---------------------------------------------------------------- fast path == proto parse


class PlainDecoder(ScalarDecoder):
    """The slow path only: a plain proto parse for every payload, never a template."""

    __slots__ = ()

    def _learn(self, payload, point):
        pass

    def skips(self, payload):
        return False


class CountingDecoder(ScalarDecoder):
    __slots__ = ("parses",)

    def __init__(self) -> None:
        super().__init__()
        self.parses = 0

    def _parse(self, payload):
        self.parses += 1
        return super()._parse(payload)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def outcome(decoder: ScalarDecoder, payload: bytes):
    try:
        return [(tag, step, bits(wt), bits(v)) for tag, step, wt, v in decoder.decode(payload)]
    except NotAnEvent:
        return "undecodable"


def random_events(rng: random.Random, n: int) -> list[bytes]:
    tags = ["loss", "lr", "g/actor_cnn_norm", "naïve tag", "x" * 130]
    steps = [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35, 2**53 + 1, 2**63 - 1, -1, -(2**63)]
    out = []
    for _ in range(n):
        tag = rng.choice(tags)
        step = rng.choice(steps) + rng.choice([0, 0, 1, 2])
        step = max(min(step, 2**63 - 1), -(2**63))
        wall_time = rng.choice([None, WALL + rng.random(), struct.unpack("<d", rng.randbytes(8))[0]])
        if rng.random() < 0.5:
            value = struct.unpack("<f", rng.randbytes(4))[0]  # every float32 bit pattern
        else:
            value = rng.choice([NAN, INF, -INF, 0.0, -0.0, 1.25, 2.5, 1e-45, rng.uniform(-1e6, 1e6)])
        form = rng.randrange(9)
        if form >= 4:
            out.append(not_scalar_event(rng, form, tag, step, wall_time, value))
            continue
        if form == 0:
            v = simple(tag, value)
        elif form == 1:
            v = tensor_value(tag, tensor(float_val=[value]), metadata())
        elif form == 2:
            v = tensor_value(tag + "/d", tensor(types_pb2.DT_DOUBLE, double_val=[value]), metadata())
        else:
            v = tensor_value(tag + "/c", tensor(tensor_content=struct.pack("<f", value)))
        out.append(damaged(rng, event([v], step=step, wall_time=wall_time)))
    return out


def damaged(rng: random.Random, payload: bytes) -> bytes:
    """Sometimes a damaged copy: byte flips anywhere, or cut short."""
    if rng.random() >= 0.15:
        return payload
    b = bytearray(payload)
    for _ in range(rng.randint(1, 3)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b[: rng.randint(1, len(b))] if rng.random() < 0.3 else b)


def not_scalar_event(rng: random.Random, form: int, tag: str, step: int, wall_time, value: float) -> bytes:
    """Events that hold no scalar, or one beside an image: what the skipper must judge
    from the bytes. Text and TF2 histograms carry their plugin on the first value of a
    tag only, as tf.summary writes them."""
    image = summary_pb2.Summary.Image(height=2, width=2, colorspace=3, encoded_image_string=rng.randbytes(40))
    histo = summary_pb2.HistogramProto(min=-1, max=1, num=3, bucket_limit=[0, 1], bucket=[1, 2])
    meta = rng.random() < 0.3
    if form == 4:
        values = [summary_pb2.Summary.Value(tag=tag + "/img", image=image)]
    elif form == 5:
        values = [summary_pb2.Summary.Value(tag=tag + "/h", histo=histo), summary_pb2.Summary.Value(tag="a")]
    elif form == 6:
        text = tensor(types_pb2.DT_STRING, string_val=[b"note"])
        values = [tensor_value(tag + "/text", text, metadata("text") if meta else None)]
    elif form == 7:
        hist = tensor(types_pb2.DT_DOUBLE, (2, 3), double_val=[1.0] * 6)
        plugin = metadata(rng.choice(["histograms", "scalars"])) if meta else None
        values = [tensor_value(tag + "/h2", hist, plugin)]
    else:  # an image value and a scalar value in one Event
        values = [summary_pb2.Summary.Value(tag=tag + "/img", image=image), simple(tag, value)]
    if rng.random() < 0.1:
        return damaged(rng, event(step=step, wall_time=wall_time, graph_def=rng.randbytes(30)))
    return damaged(rng, event(values, step=step, wall_time=wall_time))


def test_template_fast_path_never_disagrees_with_a_proto_parse(tmp_path):
    rng = random.Random(20240531)
    payloads = random_events(rng, 20_000)
    fast, plain = CountingDecoder(), PlainDecoder()
    want = [outcome(plain, p) for p in payloads]
    fast_hits = 0
    skipped = []
    for i, p in enumerate(payloads):
        parses = fast.parses
        skipped.append(fast.skips(p))
        if skipped[-1]:
            # skipped from its bytes: the proto parse finds no point either (a
            # damaged histogram or image body is not looked into)
            assert want[i] in ([], "undecodable"), f"payload {i}: {p.hex()}"
            want[i] = []
        assert outcome(fast, p) == want[i], f"payload {i}: {p.hex()}"
        fast_hits += fast.parses == parses
    # the fast path was taken for many kinds of events, not a few, and the
    # skipper judged most events that hold no scalar without a parse
    assert fast._template_count > 50
    assert fast_hits > len(payloads) / 3
    assert sum(skipped) > len(payloads) / 5

    # The same through EventFileReader, whose loop inlines the fast path.
    path = str(tmp_path / "events.out.tfevents.1.host")
    write_events(path, payloads)
    reader = EventFileReader(path, on_problem=lambda *a: None)
    got = [(tag, step, bits(wt), bits(v)) for tag, step, wt, v in reader.read(final=True)]
    assert got == [point for o in want if o != "undecodable" for point in o]
    assert reader.undecodable == want.count("undecodable")
    assert reader.offset == os.path.getsize(path)


# ---------------------------------------------------------------- the benchmark's data


def load_bench():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_reader.py")
    spec = importlib.util.spec_from_file_location("bench_reader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("kind", "form"), [("tensorboardX", "simple"), ("tensorboard", "tensor")])
def test_bench_generator_writes_what_the_writers_write(kind, form, tmp_path):
    """bench/bench_reader.py serializes Events itself (a writer takes minutes for 1M):
    its files must be byte for byte what the real writer writes, wall times aside."""
    bench = load_bench()
    points = list(bench.bench_points(40, seed=3))
    points += [("x", 2**14 + 1, 1.5, WALL), ("x", 2**28, -2.5, WALL + 1)]  # longer steps
    path = write_scalars(kind, str(tmp_path), points)
    with open(path, "rb") as f:
        written = f.read()
    first = event_pb2.Event.FromString(next(iter(EventFileReader(path).tail.read())))
    assert bench.event_records(form, points, first.wall_time) == written
