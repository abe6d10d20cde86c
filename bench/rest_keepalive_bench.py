"""REST on a keep-alive connection vs gRPC: latency of the same query, one at a time.

    PYTHONPATH=. python bench/rest_keepalive_bench.py [--requests 300] [--k 10]

One real `dpsr serve` process serving the toy servable of the tests (tests/support/
toy_servable.py: 240 items, 16-d, 2 heads; so the servable itself costs little and the
transport shows). A closed loop sends the same query --requests times over (a) one HTTP/1.1
keep-alive connection (http.client, as `requests.Session` does) to :predict and (b) one gRPC
channel's PredictionService.Predict, after 20 warm-up requests each. Prints p50/p90/p99/mean in
ms per path, as JSON. A REST answer written in two parts on a socket without TCP_NODELAY waits
for the client's delayed ACK (~40 ms on Linux) on every keep-alive request after the first.
"""
import argparse
import http.client
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dpsr_tf.demo import server_processes as process  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402
from tests.support import toy_servable as ts  # noqa: E402


def _summary(latencies):
    ms = np.array(latencies) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": len(ms)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--query", default="cordless drill 20v")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="rest-keepalive-")
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    ts.write_toy_servable(os.path.join(work, "dpsr", "1"), ids, emb, spec)
    server = process.start_model_server(os.path.join(work, "dpsr"), "dpsr", rest=True,
                                        log_dir=work)
    try:
        body = json.dumps({"inputs": {"query": [args.query], "k": args.k}})
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_api_port, timeout=30)

        def rest_call():
            conn.request("POST", "/v1/models/dpsr:predict", body=body,
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            assert reply.status == 200, data

        stub = process.prediction_stub(server.address)
        request = st.predict_request("dpsr", [args.query], k=args.k)

        def grpc_call():
            stub.Predict(request, timeout=30)

        results = {}
        for name, call in (("rest_keepalive", rest_call), ("grpc", grpc_call)):
            for _ in range(20):
                call()
            latencies = []
            for _ in range(args.requests):
                start = time.perf_counter()
                call()
                latencies.append(time.perf_counter() - start)
            results[name] = _summary(latencies)
        conn.close()
        print(json.dumps(results, indent=1))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
