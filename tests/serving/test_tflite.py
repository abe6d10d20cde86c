"""TensorFlow Lite models (`model.tflite`) served by `dpsr serve` processes.

The models are made here: a tf.Module with two tf.functions converted with
tf.lite.TFLiteConverter.from_concrete_functions (signature keys are the functions' names):
  serving_default: x float [?, 3] -> y = 2x + 1 [?, 3], s = sum(x, axis=1) [?]
  affine_scale:    x float [?, 3], a float [?, 1] -> z = a * x [?, 3]
A second version directory holds both a model.tflite (2x + 1) and a SavedModel of different
math (0.5x + 2), so which one a server loads shows in its answers. Expected values come from
numpy. Two servers: one with --prefer_tflite_model (and batching, so concurrent requests share
interpreter runs), one without.
"""
import concurrent.futures
import os

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import tensors
from dpsr_tf.serving.model_server.lifecycle.tflite_servable import TfLiteServable, serves_tflite
from tests.support.serving_testing import outputs, rpc_error

RPC_TIMEOUT = 30.0
_MODEL_MAKER = """
import sys
import tensorflow as tf

def module(scale, shift):
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serving_default(self, x):
            return {"y": scale * x + shift, "s": tf.reduce_sum(x, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None, 1], tf.float32, name="a")])
        def affine_scale(self, x, a):
            return {"z": a * x}
    return M()

def tflite(out, scale, shift):
    # Signature keys are the functions' names.
    m = module(scale, shift)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [m.serving_default.get_concrete_function(), m.affine_scale.get_concrete_function()], m)
    with open(out, "wb") as f:
        f.write(converter.convert())

tfl_dir, both_dir = sys.argv[1:3]
tflite(tfl_dir + "/model.tflite", 2.0, 1.0)
tflite(both_dir + "/model.tflite", 2.0, 1.0)
m = module(0.5, 2.0)  # the SavedModel beside it computes 0.5x + 2
tf.saved_model.save(m, both_dir, signatures={"serving_default": m.serving_default,
                                             "affine_scale": m.affine_scale})
"""


def _make_models(base) -> str:
    """Writes base/tfl/1 (model.tflite only) and base/both/1 (model.tflite + SavedModel) in a
    child process (the converter's TF runtime stays out of the test process); returns the
    model config file."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    tfl, both = base / "tfl" / "1", base / "both" / "1"
    tfl.mkdir(parents=True)
    both.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", _MODEL_MAKER, str(tfl), str(both)],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, timeout=600,
        check=False)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    config = base / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
        for n in ("tfl", "both")) + "}\n")
    return str(config)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{"prefer": server with --prefer_tflite_model and batching, "plain": server without}."""
    base = tmp_path_factory.mktemp("tflite")
    config = _make_models(base)
    prefer = process.model_server_process(
        model_config_file=config, rest=True, name="tflite_prefer",
        # The queue delay control off: the concurrency test's burst of 16 calls on one
        # connection may outlast its target on a loaded host and be refused, which is the
        # control's job (tested in test_native_front_end.py), not what this file tests.
        flags=["--prefer_tflite_model", "--num_tflite_pools=2", "--enable_batching",
               "--front_end_queue_target_ms=0"])
    plain = process.model_server_process(model_config_file=config, rest=True, name="tflite_plain")
    process.start_all([prefer, plain])
    yield {"prefer": prefer, "plain": plain, "base": base}
    prefer.stop()
    plain.stop()


def _stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))


