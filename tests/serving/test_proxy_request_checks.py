"""The proxy refuses a Predict request that every model server would refuse at its input limits,
with the server's own message, before any shard sees it (dpsr_tf/serving/proxy/request_checks.py).

The reference for each message is the server's own validation
(dpsr_tf/serving/model_server/api/predict.py), run on the same input."""
import os
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.model_server.api import predict as server_predict
from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving.proxy.request_checks import (SCAN_MAX_FIELDS, ProxyRequestLimits,
                                                  check_predict_inputs)
from tests.support import waiting
from tests.support.fake_backends import FakeBackend, InProcessProxy
from tests.support.serving_testing import outputs, predict_request, rpc_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMITS = ProxyRequestLimits()  # the servers' defaults: 4096 bytes, 1,048,576 values


def _refusal(request, limits=LIMITS, data=None) -> ServingError:
    with pytest.raises(ServingError) as e:
        check_predict_inputs(request, limits, data)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return e.value


def _server_string_message(alias, strings) -> str:
    with pytest.raises(ServingError) as e:
        server_predict._check_strings(alias, np.array(strings, dtype=object),
                                      server_predict.RequestLimits())
    return e.value.message


def test_the_defaults_are_the_servers():
    server = server_predict.RequestLimits()
    assert (LIMITS.max_string_bytes, LIMITS.max_elements) == (server.max_string_bytes,
                                                               server.max_elements)
    # `dpsr proxy`'s flags, read in a process of their own (each subcommand defines its flags)
    flags = subprocess.run(
        [sys.executable, "-c", "from dpsr_tf.cli import proxy; "
         "print(proxy._MAX_STRING.default, proxy._MAX_ELEMENTS.default)"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT)).stdout.split()
    assert flags == [str(server.max_string_bytes), str(server.max_elements)]


@pytest.mark.parametrize("lengths, index", [([4097], 0), ([1, 4096, 5000], 2),
                                            ([9000, 1], 0)])
def test_a_string_over_the_limit_is_refused_as_the_server_refuses_it(lengths, index):
    strings = [b"y" * n for n in lengths]
    error = _refusal(predict_request("dpsr", strings, k=5))
    assert error.message == _server_string_message("query", strings)
    assert f"input 'query'[{index}] is {lengths[index]} bytes" in error.message


def test_strings_at_the_limit_pass():
    check_predict_inputs(predict_request("dpsr", [b"y" * 4096] * 3, k=5), LIMITS)


def test_any_string_input_is_checked_not_only_the_query():
    request = predict_request("dpsr", ["drill"], k=5)
    tensors.from_ndarray(np.array([b"z" * 4097], dtype=object), request.inputs["user_text"])
    assert "input 'user_text'[0] is 4097 bytes" in _refusal(request).message


@pytest.mark.parametrize("shape", [(1025, 1024), (0, 1048577), (1048577,)])
def test_an_input_declaring_too_many_values_is_refused_as_the_server_refuses_it(shape):
    request = predict_request("dpsr", ["drill"], k=5)
    proto = request.inputs["user_history"]
    proto.dtype = 9  # DT_INT64; no values sent: the declared shape alone is over
    for d in shape:
        proto.tensor_shape.dim.add().size = d
    with pytest.raises(ServingError) as server:
        server_predict.check_shape("input 'user_history'", None, shape,
                                   server_predict.RequestLimits())
    assert _refusal(request).message == server.value.message


def test_a_shape_at_the_limit_passes():
    request = predict_request("dpsr", ["drill"], k=5)
    for d in (1024, 1024):
        request.inputs["user_history"].tensor_shape.dim.add().size = d
    check_predict_inputs(request, LIMITS)


def test_zero_turns_a_check_off():
    request = predict_request("dpsr", [b"y" * 5000], k=5)
    for d in (2048, 1024):
        request.inputs["user_history"].tensor_shape.dim.add().size = d
    check_predict_inputs(request, ProxyRequestLimits(max_string_bytes=0, max_elements=0))
    assert "user_history" in _refusal(request, ProxyRequestLimits(max_string_bytes=0)).message
    assert "'query'[0]" in _refusal(request, ProxyRequestLimits(max_elements=0)).message


def test_negative_limits_are_refused():
    with pytest.raises(ValueError, match="max_string_bytes must be >= 0"):
        ProxyRequestLimits(max_string_bytes=-1)


def _outcome(request, data=None, limits=LIMITS) -> str:
    try:
        check_predict_inputs(request, limits, data)
        return "passed"
    except ServingError as e:
        return e.message


def _server_outcome(request) -> str:
    """What the server's own string check says of the request's string inputs."""
    try:
        for alias in sorted(request.inputs):
            proto = request.inputs[alias]
            if proto.dtype == 7:
                server_predict._check_strings(alias, np.array(list(proto.string_val),
                                                              dtype=object),
                                              server_predict.RequestLimits())
        return "passed"
    except ServingError as e:
        return e.message


@pytest.mark.parametrize("seed", range(12))
def test_strings_measured_in_the_wire_bytes_agree_with_the_parsed_message(seed):
    # Requests under and over the 64 KiB where the proxy starts reading strings from the
    # bytes, with strings around the limit: the bytes (as bytes or a memoryview), the parsed
    # message and the server's own check all give the same answer.
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 7))  # at most 54 KB of queries
    lengths = rng.choice([1, 17, 4095, 4096, 4097, 9000], size=rows,
                         p=[.25, .4, .1, .1, .1, .05]).tolist()
    request = predict_request("dpsr", [b"q" * n for n in lengths], k=5)
    if seed % 2:  # pushed over 64 KiB by a second string input within the limit
        tensors.from_ndarray(np.array([b"u" * 4000] * 20, dtype=object),
                             request.inputs["user_text"])
    data = request.SerializeToString()
    expected = _server_outcome(request)
    assert _outcome(request, data) == expected
    assert _outcome(request, memoryview(data)) == expected
    assert _outcome(request) == expected
    assert (len(data) > 64 << 10) == bool(seed % 2)


