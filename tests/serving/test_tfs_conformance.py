"""TF Serving's own expectations, ported case by case, against `dpsr serve` as a process.

Each test names its origin in tensorflow/serving (tensorflow_serving/model_servers/...):
  [server_test]  tensorflow_model_server_test.py (the integration test of the binary)
  [rest]         http_rest_api_handler_test.cc
  [status]       get_model_status_impl_test.cc
  [predict_util] predict_util_test.cc (servables/tensorflow/)
The models are TF Serving's testdata graphs made by code (tests/serving/tfs_testdata.py):
half_plus_two (y = 0.5x + 2, version 123), half_plus_three (0.5x + 3), a TF2 half_plus_two, a
two-version model (123: +2, 124: +3) and a bad model. One server serves them all (batching on,
a UNIX socket, custom gRPC channel arguments, REST, Prometheus), so the module starts one
process. Cases that cannot apply (GPU, TPU, TFLite, session bundles) are listed in
docs/serving.md with the reason.
"""
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.tensors import to_ndarray as tensors_to_ndarray
from tests.support.serving_testing import rpc_error
from tests.serving import tfs_testdata

RPC_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfs")
    # The distribution-strategy model needs a process whose TF runtime is fresh.
    distrat = subprocess.Popen(
        [sys.executable, tfs_testdata.__file__, "distrat", str(base / "distrat" / "123")],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    tfs_testdata.half_plus_two_tf1(str(base / "half_plus_two" / "123"))
    tfs_testdata.half_plus_two_tf1(str(base / "half_plus_three" / "123"), b=3.0)
    tfs_testdata.half_plus_two_tf2(str(base / "tf2_half_plus_two" / "1"))
    tfs_testdata.half_plus_two_tf1(str(base / "two" / "123"))
    tfs_testdata.half_plus_two_tf1(str(base / "two" / "124"), b=3.0)
    tfs_testdata.bad_model(str(base / "bad" / "123"))
    tfs_testdata.counter_model(str(base / "counter" / "123"))
    tfs_testdata.tf_saved_model_save(str(base / "tf_save" / "123"))
    tfs_testdata.tf_saved_model_save_multiple_signatures(str(base / "tf_save_multi" / "123"))
    tfs_testdata.keras_sequential(str(base / "keras" / "123"))
    assert distrat.wait(timeout=300) == 0, distrat.stderr.read().decode()[-3000:]
    models = [("default", "half_plus_two", ""), ("half_plus_three", "half_plus_three", ""),
              ("tf2", "tf2_half_plus_two", ""), ("two", "two", "model_version_policy { all {} }"),
              ("bad", "bad", ""), ("counter", "counter", ""), ("tf_save", "tf_save", ""),
              ("tf_save_multi", "tf_save_multi", ""), ("keras", "keras", ""),
              ("distrat", "distrat", "")]
    config = base / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{base / d}" model_platform: "tensorflow" {p} }}\n'
        for n, d, p in models) + "}\n")
    batching = base / "batching.config"
    batching.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
                        "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 2 }\n")
    monitoring = base / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, '
                          'path: "/monitoring/prometheus/metrics" }\n')
    socket_path = str(base / "grpc.sock")
    proc = process.start_model_server(
        model_config_file=str(config), rest=True, name="tfs_conformance",
        flags=["--enable_batching", f"--batching_parameters_file={batching}",
               f"--monitoring_config_file={monitoring}", f"--grpc_socket_path={socket_path}",
               "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,"
               "grpc.lb_policy_name=grpclb",
               "--rest_api_timeout_in_ms=5000", "--max_num_load_retries=0",
               "--file_system_poll_wait_seconds=0"])
    proc.socket_path = socket_path
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))


@pytest.fixture(scope="module")
def model_stub(server):
    return model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.address))


def tf_make_tensor_proto(array: np.ndarray):
    """A TensorProto of a float32 array, its values packed in tensor_content."""
    proto = predict_pb2.PredictRequest().inputs["x"]
    proto.dtype = types_pb2.DT_FLOAT
    for d in array.shape:
        proto.tensor_shape.dim.add().size = d
    proto.tensor_content = array.astype(np.float32).tobytes()
    return proto