def _request(model, signature="", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        tensors.from_ndarray(value, request.inputs[alias])
    return request


def _x(rows, seed):
    return np.random.default_rng(seed).normal(size=(rows, 3)).astype(np.float32)


def test_rule_of_tf_serving(tmp_path):
    """TF Serving's rule (saved_model_bundle_factory.cc) plus the TFLite-only directory."""
    only_saved = tmp_path / "a"
    only_saved.mkdir()
    (only_saved / "saved_model.pb").write_bytes(b"")
    assert not serves_tflite(str(only_saved), prefer_tflite_model=True)
    both = tmp_path / "b"
    both.mkdir()
    (both / "saved_model.pb").write_bytes(b"")
    (both / "model.tflite").write_bytes(b"")
    assert serves_tflite(str(both), prefer_tflite_model=True)
    assert not serves_tflite(str(both), prefer_tflite_model=False)
    only_tflite = tmp_path / "c"
    only_tflite.mkdir()
    (only_tflite / "model.tflite").write_bytes(b"")
    assert serves_tflite(str(only_tflite), prefer_tflite_model=False)


@pytest.mark.parametrize("which", ["prefer", "plain"])
def test_predict_grpc_tflite_only_version(servers, which):
    """A version directory holding only model.tflite is served with or without the flag."""
    x = _x(5, seed=0)
    response = _stub(servers[which]).Predict(_request("tfl", x=x), RPC_TIMEOUT)
    out = outputs(response)
    np.testing.assert_allclose(out["y"], 2 * x + 1, rtol=1e-6)
    np.testing.assert_allclose(out["s"], x.sum(axis=1), rtol=1e-5)
    assert response.model_spec.name == "tfl"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_second_signature_and_output_filter(servers):
    x, a = _x(4, seed=1), np.array([[1.0], [2.0], [-3.0], [0.5]], np.float32)
    request = _request("tfl", signature="affine_scale", x=x, a=a)
    out = outputs(_stub(servers["prefer"]).Predict(request, RPC_TIMEOUT))
    np.testing.assert_allclose(out["z"], a * x, rtol=1e-6)
    request = _request("tfl", x=x)
    request.output_filter.append("s")
    out = outputs(_stub(servers["prefer"]).Predict(request, RPC_TIMEOUT))
    assert set(out) == {"s"}
    np.testing.assert_allclose(out["s"], x.sum(axis=1), rtol=1e-5)


def test_predict_rest(servers):
    x = _x(3, seed=2)
    url = servers["prefer"].rest_url + "/v1/models/tfl:predict"
    reply = requests.post(url, json={"instances": x.tolist()}, timeout=RPC_TIMEOUT)
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    np.testing.assert_allclose([p["y"] for p in predictions], 2 * x + 1, rtol=1e-6)
    np.testing.assert_allclose([p["s"] for p in predictions], x.sum(axis=1), rtol=1e-5)
    reply = requests.post(url, json={"signature_name": "affine_scale",
                                     "inputs": {"x": x.tolist(), "a": [[2.0]] * 3}},
                          timeout=RPC_TIMEOUT)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["outputs"], 2 * x, rtol=1e-6)


def test_metadata_lists_signatures(servers):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tfl"
    response = _stub(servers["prefer"]).GetModelMetadata(request, RPC_TIMEOUT)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == {"serving_default", "affine_scale"}
    default = sig_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert set(default.inputs) == {"x"} and set(default.outputs) == {"y", "s"}
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert [d.size for d in default.outputs["s"].tensor_shape.dim] == [-1]
    assert set(sig_map.signature_def["affine_scale"].inputs) == {"x", "a"}
    body = requests.get(servers["prefer"].rest_url + "/v1/models/tfl/metadata",
                        timeout=RPC_TIMEOUT).json()
    assert set(body["metadata"]["signature_def"]["signature_def"]) == {"serving_default",
                                                                       "affine_scale"}


def test_version_with_both_files_honours_the_flag(servers):
    """--prefer_tflite_model: model.tflite (2x + 1); without it: the SavedModel (0.5x + 2)."""
    x = _x(4, seed=3)
    prefer = outputs(_stub(servers["prefer"]).Predict(_request("both", x=x), RPC_TIMEOUT))
    np.testing.assert_allclose(prefer["y"], 2 * x + 1, rtol=1e-6)
    plain = outputs(_stub(servers["plain"]).Predict(_request("both", x=x), RPC_TIMEOUT))
    np.testing.assert_allclose(plain["y"], 0.5 * x + 2, rtol=1e-6)


