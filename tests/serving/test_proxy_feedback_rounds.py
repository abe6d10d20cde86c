"""Dense feedback over shards in the proxy (serving/proxy/feedback_rounds.py), against scripted
backends: the direction sent to every shard is the unit mean of the best pooled first hits
(hand-worked), a shard missing from round one makes the answer partial (or fails it under
partial_policy FAIL), bad first-round answers are refused, and client errors come back as
they are."""
import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from dpsr_tf.search.dense_feedback import (DIRECTION_INPUT, HIT_EMBEDDINGS, HIT_SCORES,
                                           HITS_SUFFIX, SEARCH_SUFFIX)
from dpsr_tf.serving import tensors
from dpsr_tf.serving.errors import ServingError
from dpsr_tf.serving.proxy import config as proxy_config, feedback_rounds
from tests.support.fake_backends import FakeBackend, InProcessProxy
from tests.support.serving_testing import outputs, predict_request, rpc_error

INF = np.inf
# Two shards' first hits (3 per row, d = 2) for a request of two queries.
HITS = {
    0: ([[0.9, 0.5, 0.1], [0.3, 0.2, 0.1]],
        [[[1, 0], [0, 1], [1, 1]], [[0, 1], [0, 1], [1, 0]]]),
    1: ([[0.8, 0.7, -INF], [-INF, -INF, -INF]],
        [[[0, 1], [1, 0], [0, 0]], [[0, 0], [0, 0], [0, 0]]]),
}
# Hand-worked: row 0 pools 0.9 (1, 0), 0.8 (0, 1), 0.7 (1, 0) -> mean (2/3, 1/3), unit
# (2, 1) / sqrt(5); row 1 only has shard 0's: (0, 1), (0, 1), (1, 0) -> (1, 2) / sqrt(5).
WANT = np.array([[2, 1], [1, 2]], np.float32) / np.sqrt(5)


def _signatures() -> get_model_metadata_pb2.SignatureDefMap:
    sig_map = get_model_metadata_pb2.SignatureDefMap()

    def add(name, inputs, outputs_):
        sig = sig_map.signature_def[name]
        for alias in inputs:
            sig.inputs[alias].name = f"{alias}:0"
        for alias in outputs_:
            sig.outputs[alias].name = f"{alias}:0"
    add("serving_default", ["query", "k"], ["item_ids", "scores"])
    add("serving_default" + HITS_SUFFIX, ["query"], [HIT_SCORES, HIT_EMBEDDINGS])
    add("serving_default" + SEARCH_SUFFIX, ["query", "k", DIRECTION_INPUT], ["item_ids", "scores"])
    add("query_embedding", ["query"], ["embedding"])
    return sig_map


def _response(arrays) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "dpsr"
    response.model_spec.version.value = 1
    for alias, value in arrays.items():
        tensors.from_ndarray(value, response.outputs[alias])
    return response


class Shard:
    """A scripted shard: its first hits (or `hits`: a replacement answer or an error), and a
    list of every call it got as (signature, the direction it was sent or None)."""

    def __init__(self, shard, hits=None):
        self.shard, self.hits, self.calls = shard, hits, []
        self.backend = FakeBackend(self.answer, _signatures())

    def answer(self, request):
        sig = request.model_spec.signature_name
        direction = (tensors.to_ndarray(request.inputs[DIRECTION_INPUT])
                     if DIRECTION_INPUT in request.inputs else None)
        self.calls.append((sig, direction))
        rows = request.inputs["query"].tensor_shape.dim[0].size
        if sig.endswith(HITS_SUFFIX):
            assert "k" not in request.inputs and list(request.output_filter) == [
                HIT_SCORES, HIT_EMBEDDINGS]
            if self.hits is not None:
                return self.hits
            scores, embeddings = HITS[self.shard]
            return _response({HIT_SCORES: np.array(scores, np.float32)[:rows],
                              HIT_EMBEDDINGS: np.array(embeddings, np.float32)[:rows]})
        # The search: item "s<shard>-<row>-<j>" scores 1 / (1 + j + shard / 2).
        ids = np.array([[f"s{self.shard}-{r}-{j}".encode() for j in range(3)]
                        for r in range(rows)], dtype=object)
        scores = np.array([[1 / (1 + j + self.shard / 2) for j in range(3)]] * rows, np.float32)
        return _response({"item_ids": ids, "scores": scores})


