"""Shard answers checked against the request before parsing (dpsr_tf/serving/proxy/shard_answers.py):
shapes read from the wire equal the parsed message's, and the refusal rules."""
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from dpsr_tf.serving.proxy import shard_answers
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from tests.support.serving_testing import predict_request


def _response(**outputs):
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "dpsr"  # field 2, written after the outputs
    for alias, value in outputs.items():
        if isinstance(value, tf.Tensor):  # tensor_content encoding, as TensorFlow writes it
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value.numpy()))
        else:
            tensors.from_ndarray(value, response.outputs[alias])
    return response


@pytest.mark.parametrize("outputs", [
    dict(item_ids=np.array([[b"a", b"b"]], dtype=object), scores=np.ones((1, 2), np.float32)),
    dict(item_ids=np.zeros((3, 0), dtype=object), heads=np.zeros((3, 0), np.int32)),
    dict(fusion_rule=np.array(b'{"rule": "rrf"}', dtype=object),
         scores=tf.constant(np.arange(2 * 300 * 7, dtype=np.float32).reshape(2, 300, 7))),
    dict(big_dim=np.zeros((70000, 1), np.int64)),  # multi-byte varints
])
def test_shapes_read_from_the_wire_equal_the_parsed_ones(outputs):
    response = _response(**outputs)
    want = {alias: [d.size for d in t.tensor_shape.dim] for alias, t in response.outputs.items()}
    assert shard_answers.declared_output_shapes(response.SerializeToString()) == want


@pytest.mark.parametrize("rows, k, outputs, fragment", [
    (2, 5, dict(item_ids=np.zeros((3, 5), dtype=object)), "3 rows for a request of 2"),
    (2, 5, dict(scores=np.zeros((2, 6), np.float32)), "6 entries per row for a request with k=5"),
    (2, None, dict(item_ids=np.zeros((2, 600), dtype=object), heads=np.zeros((9, 1), np.int32)),
     "9 rows for a request of 2"),
])
def test_answers_larger_than_the_request_are_refused(rows, k, outputs, fragment):
    data = _response(**outputs).SerializeToString()
    with pytest.raises(ServingError) as e:
        shard_answers.parse_shard_answer(data, rows, k, "shard 1 of dpsr")
    assert e.value.code == grpc.StatusCode.INTERNAL
    assert fragment in e.value.message and "shard 1 of dpsr" in e.value.message


def test_values_beyond_the_declared_shape_and_malformed_bytes_are_refused():
    response = _response(item_ids=np.array([[b"a", b"b"]], dtype=object))
    response.outputs["item_ids"].string_val.extend([b"x"] * 1000)
    with pytest.raises(ServingError, match="1,002 values where its shape declares 2"):
        shard_answers.parse_shard_answer(response.SerializeToString(), 1, 2, "shard 0 of dpsr")
    with pytest.raises(ServingError, match="malformed") as e:
        shard_answers.parse_shard_answer(b"\x0a\xff\xff\x01abc", 1, 2, "shard 0 of dpsr")
    assert e.value.code == grpc.StatusCode.INTERNAL
    fits = _response(item_ids=np.array([[b"a", b"b"]], dtype=object))
    assert shard_answers.parse_shard_answer(fits.SerializeToString(), 1, 2, "s") == fits


def test_request_rows_and_k():
    request = predict_request("dpsr", ["a", "b", "c"], k=7, user_ids=[1, 2, 3])
    assert shard_answers.request_rows(request) == 3
    assert shard_answers.request_k(request, "k") == 7
    assert shard_answers.request_k(request, "other") is None
    request.inputs["k"].CopyFrom(tensors.from_ndarray(np.array([b"7"], dtype=object)))
    assert shard_answers.request_k(request, "k") is None  # the shards answer the client's error
    request.inputs["k"].CopyFrom(tensors.from_ndarray(np.array([5, 6], np.int32)))
    assert shard_answers.request_k(request, "k") is None