def _predict_request(model="default", x=(2.0,), specify_output=True, signature="",
                     shape=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.extend(x)
    for d in (shape or [len(x)]):
        request.inputs["x"].tensor_shape.dim.add().size = d
    if specify_output:
        request.output_filter.append("y")
    return request


def _verify_predict(stub, model, expected, version, specify_output=True,
                    address_stub=None):
    result = (address_stub or stub).Predict(_predict_request(model, specify_output=specify_output),
                                            RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    assert result.model_spec.name == model
    assert result.model_spec.signature_name == "serving_default"
    assert result.model_spec.version.value == version


def _example_input(input_proto, **features):
    example = input_proto.example_list.examples.add()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)


# ============================================================================ [server_test]

def test_get_model_status(model_stub):
    """[server_test] testGetModelStatus."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = model_stub.GetModelStatus(request, RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(stub):
    """[server_test] testGetModelMetadata."""
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = stub.GetModelMetadata(request, RPC_TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == 123
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(sig_map)
    default = sig_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert default.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert default.inputs["x"].name == "x:0" and default.outputs["y"].name == "y:0"


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_classify(stub, model):
    """[server_test] testClassify (TF1) and its TF2 variant (method name `predict`, accepted
    since --enable_signature_method_name_check is off by default)."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    _example_input(request.input, x=2.0)
    result = stub.Classify(request, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert result.model_spec.name == model
    assert result.model_spec.signature_name == "classify_x_to_y"
    assert result.model_spec.version.value == (123 if model == "default" else 1)


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_regress(stub, model):
    """[server_test] testRegress (TF1) and its TF2 variant."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "regress_x_to_y"
    _example_input(request.input, x=2.0)
    result = stub.Regress(request, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    assert result.model_spec.signature_name == "regress_x_to_y"


@pytest.mark.parametrize("model, version", [("default", 123), ("tf2", 1)])
def test_multi_inference(stub, model, version):
    """[server_test] testMultiInference, testMultiInferenceTf2."""
    request = inference_pb2.MultiInferenceRequest()
    for sig, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                        ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = sig
    _example_input(request.input, x=2.0)
    result = stub.MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for r in result.results:
        assert r.model_spec.name == model and r.model_spec.version.value == version


@pytest.mark.parametrize("specify_output", [True, False])
def test_predict_saved_model(stub, specify_output):
    """[server_test] testPredictSavedModel / _TestPredict (with and without output_filter)."""
    _verify_predict(stub, "default", 3.0, 123, specify_output)


def test_predict_tf2_saved_model(stub):
    """[server_test] the TF2 half_plus_two (tf.saved_model.save of a tf.Module)."""
    _verify_predict(stub, "tf2", 3.0, 1)


def test_tf_saved_model_save(stub):
    """[server_test] test_tf_saved_model_save: y = 3 * 2 * x, x = 2 -> 12."""
    _verify_predict(stub, "tf_save", 12.0, 123, specify_output=False)


def test_tf_saved_model_save_multiple_signatures(stub):
    """[server_test] test_tf_saved_model_save_multiple_signatures."""
    result = stub.Predict(_predict_request("tf_save_multi", signature="custom_signature_key"),
                          RPC_TIMEOUT)
    assert list(result.outputs["y"].float_val) == [2.0]
    assert result.model_spec.signature_name == "custom_signature_key"
    _verify_predict(stub, "tf_save_multi", 1.0, 123)


@pytest.mark.parametrize("model", ["keras", "distrat"])
def test_sequential_keras_saved_model_save(stub, model):
    """[server_test] test_sequential_keras_saved_model_save and
    test_distrat_sequential_keras_saved_model_save (built under a MirroredStrategy over two
    virtual CPUs): x [[2]] (batch_input) -> y 2."""
    result = stub.Predict(_predict_request(model, specify_output=False, shape=[1, 1]),
                          RPC_TIMEOUT)
    (output,) = result.outputs.values()
    assert list(output.float_val) == [2.0]
    assert result.model_spec.version.value == 123


def test_tf2_half_plus_two_signatures(stub):
    """[server_test] the TF2 half_plus_two's signatures are all listed (method `predict`, as
    TF2 writes them) and each runs through Predict."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tf2"
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(request, RPC_TIMEOUT).metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == {"serving_default", "regress_x_to_y", "classify_x_to_y"}
    assert {s.method_name for s in sig_map.signature_def.values()} == \
        {"tensorflow/serving/predict"}
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(4.0)
    for sig, field in (("regress_x_to_y", "outputs"), ("classify_x_to_y", "scores")):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "tf2", sig
        request.inputs["inputs"].dtype = types_pb2.DT_STRING
        request.inputs["inputs"].string_val.append(example.SerializeToString())
        request.inputs["inputs"].tensor_shape.dim.add().size = 1
        assert list(stub.Predict(request, RPC_TIMEOUT).outputs[field].float_val) == [4.0]


def test_good_model_config(stub):
    """[server_test] testGoodModelConfig: a config file with half_plus_two and
    half_plus_three, each with and without output_filter."""
    for specify_output in (True, False):
        _verify_predict(stub, "default", 3.0, 123, specify_output)
        _verify_predict(stub, "half_plus_three", 4.0, 123, specify_output)


def test_predict_batching(stub):
    """[server_test] testPredictBatching (--enable_batching with a parameters file): many
    concurrent requests, each its own answer."""
    futures = [stub.Predict.future(_predict_request(x=(float(i),)), RPC_TIMEOUT)
               for i in range(32)]
    for i, f in enumerate(futures):
        assert list(f.result().outputs["y"].float_val) == [0.5 * i + 2.0]


def test_predict_uds(server):
    """[server_test] testPredictUDS: --grpc_socket_path serves the same API on a UNIX socket."""
    channel = grpc.insecure_channel(f"unix:{server.socket_path}")
    uds_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    _verify_predict(None, "default", 3.0, 123, address_stub=uds_stub)


def test_good_grpc_channel_args(stub):
    """[server_test] testGoodGrpcChannelArgs: the server started with
    --grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb and
    answers."""
    _verify_predict(stub, "default", 3.0, 123)


def test_classify_rest(server):
    """[server_test] testClassifyREST."""
    reply = requests.post(server.rest_url + "/v1/models/default:classify", timeout=RPC_TIMEOUT,
                          data=json.dumps({"signature_name": "classify_x_to_y",
                                           "examples": [{"x": 2.0}]}))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"results": [[["", 3.0]]]}