@pytest.fixture
def cluster(request):
    """Two scripted shards (shard 1's first hits replaced by the test's param, if any) behind an
    in-process proxy with the routes "dpsr" (partial answers allowed) and "strict" (FAIL)."""
    shards = [Shard(0), Shard(1, getattr(request, "param", None))]
    routes = {"dpsr": tuple((s.backend.address,) for s in shards)}
    text = proxy_config.proxy_config_text(routes, deadline_ms=20000)
    text += proxy_config.proxy_config_text({"strict": routes["dpsr"]}, backend_model_name="dpsr",
                                           deadline_ms=20000, partial_policy="FAIL")
    proxy = InProcessProxy(text)
    yield shards, proxy
    proxy.close()
    for s in shards:
        s.backend.stop()


def test_every_shard_searches_along_the_direction_of_the_best_pooled_hits(cluster):
    shards, proxy = cluster
    response, call = proxy.stub.Predict.with_call(
        predict_request("dpsr", ["a", "b"], k=4), timeout=30)
    for shard in shards:
        assert [sig for sig, _ in shard.calls] == ["serving_default" + HITS_SUFFIX,
                                                  "serving_default" + SEARCH_SUFFIX]
        np.testing.assert_allclose(shard.calls[1][1], WANT, rtol=1e-6)
    got = outputs(response)
    # The merge of the round-two answers: shard 0's scores 1, 1/2, 1/3, shard 1's 2/3, 2/5, 2/7.
    assert got["item_ids"].tolist() == [[b"s0-0-0", b"s1-0-0", b"s0-0-1", b"s1-0-1"],
                                        [b"s0-1-0", b"s1-1-0", b"s0-1-1", b"s1-1-1"]]
    assert not got["partial"] and dict(call.trailing_metadata())["dpsr-partial"] == "false"
    assert response.model_spec.signature_name == "serving_default"
    # A signature without feedback rounds is called once per shard (or on one shard).
    proxy.stub.Predict(predict_request("dpsr", ["a"], signature="query_embedding"), timeout=30)
    assert sum(len(s.calls) for s in shards) == 5


@pytest.mark.parametrize("cluster", [(grpc.StatusCode.UNAVAILABLE, "shard down")],
                         indirect=True)
def test_a_shard_missing_from_round_one_makes_the_answer_partial(cluster):
    shards, proxy = cluster
    response, call = proxy.stub.Predict.with_call(
        predict_request("dpsr", ["a", "b"], k=4), timeout=30)
    got = outputs(response)
    # Row 0 from shard 0's hits only: 0.9 (1, 0), 0.5 (0, 1), 0.1 (1, 1) -> (2, 2) / 3, unit
    # (1, 1) / sqrt(2); row 1 as before.
    want = np.array([[2 ** -0.5, 2 ** -0.5], WANT[1]], np.float32)
    for shard in shards:
        np.testing.assert_allclose(shard.calls[-1][1], want, rtol=1e-6)
    assert got["partial"] and got["item_ids"].shape == (2, 4)  # shard 1 still searched
    assert dict(call.trailing_metadata())["dpsr-missing-shards"] == "1"
    error = rpc_error(proxy.stub.Predict, predict_request("strict", ["a"], k=4), timeout=30)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "1 of 2 shards of strict failed and partial_policy is FAIL" in error.details()
    assert [sig for sig, _ in shards[0].calls][-1] == "serving_default" + HITS_SUFFIX


@pytest.mark.parametrize("cluster", [
    _response({HIT_SCORES: np.zeros((2, 3), np.float32),
               HIT_EMBEDDINGS: np.full((2, 3, 2), np.nan, np.float32)}),
    _response({HIT_SCORES: np.zeros((5, 3), np.float32),
               HIT_EMBEDDINGS: np.zeros((5, 3, 2), np.float32)}),
    _response({HIT_SCORES: np.zeros((2, 3), np.float32),
               HIT_EMBEDDINGS: np.zeros((2, 3, 7), np.float32)}),
    _response({HIT_SCORES: np.full((2, 3), np.inf, np.float32),
               HIT_EMBEDDINGS: np.zeros((2, 3, 2), np.float32)}),
], indirect=True, ids=["nan", "rows", "dimensions", "inf_scores"])
def test_bad_first_hits_fail_their_shard_not_the_request(cluster, request):
    shards, proxy = cluster
    response, call = proxy.stub.Predict.with_call(
        predict_request("dpsr", ["a", "b"], k=4), timeout=30)
    got = outputs(response)
    want = np.array([[2 ** -0.5, 2 ** -0.5], WANT[1]], np.float32)   # shard 0's hits alone
    np.testing.assert_allclose(shards[0].calls[-1][1], want, rtol=1e-6)
    assert got["partial"] and dict(call.trailing_metadata())["dpsr-missing-shards"] == "1"
    # A shard whose hits have other dimensions serves another model: it would refuse the
    # direction, so round two skips it; the others are still searched.
    searched = shards[1].calls[-1][0] == "serving_default" + SEARCH_SUFFIX
    assert searched == ("dimensions" not in request.node.callspec.id)


