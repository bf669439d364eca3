"""Event proto -> scalar points.

Two encodings carry scalars in the wild:

* ``Summary.Value.simple_value`` (torch.utils.tensorboard, tensorboardX,
  TF1 summaries, older Keras);
* a 0-d numeric ``TensorProto`` with plugin ``scalars`` (``tf.summary.scalar``,
  tensorboard's own ``Writer``, torch's ``add_scalar(new_style=True)``).

Everything else (histograms, images, text, hparams, non-0-d tensors) is
ignored. TF2 writers attach the plugin metadata only to the first value of a
tag, so the decision "is this tag a scalar" is remembered per tag.

Memory depends on tags and templates, never on bytes read: an Event whose
bytes already say it holds no scalar (a histogram, image, audio, a tensor of
another plugin, a graph, run metadata) is skipped by walking its wire format
without a protobuf parse, and every other slow-path parse uses a fresh Event,
so no upb arena outlives the record it was parsed from.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2

from gradwatch.events.columns import Columns, ColumnsBuilder, template_hits
from gradwatch.events.records import UNDECODABLE, RecordTail
from gradwatch.events.wire import (
    LENGTH_DELIMITED,
    encode_varint,
    only_field,
    plugin_name,
    varint,
    wire_fields,
)

_Event = event_pb2.Event


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
        # No value at all (a repeated field keeps its zeros, so no writer's
        # 0.0 looks like this): nothing to read, as for TensorBoard.
        return None
    raw = values[0]
    if tensor.dtype == types_pb2.DT_HALF:
        return _HALF.unpack(_H.pack(raw & 0xFFFF))[0]
    if tensor.dtype == types_pb2.DT_BFLOAT16:
        return _bfloat16(raw)
    return float(raw)


class NotAnEvent(ValueError):
    """A record with valid checksums whose payload is not an Event."""


# The keys (field number << 3 | length-delimited) of Summary.Value's obsolete histogram,
# image, histo and audio: a value holding one of them holds no scalar.
_NOT_SCALAR_KEYS = frozenset((3 << 3 | 2, 4 << 3 | 2, 5 << 3 | 2, 6 << 3 | 2))


def _lone_value_without_scalar(p: bytes) -> bool:
    """Whether ``p`` is, byte for byte, what writers emit for a histogram, image or
    audio: an Event of wall_time, step and a summary of one value of a tag (under 128
    bytes) and one image/histo/audio, each length reaching exactly to the end.

    A shape ``ScalarDecoder.skips``'s walk also skips (the same fields, the same
    bounds: varints of at most 10 bytes for the step and of at most 5 for lengths), in
    a few byte tests and three varints instead of three walks; False means only "not
    this shape": the walk judges the rest.
    """
    try:
        if p[0] != 9 or p[9] != 16:
            return False
        i = 10
        while p[i] > 127 and i < 20:  # the step
            i += 1
        i += 1
        if i > 20 or p[i] != 42:  # Event.summary
            return False
        i = _reaches_end(p, i + 1)
        if not i or p[i] != 10:  # Summary.value
            return False
        i = _reaches_end(p, i + 1)
        if not i or p[i] != 10 or p[i + 1] > 127:  # Value.tag, its length one byte
            return False
        i += 2 + p[i + 1]
        return p[i] in _NOT_SCALAR_KEYS and _reaches_end(p, i + 1) > 0
    except IndexError:
        return False


def _reaches_end(p: bytes, i: int) -> int:
    """Where the value of the field whose length is the varint at ``i`` starts, when
    that varint takes at most 5 bytes and the value runs exactly to the end of ``p``;
    else 0. IndexError when the varint runs past the end."""
    b = p[i]
    size = b & 127
    shift = 7
    while b > 127:
        if shift > 28:
            return 0
        i += 1
        b = p[i]
        size |= (b & 127) << shift
        shift += 7
    i += 1
    return i if i + size == len(p) else 0


_F32_ = struct.Struct("<f")
_F64_ = struct.Struct("<d")
_unpack_f64 = _F64_.unpack_from
# Most templates a decoder keeps; beyond it new shapes take the slow path.
MAX_TEMPLATES = 4096
# The summary starts at 11..20: after wall_time (9 bytes), the step's tag
# byte and a varint of 1..10 bytes.
_SUMMARY_STARTS = range(11, 21)
_readers: dict[str, object] = {}
# About how many bytes of records one Columns batch spans
_COLUMN_BATCH_BYTES = 1 << 20
# Batches of fewer records are decoded one record at a time: numpy's fixed cost per
# call is more than it saves on them.
_BULK_MIN_RECORDS = 64
# Records decoded one at a time after a template was learnt, per record left in the
# batch, before the rest is matched against the templates again: matching costs about
# that many times less per record, so re-matching never costs more than it saves.
_REMATCH_AFTER = 64
# Matches of a batch after which only that rule starts another (a match at once when a
# newly learnt template decodes the next record would cost one match per new tag).
_EAGER_MATCHES = 8
# Summaries longer than this are never learnt as templates: a template keeps its
# summary's bytes, and scalar summaries are short (tag, metadata, value).
MAX_TEMPLATE_SUMMARY_BYTES = 512
# Most templates the files of one logdir share (TemplateStore); beyond it each file learns its own.
# Every file's decoder takes them all (about 75 bytes each), so a logdir whose runs log different
# tags costs each file at most about 5 KB more than its own templates; a writer's scalars (the
# same tags in every run) are a few dozen.
MAX_SHARED_TEMPLATES = 64


def _wall_time_and_value(value_at: int, code: str):
    """``unpack_from(payload)`` -> (wall_time, value) for a value at ``value_at``."""
    fmt = f"<xd{value_at - 9}x{code}"
    reader = _readers.get(fmt)
    if reader is None:
        reader = _readers[fmt] = struct.Struct(fmt).unpack_from
    return reader


# Event.summary; Summary.value; Summary.Value fields
_EVENT_SUMMARY = 5
_SUMMARY_VALUE = 1
_VALUE_TAG = 1
_VALUE_SIMPLE = 2
_VALUE_TENSOR = 8
_VALUE_METADATA = 9
# Summary.Value's oneof: obsolete histogram, image, histo, audio never carry a scalar
_VALUE_NOT_SCALAR = frozenset({3, 4, 5, 6})
_VALUE_ONEOF = _VALUE_NOT_SCALAR | {_VALUE_SIMPLE, _VALUE_TENSOR}
_SCALAR_PLUGINS = (b"", b"scalars")


# A template: what follows the value (None when nothing), the tag, and per
# summary start one unpack_from giving (wall_time, value).
Template = tuple[bytes | None, str, list]


class TemplateStore:
    """Templates the files of one logdir share, so a file's first records take the fast path.

    Only a template that decodes the same whatever the file decided about its tensor tags
    is shared (``_decodes_anywhere``): a metadata-less TF2 tensor is a scalar only in a
    file whose tag was not given to another plugin, a per-file fact, so its templates stay
    with the file that learnt them. A shared template is still a pure function of bytes,
    verified once by a probe parse. At most MAX_SHARED_TEMPLATES, first learnt first kept.
    """

    __slots__ = ("_keys", "learnt")

    def __init__(self) -> None:
        # (summary length, value offset, head, Template), in the order they were learnt
        self.learnt: list[tuple[int, int, bytes, Template]] = []
        self._keys: set[tuple[int, int, bytes]] = set()

    def add(self, length: int, voff: int, head: bytes, template: Template) -> None:
        key = (length, voff, head)
        if key not in self._keys and len(self.learnt) < MAX_SHARED_TEMPLATES:
            self._keys.add(key)
            self.learnt.append((length, voff, head, template))


class _EveryTagElsewhere(dict):
    """Per-tag plugin decisions as in a file that gave every tensor tag to another plugin."""

    def get(self, tag, default=None):
        return dict.get(self, tag, False)


def _decodes_anywhere(payload: bytes, point: tuple[str, int, float, float]) -> bool:
    """Whether ``payload`` parses to just ``point`` in any file, whatever it decided about
    its tensor tags. A value's point depends only on its own tag's decision, given before
    the event or by an earlier value's metadata, and is there for "a scalar" whenever it is
    there for "another plugin"; so the two extremes (nothing decided, every tag elsewhere)
    cover every file."""
    for decisions in ({}, _EveryTagElsewhere()):
        decoder = ScalarDecoder()
        decoder._tensor_tags = decisions
        try:
            if decoder._parse(payload) != [point]:
                return False
        except NotAnEvent:
            return False
    return True


class ScalarDecoder:
    """Decodes the payloads of one event file into (tag, step, wall_time, value).

    The slow path parses with tensorboard's compiled protos. A scalar event
    of one tag is byte-for-byte the same from one step to the next except
    for wall_time, step and the value, so after the slow path has decoded a
    single-scalar event it learns a *template*: the summary bytes before and
    after the value. The fast path then decodes an event with a few byte
    tests, one slice, two dict lookups and one struct unpack. A template is
    only kept after an event with another wall_time, step and value built
    from it has decoded through the protos exactly as the template predicts,
    so the fast path can never disagree with them.
    """

    __slots__ = (
        "_adopted",
        "_leant_on_decision",
        "_more_templates",
        "_shared",
        "_shared_seen",
        "_template_count",
        "_templates",
        "_tensor_tags",
        "forgotten",
    )

    def __init__(self, shared: TemplateStore | None = None) -> None:
        # tag -> True (scalar plugin or none) / False (another plugin)
        self._tensor_tags: dict[str, bool] = {}
        # summary length -> (value offset in the summary, {summary bytes before the value -> Template})
        self._templates: dict[int, tuple[int, dict[bytes, Template]]] = {}
        # templates whose summary length is taken by one with another value
        # offset: summary length -> [(value offset, heads)], tried on a miss
        self._more_templates: dict[int, list[tuple[int, dict[bytes, Template]]]] = {}
        self._template_count = 0
        # how many times templates were forgotten: a bulk decoder's matches made before are stale
        self.forgotten = 0
        # the logdir's shared templates, and how many of them this decoder has looked at
        self._shared = shared
        self._shared_seen = 0
        # tags of shared templates taken (the file's own decisions stay in _tensor_tags)
        self._adopted: set[str] = set()
        # the last parse dropped a metadata-less tensor because its tag was given to another
        # plugin: its event decodes otherwise once the tag is a scalar again, so is no template
        self._leant_on_decision = False

    def adopt_shared(self) -> None:
        """Take the shared templates learnt since the last call (called before each read).

        A tag this file gave to another plugin takes none: a tensor with the scalars plugin's
        metadata would give it back to the scalars plugin when parsed, which a template does
        not do. If this file gives a tag that took one to another plugin later, its templates
        are forgotten, as for one learnt here (``_adopted``).
        """
        store = self._shared
        if store is None or self._shared_seen == len(store.learnt):
            return
        tensor_tags = self._tensor_tags
        for length, voff, head, template in store.learnt[self._shared_seen :]:
            tag = template[1]
            if tensor_tags.get(tag) is False or self._template_count >= MAX_TEMPLATES:
                continue
            self._adopted.add(tag)
            self._keep(length, voff, head, template)
        self._shared_seen = len(store.learnt)

    def decode(self, payload: bytes) -> list[tuple[str, int, float, float]]:
        """Points in one record; raises NotAnEvent for undecodable payloads."""
        point = self.by_template(payload)
        if point is not None:
            return [point]
        if self.skips(payload):
            return []
        points = self._parse(payload)
        if len(points) == 1 and self._template_count < MAX_TEMPLATES and not self._leant_on_decision:
            self._learn(payload, points[0])
        return points

    def by_template(self, payload: bytes) -> tuple[str, int, float, float] | None:
        """The point of a record a learnt template decodes (the fast path), else None."""
        try:
            if payload[0] == 9 and payload[9] == 16:
                step, s = varint(payload, 10)
                entry = self._templates.get(len(payload) - s)
                if entry is not None:
                    for voff, heads in (entry, *self._more_templates.get(len(payload) - s, ())):
                        hit = heads.get(payload[s : s + voff])
                        if hit is not None and (hit[0] is None or payload.endswith(hit[0])):
                            wall_time, value = hit[2][s](payload)
                            return (hit[1], step, wall_time, value)
        except IndexError:
            pass
        return None

    def skips(self, payload: bytes) -> bool:
        """Whether the bytes alone show that this Event holds no scalar point.

        Only well-formed shapes are judged; anything unusual (a repeated field
        in a value, a group, an unknown plugin seen for the first time) is left
        to the proto parse, which also keeps the per-tag plugin decisions, so
        skipping never changes what is decoded. A damaged body inside a skipped
        value (a histogram, an image) is not noticed: its checksum was right
        and it could never have held a scalar.
        """
        if _lone_value_without_scalar(payload):
            return True
        fields = wire_fields(payload, 0, len(payload))
        if fields is None:
            return False
        for number, wire_type, start, stop in fields:
            if number != _EVENT_SUMMARY:
                continue  # wall_time, step, file_version, graph_def, run metadata...
            if wire_type != LENGTH_DELIMITED:
                return False
            values = wire_fields(payload, start, stop)
            if values is None:
                return False
            for v_number, v_wire_type, v_start, v_stop in values:
                if v_number != _SUMMARY_VALUE:
                    continue
                if v_wire_type != LENGTH_DELIMITED or not self._value_skips(payload, v_start, v_stop):
                    return False
        return True

    def _value_skips(self, payload: bytes, start: int, stop: int) -> bool:
        """Whether one Summary.Value certainly holds no scalar (see ``skips``)."""
        fields = wire_fields(payload, start, stop)
        if fields is None:
            return False
        oneof = [f for f in fields if f[0] in _VALUE_ONEOF]
        if not oneof:
            return True  # no value at all
        if len(oneof) > 1 or oneof[0][1] != LENGTH_DELIMITED:
            return False
        if oneof[0][0] in _VALUE_NOT_SCALAR:
            return True
        if oneof[0][0] != _VALUE_TENSOR:
            return False
        # A tensor: skipped only for a tag already known to belong to another
        # plugin, and only when this value does not claim the scalars plugin.
        tag = only_field(fields, _VALUE_TAG)
        metadata = only_field(fields, _VALUE_METADATA)
        if tag is False or metadata is False:
            return False
        try:
            name = "" if tag is None else payload[tag[2] : tag[3]].decode()
        except UnicodeDecodeError:
            return False
        if self._tensor_tags.get(name) is not False:
            return False
        if metadata is None:
            return True
        plugin = plugin_name(payload, metadata)
        return plugin is not None and plugin not in _SCALAR_PLUGINS

    def _parse(self, payload: bytes) -> list[tuple[str, int, float, float]]:
        # A fresh Event each time: upb keeps what a message parsed in its arena
        # until the message is dropped, so a reused one grows with every record.
        ev = _Event()
        try:
            ev.ParseFromString(payload)
        except (DecodeError, RuntimeError) as e:
            raise NotAnEvent(str(e) or "undecodable protobuf") from None
        out: list[tuple[str, int, float, float]] = []
        self._leant_on_decision = False
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
                    was = scalar
                    scalar = v.metadata.plugin_data.plugin_name in ("", "scalars")
                    self._tensor_tags[tag] = scalar
                    if not scalar and (was or (was is None and tag in self._adopted)):
                        self._forget_templates(tag)
                elif not scalar:
                    self._leant_on_decision = True
                if scalar:
                    value = tensor_scalar(v.tensor)
                    if value is not None:
                        out.append((tag, step, wall_time, value))
        return out

    def _forget_templates(self, tag: str) -> None:
        """A tag taken over by another plugin: its metadata-less tensors are no longer scalars."""
        self.forgotten += 1
        everything = [*self._templates.values(), *(e for more in self._more_templates.values() for e in more)]
        for _, heads in everything:
            for head in [h for h, hit in heads.items() if hit[1] == tag]:
                del heads[head]
                self._template_count -= 1

    def _learn(self, payload: bytes, point: tuple[str, int, float, float]) -> None:
        tag, step, wall_time, value = point
        if value != value:
            return  # NaN bit patterns do not round-trip through a float
        try:
            if not (payload[0] == 9 and payload[9] == 16):
                return
            if _unpack_f64(payload, 1)[0] != wall_time or varint(payload, 10)[0] != step:
                return  # a later field overrides them: not the layout the fast path reads
            _, s = varint(payload, 10)
        except IndexError:
            return
        summary = payload[s:]
        if len(summary) > MAX_TEMPLATE_SUMMARY_BYTES:
            return
        for unpacker, code in ((_F32_, "f"), (_F64_, "d")):
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
            # The template must decode another wall_time, step and value
            # exactly as the fast path will, or it is not kept.
            probe = (
                tag,
                12345 if step != 12345 else 54321,
                12345.5 if wall_time != 12345.5 else 54321.5,
                1.25 if value != 1.25 else 2.5,
            )
            probe_payload = b"".join(
                (
                    b"\x09",
                    _F64_.pack(probe[2]),
                    b"\x10",
                    encode_varint(probe[1]),
                    head,
                    unpacker.pack(probe[3]),
                    tail,
                )
            )
            # Decoded the same in any file: shared with the logdir's other files (and valid here)
            shared = self._shared is not None and _decodes_anywhere(probe_payload, probe)
            if not shared:
                try:
                    check = self._parse(probe_payload)
                except NotAnEvent:
                    return
                if check != [probe]:
                    continue
            readers = [None] * _SUMMARY_STARTS[0] + [
                _wall_time_and_value(s + voff, code) for s in _SUMMARY_STARTS
            ]
            template = (tail or None, tag, readers)
            if self._keep(len(summary), voff, head, template) and shared:
                self._shared.add(len(summary), voff, head, template)
            return

    def _keep(self, length: int, voff: int, head: bytes, template: Template) -> bool:
        """Keep a template for summaries of ``length`` bytes; False when one with that head was kept."""
        entry = self._templates.setdefault(length, (voff, {}))
        if entry[0] != voff:
            more = self._more_templates.setdefault(length, [])
            entry = next((e for e in more if e[0] == voff), None)
            if entry is None:
                entry = (voff, {})
                more.append(entry)
        if head in entry[1]:
            return False
        entry[1][head] = template
        self._template_count += 1
        return True


def _step(payload: bytes) -> tuple[int, int]:
    """An Event's step, read where the template fast path reads it: (step, next position)."""
    return varint(payload, 10)


