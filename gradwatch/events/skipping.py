"""Events whose bytes alone show they hold no scalar point, judged without a protobuf parse.

A histogram, image, audio, a tensor of another plugin, a graph or run metadata is skipped by
walking its wire format: memory and time stay proportional to what is decoded, not to what
the trainer logs beside its scalars. Only well-formed shapes are judged; anything unusual
goes to the parse (decoder.py), which also keeps the per-tag plugin decisions
(``tensor_tags``: tag -> True for the scalars plugin or none, False for another).
"""

from __future__ import annotations

from gradwatch.events.wire import LENGTH_DELIMITED, only_field, plugin_name, wire_fields

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

# The keys (field number << 3 | length-delimited) of Summary.Value's obsolete histogram,
# image, histo and audio: a value holding one of them holds no scalar.
_NOT_SCALAR_KEYS = frozenset((3 << 3 | 2, 4 << 3 | 2, 5 << 3 | 2, 6 << 3 | 2))


def _lone_value_without_scalar(p: bytes) -> bool:
    """Whether ``p`` is, byte for byte, what writers emit for a histogram, image or
    audio: an Event of wall_time, step and a summary of one value of a tag (under 128
    bytes) and one image/histo/audio, each length reaching exactly to the end.

    A shape ``holds_no_scalar``'s walk also skips (the same fields, the same
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


def holds_no_scalar(payload: bytes, tensor_tags: dict[str, bool]) -> bool:
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
            if v_wire_type != LENGTH_DELIMITED or not _value_holds_no_scalar(
                payload, v_start, v_stop, tensor_tags
            ):
                return False
    return True


def _value_holds_no_scalar(payload: bytes, start: int, stop: int, tensor_tags: dict[str, bool]) -> bool:
    """Whether one Summary.Value certainly holds no scalar (see ``holds_no_scalar``)."""
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
    if tensor_tags.get(name) is not False:
        return False
    if metadata is None:
        return True
    plugin = plugin_name(payload, metadata)
    return plugin is not None and plugin not in _SCALAR_PLUGINS