def test_regress_rest(server):
    """[server_test] testRegressREST."""
    reply = requests.post(server.rest_url + "/v1/models/default:regress", timeout=RPC_TIMEOUT,
                          data=json.dumps({"signature_name": "regress_x_to_y",
                                           "examples": [{"x": 2.0}]}))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"results": [3.0]}


def test_predict_rest(server):
    """[server_test] testPredictREST (and the documented call on half_plus_three)."""
    for model, want in (("default", [3.0, 3.5, 4.0]), ("half_plus_three", [3.5, 4.0, 5.5])):
        x = [2.0, 3.0, 4.0] if model == "default" else [1.0, 2.0, 5.0]
        reply = requests.post(server.rest_url + f"/v1/models/{model}:predict",
                              timeout=RPC_TIMEOUT, data=json.dumps({"instances": x}))
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"predictions": want}


def test_predict_columnar_rest(server):
    """[server_test] testPredictColumnarREST."""
    reply = requests.post(server.rest_url + "/v1/models/default:predict", timeout=RPC_TIMEOUT,
                          data=json.dumps({"inputs": [2.0, 3.0, 4.0]}))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"outputs": [3.0, 3.5, 4.0]}


def test_get_status_rest(server):
    """[server_test] testGetStatusREST."""
    reply = requests.get(server.rest_url + "/v1/models/default", timeout=RPC_TIMEOUT)
    assert reply.json() == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_get_model_metadata_rest(server):
    """[server_test] testGetModelMetadataREST: TF Serving prints every field, default values
    included (e.g. model_spec.signature_name "", a signature's empty "defaults")."""
    reply = requests.get(server.rest_url + "/v1/models/default/metadata", timeout=RPC_TIMEOUT)
    body = reply.json()
    assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "regress_x_to_y", "regress_x_to_y2",
                         "regress_x2_to_y3", "classify_x_to_y", "classify_x2_to_y3",
                         "odd_method"}
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["x"]["name"] == "x:0"
    assert default["inputs"]["x"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
    assert default["defaults"] == {}


def test_prometheus_endpoint(server):
    """[server_test] testPrometheusEndpoint: the metrics path serves Prometheus text with the
    model loads (names are dpsr_serving_*, not :tensorflow:...: docs/serving.md)."""
    reply = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=RPC_TIMEOUT)
    assert reply.status_code == 200
    assert "# TYPE dpsr_serving_model_load_count_total counter" in reply.text
    assert 'dpsr_serving_model_load_count_total{model_name="default",status="ok"} 1.0' \
        in reply.text


