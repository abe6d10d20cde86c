"""Shard answers the proxy will merge, checked against what the request could need.

A shard answers a Predict request with at most the request's rows and, in its item ids and
scores, at most the request's k entries per row, and carries no more values than its outputs
declare. A larger answer comes from a broken or foreign shard: it is refused (INTERNAL, "...
refused, not merged ...") and counts as a failed shard. The declared shapes are read from the
answer's wire bytes before the message is parsed (parse_shard_answer), so one answer of a
million rows costs the proxy a few field headers, not a parse and a decode on its event loop.
"""
import math
from typing import Dict, List, Optional

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import tensors, wire
from dpsr_tf.serving.errors import ServingError

# Serializers write fields in number order: a TensorProto's shape (field 2) follows at most its
# dtype (1). Past this many fields the pre-check gives up and the full parse decides.
_SHAPE_SCAN_FIELDS = 4
_INTEGER_DTYPES = frozenset({types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32,
                             types_pb2.DT_INT64, types_pb2.DT_UINT8, types_pb2.DT_UINT16,
                             types_pb2.DT_UINT32, types_pb2.DT_UINT64})


_VALUE_FIELDS = ("string_val", "float_val", "double_val", "int_val", "int64_val", "bool_val",
                 "half_val", "uint32_val", "uint64_val")


def _values_sent(proto) -> int:
    """How many values a TensorProto carries (len() of its fields: nothing is decoded)."""
    sent = max(len(getattr(proto, field)) for field in _VALUE_FIELDS)
    if proto.tensor_content:
        itemsize = np.dtype(tensors.numpy_dtype(proto.dtype)).itemsize
        sent = max(sent, len(proto.tensor_content) // max(1, itemsize))
    return sent


def request_rows(request) -> Optional[int]:
    """The most rows (dim 0) any input of a PredictRequest declares; None when no input has
    a dimension."""
    rows = [t.tensor_shape.dim[0].size for t in request.inputs.values() if t.tensor_shape.dim]
    return max(rows) if rows else None


def request_k(request, k_input: str) -> Optional[int]:
    """The request's k (a scalar or one-value integer input), or None when it has none or an
    odd one (the shards then answer the client's error)."""
    proto = request.inputs.get(k_input)
    if proto is None or proto.dtype not in _INTEGER_DTYPES:
        return None
    try:
        values = tensors.to_ndarray(proto, k_input, max_elements=1)
    except ServingError:
        return None
    return int(values.ravel()[0]) if values.size == 1 else None


def check_answer_size(response, rows: Optional[int], k: Optional[int], where: str,
                      id_output: str = "item_ids", score_output: str = "scores") -> int:
    """Refuses a shard answer larger than its request could need, before decoding it.

    Args:
      response: the shard's PredictResponse.
      rows: the request's rows (request_rows), or None when unknown.
      k: the request's k, or None when it set none.
      where: names the shard in messages ("shard 1 of dpsr (10.0.0.3:8500)").
      id_output, score_output: the merge aliases, whose dim 1 may not exceed k.

    Returns:
      The number of entries the merge will pool from this answer (rows * K_s).

    Raises:
      ServingError(INTERNAL): an output declares more rows than the request, more than k
        entries per row, or carries more values than it declares.
    """
    work = 0
    for alias, proto in response.outputs.items():
        shape = [d.size for d in proto.tensor_shape.dim]
        declared = math.prod(shape)
        problem = _shape_problem(alias, shape, rows, k, id_output, score_output)
        if not problem and _values_sent(proto) > max(declared, 1):
            problem = f"{_values_sent(proto):,} values where its shape declares {declared:,}"
        if problem:
            raise _refuse(where, alias, shape, problem)
        if alias == id_output:
            work = declared
    return work


def declared_output_shapes(data: bytes) -> Dict[str, Optional[List[int]]]:
    """alias -> the shape each output of a serialized PredictResponse declares, read from the
    wire without parsing values (None where the shape is not among its first fields).

    Raises:
      ValueError: the bytes are not a well-formed message.
    """
    shapes = {}
    for number, wire_type, span in wire.fields(data, 0, len(data)):
        if number != 1 or wire_type != 2:  # outputs (map entries); model_spec is 2
            continue
        alias, shape = "", None
        for entry_number, entry_type, entry_span in wire.fields(data, *span):
            if entry_type != 2:
                continue
            if entry_number == 1:
                alias = data[entry_span[0]:entry_span[1]].decode("utf-8", "replace")
            elif entry_number == 2:
                shape = _tensor_shape(data, entry_span)
        shapes[alias] = shape
    return shapes


def _tensor_shape(data: bytes, span) -> Optional[List[int]]:
    for number, wire_type, value in wire.fields(data, *span, limit=_SHAPE_SCAN_FIELDS):
        if number == 2 and wire_type == 2:  # tensor_shape
            dims = []
            for dim_number, dim_type, dim_span in wire.fields(data, *value):
                if dim_number == 2 and dim_type == 2:  # dim { size: 1 }
                    size = 0
                    for size_number, size_type, size_value in wire.fields(data, *dim_span):
                        if size_number == 1 and size_type == 0:
                            size = size_value - (1 << 64) if size_value >= 1 << 63 else size_value
                    dims.append(size)
            return dims
    return None


def _refuse(where: str, alias: str, shape, problem: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL,
                        f"{where} answered output '{alias}' of shape {shape}: {problem}; "
                        "refused, not merged (a shard answers at most the request's rows and "
                        "k: check that it serves the same model)")


def _shape_problem(alias: str, shape: List[int], rows: Optional[int], k: Optional[int],
                   id_output: str, score_output: str) -> Optional[str]:
    if any(d < 0 for d in shape):
        return "a negative dimension"
    if shape and rows is not None and shape[0] > rows:
        return f"{shape[0]} rows for a request of {rows}"
    if alias in (id_output, score_output) and len(shape) >= 2 and k is not None and shape[1] > k:
        return f"{shape[1]} entries per row for a request with k={k}"
    return None


def parse_shard_answer(data: bytes, rows: Optional[int], k: Optional[int], where: str,
                       id_output: str = "item_ids", score_output: str = "scores"):
    """The PredictResponse in `data`, once its declared shapes fit the request (checked on the
    wire, before parsing) and its values fit its shapes (check_answer_size).

    Raises:
      ServingError(INTERNAL): the answer is larger than the request could need, or malformed.
    """
    try:
        shapes = declared_output_shapes(data)
    except ValueError as e:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"{where} answered a malformed PredictResponse: {e}") from None
    for alias, shape in shapes.items():
        problem = shape is not None and _shape_problem(alias, shape, rows, k, id_output,
                                                        score_output)
        if problem:
            raise _refuse(where, alias, shape, problem)
    response = predict_pb2.PredictResponse.FromString(data)
    check_answer_size(response, rows, k, where, id_output, score_output)
    return response
