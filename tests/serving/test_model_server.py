"""`dpsr serve` end to end: a real server process, the real tensorflow_serving clients (gRPC
stubs, REST over HTTP), answers checked against an independent numpy reference, and every bad
input answered with its status code while the server keeps serving."""
import concurrent.futures
import os

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc, regression_pb2)

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving import tensors
from tests.support import toy_servable as ts
from tests.support.serving_testing import outputs, predict_request, rpc_error

SERVER_MAX_K = 500


def _write_tabular_model(path):
    """A SavedModel with classify and regress signatures over tf.Example feature "x"."""

    class Tabular(tf.Module):
        def _x(self, inputs):
            parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32)})
            return parsed["x"]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            x = self._x(inputs)
            scores = tf.nn.softmax(tf.stack([x, -x], axis=1))
            classes = tf.broadcast_to(tf.constant([["pos", "neg"]]), tf.shape(scores))
            return {"classes": classes, "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": 2.0 * self._x(inputs)}

    module = Tabular()
    tf.saved_model.save(module, path, signatures={"classify": module.classify,
                                                  "regress": module.regress})
    pb = os.path.join(path, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        sm.ParseFromString(f.read())
    sigs = sm.meta_graphs[0].signature_def
    sigs["classify"].method_name = "tensorflow/serving/classify"
    sigs["regress"].method_name = "tensorflow/serving/regress"
    with open(pb, "wb") as f:
        f.write(sm.SerializeToString())


@pytest.fixture(scope="module")
def server(toy_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    tabular = os.path.join(work, "tabular")
    _write_tabular_model(os.path.join(tabular, "1"))
    (work / "models.config").write_text(f"""
        model_config_list {{
          config {{ name: "dpsr" base_path: "{toy_model_dir}" model_platform: "tensorflow" }}
          config {{ name: "tabular" base_path: "{tabular}" model_platform: "tensorflow" }}
        }}""")
    (work / "batching.config").write_text(
        "max_batch_size { value: 32 } batch_timeout_micros { value: 2000 } "
        "num_batch_threads { value: 2 } max_enqueued_batches { value: 100 }")
    (work / "monitoring.config").write_text(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    srv = process.start_model_server(
        model_config_file=str(work / "models.config"), rest=True, log_dir=str(work), flags=[
            "--enable_batching", f"--batching_parameters_file={work / 'batching.config'}",
            f"--monitoring_config_file={work / 'monitoring.config'}",
            "--max_string_input_bytes=256", "--max_request_rows=8",
            f"--max_k={SERVER_MAX_K}",
            # The queue delay control off: the batching test's burst of 16 calls on one
            # connection may outlast its target on a loaded host and be refused, which is the
            # control's job (tested in test_native_front_end.py), not what this file tests.
            "--front_end_queue_target_ms=0"])
    yield srv
    assert srv.stop() == 0, srv.log_tail()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _check_against_reference(response, query_list, catalog, spec, k, user_ids=None):
    ids, emb = catalog
    want_ids, want_scores, want_heads = ts.reference_search(query_list, ids, emb, spec, k,
                                                           user_ids)
    got = outputs(response)
    np.testing.assert_array_equal(got["item_ids"], want_ids)
    np.testing.assert_allclose(got["scores"], want_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["heads"], want_heads)


@pytest.mark.parametrize("k, batch", [(1, 1), (10, 3), (100, 5), (300, 2)])
def test_predict_matches_numpy_reference(stub, catalog, spec, queries, k, batch):
    query_list = queries[:batch]
    response = stub.Predict(predict_request("dpsr", query_list, k=k), timeout=30)
    assert response.model_spec.name == "dpsr" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    width = min(k, len(catalog[0]))  # K = min(k, items held)
    assert len(response.outputs["scores"].float_val) == batch * width  # typed fields, as TF Serving
    _check_against_reference(response, query_list, catalog, spec, k)


def test_defaults_and_user_features(stub, catalog, spec, queries):
    response = stub.Predict(predict_request("dpsr", queries[:2]), timeout=30)
    assert outputs(response)["item_ids"].shape == (2, spec.default_k)  # k from the signature
    _check_against_reference(response, queries[:2], catalog, spec, spec.default_k)
    response = stub.Predict(predict_request("dpsr", queries[:2], k=7, user_ids=[3, 11]),
                            timeout=30)
    _check_against_reference(response, queries[:2], catalog, spec, 7, user_ids=[3, 11])


def test_concurrent_requests_are_batched_and_correct(stub, server, catalog, spec, queries):
    def one(i):
        query = [queries[i % len(queries)] + f" {i}"]
        return query, stub.Predict(predict_request("dpsr", query, k=5), timeout=30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    for query, response in results:
        _check_against_reference(response, query, catalog, spec, 5)
    metrics = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10).text
    sizes = [line for line in metrics.splitlines()
             if line.startswith("dpsr_serving_batch_size_bucket") and 'le="1.0"' in line]
    counts = [line for line in metrics.splitlines()
              if line.startswith("dpsr_serving_batch_size_count")]
    assert sizes and counts
    assert float(sizes[0].split()[-1]) < float(counts[0].split()[-1])  # some batch had > 1 row


def _mutate(request, **changes):
    out = type(request)()
    out.CopyFrom(request)
    for alias, value in changes.items():
        if value is None:
            del out.inputs[alias]
        else:
            out.inputs[alias].CopyFrom(value)
    return out


def _t(value, dtype=None):
    return tensors.from_ndarray(np.array(value, dtype=dtype))


def _bad_requests():
    good = predict_request("dpsr", ["apple phone"], k=5)
    unknown_model = predict_request("nope", ["apple phone"])
    unknown_version = predict_request("dpsr", ["apple phone"], version=42)
    unknown_label = predict_request("dpsr", ["apple phone"], label="canary")
    unknown_signature = predict_request("dpsr", ["apple phone"], signature="no_such_sig")
    bad_filter = _mutate(good)
    bad_filter.output_filter.append("embeddings")
    short_content = tf.make_tensor_proto(np.array(5, np.int32))  # k: a scalar of 3 bytes
    short_content.ClearField("int_val")
    short_content.tensor_content = b"\x05\x00\x00"
    return [
        ("unknown model", unknown_model, grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
        ("unknown version", unknown_version, grpc.StatusCode.NOT_FOUND, "Specific(dpsr, 42)"),
        ("unknown label", unknown_label, grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: canary"),
        # TF Serving's predict_util.cc RunPredict.
        ("unknown signature", unknown_signature, grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "no_such_sig" not found.'),
        ("query dtype", _mutate(good, query=_t([1], np.int64)),
         grpc.StatusCode.INVALID_ARGUMENT, "DT_INT64"),
        ("k dtype", _mutate(good, k=_t(5.0, np.float32)),
         grpc.StatusCode.INVALID_ARGUMENT, "input 'k' has dtype DT_FLOAT"),
        # The inputs are placeholders: their declared shapes are checked before the run.
        ("query rank", _mutate(good, query=_t([[b"a"]], object)),
         grpc.StatusCode.INVALID_ARGUMENT,
         "input 'query' has shape [1, 1] but signature 'serving_default' expects DT_STRING [?]"),
        ("k rank", _mutate(good, k=_t([5], np.int32)),
         grpc.StatusCode.INVALID_ARGUMENT,
         "input 'k' has shape [1] but signature 'serving_default' expects DT_INT32 []"),
        ("missing query", _mutate(good, query=None),
         grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {query}"),
        ("extra input", _mutate(good, embedding=_t([1.0], np.float32)),
         grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {embedding}"),
        ("empty query", _mutate(good, query=_t([b""], object)),
         grpc.StatusCode.INVALID_ARGUMENT, "is empty"),
        ("blank query", _mutate(good, query=_t([b"ok", b"   "], object)),
         grpc.StatusCode.INVALID_ARGUMENT, "'query'[1] is empty"),
        ("no rows", _mutate(good, query=tensors.from_ndarray(np.zeros([0], object))),
         grpc.StatusCode.INVALID_ARGUMENT, "no rows"),
        ("oversized query", _mutate(good, query=_t([b"x" * 300], object)),
         grpc.StatusCode.INVALID_ARGUMENT, "300 bytes"),
        ("too many rows", _mutate(good, query=_t([b"q"] * 9, object)),
         grpc.StatusCode.INVALID_ARGUMENT, "9 rows"),
        ("k zero", _mutate(good, k=_t(0, np.int32)), grpc.StatusCode.INVALID_ARGUMENT,
         "input 'k' is 0"),
        ("k negative", _mutate(good, k=_t(-3, np.int32)), grpc.StatusCode.INVALID_ARGUMENT,
         "input 'k' is -3"),
        ("k above server limit", _mutate(good, k=_t(SERVER_MAX_K + 1, np.int32)),
         grpc.StatusCode.INVALID_ARGUMENT, f"[1, {SERVER_MAX_K}]"),
        ("k above servable limit", _mutate(good, k=_t(400, np.int32)),
         grpc.StatusCode.INVALID_ARGUMENT, "k must be in [1, 300]"),  # in-graph assertion
        ("user_id rows", _mutate(good, user_id=_t([1, 2], np.int64)),
         grpc.StatusCode.INVALID_ARGUMENT, "different numbers of rows"),
        ("unknown output", bad_filter, grpc.StatusCode.INVALID_ARGUMENT,
         "output tensor alias not found"),
        ("bad tensor_content", _mutate(good, k=short_content), grpc.StatusCode.INVALID_ARGUMENT,
         "tensor_content"),
    ]


@pytest.mark.parametrize("name, request_, code, fragment", _bad_requests(),
                         ids=[c[0] for c in _bad_requests()])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
        stub, name, request_, code, fragment):
    del name
    error = rpc_error(stub.Predict, request_, timeout=30)
    assert error.code() == code, error.details()
    if fragment:
        assert fragment in error.details()
    good = stub.Predict(predict_request("dpsr", ["cordless drill"], k=3), timeout=30)
    assert outputs(good)["item_ids"].shape == (1, 3)


def test_client_deadline_is_honored(stub):
    error = rpc_error(stub.Predict, predict_request("dpsr", ["q"] * 8, k=300), timeout=0.001)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Predict(predict_request("dpsr", ["q"], k=3), timeout=30)


def test_metadata_and_status(server, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "dpsr"
    response = stub.GetModelMetadata(request, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert set(sig.inputs) == {"query", "k", "user_id"}
    assert set(sig.outputs) == {"item_ids", "scores", "heads"}
    assert response.model_spec.version.value == 1
    request.metadata_field[:] = ["nonsense"]
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.address))
    status = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "dpsr"}), timeout=30)
    (version,) = status.model_version_status
    assert (version.version, version.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    error = rpc_error(models.GetModelStatus,
                      get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"}))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    for service in ("", "tensorflow.serving.PredictionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _examples(values):
    input_ = classification_pb2.ClassificationRequest().input
    for v in values:
        input_.example_list.examples.add().features.feature["x"].float_list.value.append(v)
    return input_


def test_classify_regress_multi_inference(stub):
    request = classification_pb2.ClassificationRequest(input=_examples([1.0, -2.0]))
    request.model_spec.name, request.model_spec.signature_name = "tabular", "classify"
    result = stub.Classify(request, timeout=30).result
    first = result.classifications[0].classes
    assert [c.label for c in first] == ["pos", "neg"]
    want = np.exp([1.0, -1.0]) / np.exp([1.0, -1.0]).sum()
    np.testing.assert_allclose([c.score for c in first], want, rtol=1e-5)
    request = regression_pb2.RegressionRequest(input=_examples([1.5, -2.0]))
    request.model_spec.name, request.model_spec.signature_name = "tabular", "regress"
    values = [r.value for r in stub.Regress(request, timeout=30).result.regressions]
    np.testing.assert_allclose(values, [3.0, -4.0])
    multi = inference_pb2.MultiInferenceRequest(input=_examples([0.5]))
    for sig, method in (("classify", "tensorflow/serving/classify"),
                        ("regress", "tensorflow/serving/regress")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "tabular", sig
    results = stub.MultiInference(multi, timeout=30).results
    assert results[1].regression_result.regressions[0].value == pytest.approx(1.0)
    # The DPSR servable's signature takes a query and k, not serialized examples (the method
    # name is not checked by default, as in TF Serving).
    request = classification_pb2.ClassificationRequest(input=_examples([1.0]))
    request.model_spec.name = "dpsr"
    error = rpc_error(stub.Classify, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Use Predict" in error.details()
    request = regression_pb2.RegressionRequest(input=_examples([1.0]))
    request.model_spec.name = "dpsr"
    assert rpc_error(stub.Regress, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def _unknown_signature_calls(stub, rest_url):
    """(API, call(signature name) -> (code, message)) for each API that names a signature."""
    def grpc_call(method, make):
        def call(name):
            error = rpc_error(method, make(name), timeout=30)
            return error.code(), error.details()
        return call

    def predict(name):
        return predict_request("tabular", ["x"], signature=name)

    def classify(name):
        request = classification_pb2.ClassificationRequest(input=_examples([1.0]))
        request.model_spec.name, request.model_spec.signature_name = "tabular", name
        return request

    def regress(name):
        request = regression_pb2.RegressionRequest(input=_examples([1.0]))
        request.model_spec.name, request.model_spec.signature_name = "tabular", name
        return request

    def multi(name):
        request = inference_pb2.MultiInferenceRequest(input=_examples([1.0]))
        task = request.tasks.add(method_name="tensorflow/serving/regress")
        task.model_spec.name, task.model_spec.signature_name = "tabular", name
        return request

    def rest(verb, body):
        def call(name):
            reply = requests.post(f"{rest_url}/v1/models/tabular:{verb}", timeout=30,
                                  json=dict(body, signature_name=name))
            return reply.status_code, reply.json()["error"]
        return call

    return [("Predict", grpc_call(stub.Predict, predict)),
            ("Classify", grpc_call(stub.Classify, classify)),
            ("Regress", grpc_call(stub.Regress, regress)),
            ("MultiInference", grpc_call(stub.MultiInference, multi)),
            ("REST predict", rest("predict", {"instances": [1.0]})),
            ("REST classify", rest("classify", {"examples": [{"x": 1.0}]})),
            ("REST regress", rest("regress", {"examples": [{"x": 1.0}]}))]


def test_unknown_signature_gets_tf_servings_code_and_message_per_api(server, stub):
    """TF Serving's answers for a signature the model lacks: gRPC Predict FAILED_PRECONDITION
    (predict_util.cc); REST :predict INVALID_ARGUMENT from its signature lookup
    (http_rest_api_handler.cc GetInfoMap); Classify and Regress, over gRPC or REST,
    INVALID_ARGUMENT (classifier.cc, regressor.cc); MultiInference INVALID_ARGUMENT
    (multi_inference.cc). Before: NOT_FOUND everywhere. The signatures the model has follow."""
    want = {
        "Predict": (grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
        "Classify": (grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope"),
        "Regress": (grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope"),
        "MultiInference": (grpc.StatusCode.INVALID_ARGUMENT,
                           "Requested signature not found in model graph: nope"),
        "REST predict": (400, 'Serving signature name: "nope" not found in signature def'),
        "REST classify": (400, "No signature was found with the name: nope"),
        "REST regress": (400, "No signature was found with the name: nope"),
    }
    for api, call in _unknown_signature_calls(stub, server.rest_url):
        code, message = call("nope")
        assert (code, message[:len(want[api][1])]) == want[api], (api, message)
        assert message.endswith("(signatures of tabular version 1: classify, regress)"), message


def test_rest_api(server, catalog, spec):
    url = server.rest_url + "/v1/models/dpsr"
    columnar = requests.post(url + ":predict", timeout=30,
                             json={"inputs": {"query": ["apple phone", "drill"], "k": 4}}).json()
    rows = requests.post(url + "/versions/1:predict", timeout=30,
                         json={"instances": ["apple phone", "drill"]}).json()
    ids, emb = catalog
    want_ids, want_scores, want_heads = ts.reference_search(["apple phone", "drill"], ids, emb,
                                                           spec, 4)
    assert columnar["outputs"]["item_ids"] == [[i.decode() for i in r] for r in want_ids]
    np.testing.assert_allclose(columnar["outputs"]["scores"], want_scores, rtol=1e-4)
    assert columnar["outputs"]["heads"] == want_heads.tolist()
    assert len(rows["predictions"]) == 2
    assert rows["predictions"][0]["item_ids"][:4] == columnar["outputs"]["item_ids"][0]
    named = requests.post(url + ":predict", timeout=30, json={
        "instances": [{"query": {"b64": "YXBwbGUgcGhvbmU="}}]}).json()  # base64 "apple phone"
    assert named["predictions"][0]["item_ids"][:4] == columnar["outputs"]["item_ids"][0]
    status = requests.get(url, timeout=30).json()
    assert status == {"model_version_status": [{
        "version": "1", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}
    metadata = requests.get(url + "/metadata", timeout=30).json()
    assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]
    for method, path, body, code in [
            ("post", "/v1/models/nope:predict", {"instances": ["x"]}, 404),
            # An unknown label: INVALID_ARGUMENT, as TF Serving.
            ("post", "/v1/models/dpsr/labels/none:predict", {"instances": ["x"]}, 400),
            ("post", "/v1/models/dpsr:predict", {"inputs": {"query": ["x"], "k": 0}}, 400),
            ("post", "/v1/models/dpsr:predict", {"inputs": {"query": [""]}}, 400),
            ("post", "/v1/models/dpsr:predict", {"instances": [], "inputs": {}}, 400),
            ("post", "/v1/models/dpsr:predict", {"inputs": {"query": [["a"], []]}}, 400),
            ("post", "/v1/models/dpsr:predict", "not json", 400),
            ("get", "/v1/models/nope", None, 404),
            ("get", "/v2/whatever", None, 404)]:
        if isinstance(body, str):
            reply = requests.post(server.rest_url + path, data=body, timeout=30)
        else:
            reply = getattr(requests, method)(server.rest_url + path, json=body, timeout=30)
        assert reply.status_code == code, (path, body, reply.text)
        assert "error" in reply.json()
    metrics = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=30).text
    assert ('dpsr_serving_request_count_total{api="predict",entrypoint="REST",model_name="dpsr",'
            'model_version="1",status="OK"}') in metrics
    assert 'status="INVALID_ARGUMENT"' in metrics and 'model_name="<unknown>"' in metrics
    assert "dpsr_serving_request_latency_seconds_bucket" in metrics