class EventFileReader:
    """Tail-reads one event file and yields its new scalar points.

    ``offset`` (what to persist) and problem counters live on ``tail``.
    ``offset`` is exact at every yield: just past the record of the point
    yielded (at its start while more points of the same record follow).
    """

    __slots__ = ("decoder", "tail", "undecodable")

    def __init__(
        self, path: str, offset: int = 0, templates: TemplateStore | None = None, **tail_options
    ) -> None:
        self.tail = RecordTail(path, offset, **tail_options)
        # ``templates``: the logdir's shared templates (LogdirReader's), None for a file alone
        self.decoder = ScalarDecoder(templates)
        self.undecodable = 0

    @property
    def path(self) -> str:
        return self.tail.path

    @property
    def offset(self) -> int:
        return self.tail.offset

    def read(self, final: bool = False, budget: int | None = None) -> Iterator[tuple[str, int, float, float]]:
        """Each new point as (tag, step, wall_time, value); ``budget``: see RecordTail.read."""
        return self._read(final, None, budget)

    def read_run(
        self, run: str, final: bool = False, budget: int | None = None
    ) -> Iterator[tuple[str, str, int, float, float]]:
        """Each new point as (run, tag, step, wall_time, value): what a logdir reader yields."""
        return self._read(final, run, budget)

    def read_columns(self, final: bool = False, budget: int | None = None) -> Iterator[list[Columns]]:
        """The new points a batch of records at a time, one Columns per tag (see columns.py).

        After each yield ``offset`` is just past the batch, so a consumer that
        commits between yields commits whole batches; a batch ends at the first
        record that ends _COLUMN_BATCH_BYTES or more after the last one, whatever
        ``budget`` (see RecordTail.read) reads at once. When reading fails (OSError)
        the reader goes back to the state its last yield left (the call's start
        before any): offset, problem counts and all, so a retry reads the rest
        once. The points are the ones ``read`` yields, decoded a batch of records at once.
        """
        tail = self.tail
        self.decoder.adopt_shared()
        out = ColumnsBuilder()
        handed = (tail.checkpoint(), self.undecodable)
        try:
            for first, batch, lengths, at_cut in tail.read_frames(final, budget, _COLUMN_BATCH_BYTES):
                self._decode_batch(out, first, batch, lengths)
                if at_cut and out:
                    yield out.build()
                    out = ColumnsBuilder()
                    handed = (tail.checkpoint(), self.undecodable)
        except OSError:
            tail.rollback(handed[0])
            self.undecodable = handed[1]
            raise
        if out:
            yield out.build()

    def _decode_batch(
        self, out: ColumnsBuilder, first: int, batch: list[bytes], lens: np.ndarray | None
    ) -> None:
        """Decode one batch of records (starting at file offset ``first``; ``lens``: their
        lengths, None when not known yet) into ``out``."""
        if len(batch) < _BULK_MIN_RECORDS:
            end = first
            for i, p in enumerate(batch):
                end += len(p) + 16
                out.add_points(i, self._decode_one(p, end))
        else:
            if lens is None:
                lens = np.fromiter(map(len, batch), np.int64, count=len(batch))
            ends = np.cumsum(lens + 16) + first
            templates, more = self.decoder._templates, self.decoder._more_templates
            i = matches = 0
            while i < len(batch):
                hits = template_hits(batch[i:] if i else batch, lens[i:], templates, more, _step)
                matches += 1
                stop = self._decode_misses(out, batch, ends, i, hits, matches <= _EAGER_MATCHES)
                out.add_hits(i, hits, stop)
                i = stop
        out.end_batch(len(batch))

    def _decode_misses(
        self, out: ColumnsBuilder, batch: list[bytes], ends, first: int, hits, eager: bool
    ) -> int:
        """Decode one at a time the records from ``first`` that no template decoded, until
        the templates changed so that ``hits`` may be wrong (one was forgotten) or matching
        the rest again pays (new ones learnt); returns where to match again."""
        decoder = self.decoder
        missed = np.ones(len(batch) - first, bool)
        missed[hits.records] = False
        templates, forgotten = decoder._template_count, decoder.forgotten
        for slow, i in enumerate((np.flatnonzero(missed) + first).tolist()):
            if decoder._template_count != templates and (
                # a template learnt since decodes this record: likely the rest too (a
                # writer logs the same tags every step), or many went one at a time
                (eager and decoder.by_template(batch[i]) is not None)
                or slow * _REMATCH_AFTER >= len(batch) - i
            ):
                return i
            out.add_points(i, self._decode_one(batch[i], int(ends[i])))
            if decoder.forgotten != forgotten:
                return i + 1
        return len(batch)

    def _decode_one(self, p: bytes, end: int) -> list[tuple[str, int, float, float]]:
        """The points of one record ending at file offset ``end``; an undecodable one is reported."""
        try:
            return self.decoder.decode(p)
        except NotAnEvent as e:
            self.undecodable += 1
            self.tail.report_problem(
                UNDECODABLE, end - len(p) - 16, f"valid checksums but not an Event ({e}); skipped"
            )
            return []

    @property
    def pending(self) -> bool:
        """The last read stopped at its budget; more of the file is waiting."""
        return self.tail.pending

    def _read(self, final: bool, run: str | None, budget: int | None) -> Iterator[tuple]:
        decoder = self.decoder
        decoder.adopt_shared()
        templates = decoder._templates
        tail = self.tail
        # The template fast path of ScalarDecoder.decode, inlined: this loop
        # is where the daemon and the one-shot commands spend their time.
        for end, batch in tail.read_batches(final, budget):
            for p in batch:
                end += len(p) + 16
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
                                    step, s = varint(p, 10)
                        entry = templates.get(len(p) - s)
                        if entry is not None:
                            hit = entry[1].get(p[s : s + entry[0]])
                            if hit is not None and (hit[0] is None or p.endswith(hit[0])):
                                wall_time, value = hit[2][s](p)
                                tail.offset = end
                                if run is None:
                                    yield (hit[1], step, wall_time, value)
                                else:
                                    yield (run, hit[1], step, wall_time, value)
                                continue
                except IndexError:
                    pass
                points = self._decode_one(p, end)
                last = len(points) - 1
                for i, point in enumerate(points):
                    tail.offset = end if i == last else end - len(p) - 16
                    yield point if run is None else (run, *point)
            tail.offset = end
