"""Event proto -> scalar points.

Two encodings carry scalars in the wild:

* ``Summary.Value.simple_value`` (torch.utils.tensorboard, tensorboardX,
  TF1 summaries, older Keras);
* a 0-d numeric ``TensorProto`` with plugin ``scalars`` (``tf.summary.scalar``,
  tensorboard's own ``Writer``, torch's ``add_scalar(new_style=True)``).

Everything else (histograms, images, text, hparams, non-0-d tensors) is
ignored. TF2 writers attach the plugin metadata only to the first value of a
tag, so the decision "is this tag a scalar" is remembered per tag.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2

from gradwatch.events.records import UNDECODABLE, RecordTail

_Event = event_pb2.Event


class Point(NamedTuple):
    run: str
    tag: str
    step: int
    wall_time: float
    value: float


# dtype -> (repeated field holding the value, struct format of tensor_content)
_TENSOR_FIELDS: dict[int, tuple[str, str]] = {
    types_pb2.DT_FLOAT: ("float_val", "<f"),
    types_pb2.DT_DOUBLE: ("double_val", "<d"),
    types_pb2.DT_HALF: ("half_val", "<e"),
    types_pb2.DT_BFLOAT16: ("half_val", "<H"),
    types_pb2.DT_INT8: ("int_val", "<b"),
    types_pb2.DT_INT16: ("int_val", "<h"),
    types_pb2.DT_INT32: ("int_val", "<i"),
    types_pb2.DT_INT64: ("int64_val", "<q"),
    types_pb2.DT_UINT8: ("int_val", "<B"),
    types_pb2.DT_UINT16: ("int_val", "<H"),
    types_pb2.DT_UINT32: ("uint32_val", "<I"),
    types_pb2.DT_UINT64: ("uint64_val", "<Q"),
    types_pb2.DT_BOOL: ("bool_val", "<?"),
}
_HALF = struct.Struct("<e")
_H = struct.Struct("<H")
_F32 = struct.Struct("<f")


def _bfloat16(bits: int) -> float:
    return _F32.unpack(struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def tensor_scalar(tensor) -> float | None:
    """The value of a 0-d numeric tensor, or None when it is not one."""
    if tensor.tensor_shape.dim:
        return None
    fields = _TENSOR_FIELDS.get(tensor.dtype)
    if fields is None:
        return None
    field, fmt = fields
    content = tensor.tensor_content
    if content:
        if len(content) != struct.calcsize(fmt):
            return None
        raw = struct.unpack(fmt, content)[0]
        if tensor.dtype == types_pb2.DT_BFLOAT16:
            return _bfloat16(raw)
        return float(raw)
    values = getattr(tensor, field)
    if not values:
        # proto3 omits zeros: an empty 0-d tensor of a numeric type is 0.
        return 0.0
    raw = values[0]
    if tensor.dtype == types_pb2.DT_HALF:
        return _HALF.unpack(_H.pack(raw & 0xFFFF))[0]
    if tensor.dtype == types_pb2.DT_BFLOAT16:
        return _bfloat16(raw)
    return float(raw)


class NotAnEvent(ValueError):
    """A record with valid checksums whose payload is not an Event."""


_F32_ = struct.Struct("<f")
_F64_ = struct.Struct("<d")
_unpack_f64 = _F64_.unpack_from
# Most templates a decoder keeps; beyond it new shapes take the slow path.
MAX_TEMPLATES = 4096


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos`` as a signed int64; returns (value, next pos)."""
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")
    if result >= 1 << 63:
        result -= 1 << 64
    return result, pos