@pytest.mark.parametrize("cluster", [(grpc.StatusCode.INVALID_ARGUMENT, "query must not be "
                                      "empty")], indirect=True)
def test_a_client_error_in_round_one_is_returned_without_round_two(cluster):
    shards, proxy = cluster
    error = rpc_error(proxy.stub.Predict, predict_request("dpsr", [""], k=4), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "query must not be empty"
    assert not any(sig.endswith(SEARCH_SUFFIX) for s in shards for sig, _ in s.calls)


def test_the_first_round_cannot_be_called_through_the_proxy(cluster):
    shards, proxy = cluster
    error = rpc_error(proxy.stub.Predict, predict_request(
        "dpsr", ["a"], signature="serving_default" + HITS_SUFFIX), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the proxy runs itself on every shard of dpsr; call 'serving_default'" in \
        error.details()
    assert not any(s.calls for s in shards)


@pytest.mark.parametrize("cluster", [(grpc.StatusCode.FAILED_PRECONDITION,
                                      'Serving signature key "serving_default.feedback_hits" '
                                      'not found.')], indirect=True)
def test_a_shard_without_the_first_round_is_answered_in_one_round(cluster):
    """A version without dense feedback rolled out after the proxy learned the signature's
    rounds: the request is answered in one round and the plan is learned again."""
    shards, proxy = cluster
    got = outputs(proxy.stub.Predict(predict_request("dpsr", ["a"], k=4), timeout=30))
    assert got["item_ids"].tolist() == [[b"s0-0-0", b"s1-0-0", b"s0-0-1", b"s1-0-1"]]
    assert not got["partial"]
    assert [sig for sig, _ in shards[1].calls] == ["serving_default" + HITS_SUFFIX,
                                                  ""]   # the client's request, as it came


def _wire(scores, embeddings, dtype=types_pb2.DT_FLOAT) -> bytes:
    response = _response({HIT_SCORES: np.asarray(scores, np.float32),
                          HIT_EMBEDDINGS: np.asarray(embeddings, np.float32)})
    response.outputs[HIT_EMBEDDINGS].dtype = dtype
    return response.SerializeToString()


@pytest.mark.parametrize("data, match", [
    (_wire(np.zeros((1, 3)), np.zeros((1, 3, 2)), types_pb2.DT_DOUBLE), "of dtype DT_DOUBLE"),
    (_wire(np.zeros((1, 3)), np.zeros((1, 3))), r"rank 2 \(expected 3\)"),
    (_wire(np.zeros((1, 101)), np.zeros((1, 101, 2))), r"101 hits per row \(at most 100\)"),
    (_wire(np.zeros((1, 3)), np.zeros((1, 2, 2))), r"\[1, 3\] scores and \[1, 2, 2\]"),
    (_response({HIT_SCORES: np.zeros((1, 3), np.float32)}).SerializeToString(),
     "no output 'hit_embeddings'"),
    (b"\x0a\xff", "a malformed PredictResponse"),
])
def test_parse_hits_refuses_what_no_shard_of_the_model_answers(data, match):
    with pytest.raises(ServingError, match=match) as e:
        feedback_rounds.parse_hits(data, rows=1, where="shard 1 of dpsr")
    assert e.value.code == grpc.StatusCode.INTERNAL and "shard 1 of dpsr" in e.value.message


def test_requests_of_the_two_rounds():
    request = predict_request("dpsr", ["a", "b"], k=7)
    request.output_filter.append("item_ids")
    hits = feedback_rounds.hits_request(request, "serving_default", "k")
    assert hits.model_spec.signature_name == "serving_default" + HITS_SUFFIX
    assert set(hits.inputs) == {"query"} and list(hits.output_filter) == [HIT_SCORES,
                                                                          HIT_EMBEDDINGS]
    search = feedback_rounds.search_request(request, "serving_default", WANT)
    assert search.model_spec.signature_name == "serving_default" + SEARCH_SUFFIX
    assert set(search.inputs) == {"query", "k", DIRECTION_INPUT}
    assert list(search.output_filter) == ["item_ids"]
    np.testing.assert_array_equal(tensors.to_ndarray(search.inputs[DIRECTION_INPUT]), WANT)
    assert set(request.inputs) == {"query", "k"}   # the client's request is left as it was
