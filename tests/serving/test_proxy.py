"""`dpsr proxy` end to end with real processes: query text -> item ids through the proxy over
2 shard servers equals the unsharded servable (and the numpy reference); replicas fail over;
a shard that is stopped (SIGSTOP: slow) or killed mid-run gives partial answers in time, or
UNAVAILABLE under partial_policy FAIL; the proxy's config is reloaded while it runs."""
import concurrent.futures
import os
import re
import signal

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.proxy import config as proxy_config
from tests.support import toy_servable as ts
from tests.support import waiting
from tests.support.load import PredictLoad
from dpsr_tf.serving.model_server.lifecycle.servable import SavedModelServable, SessionOptions
from tests.support.serving_testing import (metric_total, outputs, predict_request, rpc_error,
                                           stop_process)

# Deadlines far apart, so the tests see which one applied by the answer, not by a stopwatch
# (the test machine is shared): a shard that never answers costs SHARD_DEADLINE_MS, far below
# the proxy's own deadline and LONG_CLIENT_DEADLINE_S (a proxy that ignored the shard deadline
# would answer neither in time); CLIENT_DEADLINE_S lies below the shard deadline, so an answer
# within it shows the proxy cut the shard deadline to the client's.
SHARD_DEADLINE_MS = 4000
PROXY_DEADLINE_MS = 120000
LONG_CLIENT_DEADLINE_S = 90.0
CLIENT_DEADLINE_S = 2.5


@pytest.fixture(scope="module")
def unsharded(toy_model_dir):
    """The unsharded servable, loaded in the test process (the reference of the merge)."""
    servable = SavedModelServable("dpsr", 1, os.path.join(toy_model_dir, "1"), SessionOptions())
    servable.load()
    yield servable
    servable.close()


@pytest.fixture(scope="module")
def cluster(shard_dirs, tmp_path_factory):
    """Shard 0 on two replicas (s0a, s0b), shard 1 on s1, and the proxy, started at once."""
    logs = str(tmp_path_factory.mktemp("proxy"))
    # s0b and s1 are on the proxy's host as local replicas: Predict reaches them as frames
    # (proxy/framed_shard.py), every other method over gRPC; s0a over gRPC only.
    servers = {name: process.model_server_process(
        shard_dirs[shard], "dpsr", name=name, log_dir=logs, port=process.free_port(),
        # The queue delay control is off: these tests count every drill call as answered, and
        # on a loaded host the control may refuse one (its job, tested in
        # test_native_front_end.py).
        flags=["--enable_batching", "--front_end_queue_target_ms=0"], local=name != "s0a")
        for name, shard in (("s0a", 0), ("s0b", 0), ("s1", 1))}
    replica = {name: p.replica for name, p in servers.items()}  # fixed ports: known now
    routes = {"dpsr": ((replica["s0a"], replica["s0b"]), (replica["s1"],))}
    text = proxy_config.proxy_config_text(routes, deadline_ms=PROXY_DEADLINE_MS,
                                          shard_deadline_ms=SHARD_DEADLINE_MS)
    text += proxy_config.proxy_config_text(
        {"strict": routes["dpsr"]}, backend_model_name="dpsr", deadline_ms=PROXY_DEADLINE_MS,
        shard_deadline_ms=SHARD_DEADLINE_MS, partial_policy="FAIL")
    text += proxy_config.proxy_config_text({"shard1": ((replica["s1"],),)},
                                           backend_model_name="dpsr")
    config_file = os.path.join(logs, "proxy.config")
    with open(config_file, "w") as f:
        f.write(text)
    proxy = process.proxy_process(config_file=config_file, log_dir=logs,
                                  flags=["--config_file_poll_wait_seconds=0.3",
                                         "--rest_api_port=-1"])
    process.start_all(list(servers.values()) + [proxy])
    yield dict(servers, proxy=proxy, stub=process.prediction_stub(proxy.address),
               config_file=config_file)
    for p in list(servers.values()) + [proxy]:
        p.stop()


