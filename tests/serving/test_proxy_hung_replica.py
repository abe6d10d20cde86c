"""A hung replica (SIGSTOP: connected, silent) behind `dpsr proxy`, with real processes: shard 0
on two replicas, shard 1 on one. While one replica of shard 0 hangs, every request is answered
in full (hedged to the other replica), equal to the numpy reference; the hung replica is
reported ejected in the metrics, and after SIGCONT it serves again."""
import os
import signal
import time

import numpy as np
import pytest

from dpsr_tf.demo import server_processes as process
from dpsr_tf.serving.proxy import config as proxy_config
from tests.support import toy_servable as ts
from tests.support.serving_testing import metric_total, outputs, predict_request, stop_process

N_REQUESTS = 24
K = 10


@pytest.fixture(scope="module")
def cluster(shard_dirs, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("hung"))
    servers = {name: process.model_server_process(shard_dirs[shard], "dpsr", name=name,
                                                  log_dir=logs, port=process.free_port())
               for name, shard in (("s0a", 0), ("s0b", 0), ("s1", 1))}
    address = {name: p.address for name, p in servers.items()}
    # The shard deadline is what a hung replica would cost each request without hedging: long
    # enough that the test cannot pass by luck of timing, short enough to fail quickly.
    text = proxy_config.proxy_config_text(
        {"dpsr": ((address["s0a"], address["s0b"]), (address["s1"],))}, deadline_ms=20000,
        shard_deadline_ms=8000, partial_policy="FAIL")
    text += ("replica_retry_backoff_ms: 200\noutlier_max_ejection_ms: 1000\n"
             "outlier_consecutive_failures: 2\n")
    config_file = os.path.join(logs, "proxy.config")
    with open(config_file, "w") as f:
        f.write(text)
    proxy = process.proxy_process(config_file=config_file, log_dir=logs,
                                  flags=["--rest_api_port=-1"])
    process.start_all(list(servers.values()) + [proxy])
    yield dict(servers, proxy=proxy, stub=process.prediction_stub(proxy.address),
               address=address)
    for p in list(servers.values()) + [proxy]:
        p.stop()


def _metric(proxy, name, **labels) -> float:
    return metric_total(f"http://127.0.0.1:{proxy.rest_api_port}/monitoring/prometheus/metrics",
                        name, **labels)


def _query(i: int) -> str:
    return ["apple iphone", "cordless drill", "running shoes", "phone case"][i % 4] + f" {i}"


def test_hung_replica_is_hedged_around_ejected_and_returns(cluster, catalog, spec):
    stub, proxy, s0a = cluster["stub"], cluster["proxy"], cluster["s0a"]
    ids, emb = catalog
    want = {i: ts.reference_search([_query(i)], ids, emb, spec, K)[0] for i in range(N_REQUESTS)}

    def ask(i):
        got = outputs(stub.Predict(predict_request("dpsr", [_query(i)], k=K), timeout=60))
        assert not bool(got["partial"])
        np.testing.assert_array_equal(got["item_ids"], want[i])

    for i in range(N_REQUESTS):  # both replicas healthy: latencies for the hedge delay
        ask(i)
    s0a_ok = _metric(proxy, "dpsr_proxy_backend_request_count_total", replica=cluster[
        "address"]["s0a"], status="OK")
    assert s0a_ok >= 1  # it was in rotation
    stop_process(s0a.proc.pid)
    try:
        for i in range(N_REQUESTS):  # partial_policy FAIL: a missing shard 0 would fail these
            ask(i)
        address = cluster["address"]["s0a"]
        assert _metric(proxy, "dpsr_proxy_replica_ejected", replica=address) == 1
        assert _metric(proxy, "dpsr_proxy_replica_ejection_count_total", replica=address) >= 1
        assert _metric(proxy, "dpsr_proxy_hedged_call_count_total", model_name="dpsr",
                       shard="0") >= 1
        assert _metric(proxy, "dpsr_proxy_backend_request_count_total", replica=address,
                       status="OK") == s0a_ok
        assert _metric(proxy, "dpsr_proxy_replica_ejected",
                       replica=cluster["address"]["s0b"]) == 0
    finally:
        os.kill(s0a.proc.pid, signal.SIGCONT)
    # Back in rotation: a trial call succeeds once its ejection (at most 1 s) has passed.
    deadline = time.monotonic() + 120
    i = 0
    while _metric(proxy, "dpsr_proxy_replica_ejected", replica=address) != 0:
        assert time.monotonic() < deadline, "the replica never returned to rotation"
        ask(i % N_REQUESTS)
        i += 1
        time.sleep(0.1)
    before = _metric(proxy, "dpsr_proxy_backend_request_count_total", replica=address,
                     status="OK")
    assert before > s0a_ok
    for i in range(8):
        ask(i)
    assert _metric(proxy, "dpsr_proxy_backend_request_count_total", replica=address,
                   status="OK") > before  # it takes its share again