def test_a_later_map_entry_replaces_an_earlier_one_in_the_bytes_as_in_parsing():
    # Two serialized requests one after the other parse as one, whose 'query' is the second's.
    first = predict_request("dpsr", [b"q" * 100_000], k=5).SerializeToString()
    second = predict_request("dpsr", [b"short"], k=5).SerializeToString()
    request = predict_pb2.PredictRequest.FromString(first + second)
    assert list(request.inputs["query"].string_val) == [b"short"]
    assert _outcome(request, first + second) == "passed"
    assert "'query'[0] is 100000 bytes" in _outcome(request, second + first)


def test_long_string_lists_are_left_to_the_servers():
    # Past SCAN_MAX_FIELDS strings (or fields of the request) the proxy reads no string:
    # bounded work on its event loop. The model servers still refuse the long one.
    for short in (1, 20):  # the parsed message (13 KB) and the wire bytes (100 KB)
        strings = [b"a" * short] * SCAN_MAX_FIELDS + [b"y" * 5000]
        request = predict_request("dpsr", strings, k=5)
        assert _outcome(request, request.SerializeToString()) == "passed"
        fewer = predict_request("dpsr", strings[1:], k=5)
        assert "'query'[4095]" in _outcome(fewer, fewer.SerializeToString())
    request = predict_request("dpsr", [b"y" * 70_000], k=5)
    request.output_filter.extend(["item_ids"] * SCAN_MAX_FIELDS)
    assert _outcome(request, request.SerializeToString()) == "passed"
    del request.output_filter[1:]
    assert "'query'[0]" in _outcome(request, request.SerializeToString())


# ------------------------------------------------------------------------ through the proxy

def _answerer(ids, scores):
    def answer(request):
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "dpsr"
        response.model_spec.version.value = 1
        tensors.from_ndarray(np.array([ids], dtype=object), response.outputs["item_ids"])
        tensors.from_ndarray(np.array([scores], dtype=np.float32), response.outputs["scores"])
        return response
    return answer


@pytest.mark.parametrize("shards, expected", [(1, [b"a", b"b"]), (2, [b"a", b"c"])])
def test_the_proxy_refuses_before_any_shard_sees_the_request(shards, expected):
    answers = [_answerer([b"a", b"b"], [0.9, 0.5]), _answerer([b"c", b"d"], [0.8, 0.1])]
    backends = [FakeBackend(answers[s]) for s in range(shards)]
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": tuple((b.address,) for b in backends)}, deadline_ms=20000))
    try:
        too_long = predict_request("dpsr", [b"y" * (4 << 20)], k=2)
        error = rpc_error(server.stub.Predict, too_long, timeout=30)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == _server_string_message("query", [b"y" * (4 << 20)])
        assert [b.calls for b in backends] == [0] * shards
        # the proxy goes on serving, and a request at the limit reaches every shard
        got = server.stub.Predict(predict_request("dpsr", [b"y" * 4096], k=2), timeout=30)
        np.testing.assert_array_equal(outputs(got)["item_ids"], [expected])
        assert [b.calls for b in backends] == [1] * shards
    finally:
        server.close()
        for backend in backends:
            backend.stop()


def test_with_the_checks_off_the_shards_decide():
    backend = FakeBackend(lambda request: (grpc.StatusCode.INVALID_ARGUMENT, "shard says no"))
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": ((backend.address,),)}, deadline_ms=20000),
        input_limits=ProxyRequestLimits(max_string_bytes=0, max_elements=0))
    try:
        error = rpc_error(server.stub.Predict, predict_request("dpsr", [b"y" * 5000], k=2),
                          timeout=30)
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "shard says no")
        assert backend.calls == 1
    finally:
        server.close()
        backend.stop()


def test_an_unknown_model_is_not_found_before_its_inputs_are_checked():
    backend = FakeBackend(_answerer([b"a", b"b"], [0.9, 0.5]))
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": ((backend.address,),)}, deadline_ms=20000))
    try:
        error = rpc_error(server.stub.Predict, predict_request("other", [b"y" * 5000], k=2),
                          timeout=30)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    finally:
        server.close()
        backend.stop()


def test_a_refused_request_does_not_wait_for_a_backend_slot():
    # One backend slot, held by a call the backend keeps: the oversized request from another
    # client is refused while it is held, not after.
    release = threading.Event()

    def held(request):
        release.wait(60)
        return _answerer([b"a", b"b"], [0.9, 0.5])(request)

    backend = FakeBackend(held)
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": ((backend.address,),)}, deadline_ms=60000), max_backend_calls_in_flight=1)
    first = prediction_service_pb2_grpc.PredictionServiceStub(server.new_channel())
    second = prediction_service_pb2_grpc.PredictionServiceStub(server.new_channel())
    try:
        holding = first.Predict.future(predict_request("dpsr", ["drill"], k=2), timeout=60)
        waiting.wait_until(lambda: backend.calls == 1, "the backend holding the first call")
        refused = second.Predict.future(predict_request("dpsr", [b"y" * 5000], k=2),
                                        timeout=60)
        waiting.wait_until(refused.done, "the oversized request's answer")
        assert refused.done() and not holding.done()
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        release.set()
        np.testing.assert_array_equal(outputs(holding.result())["item_ids"], [[b"a", b"b"]])
        assert backend.calls == 1
    finally:
        release.set()
        server.close()
        backend.stop()
