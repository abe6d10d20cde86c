"""REST vs gRPC on one servable, one call at a time: latency and the server's CPU per answer.

    PYTHONPATH=. python bench/serving_rest_vs_grpc.py --servable_dir=S [--k=1000]
        [--requests=300] [--rounds=3] [--server_flag=...]

One real `dpsr serve` (REST port open, its native front end on the gRPC port) serving
--servable_dir (base/<model>, numbered versions; a `dpsr export` or bench/serving_bench.py's
servable). A closed loop sends one query at a time (different queries, the same for both
paths) over one HTTP/1.1 keep-alive connection to :predict and over one gRPC channel's
Predict, alternating the paths round by round so that both see the same machine load. Each
round prints p50/p90/p99 ms and the CPU ms per answer of the server process and of its front
end (/proc); the last line, the median over rounds of each path's p50 and their difference.
"""
import argparse
import http.client
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.serving_bench import thread_cpu  # noqa: E402
from bench.serving_loadgen import make_queries  # noqa: E402
from dpsr_tf.demo import server_processes as process  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402


def _cpu_seconds(pids) -> float:
    return sum(sum(thread_cpu(pid).values()) for pid in pids if pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servable_dir", required=True, help="base/<model>, numbered versions")
    parser.add_argument("--model_name", default="dpsr")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300, help="calls per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server_flag", action="append", default=[],
                        help="a `dpsr serve` flag (repeatable)")
    args = parser.parse_args()
    queries = make_queries(args.requests, seed=11)
    server = process.start_model_server(args.servable_dir, model_name=args.model_name,
                                        rest=True, flags=[f"--max_k={args.k}"]
                                        + args.server_flag)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_api_port, timeout=30)
        bodies = [json.dumps({"inputs": {"query": [q], "k": args.k}}) for q in queries]

        def rest_call(i):
            conn.request("POST", f"/v1/models/{args.model_name}:predict", body=bodies[i],
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"REST answered {reply.status}: {data[:300]!r}")

        stub = process.prediction_stub(server.address)
        requests = [st.predict_request(args.model_name, [q], k=args.k) for q in queries]

        def grpc_call(i):
            stub.Predict(requests[i], timeout=30)

        paths = (("rest", rest_call), ("grpc", grpc_call))
        for _, call in paths:
            for i in range(20):
                call(i)
        p50s = {name: [] for name, _ in paths}
        for r in range(args.rounds):
            for name, call in (paths if r % 2 == 0 else paths[::-1]):
                pids = (server.proc.pid, st.front_end_pid(server.proc.pid))
                cpu, load = _cpu_seconds(pids), os.getloadavg()[0]
                latencies = []
                for i in range(args.requests):
                    start = time.perf_counter()
                    call(i)
                    latencies.append(time.perf_counter() - start)
                cpu = _cpu_seconds(pids) - cpu
                ms = np.array(latencies) * 1e3
                p50s[name].append(float(np.percentile(ms, 50)))
                print(json.dumps({"round": r, "path": name, "load": round(load, 1),
                                  "p50_ms": round(float(np.percentile(ms, 50)), 2),
                                  "p90_ms": round(float(np.percentile(ms, 90)), 2),
                                  "p99_ms": round(float(np.percentile(ms, 99)), 2),
                                  "server_cpu_ms_per_answer":
                                      round(1e3 * cpu / args.requests, 3)}), flush=True)
        conn.close()
        median = {name: float(np.median(v)) for name, v in p50s.items()}
        print(json.dumps({"median_p50_ms": {k: round(v, 2) for k, v in median.items()},
                          "rest_minus_grpc_ms": round(median["rest"] - median["grpc"], 2)}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
