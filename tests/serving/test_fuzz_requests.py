"""Bounded fuzzing of request decoding: arbitrary PredictRequests (declared shapes,
dtypes, values), arbitrary bytes parsed as a PredictRequest, and arbitrary JSON bodies for the
REST gateway must either be accepted or refused with a ServingError carrying a client status,
without allocating from what a request declares (checked as a memory peak, not a time that a
loaded machine misses). Never another exception (which would be INTERNAL/500 on the wire).

Runs FUZZ_EXAMPLES cases per property in `make test` (derandomized: the same cases every run);
bench/fuzz_bench.py runs many more (DPSR_FUZZ_EXAMPLES)."""
import json
import os
import tracemalloc

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

from dpsr_tf.serving.model_server.api import rest_json
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api.predict import RequestLimits, prepare_predict
from dpsr_tf.serving.model_server.lifecycle.signatures import Signature

FUZZ_EXAMPLES = int(os.environ.get("DPSR_FUZZ_EXAMPLES", "150"))
# `make test`: the same cases every run; bench/fuzz_bench.py: new ones from --hypothesis-seed.
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                derandomize="DPSR_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck), database=None)
LIMITS = RequestLimits(max_rows=64, max_string_bytes=256, max_k=300, max_elements=4096)
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
DTYPES = [types_pb2.DT_STRING, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT,
          types_pb2.DT_BOOL, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_UINT8,
          types_pb2.DT_COMPLEX64, 0, 1000]


def _signature():
    """query string [?], k int32 [] (default 10), user_id int64 [?], weights float [?, 4]."""
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, dtype, shape in (("query", types_pb2.DT_STRING, (-1,)),
                                ("k", types_pb2.DT_INT32, ()),
                                ("user_id", types_pb2.DT_INT64, (-1,)),
                                ("weights", types_pb2.DT_FLOAT, (-1, 4))):
        info = sig.inputs[alias]
        info.name, info.dtype = f"{alias}:0", dtype
        for d in shape:
            info.tensor_shape.dim.add(size=d)
    sig.outputs["scores"].name = "scores:0"
    sig.outputs["scores"].dtype = types_pb2.DT_FLOAT
    sig.outputs["scores"].tensor_shape.dim.add(size=-1)
    tensors.from_ndarray(np.array(10, np.int32), sig.defaults["k"])
    tensors.from_ndarray(np.zeros([1], np.int64), sig.defaults["user_id"])
    tensors.from_ndarray(np.zeros([1, 4], np.float32), sig.defaults["weights"])
    return Signature.from_proto("serving_default", sig)


SIGNATURE = _signature()
DIMS = hst.one_of(hst.integers(-3, 70), hst.integers(-(2 ** 63), 2 ** 63 - 1),
                  hst.sampled_from([0, 1, 4, 2 ** 31, 2 ** 32 + 1, 10 ** 8]))


@hst.composite
def tensor_protos(draw):
    proto = tensors.TensorProto(dtype=draw(hst.sampled_from(DTYPES)))
    if draw(hst.integers(0, 20)) == 0:
        proto.tensor_shape.unknown_rank = True
    for d in draw(hst.lists(DIMS, max_size=4)):
        proto.tensor_shape.dim.append(tensor_shape_pb2.TensorShapeProto.Dim(size=d))
    kind = draw(hst.integers(0, 4))
    if kind == 0:
        proto.string_val.extend(draw(hst.lists(hst.binary(max_size=300), max_size=8)))
    elif kind == 1:
        proto.int_val.extend(draw(hst.lists(hst.integers(-(2 ** 31), 2 ** 31 - 1), max_size=8)))
    elif kind == 2:
        proto.int64_val.extend(draw(hst.lists(hst.integers(-(2 ** 63), 2 ** 63 - 1),
                                              max_size=40)))
    elif kind == 3:
        proto.float_val.extend(draw(hst.lists(hst.floats(width=32), max_size=40)))
    else:
        proto.tensor_content = draw(hst.binary(max_size=64))
    return proto


@hst.composite
def predict_requests(draw):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dpsr"
    aliases = draw(hst.lists(hst.sampled_from(["query", "k", "user_id", "weights", "x"]),
                             unique=True, max_size=4))
    for alias in aliases:
        request.inputs[alias].CopyFrom(draw(tensor_protos()))
    request.output_filter.extend(draw(hst.lists(hst.sampled_from(["scores", "nope"]),
                                                max_size=2)))
    return request


# The most memory one decode may take: every input at the element limit as 16-byte values,
# plus strings at the byte limit, with slack for the interpreter. Work that scaled with a
# declared shape (the attack class: [1e8] declared in a few bytes) would take 100s of MB.
DECODE_PEAK_BYTES = 4 * LIMITS.max_elements * (16 + LIMITS.max_string_bytes) + (1 << 20)


def _decode(request):
    tracemalloc.start()
    try:
        try:
            prepared = prepare_predict(SIGNATURE, request, LIMITS)
        except ServingError as e:
            assert e.code in CLIENT_CODES, e
            prepared = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < DECODE_PEAK_BYTES, f"decoding took {peak} bytes"  # bounded work, not time
    if prepared is not None:  # accepted: within every limit
        for alias, value in prepared.feeds.items():
            assert value.size <= LIMITS.max_elements, alias
        if prepared.rows is not None:
            assert 1 <= prepared.rows <= LIMITS.max_rows
        assert 1 <= int(prepared.feeds["k"]) <= LIMITS.max_k


@FUZZ
@given(predict_requests())
def test_fuzz_predict_requests(request):
    _decode(request)


@FUZZ
@given(hst.binary(max_size=200))
def test_fuzz_request_bytes(data):
    try:
        request = predict_pb2.PredictRequest.FromString(data)
    except Exception:  # pylint: disable=broad-except
        return  # the server answers these INVALID_ARGUMENT (tests/serving/test_hostile_inputs)
    _decode(request)


JSON_LEAVES = hst.one_of(hst.none(), hst.booleans(), hst.integers(-(2 ** 70), 2 ** 70),
                         hst.floats(allow_nan=True, allow_infinity=True),
                         hst.text(max_size=20), hst.just({"b64": "!!"}),
                         hst.just({"b64": "ZHJpbGw="}))
JSON_VALUES = hst.recursive(JSON_LEAVES, lambda inner: hst.one_of(
    hst.lists(inner, max_size=5),
    hst.dictionaries(hst.sampled_from(["query", "k", "user_id", "weights", "b64", "x"]),
                     inner, max_size=4)), max_leaves=30)
BODIES = hst.one_of(
    JSON_VALUES,
    hst.fixed_dictionaries({"instances": JSON_VALUES}),
    hst.fixed_dictionaries({"inputs": JSON_VALUES}),
    hst.fixed_dictionaries({"inputs": hst.fixed_dictionaries(
        {"query": JSON_VALUES, "k": JSON_LEAVES})}),
    hst.fixed_dictionaries({"signature_name": JSON_VALUES, "instances": JSON_VALUES}))


@FUZZ
@given(BODIES)
def test_fuzz_rest_bodies(body):
    text = json.dumps(body)  # NaN/Infinity as Python's json writes them (the server reads them)
    payload = json.loads(text)
    spec = model_pb2.ModelSpec(name="dpsr")
    try:
        request = rest_json.build_predict_request(payload, SIGNATURE, spec)
    except ServingError as e:
        assert e.code in CLIENT_CODES, e
        return
    _decode(request)
