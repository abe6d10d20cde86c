"""Latency of small calls through `dpsr proxy` while another client loads it.

    PYTHONPATH=. python bench/proxy_isolation_bench.py --seconds=5
    PYTHONPATH=. python bench/proxy_isolation_bench.py --classes=baseline,heavy
    PYTHONPATH=. python bench/proxy_isolation_bench.py --classes=baseline_slow,greedy \
        --proxy_flags=--max_concurrent_calls_per_peer=0

Scripted backends (a process of their own) answer as fixed: two shards of 256 x 1000 entries
each ("heavy", a 256-row k=1000 merge), one shard of 1M rows beside a normal one ("oversized",
a broken shard), a one-row answer ("small") and a 20 ms answer ("slow"). A real `dpsr proxy`
routes them. A load process sends, per class: nothing (baseline), heavy merges back to back,
oversized answers back to back, or 2,000 concurrent "slow" calls on one channel (a greedy
client: each of its 2,000 callers sends again as soon as it has an answer, and 0.5 s after an
error). Meanwhile this process sends calls at --rate per second on its own channel, to "small"
(to "slow" for the greedy class and baseline_slow: the backend the greedy client crowds), and
prints their p50/p99/max and errors. Compare rows of one run (the machine may be shared).
"""
import argparse
import asyncio
import concurrent.futures
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
from dpsr_tf.serving.proxy import config as proxy_config
from dpsr_tf.serving import tensors
from tests.support.serving_testing import predict_request  # noqa: E402

_SERVICE = "tensorflow.serving.PredictionService"


def _answer_bytes(rows, k, tag, seed):
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(seed)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "dpsr"
    ids = np.array([f"{tag}{i}".encode() for i in range(rows * k)], dtype=object)
    tensors.from_ndarray(ids.reshape(rows, k), response.outputs["item_ids"])
    tensors.from_ndarray(-np.sort(-rng.random((rows, k), dtype=np.float32), axis=1),
                         response.outputs["scores"])
    return response.SerializeToString()


def _backends(conn):
    """Runs in its own process: the scripted servers; sends back their ports."""
    answers = {"heavy0": _answer_bytes(256, 1000, "a", 0), "heavy1": _answer_bytes(256, 1000, "b", 1),
               "small": _answer_bytes(1, 10, "s", 2), "huge": _answer_bytes(1_000_000, 1, "h", 3),
               "slow": _answer_bytes(1, 10, "w", 4)}
    servers, ports = [], {}
    for name, data in answers.items():
        def handle(request, context, data=data, name=name):
            del request, context
            if name == "slow":
                time.sleep(0.02)
            return data
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(64 if name == "slow" else 8),
                             options=[("grpc.max_send_message_length", -1)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(_SERVICE, {
            "Predict": grpc.unary_unary_rpc_method_handler(handle)})])
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
    conn.send(ports)
    conn.recv()  # until told to stop


def _load(address, kind, stop):
    """Runs in its own process: one client's load of `kind` until `stop` is set."""
    if kind == "greedy":
        async def greedy():
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.unary_unary(f"/{_SERVICE}/Predict")
                data = predict_request("slow", ["x"], k=10).SerializeToString()

                async def one():
                    while not stop.is_set():
                        try:
                            await call(data, timeout=10)
                        except grpc.RpcError:
                            await asyncio.sleep(0.5)  # backs off on errors
                await asyncio.gather(*(one() for _ in range(2000)))
        asyncio.run(greedy())
        return
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])
    call = channel.unary_unary(f"/{_SERVICE}/Predict")
    if kind == "heavy":
        data = predict_request("heavy", [f"q{i}" for i in range(256)], k=1000).SerializeToString()
    else:
        data = predict_request("oversized", ["q"], k=1).SerializeToString()
    while not stop.is_set():
        try:
            call(data, timeout=30)
        except grpc.RpcError:
            pass


def _measure(stub, seconds, rate, model):
    request = predict_request(model, ["x"], k=10)
    latencies, errors = [], 0
    end = time.perf_counter() + seconds
    next_at = time.perf_counter()
    lock = threading.Lock()
    threads = []

    def one(sent):
        nonlocal errors
        try:
            stub.Predict(request, timeout=10)
            with lock:
                latencies.append(time.perf_counter() - sent)
        except grpc.RpcError:
            with lock:
                errors += 1

    while time.perf_counter() < end:
        time.sleep(max(0.0, next_at - time.perf_counter()))
        t = threading.Thread(target=one, args=(time.perf_counter(),), daemon=True)
        t.start()
        threads.append(t)
        next_at += 1.0 / rate
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000
    return len(ms), np.percentile(ms, 50), np.percentile(ms, 99), ms.max(), errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--proxy_flags", default="")
    parser.add_argument("--classes",
                        default="baseline,heavy,oversized,baseline_slow,greedy")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    backend_process = ctx.Process(target=_backends, args=(child,), daemon=True)
    backend_process.start()
    ports = parent.recv()
    at = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    text = proxy_config.proxy_config_text(
        {"heavy": ((at["heavy0"],), (at["heavy1"],)),
         "oversized": ((at["small"],), (at["huge"],))},
        backend_model_name="dpsr", deadline_ms=30000, shard_deadline_ms=25000)
    text += proxy_config.proxy_config_text({"small": ((at["small"],),),
                                            "slow": ((at["slow"],),)},
                                           backend_model_name="dpsr", deadline_ms=10000)
    workdir = tempfile.mkdtemp(prefix="proxy-bench-")
    config = os.path.join(workdir, "proxy.config")
    with open(config, "w") as f:
        f.write(text)
    proxy = process.start_proxy(config_file=config, log_dir=workdir,
                                flags=args.proxy_flags.split() if args.proxy_flags else [])
    stub = process.prediction_stub(proxy.address)
    stub.Predict(predict_request("small", ["warm"], k=10), timeout=30)
    print(f"{'class':<12}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    try:
        for kind in args.classes.split(","):
            stop = ctx.Event()
            load = None
            if not kind.startswith("baseline"):
                load = ctx.Process(target=_load, args=(proxy.address, kind, stop), daemon=True)
                load.start()
                time.sleep(2.0)  # let the load build up
            model = "slow" if kind in ("greedy", "baseline_slow") else "small"
            n, p50, p99, worst, errors = _measure(stub, args.seconds, args.rate, model)
            stop.set()
            if load is not None:
                load.join(30)
                if load.is_alive():
                    load.kill()
            print(f"{kind:<12}{n:>6}{p50:>9.1f}{p99:>9.1f}{worst:>9.1f}{errors:>8}", flush=True)
    finally:
        proxy.stop()
        parent.send("stop")
        backend_process.join(10)


if __name__ == "__main__":
    main()
