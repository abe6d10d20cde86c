"""The proxy against scripted backends (real gRPC servers in this process, each answering as a
test says): the version-label failover rule, refusal of shard answers larger than the request
could need, one retry of a shard's last replica after UNAVAILABLE, large merges that run off
the proxy's event loop while small calls go on, and refused calls that leave no reference
cycle holding their request."""
import concurrent.futures
import gc
import os
import threading
import time
import types

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dpsr_tf.serving.proxy import merge, config as proxy_config
from dpsr_tf.serving import tensors
from tests.support.fake_backends import FakeBackend, InProcessProxy
from tests.support.serving_testing import outputs, predict_request, rpc_error

LABEL_ERROR = "Unrecognized servable version label: canary"


def _answer(ids, scores) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "dpsr"
    response.model_spec.version.value = 1
    tensors.from_ndarray(np.asarray(ids, dtype=object), response.outputs["item_ids"])
    tensors.from_ndarray(np.asarray(scores, dtype=np.float32), response.outputs["scores"])
    return response


def _shard_answer(shard: int, rows: int, k: int, seed: int):
    """[rows, k] ids b"s<shard>-<row>-<j>" with seeded scores sorted descending."""
    rng = np.random.default_rng(seed)
    ids = np.array([[f"s{shard}-{r}-{j}".encode() for j in range(k)] for r in range(rows)],
                   dtype=object)
    scores = -np.sort(-rng.random((rows, k), dtype=np.float32), axis=1)
    return ids, scores