@pytest.mark.parametrize("k, batch", [(1, 1), (10, 2), (100, 3), (200, 1)])
def test_proxy_over_two_shards_equals_unsharded(cluster, unsharded, catalog, spec, queries, k,
                                                 batch):
    query_list = queries[:batch]
    merged, call = cluster["stub"].Predict.with_call(predict_request("dpsr", query_list, k=k),
                                                     timeout=30)
    got, want = outputs(merged), _unsharded_answer(unsharded, query_list, k)
    np.testing.assert_array_equal(got["item_ids"], want["item_ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["heads"], want["heads"])
    assert not got["partial"] and dict(call.trailing_metadata())["dpsr-partial"] == "false"
    assert merged.model_spec.name == "dpsr" and merged.model_spec.version.value == 1
    ids, emb = catalog
    ref_ids, _, _ = ts.reference_search(query_list, ids, emb, spec, k)
    np.testing.assert_array_equal(got["item_ids"], ref_ids)


def test_default_k_user_features_and_output_filter(cluster, unsharded, queries, spec):
    request = predict_request("dpsr", queries[:2], user_ids=[5, 9])
    request.output_filter.append("item_ids")
    got = outputs(cluster["stub"].Predict(request, timeout=30))
    want = _unsharded_answer(unsharded, queries[:2], spec.default_k, user_ids=[5, 9])
    assert set(got) == {"item_ids", "partial"}
    np.testing.assert_array_equal(got["item_ids"], want["item_ids"])


def test_unsharded_route_and_errors_pass_through(cluster):
    stub = cluster["stub"]
    routed = stub.Predict(predict_request("shard1", ["apple"], k=4), timeout=30)
    assert routed.model_spec.name == "shard1" and "partial" not in routed.outputs
    for request, code in [(predict_request("nope", ["x"]), grpc.StatusCode.NOT_FOUND),
                          (predict_request("dpsr", ["x"], k=0), grpc.StatusCode.INVALID_ARGUMENT),
                          (predict_request("dpsr", [""]), grpc.StatusCode.INVALID_ARGUMENT),
                          (predict_request("shard1", ["x"], version=9),
                           grpc.StatusCode.NOT_FOUND),
                          # TF Serving's code for an unknown signature: a client error, returned
                          # at once (before: NOT_FOUND, failed over as a missing version).
                          (predict_request("shard1", ["x"], signature="nope"),
                           grpc.StatusCode.FAILED_PRECONDITION)]:
        assert rpc_error(stub.Predict, request, timeout=30).code() == code
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "dpsr"
    response = stub.GetModelMetadata(metadata, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert response.model_spec.name == "dpsr"
    assert set(sig_map.signature_def["serving_default"].outputs) == {
        "item_ids", "scores", "heads", "partial"}


def _unsharded_answer(servable, query_list, k, user_ids=None):
    feeds = {"query": np.array([q.encode() for q in query_list], dtype=object),
             "k": np.array(k, np.int32),
             "user_id": np.array(user_ids if user_ids else [], np.int64)}
    return servable.run(servable.signature(""), feeds, ("item_ids", "scores", "heads"))


def test_signature_without_merge_outputs_is_answered_by_one_shard(cluster, unsharded, queries):
    request = predict_request("dpsr", queries[:2], signature="query_embedding")
    response = cluster["stub"].Predict(request, timeout=30)
    want = unsharded.run(unsharded.signature("query_embedding"),
                         {"query": np.array([q.encode() for q in queries[:2]], dtype=object)},
                         ("embeddings",))["embeddings"]
    assert set(response.outputs) == {"embeddings"}
    np.testing.assert_allclose(outputs(response)["embeddings"], want, rtol=1e-5)


def _drill_load(stub):
    """Three client threads through the proxy; an OK call keeps its "partial" flag."""
    return PredictLoad(stub, lambda thread, n: predict_request("dpsr", [f"drill {thread} {n}"],
                                                                k=20),
                       threads=3, summary=lambda response: bool(outputs(response)["partial"]))


def _wait(condition, what="condition"):
    waiting.wait_until(condition, what, poll_s=0.05)


def test_replica_killed_mid_run_fails_over_without_errors(cluster):
    with _drill_load(cluster["stub"]) as load:
        _wait(lambda: len(load) > 20)
        cluster["s0a"].kill()
        seen = len(load)
        _wait(lambda: len(load) > seen + 40)
    assert load.errors() == []
    assert not any(load.summaries())  # s0b holds shard 0


def test_slow_shard_gives_partial_answers_in_time_never_a_hang(cluster):
    s1 = cluster["s1"]
    stop_process(s1.proc.pid)  # alive but silent: the slowest possible shard
    try:
        # The stopped shard never answers: an answer at all shows the proxy stopped waiting
        # for it at the shard deadline.
        response, call = cluster["stub"].Predict.with_call(
            predict_request("dpsr", ["apple"], k=10), timeout=LONG_CLIENT_DEADLINE_S)
        assert bool(outputs(response)["partial"])
        assert dict(call.trailing_metadata())["dpsr-missing-shards"] == "1"
        error = rpc_error(cluster["stub"].Predict, predict_request("strict", ["apple"]),
                          timeout=LONG_CLIENT_DEADLINE_S)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "FAIL" in error.details()
        # A client deadline shorter than the shard deadline still gets an answer.
        response = cluster["stub"].Predict(predict_request("dpsr", ["apple"]),
                                           timeout=CLIENT_DEADLINE_S)
        assert bool(outputs(response)["partial"])
    finally:
        os.kill(s1.proc.pid, signal.SIGCONT)
    _wait(lambda: not bool(outputs(cluster["stub"].Predict(
        predict_request("dpsr", ["apple"]), timeout=10))["partial"]))


def test_shard_killed_mid_run_keeps_answering_with_partial_flag(cluster, catalog, spec):
    metrics_url = (f"http://127.0.0.1:{cluster['proxy'].rest_api_port}"
                   "/monitoring/prometheus/metrics")
    s1 = cluster["s1"].address

    def s1_calls(status):
        return metric_total(metrics_url, "dpsr_proxy_backend_request_count_total", replica=s1,
                            status=status)

    with _drill_load(cluster["stub"]) as load:
        _wait(lambda: len(load) > 20)
        waited_out = s1_calls("DEADLINE_EXCEEDED")  # an earlier test stopped s1 on purpose
        cluster["s1"].kill()
        seen = len(load)
        _wait(lambda: len(load) > seen + 40)
    assert load.errors() == []
    assert sum(load.summaries(since=seen)) >= 35
    # A dead shard refuses connections: the proxy hears it at once and never waits a call out
    # to the shard deadline (counted per call by the proxy, not timed here).
    assert s1_calls("UNAVAILABLE") >= 1
    assert s1_calls("DEADLINE_EXCEEDED") == waited_out
    # The partial answer is the exact top-k of the shard that is left (shard 0: even items).
    ids, emb = catalog
    got = outputs(cluster["stub"].Predict(predict_request("dpsr", ["apple"], k=10), timeout=10))
    want, _, _ = ts.reference_search(["apple"], ids[0::2], emb[0::2], spec, 10)
    np.testing.assert_array_equal(got["item_ids"], want)
    error = rpc_error(cluster["stub"].Predict, predict_request("strict", ["apple"]), timeout=10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_proxy_config_is_reloaded(cluster):
    with open(cluster["config_file"], "a") as f:
        f.write(proxy_config.proxy_config_text({"alias": ((cluster["s0b"].replica,),)},
                                               backend_model_name="dpsr"))

    def alias_serves():
        try:
            return cluster["stub"].Predict(predict_request("alias", ["apple"], k=3), timeout=10)
        except grpc.RpcError:
            return None

    _wait(alias_serves)
    assert alias_serves().model_spec.name == "alias"
    # A call to "dpsr" of its own, so the backend counter below does not rest on earlier tests.
    cluster["stub"].Predict(predict_request("dpsr", ["apple"], k=3), timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # metrics endpoint answers
        import requests  # pylint: disable=g-import-not-at-top
        text = pool.submit(requests.get, f"http://127.0.0.1:{cluster['proxy'].rest_api_port}"
                           "/monitoring/prometheus/metrics", timeout=10).result().text
    assert "dpsr_proxy_partial_response_count_total" in text
    assert 'dpsr_proxy_backend_request_count_total{model_name="dpsr",replica=' in text


def test_local_replicas_took_predict_as_frames(cluster):
    """Last (it stops s0b): s0b, a local replica, read the proxy's Predict calls as frames;
    the failover drill alone sent it 40 after s0a died."""
    cluster["s0b"].stop()
    with open(cluster["s0b"].log_path, encoding="utf-8") as f:
        log = f.read()
    read = re.search(r"framed Predict calls read at " + re.escape(cluster["s0b"].framed_socket)
                     + r": (\d+)", log)
    assert read is not None and int(read.group(1)) >= 40
