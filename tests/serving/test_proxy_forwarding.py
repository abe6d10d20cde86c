"""forwarding.backend_payload: the client's bytes with the backend's model name (and output
aliases) appended parse to exactly the request a copy-and-change makes, for every version
choice, signature, filter and input; a request made in process (no bytes) gets the same."""
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving import tensors
from dpsr_tf.serving.proxy.forwarding import ReceivedPredict, backend_payload


def _request(version=None, label=None, signature="", output_filter=(), name="dpsr"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    request.output_filter.extend(output_filter)
    tensors.from_ndarray(np.array([b"cordless drill", "電動ドリル".encode()], dtype=object),
                         request.inputs["query"])
    tensors.from_ndarray(np.array(7, np.int32), request.inputs["k"])
    return request


def _reference(request, backend_name, added):
    """The copy-and-change the proxy made before: CopyFrom, rename, append the aliases."""
    expected = predict_pb2.PredictRequest()
    expected.CopyFrom(request)
    expected.model_spec.name = backend_name
    expected.output_filter.extend(added)
    return expected


@pytest.mark.parametrize("request_", [
    _request(), _request(version=3), _request(label="canary"),
    _request(signature="query_embedding"), _request(output_filter=["scores"]),
    _request(version=2, signature="serving_default", output_filter=["item_ids", "scores"]),
    _request(name=""),
], ids=["latest", "version", "label", "signature", "filter", "all", "no name"])
@pytest.mark.parametrize("backend_name, added", [
    ("dpsr", []), ("dpsr-backend", []), ("dpsr-backend", ["item_ids"]),
    ("b", ["item_ids", "scores"])])
def test_the_payload_is_the_changed_copy(request_, backend_name, added):
    expected = _reference(request_, backend_name, added)
    received = ReceivedPredict.parse(request_.SerializeToString())
    got = predict_pb2.PredictRequest.FromString(
        backend_payload(received, backend_name, added))
    assert got == expected
    assert got.model_spec.WhichOneof("version_choice") == \
        request_.model_spec.WhichOneof("version_choice")
    # From a frame (a memoryview), and made in process (no bytes): the same request.
    assert predict_pb2.PredictRequest.FromString(backend_payload(
        ReceivedPredict.parse(memoryview(request_.SerializeToString())), backend_name,
        added)) == expected
    assert predict_pb2.PredictRequest.FromString(
        backend_payload(ReceivedPredict(request_), backend_name, added)) == expected


def test_the_payload_appends_to_the_clients_bytes():
    request = _request(label="canary")
    data = request.SerializeToString()
    payload = backend_payload(ReceivedPredict.parse(data), "dpsr-backend")
    assert payload.startswith(data) and len(payload) - len(data) < 32
