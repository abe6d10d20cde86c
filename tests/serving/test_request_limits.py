"""Regression tests: a request is sized from its declared shape before
anything is converted. A 70-byte PredictRequest whose query declares [100000000] with one
string used to be expanded to 10^8 elements (13 s on the request loop, +760 MB) before the row
limit; a shape whose product overflows int64 gave INTERNAL. Both must be INVALID_ARGUMENT at
once, allocating nothing of the declared size."""
import tracemalloc

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api.predict import (RequestLimits, declared_elements,
                                                      prepare_predict)
from dpsr_tf.serving.model_server.lifecycle.signatures import Signature

LIMITS = RequestLimits(max_rows=256, max_string_bytes=4096, max_k=1000, max_elements=1 << 20)


def _signature(k_shape=(), query_shape=(-1,)) -> Signature:
    """The DPSR serving signature: query string [?], k int32 [] (default 10)."""
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")

    def info(target, name, dtype, shape):
        target.name = name
        target.dtype = dtype
        if shape is None:
            target.tensor_shape.unknown_rank = True
        for d in shape or ():
            target.tensor_shape.dim.add(size=d)

    info(sig.inputs["query"], "query:0", types_pb2.DT_STRING, query_shape)
    info(sig.inputs["k"], "k:0", types_pb2.DT_INT32, k_shape)
    info(sig.outputs["scores"], "scores:0", types_pb2.DT_FLOAT, (-1, -1))
    tensors.from_ndarray(np.array(10, np.int32), sig.defaults["k"])
    return Signature.from_proto("serving_default", sig)


def _declared(dtype, shape, values) -> "tensors.TensorProto":
    proto = tensors.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(values)
    else:
        proto.int_val.extend(values)
    return proto


def _request(**inputs) -> "predict_pb2.PredictRequest":
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dpsr"
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    return request


HUGE = 100_000_000
CASES = {
    # name: (signature kwargs, inputs, words the message must contain)
    "query_declares_1e8_rows": ({}, dict(query=_declared(types_pb2.DT_STRING, [HUGE], [b"x"])),
                                ["100000000 rows", "--max_request_rows"]),
    "query_2d_declares_1e8": ({"query_shape": None},
                              dict(query=_declared(types_pb2.DT_STRING, [1, HUGE], [b"x"])),
                              ["100,000,000 values", "--max_input_elements"]),
    "k_declares_1e8": ({"k_shape": None}, dict(query=_declared(types_pb2.DT_STRING, [1], [b"q"]),
                                               k=_declared(types_pb2.DT_INT32, [HUGE], [5])),
                       ["100,000,000 values"]),
    "k_vector_for_scalar": ({}, dict(query=_declared(types_pb2.DT_STRING, [1], [b"q"]),
                                     k=_declared(types_pb2.DT_INT32, [HUGE], [5])),
                            # Shapes are the graph's to judge (TF Serving's predict_util);
                            # the declared size is refused before conversion all the same.
                            ["shape [100000000]", "the limit is 1,048,576"]),
    "product_overflows_int64": ({"query_shape": None}, dict(
        query=_declared(types_pb2.DT_STRING, [2 ** 40, 2 ** 40], [b"x"])),
        ["values; the limit"]),
    "zero_times_huge": ({"query_shape": None}, dict(
        query=_declared(types_pb2.DT_STRING, [0, 2 ** 62], [])), ["the limit is 1,048,576"]),
    "negative_dim": ({}, dict(query=_declared(types_pb2.DT_STRING, [-5], [b"x"])),
                     ["negative dimension"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_declared_shape_refused_before_conversion(case):
    sig_kwargs, inputs, words = CASES[case]
    request = _request(**inputs)
    assert request.ByteSize() < 100  # the whole attack is a few bytes
    tracemalloc.start()
    with pytest.raises(ServingError) as info:
        prepare_predict(_signature(**sig_kwargs), request, LIMITS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    for word in words:
        assert word in info.value.message, info.value.message
    # Bounded work, measured as memory (a time bound is missed on a loaded machine): the
    # refusal allocates nothing in proportion to the declared shape. Before: +760 MB (13 s)
    # for [1e8].
    assert peak < 1 << 20, f"peak {peak} bytes"


def test_no_row_limit_by_default():
    """TF Serving has no row limit: by default (max_rows 0) 10,000 rows are accepted; a
    configured --max_request_rows still applies."""
    request = _request(query=_declared(types_pb2.DT_STRING, [10_000], [b"q"] * 10_000))
    assert RequestLimits().max_rows == 0
    prepared = prepare_predict(_signature(), request, RequestLimits())
    assert prepared.feeds["query"].shape == (10_000,) and prepared.rows == 10_000
    with pytest.raises(ServingError, match="request has 10000 rows; the limit is 256"):
        prepare_predict(_signature(), request, LIMITS)


def test_within_limits_still_broadcasts_one_string():
    """TF's rule (one value fills the shape) still holds inside the limits."""
    request = _request(query=_declared(types_pb2.DT_STRING, [3], [b"drill"]))
    prepared = prepare_predict(_signature(), request, LIMITS)
    assert prepared.feeds["query"].tolist() == [b"drill"] * 3
    assert prepared.rows == 3 and int(prepared.feeds["k"]) == 10


def test_to_ndarray_overflow_is_invalid_argument():
    proto = _declared(types_pb2.DT_INT64, [2 ** 33, 2 ** 33], [1])
    with pytest.raises(ServingError) as info:
        tensors.to_ndarray(proto, "x")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "73,786,976,294,838,206,464 values" in info.value.message  # 2**66, exact


def test_declared_elements_is_exact():
    request = _request(query=_declared(types_pb2.DT_STRING, [HUGE, 3], [b"x"]),
                       k=_declared(types_pb2.DT_INT32, [], [5]))
    assert declared_elements(request) == 3 * HUGE + 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_feedback_direction_is_refused_before_any_batch(bad):
    """A dense feedback direction must be finite: the graph asserts it too, but a failed
    assert would fail every request batched with it, so the server refuses it first."""
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, dtype, shape in (("query", types_pb2.DT_STRING, [-1]),
                                ("feedback_direction", types_pb2.DT_FLOAT, [-1, 2])):
        sig.inputs[alias].name = f"{alias}:0"
        sig.inputs[alias].dtype = dtype
        for d in shape:
            sig.inputs[alias].tensor_shape.dim.add(size=d)
    sig.outputs["scores"].name = "scores:0"
    sig.outputs["scores"].tensor_shape.dim.add(size=-1)
    signature = Signature.from_proto("serving_default.feedback_search", sig)
    request = _request(query=tensors.from_ndarray(np.array([b"a", b"b"], dtype=object)),
                       feedback_direction=tensors.from_ndarray(
                           np.array([[1, 0], [0.5, bad]], np.float32)))
    with pytest.raises(ServingError, match=r"input 'feedback_direction' holds a non-finite "
                                           r"value at \[1, 1\]; send finite numbers") as info:
        prepare_predict(signature, request, LIMITS)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    request.inputs["feedback_direction"].CopyFrom(tensors.from_ndarray(
        np.array([[1, 0], [0.5, 3e38]], np.float32)))
    assert prepare_predict(signature, request, LIMITS).rows == 2
