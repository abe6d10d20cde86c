"""Predict requests: validation against the signature and the server's limits, feeds, response.

Error codes follow TF Serving (predict_util.cc): a missing or extra input, a wrong dtype, an
unknown output alias -> INVALID_ARGUMENT, with a message that names the input and the fix.
An input whose signature tensor is a placeholder must have the declared rank and known
dimensions (TensorFlow's feed contract), else INVALID_ARGUMENT naming the alias, the shape sent
and the shape expected; without this check a non-scalar `k` or a wrong-rank `user_history`
failed deep in the graph with a message naming a graph node. Inputs that are not placeholders
(an Identity of parsed examples, as in TF Serving's half_plus_two) take any shape the graph can
compute, as in TF Serving. The server's limits (a blank or oversized query, k out of range, too
many rows or values) are also INVALID_ARGUMENT.
"""
import dataclasses
import math
from typing import Dict, Optional, Tuple

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.lifecycle.signatures import (CLASSIFY_METHOD, PREDICT_METHOD,
                                                             REGRESS_METHOD, Signature)


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What the server accepts before a request reaches the servable.

    Attributes:
      max_rows: most rows (queries) in one request; 0: no limit (TF Serving has none).
      max_string_bytes: longest string element of any string input, in bytes.
      query_input: the input holding raw query text; each element must be non-blank.
      k_input: the scalar input holding the number of results.
      max_k: largest k accepted (the servable may enforce a smaller bound itself).
      max_elements: most values any one input may declare (its shape's product), checked from
        the declared shape before anything is converted.
      finite_inputs: float inputs whose values must all be finite (a dense feedback direction:
        the graph asserts it too, but a failed assert fails every request of a batch).
    """

    max_rows: int = 0
    max_string_bytes: int = 4096
    query_input: str = "query"
    k_input: str = "k"
    max_k: int = 10000
    max_elements: int = 1 << 20  # why not higher: docs/serving.md, --max_input_elements
    finite_inputs: Tuple[str, ...] = ("feedback_direction",)


@dataclasses.dataclass
class PreparedPredict:
    """A validated request, ready to run.

    Attributes:
      signature: the signature it runs.
      feeds: alias -> np.ndarray for every signature input (defaults filled in).
      fetches: output aliases, in response order.
      rows: rows along dim 0 when the request can join a batch, else None.
      batched: aliases concatenated along dim 0 when batched.
      batch_key: requests with equal keys can share one session run.
    """

    signature: Signature
    feeds: Dict[str, np.ndarray]
    fetches: Tuple[str, ...]
    rows: Optional[int]
    batched: Tuple[str, ...]
    batch_key: tuple


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _rows_error(rows: int, limits: RequestLimits) -> ServingError:
    return _bad(f"request has {rows} rows; the limit is {limits.max_rows} "
                "(--max_request_rows); split it into smaller requests")


def check_shape(name: str, spec, shape, limits: RequestLimits) -> int:
    """Checks the shape of input `name` (described as in messages, e.g. "input 'query'")
    against the row and value limits; returns its number of values.

    Raises:
      ServingError(INVALID_ARGUMENT): more rows than --max_request_rows (when set) or more
        values than --max_input_elements.
    """
    if limits.max_rows and spec.batch_major and shape and shape[0] > limits.max_rows:
        raise _rows_error(shape[0], limits)
    return tensors.check_num_elements(shape, limits.max_elements, name,
                                      tensors.MAX_ELEMENTS_HINT)


def declared_elements(request) -> int:
    """Sum of the values every input of a request declares (exact; no conversion)."""
    total = 0
    for proto in request.inputs.values():
        total += math.prod(d.size for d in proto.tensor_shape.dim) if proto.tensor_shape.dim \
            else 1
    return total


def _check_strings(alias: str, value: np.ndarray, limits: RequestLimits) -> None:
    flat = value.ravel()
    for i, element in enumerate(flat):
        if len(element) > limits.max_string_bytes:
            raise tensors.string_too_long(f"input '{alias}'", i, len(element),
                                          limits.max_string_bytes)
        if alias == limits.query_input and not element.strip():
            raise _bad(f"input '{alias}'[{i}] is empty; send a non-blank query")


def _check_k(alias: str, value: np.ndarray, limits: RequestLimits) -> None:
    if value.ndim != 0:
        return
    k = int(value)
    if not 1 <= k <= limits.max_k:
        raise _bad(f"input '{alias}' is {k}; it must be in [1, {limits.max_k}]")


def _check_shape(alias: str, spec, shape: Tuple[int, ...], signature_name: str) -> None:
    if spec.accepts_shape(shape):
        return
    rank = len(spec.shape)
    if rank == 0:
        hint = "send a scalar (a tensor with no dims)"
    elif len(shape) != rank:
        hint = f"send a tensor of rank {rank}"
    else:
        hint = "send the dimensions the signature fixes"
    raise _bad(f"input '{alias}' has shape {list(shape)} but signature '{signature_name}' "
               f"expects {spec.describe()}; {hint}")


def check_output_filter(signature: Signature, output_filter) -> Tuple[str, ...]:
    """Output aliases to fetch: the filter (checked) or every output of the signature."""
    if not output_filter:
        return tuple(signature.outputs)
    seen = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise _bad(f"output tensor alias not found in signature: {alias} Outputs expected to "
                       f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise _bad(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return tuple(seen)


def prepare_predict(signature: Signature, request, limits: RequestLimits,
                    method_name_check: bool = False) -> PreparedPredict:
    """Validates a PredictRequest against `signature` and converts its inputs.

    Args:
      signature: the resolved signature.
      request: tensorflow_serving.apis.predict_pb2.PredictRequest.
      limits: server limits.
      method_name_check: refuse signatures whose method is not predict, classify or regress
        (--enable_signature_method_name_check; TF Serving's default is off).

    Returns:
      PreparedPredict.

    Raises:
      ServingError(INVALID_ARGUMENT) naming the input and what to send instead.
    """
    if method_name_check and signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD,
                                                           REGRESS_METHOD):
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"Expected prediction signature method_name to be one of "
                           f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: "
                           f"{signature.method_name}")
    sent = set(request.inputs.keys())
    expected = set(signature.inputs)
    extra = sent - expected
    missing = {a for a in expected - sent if signature.inputs[a].default is None}
    if extra or missing:
        raise _bad(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(extra))}}}. "
            f"Missing but required: {{{','.join(sorted(missing))}}}.")
    feeds = {}
    batched, fixed_key, rows = [], [], None
    row_counts = set()
    joinable = True
    for alias, spec in signature.inputs.items():
        if alias not in sent:
            feeds[alias] = spec.default
            fixed_key.append((alias, "default"))
            continue
        proto = request.inputs[alias]
        if proto.dtype != spec.dtype:
            short = lambda d: tensors.dtype_name(d).lower().removeprefix("dt_")  # noqa: E731
            raise _bad(f"input '{alias}' has dtype {tensors.dtype_name(proto.dtype)} but the "
                       f"signature '{signature.name}' expects {spec.describe()} (Expects arg "
                       f"'{alias}' to be {short(spec.dtype)} but {short(proto.dtype)} is "
                       "provided)")
        name = f"input '{alias}'"
        # The declared shape is checked against the limits before any value is converted (a
        # 70-byte request declaring [10^8] strings costs nothing); it is read once.
        shape = tensors.declared_shape(proto, name)
        check_shape(name, spec, shape, limits)
        _check_shape(alias, spec, shape, signature.name)
        value = tensors.to_ndarray(proto, name, limits.max_elements, shape)
        if spec.dtype == types_pb2.DT_STRING:
            _check_strings(alias, value, limits)
        if alias == limits.k_input and spec.dtype in (types_pb2.DT_INT32, types_pb2.DT_INT64):
            _check_k(alias, value, limits)
        if alias in limits.finite_inputs and value.dtype.kind == "f" \
                and not np.isfinite(value).all():
            raise _bad(f"input '{alias}' holds a non-finite value at "
                       f"{np.argwhere(~np.isfinite(value))[0].tolist()}; send finite numbers")
        feeds[alias] = value
        if spec.batch_major and value.ndim == 0:
            joinable = False  # a scalar where rows were declared: run alone, let the graph judge
        if spec.batch_major and value.ndim > 0:
            batched.append(alias)
            row_counts.add(value.shape[0])
        else:
            fixed_key.append((alias, value.dtype.str, value.shape, value.tobytes()
                              if value.dtype != object else tuple(value.ravel().tolist())))
    if row_counts:
        if 0 in row_counts:
            name = next(a for a in batched if feeds[a].shape[0] == 0)
            raise _bad(f"input '{name}' has no rows (shape {list(feeds[name].shape)}); send at "
                       "least one")
        if len(row_counts) > 1:
            sizes = ", ".join(f"'{a}' {feeds[a].shape[0]}" for a in batched)
            raise _bad(f"batch-major inputs have different numbers of rows ({sizes}); send one "
                       "row of each per query")
        if limits.max_rows and max(row_counts) > limits.max_rows:
            raise _rows_error(max(row_counts), limits)
    fetches = check_output_filter(signature, request.output_filter)
    if row_counts and signature.batchable and joinable:
        rows = row_counts.pop()
    key = (signature.name, fetches, tuple(sorted(batched)), tuple(fixed_key))
    return PreparedPredict(signature, feeds, fetches, rows, tuple(batched), key)


def build_response(model_name: str, version: int, signature_name: str,
                   outputs: Dict[str, np.ndarray], fetches) -> "predict_pb2.PredictResponse":
    """PredictResponse with model_spec and outputs (typed value fields, as TF Serving)."""
    response = predict_pb2.PredictResponse()
    spec = response.model_spec
    spec.name = model_name
    spec.version.value = version
    spec.signature_name = signature_name
    for alias in fetches:
        tensors.from_ndarray(outputs[alias], response.outputs[alias])
    return response