# ============================================================================ [rest]

MALFORMED = [
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{(1 << 64) - 1}:regress", "Failed to convert version"),
]


@pytest.mark.parametrize("method, path, fragment", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_rest_unsupported_api_calls(server, method, path, fragment):
    """[rest] UnsupportedApiCalls: INVALID_ARGUMENT (HTTP 400) with the same message."""
    reply = requests.request(method, server.rest_url + path, timeout=RPC_TIMEOUT)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  "/v1/models/default/versions/99:predict"])
def test_rest_predict_model_name_version_errors(server, path):
    """[rest] PredictModelNameVersionErrors: NOT_FOUND (HTTP 404)."""
    reply = requests.post(server.rest_url + path, data='{"instances": [1]}', timeout=RPC_TIMEOUT)
    assert reply.status_code == 404, reply.text


@pytest.mark.parametrize("body, fragment", [
    ("", "JSON Parse error: The document is empty"),
    ("instances = [1, 2]", "JSON Parse error: Invalid value"),
    ('{"instances": ["x", "y"]}', "not of expected type: float"),
])
def test_rest_predict_request_errors(server, body, fragment):
    """[rest] PredictRequestErrors."""
    reply = requests.post(server.rest_url + "/v1/models/default:predict", data=body,
                          timeout=RPC_TIMEOUT)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]


@pytest.mark.parametrize("verb, body", [
    ("predict", {"signature_name": 5, "instances": [1.0]}),
    ("predict", {"signature_name": ["serving_default"], "inputs": [1.0]}),
    ("classify", {"signature_name": None, "examples": [{"x": 1.0}]}),
    ("regress", {"signature_name": {"name": "regress_x_to_y"}, "examples": [{"x": 1.0}]}),
])
def test_rest_signature_name_not_a_string(server, verb, body):
    """[json_tensor] FillSignature: a signature_name that is not a JSON string is
    INVALID_ARGUMENT with FormatSignatureError's message, "JSON Value: <the request> not
    formatted correctly. 'signature_name' key must be a string value." (predict, classify and
    regress share it)."""
    reply = requests.post(server.rest_url + f"/v1/models/default:{verb}", data=json.dumps(body),
                          timeout=RPC_TIMEOUT)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error.startswith("JSON Value: {") and error.endswith(
        " not formatted correctly. 'signature_name' key must be a string value."), error


@pytest.mark.parametrize("method, path", [("POST", "/v1/models/default/labels/nope:predict"),
                                          ("GET", "/v1/models/default/labels/nope"),
                                          ("GET", "/v1/models/default/labels/nope/metadata")])
def test_rest_unknown_version_label(server, method, path):
    """[server_core] an unknown version label is INVALID_ARGUMENT (HTTP 400) "Unrecognized
    servable version label: <label>", over REST as over gRPC."""
    reply = requests.request(method, server.rest_url + path, data='{"instances": [1.0]}',
                             timeout=RPC_TIMEOUT)
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"error": "Unrecognized servable version label: nope"}