def _reference_topk(parts, k):
    """Top-k per row over the union of (ids, scores) parts, by numpy (no shared ids)."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


# ----------------------------------------------------------------------------- version labels

@pytest.mark.parametrize("code, message", [
    (grpc.StatusCode.INVALID_ARGUMENT, LABEL_ERROR),  # TF Serving's answer
    (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Labeled(dpsr, canary)"),
])
def test_unknown_label_on_one_replica_is_tried_on_the_other(code, message):
    good_ids, good_scores = _shard_answer(0, 1, 5, seed=3)
    lacking = FakeBackend(lambda request: (code, message))
    having = FakeBackend(lambda request: _answer(good_ids, good_scores))
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": ((lacking.address, having.address),)}, deadline_ms=20000))
    try:
        for _ in range(12):
            got = outputs(server.stub.Predict(predict_request("dpsr", ["x"], k=5, label="canary"),
                                              timeout=30))
            np.testing.assert_array_equal(got["item_ids"], good_ids)
        assert lacking.calls >= 1 and having.calls == 12
        # Without a label in the request, that INVALID_ARGUMENT is the client's error.
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            having.answer = lambda request: (code, message)
            lacking.calls = having.calls = 0
            error = rpc_error(server.stub.Predict, predict_request("dpsr", ["x"], k=5, version=1),
                              timeout=30)
            assert error.code() == code and lacking.calls + having.calls == 1
    finally:
        server.close()
        lacking.stop()
        having.stop()


def test_label_unknown_on_every_replica_reaches_the_client_once_each_was_asked():
    backends = [FakeBackend(lambda request: (grpc.StatusCode.INVALID_ARGUMENT, LABEL_ERROR))
                for _ in range(3)]
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": (tuple(b.address for b in backends),)}, deadline_ms=20000))
    try:
        error = rpc_error(server.stub.Predict,
                          predict_request("dpsr", ["x"], k=5, label="canary"), timeout=30)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("Unrecognized servable version label: ")
        assert [b.calls for b in backends] == [1, 1, 1]
    finally:
        server.close()
        for b in backends:
            b.stop()


# ----------------------------------------------------------------------------- one retry

def test_the_last_replica_is_asked_once_more_after_unavailable():
    """A shard's only replica fails a call UNAVAILABLE (as when its front end dies with the call
    in flight): the proxy asks it once more and answers; a replica that keeps failing is asked
    twice per request, never more."""
    good_ids, good_scores = _shard_answer(0, 1, 5, seed=4)
    first = [(grpc.StatusCode.UNAVAILABLE, "Socket closed")]
    backend = FakeBackend(lambda request: first.pop() if first else _answer(good_ids, good_scores))
    server = InProcessProxy(proxy_config.proxy_config_text({"dpsr": ((backend.address,),)},
                                                           deadline_ms=20000))
    try:
        got = outputs(server.stub.Predict(predict_request("dpsr", ["x"], k=5), timeout=30))
        np.testing.assert_array_equal(got["item_ids"], good_ids)
        assert backend.calls == 2
        backend.answer = lambda request: (grpc.StatusCode.UNAVAILABLE, "down")
        backend.calls = 0
        error = rpc_error(server.stub.Predict, predict_request("dpsr", ["x"], k=5), timeout=30)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "down" in error.details()
        assert backend.calls == 2
    finally:
        server.close()
        backend.stop()


# ----------------------------------------------------------------------------- oversized answers

@pytest.mark.parametrize("too_big", ["rows", "k", "values"])
def test_shard_answer_larger_than_the_request_is_refused(too_big):
    rows, k = 2, 5
    good_parts = _shard_answer(0, rows, k, seed=5)
    if too_big == "rows":
        bad_parts = _shard_answer(1, 100_000, k, seed=6)
        bad = _answer(*bad_parts)
    elif too_big == "k":
        bad = _answer(*_shard_answer(1, rows, k + 3, seed=6))
    else:  # declares [rows, k] but carries 200,000 ids
        bad = _answer(*_shard_answer(1, rows, k, seed=6))
        bad.outputs["item_ids"].string_val.extend([b"x"] * 200_000)
    good_backend = FakeBackend(lambda request: _answer(*good_parts))
    bad_backend = FakeBackend(lambda request: bad)
    shards = ((good_backend.address,), (bad_backend.address,))
    text = proxy_config.proxy_config_text({"dpsr": shards}, deadline_ms=20000)
    text += proxy_config.proxy_config_text({"strict": shards}, backend_model_name="dpsr",
                                           deadline_ms=20000, partial_policy="FAIL")
    server = InProcessProxy(text)
    try:
        request = predict_request("dpsr", ["a", "b"], k=k)
        response, call = server.stub.Predict.with_call(request, timeout=30)
        got = outputs(response)
        assert bool(got["partial"]) and dict(call.trailing_metadata())[
            "dpsr-missing-shards"] == "1"
        np.testing.assert_array_equal(got["item_ids"], good_parts[0])
        error = rpc_error(server.stub.Predict, predict_request("strict", ["a", "b"], k=k),
                          timeout=30)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "refused, not merged" in error.details() and "shard 1" in error.details()
    finally:
        server.close()
        good_backend.stop()
        bad_backend.stop()


# ----------------------------------------------------------------------------- merges off the loop

def test_small_calls_complete_while_a_large_merge_runs(monkeypatch):
    """The heavy request's merge waits (in its thread) until three small calls through the same
    proxy have completed: that can happen only if the merge is off the event loop."""
    rows, k = 256, 1000
    parts = [_shard_answer(s, rows, k, seed=10 + s) for s in range(2)]
    heavy = [FakeBackend(lambda request, p=p: _answer(*p)) for p in parts]
    small_parts = _shard_answer(0, 1, 3, seed=1)
    small = FakeBackend(lambda request: _answer(*small_parts))
    text = proxy_config.proxy_config_text(
        {"heavy": ((heavy[0].address,), (heavy[1].address,))}, backend_model_name="dpsr",
        deadline_ms=120000, shard_deadline_ms=100000)
    text += proxy_config.proxy_config_text({"small": ((small.address,),)},
                                           backend_model_name="dpsr", deadline_ms=30000)
    merging, smalls_done = threading.Event(), threading.Event()
    order = []
    real_merge = merge.merge_topk

    def gated_merge(*args, **kwargs):
        merging.set()
        smalls_done.wait(20)  # bounded, so that a merge on the loop fails the test, not hangs
        order.append("heavy merged")
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(merge, "merge_topk", gated_merge)
    server = InProcessProxy(text)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            heavy_call = pool.submit(server.stub.Predict,
                                     predict_request("heavy", [f"q{r}" for r in range(rows)],
                                                     k=k), timeout=120)
            assert merging.wait(60)
            codes = []
            for _ in range(3):
                try:
                    got = outputs(server.stub.Predict(predict_request("small", ["x"], k=3),
                                                      timeout=5))
                    np.testing.assert_array_equal(got["item_ids"], small_parts[0])
                    codes.append("OK")
                    order.append("small")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
            smalls_done.set()
            got = outputs(heavy_call.result())
        assert codes == ["OK"] * 3
        assert order == ["small"] * 3 + ["heavy merged"]
        np.testing.assert_array_equal(got["item_ids"], _reference_topk(parts, k))
        assert not bool(got["partial"])
    finally:
        smalls_done.set()
        server.close()
        for b in heavy + [small]:
            b.stop()


# ----------------------------------------------------------------------------- per-client cap

def test_one_client_beyond_its_cap_is_refused_while_another_is_served():
    release = threading.Event()
    parts = _shard_answer(0, 1, 3, seed=2)

    def held(request):
        release.wait(60)
        return _answer(*parts)

    backend = FakeBackend(held)
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": ((backend.address,),)}, deadline_ms=60000), max_concurrent_calls_per_peer=2)
    greedy = prediction_service_pb2_grpc.PredictionServiceStub(server.new_channel())
    polite = prediction_service_pb2_grpc.PredictionServiceStub(server.new_channel())
    try:
        request = predict_request("dpsr", ["x"], k=3)
        calls = [greedy.Predict.future(request, timeout=60) for _ in range(6)]
        for _ in range(600):  # until 2 calls are held by the backend and 4 were refused
            refused = [c for c in calls if c.done()]
            if backend.calls == 2 and len(refused) == 4:
                break
            time.sleep(0.1)
        assert backend.calls == 2
        assert sorted(c.code().name for c in calls if c.done()) == ["RESOURCE_EXHAUSTED"] * 4
        assert "max_concurrent_calls_per_peer" in [c for c in calls if c.done()][0].details()
        other = polite.Predict.future(request, timeout=60)  # another client is not refused
        for _ in range(600):
            if backend.calls == 3:
                break
            time.sleep(0.1)
        assert backend.calls == 3 and not other.done()
        release.set()
        np.testing.assert_array_equal(outputs(other.result())["item_ids"], parts[0])
        assert sum(c.code() == grpc.StatusCode.OK for c in calls) == 2
        # The greedy client's slots are free again once its calls have ended.
        np.testing.assert_array_equal(outputs(greedy.Predict(request, timeout=60))["item_ids"],
                                      parts[0])
    finally:
        release.set()
        server.close()
        backend.stop()


# ----------------------------------------------------------------------------- refused calls

def _refused(request):
    return grpc.StatusCode.INVALID_ARGUMENT, "the shard refuses this request"


def _down(request):
    return grpc.StatusCode.UNAVAILABLE, "replica is down"


@pytest.mark.parametrize("answers", [(_refused,), (_refused, _refused), (_refused, _down),
                                     ("ok", _down)], ids=["one shard refuses", "two refuse",
                                                          "refused and down", "partial"])
def test_calls_leave_no_cycle_holding_their_request(answers):
    """Before: a shard's error, raised through the proxy's frames (or kept in a partial
    answer's list of failed shards), kept them, and the request with its copy for the shards,
    in a reference cycle until the next collection: a burst of refused 4 MiB requests left the
    proxy +75-300 MiB resident after it ended."""
    good_ids, good_scores = _shard_answer(0, 1, 5, seed=3)
    backends = [FakeBackend((lambda request: _answer(good_ids, good_scores)) if a == "ok"
                            else a) for a in answers]
    server = InProcessProxy(proxy_config.proxy_config_text(
        {"dpsr": tuple((b.address,) for b in backends)}, deadline_ms=20000))
    request = predict_request("dpsr", ["x"], k=5)

    def call():
        try:
            got = server.stub.Predict(request, timeout=30)
            return outputs(got)["partial"].item()
        except grpc.RpcError as e:
            return e.code()

    expected = True if answers[0] == "ok" else grpc.StatusCode.INVALID_ARGUMENT
    try:
        assert call() == expected
        gc.collect()
        gc.disable()  # what the calls leave unreachable stays for the collection below
        try:
            assert [call() for _ in range(5)] == [expected] * 5
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            held = sorted({o.f_code.co_name for o in gc.garbage
                           if isinstance(o, types.FrameType)
                           and os.path.join("dpsr_tf", "serving", "proxy") in o.f_code.co_filename})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert held == []
    finally:
        server.close()
        for backend in backends:
            backend.stop()
