"""TensorProto <-> numpy, fast and strict (no tf.make_tensor_proto on the request path).

Responses use the typed value fields (`float_val`, `string_val`, ...) as TF Serving does by
default (Tensor::AsProtoField), so clients that read `outputs["scores"].float_val` directly and
clients that call `tf.make_ndarray` both work. Requests may use either the value fields or
`tensor_content`.
"""
import math
from typing import Optional, Tuple

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

import grpc

from dpsr_tf.serving import wire
from dpsr_tf.serving.errors import ServingError

TensorProto = tensor_pb2.TensorProto

_NUMPY_BY_DTYPE = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64,
    types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8, types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_UINT32: np.uint32, types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_, types_pb2.DT_HALF: np.float16,
    types_pb2.DT_STRING: object,
}
_DTYPE_BY_NUMPY = {np.dtype(v): k for k, v in _NUMPY_BY_DTYPE.items() if v is not object}
_FIELD_BY_DTYPE = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val", types_pb2.DT_HALF: "half_val",
}


# Below this many values the plain protobuf path is cheaper than the wire codec's numpy setup.
_FAST_MIN_VALUES = 32
# No tensor may declare more values than this, whatever the caller's own limit: the product of
# the declared dims is computed exactly (Python ints), so shapes whose product overflows int64
# are refused here instead of reaching numpy.
MAX_ELEMENTS = 1 << 31


def dtype_name(dtype: int) -> str:
    """"DT_FLOAT" for types_pb2.DT_FLOAT."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DT_<{dtype}>"


def numpy_dtype(dtype: int):
    """The numpy dtype of a TF DataType enum (object for DT_STRING); None if unsupported."""
    return _NUMPY_BY_DTYPE.get(dtype)


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def declared_shape(proto: TensorProto, name: str = "tensor") -> Tuple[int, ...]:
    """The shape a TensorProto declares, checked without converting any value.

    Raises:
      ServingError(INVALID_ARGUMENT): unknown rank or a negative dimension.
    """
    if proto.tensor_shape.unknown_rank:
        raise _bad(f"{name}: tensor_shape has unknown_rank; send a concrete shape")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise _bad(f"{name}: shape {list(shape)} has a negative dimension")
    return shape


# What the servers (and the proxy, which refuses what they would) tell a client whose input is
# over --max_input_elements, after the count and the limit.
MAX_ELEMENTS_HINT = " (--max_input_elements); send fewer values or split the request"


def string_too_long(name: str, index: int, length: int, limit: int) -> ServingError:
    """The INVALID_ARGUMENT for string `index` of `name` (e.g. "input 'query'"), `length` bytes
    long, over --max_string_input_bytes `limit` (the native front end words it the same:
    front_end_cc/string_limit.h)."""
    return _bad(f"{name}[{index}] is {length} bytes; the limit is {limit} "
                "(--max_string_input_bytes); send shorter text")


def check_num_elements(shape: Tuple[int, ...], limit: int, name: str = "tensor",
                       hint: str = "") -> int:
    """The exact number of values `shape` declares; INVALID_ARGUMENT above `limit`.

    A dimension above the limit is refused even when another dimension is 0, so that nothing
    downstream ever allocates from it.
    """
    count = math.prod(shape)
    if count > limit or any(d > limit for d in shape):
        raise _bad(f"{name}: shape {list(shape)} declares {count:,} values; the limit is "
                   f"{limit:,}{hint}")
    return count


def to_ndarray(proto: TensorProto, name: str = "tensor",
               max_elements: int = MAX_ELEMENTS,
               shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """Converts a request TensorProto to numpy.

    The declared shape is checked against `max_elements` before any value is converted, so a
    small message that declares a huge shape (one string "broadcast" to 10^8 elements) is refused
    without allocating.

    Args:
      proto: the TensorProto.
      name: what it is, for messages ("input 'query'").
      max_elements: most values the tensor may declare (capped at MAX_ELEMENTS).
      shape: declared_shape(proto) when the caller has read it already (one read per request).

    Returns:
      np.ndarray of the proto's shape; dtype object (of bytes) for DT_STRING.

    Raises:
      ServingError(INVALID_ARGUMENT): unsupported dtype, bad shape, too many declared values, or
        a value count that does not fit the shape.
    """
    np_dtype = _NUMPY_BY_DTYPE.get(proto.dtype)
    if np_dtype is None:
        raise _bad(f"{name}: dtype {dtype_name(proto.dtype)} is not supported")
    if shape is None:
        shape = declared_shape(proto, name)
    count = check_num_elements(shape, min(max_elements, MAX_ELEMENTS), name)
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        out = np.empty(count, dtype=object)
        if len(values) == count:
            out[:] = values
        elif len(values) == 1 and count > 1:
            out[:] = values[0]
        elif count:
            raise _bad(f"{name}: shape {list(shape)} needs {count} strings, got {len(values)}")
        return out.reshape(shape)
    if not proto.tensor_content and count > _FAST_MIN_VALUES:
        fast = wire.decode_numeric(proto)
        if fast is not None:
            return fast
    if proto.tensor_content:
        itemsize = np.dtype(np_dtype).itemsize
        if len(proto.tensor_content) != count * itemsize:
            raise _bad(f"{name}: tensor_content has {len(proto.tensor_content)} bytes; shape "
                       f"{list(shape)} of {dtype_name(proto.dtype)} needs {count * itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    field = getattr(proto, _FIELD_BY_DTYPE[proto.dtype])
    if proto.dtype == types_pb2.DT_HALF:
        values = np.asarray(field, dtype=np.uint16).view(np.float16)
    else:
        # fromiter: np.asarray walks a repeated field as a generic sequence, slow even for one k
        values = np.fromiter(field, np_dtype, len(field))
    if values.size == count:
        return values.reshape(shape)
    if values.size == 0:
        return np.zeros(shape, dtype=np_dtype)
    if values.size < count:  # TF fills the rest with the last value
        return np.concatenate([values, np.full(count - values.size, values[-1])]).reshape(shape)
    raise _bad(f"{name}: shape {list(shape)} needs {count} values, got {values.size}")


def from_ndarray(array: np.ndarray, out: TensorProto = None) -> TensorProto:
    """Converts a numpy array (session output) to a TensorProto using the typed value fields.

    Args:
      array: np.ndarray; object arrays are DT_STRING (bytes or str elements).
      out: an existing (empty) TensorProto to fill, e.g. `response.outputs[alias]`.
    """
    array = np.asarray(array)
    proto = TensorProto() if out is None else out
    encoded = wire.encode_numeric(array) if array.size > _FAST_MIN_VALUES else None
    if encoded is not None:  # same message, built from the wire format (much faster)
        proto.MergeFromString(encoded)
        return proto
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                                  for s in array.shape)
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        proto.dtype = types_pb2.DT_STRING
        flat = array.ravel().tolist()
        try:
            proto.string_val.extend(flat)
        except TypeError:  # str elements (REST, tests) rather than the bytes a session returns
            del proto.string_val[:]
            proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return proto
    dtype = _DTYPE_BY_NUMPY.get(array.dtype)
    if dtype is None:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"cannot encode numpy dtype {array.dtype} in a TensorProto")
    proto.dtype = dtype
    if dtype == types_pb2.DT_HALF:
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:
        getattr(proto, _FIELD_BY_DTYPE[dtype]).extend(array.ravel().tolist())
    return proto


def shape_of(tensor_info) -> tuple:
    """Signature TensorInfo shape as a tuple (-1 unknown dim); None for unknown rank."""
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return tuple(d.size for d in tensor_info.tensor_shape.dim)
