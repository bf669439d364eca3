"""The value of a 0-d numeric TensorProto: the TF2 form of a scalar (``tf.summary.scalar``,
tensorboard's own ``Writer``, torch's ``add_scalar(new_style=True)``), every dtype
TensorBoard reads, as a float."""

from __future__ import annotations

import struct

from tensorboard.compat.proto import types_pb2

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
