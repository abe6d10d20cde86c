"""Latency of normal requests while each class of hostile request is sent.

    PYTHONPATH=. python bench/hostile_bench.py                 # 2 s per class
    PYTHONPATH=. python bench/hostile_bench.py --seconds=5 --rate=200

One real `dpsr serve` (the toy DPSR servable, batching, REST) and a `dpsr proxy` in front of it.
A normal request ("cordless drill", k=10) is sent at --rate per second (open loop, alternating
direct and through the proxy) by a load process of its own (so that the attacker's client-side
work, e.g. serializing a 64 MiB message under the GIL, does not delay the measuring client:
a real attacker does not share the victim client's interpreter) while a thread of this process
sends the hostile requests of one class back to back (tests/support/serving_testing.py: hostile_grpc_cases, hostile_rest_cases); the same with no hostile
traffic is the baseline. Prints p50/p99/max of the normal requests per class, their errors, the
status the hostile requests got, and the RSS of both processes at the end. The issue's target:
p99 < 50 ms under every class. Compare rows of one run (the machine may be shared).
"""
import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.demo import server_processes as process  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402
from tests.support import toy_servable as ts  # noqa: E402


def _normal_load(stubs, rate, stop, out):
    request = st.predict_request("dpsr", ["cordless drill"], k=10)
    interval = 1.0 / rate
    next_at = time.perf_counter()
    i = 0
    lock = threading.Lock()

    def one(stub, sent_at):
        try:
            stub.Predict(request, timeout=5)
            error = None
        except grpc.RpcError as e:
            error = e.code().name
        with lock:
            out.append((time.perf_counter() - sent_at, error))

    while not stop.is_set():
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        sent = time.perf_counter()
        threading.Thread(target=one, args=(stubs[i % 2], sent), daemon=True).start()
        i += 1
        next_at += interval


def _load_process(conn, addresses, rate):
    """Runs in its own process: on each "start" sends normal requests until "stop", then
    sends back the (latency seconds, error) of each."""
    stubs = [process.prediction_stub(a) for a in addresses]
    request = st.predict_request("dpsr", ["cordless drill"], k=10)
    for stub in stubs:  # channels connected before the first measured request
        stub.Predict(request, timeout=30)
    conn.send("ready")
    while conn.recv() == "start":
        out, stop = [], threading.Event()
        load = threading.Thread(target=_normal_load, args=(stubs, rate, stop, out))
        load.start()
        conn.recv()
        stop.set()
        load.join()
        time.sleep(0.3)  # the last normal requests finish
        conn.send(list(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per class")
    parser.add_argument("--rate", type=float, default=100.0, help="normal requests per second")
    parser.add_argument("--classes", default="", help="substring filter on class names")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hostile-bench-")
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    ts.write_toy_servable(os.path.join(work, "dpsr", "1"), ids, emb, spec)
    server = process.model_server_process(os.path.join(work, "dpsr"), "dpsr", rest=True,
                                          log_dir=work, port=process.free_port(),
                                          flags=["--enable_batching", "--max_k=300",
                                                 "--max_request_rows=256"])
    proxy = process.proxy_process({"dpsr": ((server.address,),)}, log_dir=work,
                                  deadline_ms=5000)
    process.start_all([server, proxy])
    channels = {"serve": grpc.insecure_channel(server.address),
                "proxy": grpc.insecure_channel(proxy.address)}
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    loader = multiprocessing.get_context("spawn").Process(
        target=_load_process, args=(theirs, [server.address, proxy.address], args.rate),
        daemon=True)
    loader.start()
    if not ours.poll(120) or ours.recv() != "ready":
        raise RuntimeError("the load process did not start in 120 s")
    classes = [("(none: baseline)", None)]
    for name, payload, _ in st.hostile_grpc_cases():
        for target in ("serve", "proxy"):
            classes.append((f"grpc {name} via {target}",
                            lambda p=payload, t=target: st.call_raw(channels[t], p).name))
    for case in st.hostile_rest_cases():
        classes.append((f"rest {case[0]}", lambda c=case: str(st.send_http(
            "127.0.0.1", server.rest_api_port, *c[1:5])[0])))
    classes = [c for c in classes if args.classes in c[0] or c[1] is None]
    print(f"{'class':58s} {'n':>5s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} errors  "
          f"hostile statuses")
    try:
        for name, send in classes:
            ours.send("start")
            deadline = time.monotonic() + args.seconds
            statuses = {}
            while time.monotonic() < deadline:
                if send is None:
                    time.sleep(0.05)
                    continue
                status = send()
                statuses[status] = statuses.get(status, 0) + 1
            ours.send("stop")
            out = ours.recv()
            lat = np.array([t for t, _ in out]) * 1e3
            errors = sum(e is not None for _, e in out)
            print(f"{name[:58]:58s} {len(lat):5d} {np.percentile(lat, 50):7.1f} "
                  f"{np.percentile(lat, 99):7.1f} {lat.max():7.1f} {errors:6d}  "
                  f"{statuses}", flush=True)
        print(f"RSS at the end: server {st.rss_bytes(server.proc.pid) / 2**20:.0f} MiB, "
              f"proxy {st.rss_bytes(proxy.proc.pid) / 2**20:.0f} MiB")
    finally:
        ours.send("exit")
        loader.join(timeout=10)
        for p in (proxy, server):
            p.stop()


if __name__ == "__main__":
    main()