@pytest.mark.parametrize("path, body, want", [
    ("/v1/models/default:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]},
     {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    ("/v1/models/default/versions/123:predict", {"instances": [1.0, 2.0]},
     {"predictions": [2.5, 3.0]}),
    ("/v1/models/default/versions/123:predict",
     {"signature_name": "serving_default", "instances": [3.0, 4.0]},
     {"predictions": [3.5, 4.0]}),
    ("/v1/models/default/versions/123:predict",
     {"signature_name": "serving_default", "inputs": [3.0, 4.0]}, {"outputs": [3.5, 4.0]}),
])
def test_rest_predict(server, path, body, want):
    """[rest] Predict: row and columnar formats, shapes as sent (not the signature's [?,1])."""
    reply = requests.post(server.rest_url + path, data=json.dumps(body), timeout=RPC_TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert reply.json() == want
    assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", ["/v1/models/default:regress",
                                  "/v1/models/default/versions/123:regress"])
def test_rest_regress(server, path):
    """[rest] Regress: x = 80 -> 0.5 * 80 + 2 = 42."""
    reply = requests.post(server.rest_url + path, timeout=RPC_TIMEOUT, data=json.dumps(
        {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}))
    assert reply.json() == {"results": [42]}


@pytest.mark.parametrize("path, x, want", [("/v1/models/default:classify", 20.0, 12),
                                           ("/v1/models/default/versions/123:classify", 10.0, 7)])
def test_rest_classify(server, path, x, want):
    """[rest] Classify: [[label, score]] per example, label "" when the signature has no
    classes."""
    reply = requests.post(server.rest_url + path, timeout=RPC_TIMEOUT, data=json.dumps(
        {"signature_name": "classify_x_to_y", "examples": [{"x": x}]}))
    assert reply.json() == {"results": [[["", want]]]}


@pytest.mark.parametrize("path", ["/v1/models/default", "/v1/models/default/versions/123"])
def test_rest_get_status(server, path):
    """[rest] GetStatus: all versions and one version."""
    reply = requests.get(server.rest_url + path, timeout=RPC_TIMEOUT)
    assert reply.json() == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_regress_with_context(server):
    """REST regress with a "context" (TF Serving's example_list_with_context
    format): context features join every example that lacks them."""
    reply = requests.post(server.rest_url + "/v1/models/default:regress", timeout=RPC_TIMEOUT,
                          data=json.dumps({"signature_name": "regress_x_to_y2",
                                           "context": {"x": 4.0},
                                           "examples": [{}, {"x": 2.0}]}))
    # An example's own feature wins over the context's: 0.5 * 4 + 3, 0.5 * 2 + 3.
    assert reply.json() == {"results": [5.0, 4.0]}


# ============================================================================ [status]

def _status(model_stub, name=None, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    if name is not None:
        request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return model_stub.GetModelStatus(request, RPC_TIMEOUT)


def test_status_missing_or_empty_model_spec(model_stub):
    """[status] MissingOrEmptyModelSpecFailure: INVALID_ARGUMENT."""
    error = rpc_error(_status, model_stub)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Missing ModelSpec" in error.details()


def test_status_invalid_model_name(model_stub):
    """[status] InvalidModelNameFailure: NOT_FOUND."""
    assert rpc_error(_status, model_stub, "foo").code() == grpc.StatusCode.NOT_FOUND


def test_status_invalid_model_version(model_stub):
    """[status] InvalidModelVersionFailure: NOT_FOUND."""
    assert rpc_error(_status, model_stub, "two", 999).code() == grpc.StatusCode.NOT_FOUND


def test_status_all_versions(model_stub):
    """[status] AllVersionsSuccess: both versions AVAILABLE, status OK."""
    result = _status(model_stub, "two")
    assert sorted(s.version for s in result.model_version_status) == [123, 124]
    for s in result.model_version_status:
        assert s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert s.status.error_code == 0 and s.status.error_message == ""


def test_status_single_version(model_stub):
    """[status] SingleVersionSuccess."""
    for version in (123, 124):
        result = _status(model_stub, "two", version)
        assert [s.version for s in result.model_version_status] == [version]
        assert result.model_version_status[0].state == \
            get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_status_of_a_bad_model(model_stub, stub):
    """[server_test] the bad model (TF Serving's bad_half_plus_two): its load fails, its status
    says so (END with the error), and it serves nothing; the other models serve."""
    result = _status(model_stub, "bad")
    state = result.model_version_status[0]
    assert state.version == 123
    assert state.state == get_model_status_pb2.ModelVersionStatus.END
    assert state.status.error_code != 0 and state.status.error_message
    assert rpc_error(stub.Predict, _predict_request("bad"), timeout=RPC_TIMEOUT).code() == \
        grpc.StatusCode.NOT_FOUND
    _verify_predict(stub, "default", 3.0, 123)


# ============================================================================ [predict_util]

def test_predict_missing_or_empty_model_spec(stub):
    """[predict_util] MissingOrEmptyModelSpec: no model_spec, then one without a name:
    INVALID_ARGUMENT. (Its third step, a wrong name, is INVALID_ARGUMENT in that old test and
    NOT_FOUND in http_rest_api_handler_test's PredictModelNameVersionErrors and current TF
    Serving; NOT_FOUND here, test_predict_invalid_model_or_version.)"""
    request = predict_pb2.PredictRequest()
    assert rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.ClearField("name")
    request.model_spec.signature_name = ""
    request.model_spec.SetInParent()
    assert rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT).code() == \
        grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("model, version", [("foo", None), ("default", 999)])
def test_predict_invalid_model_or_version(stub, model, version):
    """[rest] PredictModelNameVersionErrors over gRPC: an unknown model or version is
    NOT_FOUND."""
    request = _predict_request(model=model)
    if version is not None:
        request.model_spec.version.value = version
    assert rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT).code() == \
        grpc.StatusCode.NOT_FOUND