def test_bad_inputs_are_invalid_argument_and_server_keeps_serving(servers):
    stub = _stub(servers["prefer"])
    wrong_width = rpc_error(stub.Predict, _request("tfl", x=np.ones((2, 4), np.float32)),
                            RPC_TIMEOUT)
    assert wrong_width.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [2, 4]" in wrong_width.details() and "[?,3]" in wrong_width.details()
    wrong_rank = rpc_error(stub.Predict, _request("tfl", x=np.ones((3,), np.float32)),
                           RPC_TIMEOUT)
    assert wrong_rank.code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong_dtype = rpc_error(stub.Predict, _request("tfl", x=np.ones((2, 3), np.int32)),
                            RPC_TIMEOUT)
    assert wrong_dtype.code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = rpc_error(stub.Predict, _request("tfl", signature="affine_scale",
                                               x=np.ones((2, 3), np.float32)), RPC_TIMEOUT)
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = rpc_error(stub.Predict, _request("tfl", signature="nope",
                                               x=np.ones((2, 3), np.float32)), RPC_TIMEOUT)
    assert unknown.code() == grpc.StatusCode.FAILED_PRECONDITION  # as TF Serving's Predict
    assert unknown.details().startswith('Serving signature key "nope" not found.')
    x = _x(2, seed=4)
    np.testing.assert_allclose(outputs(stub.Predict(_request("tfl", x=x), RPC_TIMEOUT))["y"],
                               2 * x + 1, rtol=1e-6)


def test_concurrent_calls_get_their_own_answers(servers):
    """64 requests from 16 threads over a pool of 2 interpreters: each answer is computed from
    its own request (an interpreter shared by two calls would mix inputs)."""
    stub = _stub(servers["prefer"])
    inputs = [_x(1 + i % 7, seed=100 + i) for i in range(64)]

    def call(x):
        return outputs(stub.Predict(_request("tfl", x=x), RPC_TIMEOUT))["y"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, inputs))
    for x, y in zip(inputs, answers):
        np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6)


def _signatureless_tflite(path) -> None:
    """A model.tflite without signatures (TF1 from_session): x float [?, 3] -> y = 2x + 1."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        y = tf.identity(2.0 * x + 1.0, name="y")
        with tf.compat.v1.Session() as sess:
            model = tf.compat.v1.lite.TFLiteConverter.from_session(sess, [x], [y]).convert()
    assert not tf.lite.Interpreter(model_content=model).get_signature_list()
    (path / "model.tflite").write_bytes(model)


def test_a_model_without_signatures_gets_tf_servings_default_signature(tmp_path):
    """As TF Serving (tflite_session.cc): serving_default, method predict, every input and
    output keyed by its tensor name; it runs for any number of rows (the interpreter's
    tensors are resized)."""
    _signatureless_tflite(tmp_path)
    servable = TfLiteServable("m", 1, str(tmp_path), max_interpreters=2)
    servable.load()
    try:
        assert set(servable.signatures) == {"serving_default"}
        sig = servable.signature("")
        assert sig.method_name == "tensorflow/serving/predict"
        assert set(sig.inputs) == {"x"} and set(sig.outputs) == {"y"}
        assert sig.inputs["x"].dtype == types_pb2.DT_FLOAT and sig.inputs["x"].shape == (-1, 3)
        for rows, seed in ((1, 0), (5, 1), (2, 2), (5, 3)):
            x = _x(rows, seed)
            got = servable.run(sig, {"x": x}, ["y"])["y"]
            np.testing.assert_allclose(got, 2 * x + 1, rtol=1e-6)
    finally:
        servable.close()
