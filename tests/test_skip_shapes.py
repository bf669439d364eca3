"""The byte-shape test for histograms, images and audio (``_lone_value_without_scalar``)
never skips what ScalarDecoder.skips's wire-format walk would not.

The shape test is a shortcut in front of the walk: every Event it accepts must be one
the walk accepts too (so a skip never hides a scalar, and what is decoded, reported
undecodable or skipped is the same as with the walk alone), and it must accept what
writers really emit for histograms and images, or it saves nothing.
"""

from __future__ import annotations

import random
import struct

import pytest
from tensorboard.compat.proto import summary_pb2, types_pb2
from writers import event, metadata, simple, tensor, tensor_value

from gradwatch.events import scalars, skipping
from gradwatch.events.scalars import NotAnEvent, ScalarDecoder
from gradwatch.events.skipping import _lone_value_without_scalar
from gradwatch.events.wire import encode_varint

WALL = 1_700_000_000.0


def walk_skips(payload: bytes) -> bool:
    """What ScalarDecoder.skips says with the shape test switched off (the walk alone)."""
    shape_test = skipping._lone_value_without_scalar
    skipping._lone_value_without_scalar = lambda p: False
    try:
        return ScalarDecoder().skips(payload)
    finally:
        skipping._lone_value_without_scalar = shape_test


def parsed(payload: bytes):
    try:
        return ScalarDecoder()._parse(payload)
    except NotAnEvent:
        return "undecodable"


def not_scalar_values(rng: random.Random, tag: str) -> list[summary_pb2.Summary.Value]:
    image = summary_pb2.Summary.Image(height=2, width=2, colorspace=3, encoded_image_string=rng.randbytes(60))
    histo = summary_pb2.HistogramProto(
        min=-1, max=1, num=3, bucket_limit=[float(i) for i in range(20)], bucket=[1.0] * 20
    )
    audio = summary_pb2.Summary.Audio(sample_rate=8000, encoded_audio_string=rng.randbytes(30))
    return [
        summary_pb2.Summary.Value(tag=tag, image=image),
        summary_pb2.Summary.Value(tag=tag, histo=histo),
        summary_pb2.Summary.Value(tag=tag, audio=audio),
        summary_pb2.Summary.Value(tag=tag, obsolete_old_style_histogram=rng.randbytes(9)),
    ]


def base_events(rng: random.Random) -> list[bytes]:
    """Events of the shape and of its near relatives: a scalar, a tensor, two values,
    metadata, a long tag, steps of every varint length, no step or no wall_time."""
    out = []
    for _ in range(300):
        tag = rng.choice(["h", "weights/layer_0", "naïve", "", "x" * 127, "y" * 128, "z" * 300])
        step = rng.choice([None, 0, 1, 127, 128, 2**21, 2**35, 2**63 - 1, -1, 5, 300])
        wall_time = WALL + rng.random() if rng.random() < 0.9 else None
        values = [rng.choice(not_scalar_values(rng, tag))]
        form = rng.randrange(14)  # 0 and 7..13: the shape itself
        if form == 1:
            values.append(simple(tag + "/s", 1.5))  # a scalar after the histogram
        elif form == 2:
            values.insert(0, simple(tag + "/s", 1.5))
        elif form == 3:
            values[0].metadata.CopyFrom(metadata("histograms"))
        elif form == 4:
            values = [simple(tag, 2.5)]
        elif form == 5:
            values = [tensor_value(tag, tensor(float_val=[3.5]), metadata())]
        elif form == 6:
            values = [tensor_value(tag, tensor(types_pb2.DT_STRING, string_val=[b"t"]), metadata("text"))]
        out.append(event(values, step=step, wall_time=wall_time))
    return out


def mutations(rng: random.Random, payload: bytes) -> list[bytes]:
    """Byte-level relatives of ``payload``: flips, cuts, extensions, a key or length
    byte changed, non-minimal and overlong varints, bytes appended."""
    out = [payload, payload + b"\x00", payload + rng.randbytes(3), payload[:-1], payload[1:]]
    for _ in range(12):
        b = bytearray(payload)
        at = rng.randrange(min(len(b), 48))
        b[at] = rng.randrange(256)
        out.append(bytes(b))
    for _ in range(4):
        b = bytearray(payload)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    if len(payload) > 11 and payload[0] == 9 and payload[9] == 16:
        # the step as an overlong varint (11 bytes): not a varint protobuf accepts
        out.append(payload[:10] + b"\x80" * 10 + b"\x00" + payload[11:])
    return out


def padded(n: int, extra: int) -> bytes:
    """``n`` as a varint ``extra`` bytes longer than it needs (protobuf accepts up to 10)."""
    minimal = bytearray(encode_varint(n))
    if not extra:
        return bytes(minimal)
    minimal[-1] |= 0x80
    return bytes(minimal) + b"\x80" * (extra - 1) + b"\x00"