def _versioned(**inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.version.value = 123
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    return request


def _scalar(value, dtype=types_pb2.DT_FLOAT, shape=None):
    from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
    proto = tensor_pb2.TensorProto(dtype=dtype)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.append(value)
    else:
        proto.float_val.append(value)
    for d in shape or []:
        proto.tensor_shape.dim.add().size = d
    return proto


def test_predict_empty_input_list(stub):
    """[predict_util] EmptyInputList: INVALID_ARGUMENT."""
    assert rpc_error(stub.Predict, _versioned(), timeout=RPC_TIMEOUT).code() == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_predict_input_tensors_dont_match_model_spec_inputs(stub):
    """[predict_util] InputTensorsDontMatchModelSpecInputs."""
    request = _versioned(unknown_key1=_scalar(b"any_value", types_pb2.DT_STRING, [1]),
                         unknown_key2=_scalar(1.0, shape=[1]))
    error = rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sent extra: {unknown_key1,unknown_key2}" in error.details()
    assert "Missing but required: {x}" in error.details()


def test_predict_output_filters_dont_match_model_spec_outputs(stub):
    """[predict_util] OutputFiltersDontMatchModelSpecOutputs."""
    request = _versioned(x=_scalar(2.0))
    request.output_filter.append("output_filter")
    error = rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: output_filter" in error.details()
    del request.output_filter[:]
    request.output_filter.append("y")
    assert list(stub.Predict(request, RPC_TIMEOUT).outputs) == ["y"]
    request.output_filter.append("y")
    error = rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate output tensor alias: y" in error.details()


def test_predict_input_tensors_have_wrong_type(stub):
    """[predict_util] InputTensorsHaveWrongType."""
    request = _versioned(x=_scalar(b"any_value", types_pb2.DT_STRING, [1]))
    request.output_filter.append("y")
    error = rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to be float but string is provided" in error.details()


def test_predict_prediction_success(stub):
    """[predict_util] PredictionSuccess: a scalar x (no shape, though the signature says
    [?,1]: shapes are not checked) gives the scalar y = 3 and the full model_spec."""
    response = stub.Predict(_versioned(x=_scalar(2.0)), RPC_TIMEOUT)
    assert list(response.outputs) == ["y"]
    assert response.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(response.outputs["y"].float_val) == [3.0]
    assert not response.outputs["y"].tensor_shape.dim
    assert response.model_spec.name == "default"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_predict_shape_is_not_checked(stub):
    """A shape the signature does not state ([2,2] for x [?,1]) runs, as in TF
    Serving, whose predict_util checks no shapes."""
    result = stub.Predict(_predict_request(x=(1.0, 2.0, 3.0, 4.0), shape=[2, 2]), RPC_TIMEOUT)
    assert list(result.outputs["y"].float_val) == [2.5, 3.0, 3.5, 4.0]
    assert [d.size for d in result.outputs["y"].tensor_shape.dim] == [2, 2]


def test_predict_of_one_and_a_half_million_values_is_a_documented_difference(server):
    """A Predict of 1.5M float values (6 MB, over gRPC's 4 MB default), which TF Serving runs,
    is refused by the default --max_input_elements (docs/serving.md, "Differences from TF
    Serving": on a DPSR servable the limit also bounds the query rows), with a message naming
    the flag; one value less than the limit is answered in full, y = 0.5x + 2."""
    channel = grpc.insecure_channel(server.address, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        for values, refused in ((1_500_000, True), (1 << 20, False)):
            x = np.arange(values, dtype=np.float32) % 1000
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "default"
            # One row: batching (max_batch_size 128 here) refuses larger tasks, as TF Serving's.
            request.inputs["x"].CopyFrom(tf_make_tensor_proto(x.reshape(1, -1)))
            if refused:
                error = rpc_error(stub.Predict, request, timeout=RPC_TIMEOUT)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "1,500,000 values; the limit is 1,048,576 (--max_input_elements)" in \
                    error.details()
                continue
            y = tensors_to_ndarray(stub.Predict(request, RPC_TIMEOUT).outputs["y"])
            np.testing.assert_array_equal(y.reshape(-1), 0.5 * x + 2)
    finally:
        channel.close()


@pytest.mark.parametrize("sig, field", [("regress_x2_to_y3", "outputs"),
                                        ("classify_x2_to_y3", "scores")])
def test_predict_with_named_regression_and_classification_signatures(stub, sig, field):
    """[predict_util] PredictionWithNamedRegressionSignature /
    PredictionWithNamedClassificationSignature: Predict runs regress and classify signatures;
    inputs = x2 = 2 -> 0.5 * 2 + 3."""
    request = _versioned(inputs=_scalar(2.0))
    request.model_spec.signature_name = sig
    response = stub.Predict(request, RPC_TIMEOUT)
    assert list(response.outputs) == [field]
    assert list(response.outputs[field].float_val) == [4.0]
    assert response.model_spec.signature_name == sig


def test_predict_with_customized_signatures(stub):
    """[predict_util] PredictionWithCustomizedSignatures: the stateful counter model;
    signatures with only outputs, or one input: get, incr, reset, incr (with output_filter),
    incr_by(3) -> 0, 1, 0, 1, 4."""
    def call(signature, output_filter=(), delta=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "counter"
        request.model_spec.signature_name = signature
        request.output_filter.extend(output_filter)
        if delta is not None:
            request.inputs["delta"].CopyFrom(_scalar(delta))
        response = stub.Predict(request, RPC_TIMEOUT)
        assert response.model_spec.signature_name == signature
        assert not response.outputs["output"].tensor_shape.dim
        return list(response.outputs["output"].float_val)
    assert call("get_counter") == [0.0]
    assert call("incr_counter") == [1.0]
    assert call("reset_counter") == [0.0]
    assert call("incr_counter", output_filter=["output"]) == [1.0]
    assert call("incr_counter_by", delta=3.0) == [4.0]


def test_predict_signature_method_name_not_checked_by_default(stub):
    """[predict_util] PredictionSignatureMethodNameCheck (flag off, TF Serving's default): a
    signature with an unknown method name runs."""
    result = stub.Predict(_predict_request(signature="odd_method"), RPC_TIMEOUT)
    assert list(result.outputs["y"].float_val) == [3.0]
