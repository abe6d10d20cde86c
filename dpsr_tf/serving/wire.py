"""Fast TensorProto wire encoding and decoding of numeric value fields.

Filling `float_val`/`int_val` element by element through the protobuf runtime is slow enough that,
at hundreds of requests per second, it takes a large share of a small server's CPU
(docs/benchmarks.md, "Serving latency and throughput"). The wire format of a packed repeated field
is just the raw little-endian values (fixed 32/64-bit) or varints, so numpy can produce and read it
directly; the protobuf runtime then parses it in C. The messages are the same as the slow path's
(same fields, same values).

  encode_numeric(array) -> bytes of a TensorProto (dtype, tensor_shape, packed value field)
  decode_numeric(tensor_proto) -> np.ndarray, or None when the fast path does not apply
"""
import math
from typing import Optional

import numpy as np
from tensorflow.core.framework import types_pb2

# TensorProto field numbers (tensorflow/core/framework/tensor.proto).
_DTYPE, _SHAPE, _CONTENT = 1, 2, 4
# dtype -> (value field number, numpy dtype on the wire, 'fixed' or 'varint')
_FIELDS = {
    types_pb2.DT_FLOAT: (5, np.dtype("<f4"), "fixed"),
    types_pb2.DT_DOUBLE: (6, np.dtype("<f8"), "fixed"),
    types_pb2.DT_INT32: (7, np.int32, "varint"),
    types_pb2.DT_INT16: (7, np.int16, "varint"),
    types_pb2.DT_INT8: (7, np.int8, "varint"),
    types_pb2.DT_UINT8: (7, np.uint8, "varint"),
    types_pb2.DT_UINT16: (7, np.uint16, "varint"),
    types_pb2.DT_INT64: (10, np.int64, "varint"),
    types_pb2.DT_BOOL: (11, np.bool_, "varint"),
    types_pb2.DT_UINT32: (16, np.uint32, "varint"),
    types_pb2.DT_UINT64: (17, np.uint64, "varint"),
}
_DTYPE_OF = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
             np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int16): types_pb2.DT_INT16,
             np.dtype(np.int8): types_pb2.DT_INT8, np.dtype(np.uint8): types_pb2.DT_UINT8,
             np.dtype(np.uint16): types_pb2.DT_UINT16, np.dtype(np.int64): types_pb2.DT_INT64,
             np.dtype(np.bool_): types_pb2.DT_BOOL, np.dtype(np.uint32): types_pb2.DT_UINT32,
             np.dtype(np.uint64): types_pb2.DT_UINT64}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varints(values: np.ndarray) -> bytes:
    """Varint encoding of integers (negatives as 10-byte two's complement, as protobuf)."""
    v = values.astype(np.int64, copy=False).view(np.uint64)
    if v.size == 0:
        return b""
    if int(v.max()) < 0x80:  # every value fits one byte (e.g. head indices)
        return v.astype(np.uint8).tobytes()
    out = np.empty((v.size, 10), np.uint8)
    length = np.ones(v.size, np.int64)
    x = v.copy()
    for i in range(10):
        out[:, i] = (x & np.uint64(0x7F)).astype(np.uint8)
        x >>= np.uint64(7)
        more = x != 0
        out[more, i] |= 0x80
        length += more
    mask = np.arange(10)[None, :] < length[:, None]
    return out[mask].tobytes()


def _decode_varints(payload: bytes) -> np.ndarray:
    """uint64 values of a packed varint payload."""
    b = np.frombuffer(payload, np.uint8)
    if b.size == 0:
        return np.zeros(0, np.uint64)
    last = b < 0x80
    if last.all():
        return b.astype(np.uint64)
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    shift = (np.arange(b.size) - starts[group]).astype(np.uint64) * np.uint64(7)
    parts = (b & 0x7F).astype(np.uint64) << shift
    return np.add.reduceat(parts, starts)


def encode_numeric(array: np.ndarray) -> Optional[bytes]:
    """Serialized TensorProto of a numeric array using its typed value field, or None when
    the dtype is not handled here (strings, half)."""
    dtype = _DTYPE_OF.get(array.dtype)
    if dtype is None:
        return None
    field, wire_dtype, kind = _FIELDS[dtype]
    shape = b"".join(b"\x12" + _varint(len(d)) + d
                     for d in (b"\x08" + _varint(int(s)) for s in array.shape))
    flat = array.ravel()
    if kind == "fixed":
        payload = flat.astype(wire_dtype, copy=False).tobytes()
    else:
        payload = _varints(flat.astype(np.int64) if array.dtype != np.uint64 else flat)
    out = b"\x08" + _varint(dtype) + b"\x12" + _varint(len(shape)) + shape
    if payload:
        out += _varint(field << 3 | 2) + _varint(len(payload)) + payload
    return out


def read_varint(data: bytes, pos: int):
    """(value, position after it) of the base-128 varint at data[pos].

    Raises:
      ValueError: the varint runs past the end of data or over 10 bytes.
    """
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


_FIXED_BYTES = {1: 8, 5: 4}  # wire type -> payload size of fixed64 / fixed32


def fields(data: bytes, start: int = 0, end: Optional[int] = None,
           limit: Optional[int] = None):
    """(field number, wire type, value) of the top-level fields of the message in
    data[start:end], without copying: value is the integer of a varint (wire type 0), the
    (start, end) span in `data` of a length-delimited (2) or fixed-size (1, 5) payload.

    limit: stop after this many fields (None: read to `end`).

    Raises:
      ValueError: a truncated field or an unknown wire type.
    """
    pos, end = start, len(data) if end is None else end
    n = 0
    while pos < end and (limit is None or n < limit):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = read_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == 2 or wire_type in _FIXED_BYTES:
            if wire_type == 2:
                length, pos = read_varint(data, pos)
            else:
                length = _FIXED_BYTES[wire_type]
            if pos + length > end:
                raise ValueError("truncated field")
            yield number, wire_type, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        n += 1


def decode_numeric(proto) -> Optional[np.ndarray]:
    """The values of a numeric TensorProto with typed value fields, read from its wire bytes.

    Returns None when the fast path does not apply (strings, tensor_content, a value count
    that needs TF's fill rules); the caller then uses the generic conversion.
    """
    entry = _FIELDS.get(proto.dtype)
    if entry is None or proto.tensor_content or proto.tensor_shape.unknown_rank:
        return None
    field, wire_dtype, kind = entry
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = math.prod(shape)  # exact (callers check the declared shape first)
    data = proto.SerializeToString()
    chunks = [(wire, value) for number, wire, value in fields(data) if number == field]
    if not chunks:
        return None
    if kind == "fixed":
        values = np.frombuffer(b"".join(data[span[0]:span[1]] for wire, span in chunks
                                        if wire != 0), wire_dtype)
    else:
        if any(wire != 2 for wire, _ in chunks):  # unpacked varints: the generic path's
            return None
        values = _decode_varints(b"".join(data[a:b] for _, (a, b) in chunks)
                                 ).view(np.int64).astype(wire_dtype)
    if values.size != count:
        return None
    return values.reshape(shape)
