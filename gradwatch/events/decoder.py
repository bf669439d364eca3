"""Event proto -> scalar points: the per-file decoder and its byte templates.

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

from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2

from gradwatch.events.skipping import holds_no_scalar
from gradwatch.events.tensor_scalars import tensor_scalar
from gradwatch.events.wire import encode_varint, varint

_Event = event_pb2.Event


class NotAnEvent(ValueError):
    """A record with valid checksums whose payload is not an Event."""


_F32_ = struct.Struct("<f")
_F64_ = struct.Struct("<d")
_unpack_f64 = _F64_.unpack_from
# Most templates a decoder keeps; beyond it new shapes take the slow path.
MAX_TEMPLATES = 4096
# The summary starts at 11..20: after wall_time (9 bytes), the step's tag
# byte and a varint of 1..10 bytes.
_SUMMARY_STARTS = range(11, 21)
_readers: dict[str, object] = {}
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
        "_decided_since",
        "_more_templates",
        "_no_template",
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
        # the last parse's event is no template: it dropped a metadata-less tensor because its
        # tag was given to another plugin (it decodes otherwise once the tag is a scalar again),
        # or it decided the plugin of a tag other than its point's (which a template never does)
        self._no_template = False
        # tag -> its decision at the last checkpoint(), for the tags whose decision changed
        # since: a rollback undoes these, and a checkpoint costs nothing per tag
        self._decided_since: dict[str, bool | None] = {}

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
        if len(points) == 1 and self._template_count < MAX_TEMPLATES and not self._no_template:
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
        """Whether the bytes alone show that this Event holds no scalar point (skipping.py)."""
        return holds_no_scalar(payload, self._tensor_tags)

    def _parse(self, payload: bytes) -> list[tuple[str, int, float, float]]:
        # A fresh Event each time: upb keeps what a message parsed in its arena
        # until the message is dropped, so a reused one grows with every record.
        ev = _Event()
        try:
            ev.ParseFromString(payload)
        except (DecodeError, RuntimeError) as e:
            raise NotAnEvent(str(e) or "undecodable protobuf") from None
        out: list[tuple[str, int, float, float]] = []
        self._no_template = False
        if not ev.HasField("summary"):
            return out
        step = ev.step
        wall_time = ev.wall_time
        decided = None  # the tag whose plugin this event decided (a template replays no decision)
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
                    if scalar is not was and tag not in self._decided_since:
                        self._decided_since[tag] = was
                    if not scalar and (was or (was is None and tag in self._adopted)):
                        self._forget_templates(tag)
                    if decided is None:
                        decided = tag
                    else:  # a second decision: a template replays none of them
                        self._no_template = True
                elif not scalar:
                    self._no_template = True
                if scalar:
                    value = tensor_scalar(v.tensor)
                    if value is not None:
                        out.append((tag, step, wall_time, value))
        if decided is not None and len(out) == 1 and (out[0][0] != decided or not self._tensor_tags[decided]):
            # e.g. [h: histograms metadata, a: simple_value]: a template of "a" would decode its
            # copies without giving "h" to the histograms plugin again; and [x: scalars, x:
            # histograms] leaves its own point's tag elsewhere. Its point's own tag given to the
            # scalars plugin is fine: the template goes when that tag goes elsewhere (_forget_templates)
            self._no_template = True
        return out

    def checkpoint(self) -> None:
        """Remember the per-tag plugin decisions as they are, for ``rollback`` (at every yield
        of a columns read, so it only forgets what the decisions were before)."""
        if self._decided_since:
            self._decided_since = {}

    def rollback(self) -> None:
        """Go back to the decisions of the last ``checkpoint``, so that records read again are
        decoded as they were the first time, not with decisions of the records after them.

        A tag whose decision changed since may have templates learnt under the newer one:
        they are forgotten (templates that decision forgot are not restored, only relearnt).
        Shared templates (TemplateStore) decode the same whatever a file decided, so stay.
        """
        tensor_tags = self._tensor_tags
        for tag, was in self._decided_since.items():
            if was is None:
                del tensor_tags[tag]
            else:
                tensor_tags[tag] = was
            self._forget_templates(tag)
        self._decided_since = {}

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