class ScalarDecoder:
    """Decodes the payloads of one event file into (tag, step, wall_time, value).

    The slow path parses with tensorboard's compiled protos. A scalar event
    of one tag is byte-for-byte the same from one step to the next except
    for wall_time, step and the value, so after the slow path has decoded a
    single-scalar event it learns a *template*: the summary bytes before and
    after the value. The fast path then decodes an event with one slice, two
    dict lookups and three struct unpacks. A template is only kept after a
    substituted value has been checked to decode through the protos exactly
    as the template predicts, so the fast path can never disagree with them.
    """

    __slots__ = ("_event", "_template_count", "_templates", "_tensor_tags")

    def __init__(self) -> None:
        # tag -> True (scalar plugin or none) / False (another plugin)
        self._tensor_tags: dict[str, bool] = {}
        self._event = _Event()
        # summary length -> (value offset, {bytes before value -> (bytes after, tag, unpack)})
        self._templates: dict[int, tuple[int, dict[bytes, tuple[bytes, str, object]]]] = {}
        self._template_count = 0

    def decode(self, payload: bytes) -> list[tuple[str, int, float, float]]:
        """Points in one record; raises NotAnEvent for undecodable payloads."""
        try:
            if payload[0] == 9 and payload[9] == 16:
                b = payload[10]
                if b < 128:
                    step, s = b, 11
                else:
                    step, s = _varint(payload, 10)
                entry = self._templates.get(len(payload) - s)
                if entry is not None:
                    voff, heads = entry
                    hit = heads.get(payload[s : s + voff])
                    if hit is not None and payload.endswith(hit[0]):
                        return [(hit[1], step, _unpack_f64(payload, 1)[0], hit[2](payload, s + voff)[0])]
        except IndexError:
            pass
        points = self._parse(payload)
        if len(points) == 1 and self._template_count < MAX_TEMPLATES:
            self._learn(payload, points[0])
        return points

    def _parse(self, payload: bytes) -> list[tuple[str, int, float, float]]:
        ev = self._event
        try:
            ev.ParseFromString(payload)
        except (DecodeError, RuntimeError) as e:
            raise NotAnEvent(str(e) or "undecodable protobuf") from None
        out: list[tuple[str, int, float, float]] = []
        if not ev.HasField("summary"):
            return out
        step = ev.step
        wall_time = ev.wall_time
        for v in ev.summary.value:
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                out.append((v.tag, step, wall_time, v.simple_value))
            elif kind == "tensor":
                tag = v.tag
                scalar = self._tensor_tags.get(tag)
                if scalar is None or v.HasField("metadata"):
                    scalar = v.metadata.plugin_data.plugin_name in ("", "scalars")
                    self._tensor_tags[tag] = scalar
                if scalar:
                    value = tensor_scalar(v.tensor)
                    if value is not None:
                        out.append((tag, step, wall_time, value))
        return out

    def _learn(self, payload: bytes, point: tuple[str, int, float, float]) -> None:
        tag, step, wall_time, value = point
        if value != value:
            return  # NaN bit patterns do not round-trip through a float
        try:
            if not (payload[0] == 9 and payload[9] == 16):
                return
            _, s = _varint(payload, 10)
        except IndexError:
            return
        summary = payload[s:]
        for unpacker in (_F32_, _F64_):
            try:
                encoded = unpacker.pack(value)
            except OverflowError:
                continue
            if unpacker is _F32_ and unpacker.unpack(encoded)[0] != value:
                continue
            if summary.count(encoded) != 1:
                continue
            voff = summary.find(encoded)
            head, tail = summary[:voff], summary[voff + unpacker.size :]
            probe = 1.25 if value != 1.25 else 2.5
            try:
                check = self._parse(payload[:s] + head + unpacker.pack(probe) + tail)
            except NotAnEvent:
                return
            if check != [(tag, step, wall_time, probe)]:
                continue
            entry = self._templates.setdefault(len(summary), (voff, {}))
            if entry[0] == voff and head not in entry[1]:
                entry[1][head] = (tail, tag, unpacker.unpack_from)
                self._template_count += 1
            return


class EventFileReader:
    """Tail-reads one event file and yields its new scalar points.

    ``offset`` (what to persist) and problem counters live on ``tail``.
    """

    __slots__ = ("decoder", "tail", "undecodable")

    def __init__(self, path: str, offset: int = 0, **tail_options) -> None:
        self.tail = RecordTail(path, offset, **tail_options)
        self.decoder = ScalarDecoder()
        self.undecodable = 0

    @property
    def path(self) -> str:
        return self.tail.path

    @property
    def offset(self) -> int:
        return self.tail.offset

    def read(self, final: bool = False) -> Iterator[tuple[str, int, float, float]]:
        decoder = self.decoder
        templates = decoder._templates
        unpack_f64 = _unpack_f64
        tail = self.tail
        # The template fast path of ScalarDecoder.decode, inlined: this loop
        # is where the daemon and the one-shot commands spend their time.
        for p in tail.read(final):
            try:
                if p[0] == 9 and p[9] == 16:
                    # steps below 2**21 (one to three varint bytes) inline
                    b = p[10]
                    if b < 128:
                        step, s = b, 11
                    else:
                        b2 = p[11]
                        if b2 < 128:
                            step, s = (b & 127) | (b2 << 7), 12
                        else:
                            b3 = p[12]
                            if b3 < 128:
                                step, s = (b & 127) | ((b2 & 127) << 7) | (b3 << 14), 13
                            else:
                                step, s = _varint(p, 10)
                    entry = templates.get(len(p) - s)
                    if entry is not None:
                        voff = entry[0]
                        hit = entry[1].get(p[s : s + voff])
                        if hit is not None and p.endswith(hit[0]):
                            yield (hit[1], step, unpack_f64(p, 1)[0], hit[2](p, s + voff)[0])
                            continue
            except IndexError:
                pass
            try:
                points = decoder.decode(p)
            except NotAnEvent as e:
                self.undecodable += 1
                tail.report_problem(
                    UNDECODABLE,
                    tail.offset - len(p) - 16,
                    f"valid checksums but not an Event ({e}); skipped",
                )
                continue
            yield from points
