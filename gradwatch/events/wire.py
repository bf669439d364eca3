"""Protocol-buffer wire format, read by hand where a parse would cost more than it
tells: the step of an Event (a varint), and the fields of a message as byte ranges,
so the reader can see that an Event holds no scalar without parsing it."""

from __future__ import annotations


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos`` as protobuf decodes an int64; returns (value, next pos)."""
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
    # a 10th byte may carry bits past 64: protobuf drops them
    result &= 0xFFFFFFFFFFFFFFFF
    if result >= 1 << 63:
        result -= 1 << 64
    return result, pos


def encode_varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _uvarint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint at ``pos`` that must end by ``end``; IndexError when it does not."""
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise IndexError("bad varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


# wire type -> fixed size of the value (varints and length-delimited are read)
_FIXED = {1: 8, 5: 4}
LENGTH_DELIMITED = 2


# (field number, wire type, start, stop of its value)
Field = tuple[int, int, int, int]


def wire_fields(data: bytes, pos: int, end: int) -> list[Field] | None:
    """The fields of the message in ``data[pos:end]`` as (number, wire type, start, stop)
    of each value (for a length-delimited field, its payload), or None when the bytes
    are not a well-formed message this walker understands (groups included)."""
    out = []
    try:
        while pos < end:
            key, pos = _uvarint(data, pos, end)
            number, wire_type = key >> 3, key & 7
            start = pos
            if wire_type == 0:
                _, pos = _uvarint(data, pos, end)
            elif wire_type == LENGTH_DELIMITED:
                size, start = _uvarint(data, pos, end)
                pos = start + size
            elif wire_type in _FIXED:
                pos += _FIXED[wire_type]
            else:
                return None
            if pos > end or not 0 < number < 1 << 29:
                return None
            out.append((number, wire_type, start, pos))
    except IndexError:
        return None
    return out


def only_field(fields: list[Field], number: int) -> Field | bool | None:
    """The one length-delimited field ``number`` (None when absent); False when it is
    repeated or not length-delimited, which the walker leaves to the proto parse."""
    found = [f for f in fields if f[0] == number]
    if not found:
        return None
    if len(found) > 1 or found[0][1] != LENGTH_DELIMITED:
        return False
    return found[0]


def plugin_name(data: bytes, metadata: Field) -> bytes | None:
    """SummaryMetadata.plugin_data.plugin_name, or None when the walker cannot tell."""
    fields = wire_fields(data, metadata[2], metadata[3])
    plugin_data = None if fields is None else only_field(fields, 1)
    if plugin_data is False or fields is None:
        return None
    if plugin_data is None:
        return b""
    fields = wire_fields(data, plugin_data[2], plugin_data[3])
    name = None if fields is None else only_field(fields, 1)
    if name is False or fields is None:
        return None
    return b"" if name is None else data[name[2] : name[3]]