def shaped(tag: bytes, key: int, body: bytes, step: bytes = b"\x01", pads=(0, 0, 0)) -> bytes:
    """The shape by hand; ``pads``: extra bytes in each length's varint (summary, value, body)."""
    value = b"\x0a" + encode_varint(len(tag)) + tag + bytes([key]) + padded(len(body), pads[2]) + body
    return around(value, step, pads)


def around(value: bytes, step: bytes = b"\x01", pads=(0, 0, 0)) -> bytes:
    """An Event of wall_time, ``step`` (varint bytes) and a summary of one ``value``."""
    summary = b"\x0a" + padded(len(value), pads[1]) + value
    return (
        b"\x09" + struct.pack("<d", WALL) + b"\x10" + step + b"\x2a" + padded(len(summary), pads[0]) + summary
    )


def hand_made() -> list[bytes]:
    body = bytes(range(40))
    out = []
    for key in range(256):
        out.append(shaped(b"t", key, body))
    for extra in range(12):  # lengths of 1 to 12 bytes: up to 10 are varints
        for at in range(3):
            out.append(shaped(b"t", 0x2A, body, pads=tuple(extra if i == at else 0 for i in range(3))))
    out.append(shaped(b"t", 0x2A, body, step=b"\xff" * 9 + b"\x01"))  # a 10-byte step: valid
    out.append(shaped(b"t", 0x2A, body, step=b"\xff" * 10 + b"\x01"))  # 11 bytes: not a varint
    out.append(shaped(b"t" * 128, 0x2A, body))  # a two-byte tag length
    out.append(shaped(b"", 0x22, b""))  # an empty tag and an empty image
    # a scalar after a 128-byte tag (its length two bytes) whose last byte is an image's
    # key: read as one byte, the tag's length would make it look like an image
    tag = b"y" * 127 + b"\x22"
    scalar = b"\x15" + struct.pack("<f", 1.5) + b"\x4a\x0f" + bytes(15)
    out.append(around(b"\x0a" + encode_varint(len(tag)) + tag + scalar))
    return out


def test_the_shape_test_never_skips_what_the_walk_would_not():
    rng = random.Random(20261201)
    payloads = hand_made()
    for p in base_events(rng):
        payloads += mutations(rng, p)
    accepted = 0
    for p in payloads:
        if _lone_value_without_scalar(p):
            accepted += 1
            assert walk_skips(p), p.hex()
            assert parsed(p) in ([], "undecodable"), p.hex()
    # many of them are the shape: the shortcut is exercised, not just declined
    assert accepted > len(payloads) / 10


@pytest.mark.parametrize("kind", ["image", "histo", "audio", "obsolete_old_style_histogram"])
def test_histograms_images_and_audio_take_the_shortcut(kind):
    rng = random.Random(kind)
    index = ["image", "histo", "audio", "obsolete_old_style_histogram"].index(kind)
    for tag in ["weights/layer_0", "obs/camera_1", "x" * 127]:
        for step in [1, 300, 2**40]:  # step 0 is left out of an Event: not the shape
            p = event([not_scalar_values(rng, tag)[index]], step=step, wall_time=WALL + step)
            assert _lone_value_without_scalar(p)
            assert ScalarDecoder().decode(p) == []


def test_real_tensorboardx_histograms_and_images_take_the_shortcut(tmp_path):
    """What tensorboardX writes for add_histogram and add_image is the shape; its scalars
    and text are not (the text's tensor is left to the walk and the per-tag plugin)."""
    np = pytest.importorskip("numpy")
    tensorboardX = pytest.importorskip("tensorboardX")
    from gradwatch.events.records import RecordTail

    with tensorboardX.SummaryWriter(str(tmp_path)) as w:
        for step in (1, 200, 70_000):
            w.add_scalar("loss", 0.5, step)
            w.add_histogram("weights/layer_0", np.random.default_rng(step).standard_normal(4096), step)
            w.add_image("obs/camera_0", np.zeros((3, 8, 8), dtype=np.uint8), step)
            w.add_text("notes", "hello", step)
    (path,) = [str(p) for p in tmp_path.iterdir()]
    kinds = {}
    for p in RecordTail(path).read():
        ev = scalars._Event.FromString(p)
        kind = ev.summary.value[0].WhichOneof("value") if ev.summary.value else "none"
        kinds.setdefault(kind, set()).add(_lone_value_without_scalar(p))
    assert kinds == {
        "none": {False},
        "simple_value": {False},
        "histo": {True},
        "image": {True},
        "tensor": {False},
    }
