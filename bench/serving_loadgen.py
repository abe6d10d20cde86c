"""Open-loop load generator for the TF Serving Predict API (its own process; used by
bench/serving_bench.py).

Requests leave on a Poisson schedule at --rate per second whatever the server does (open loop),
and each latency is measured from the request's scheduled send time, so a server (or client)
that falls behind shows it in the tail instead of hiding it (no coordinated omission). The
client is the real one: tensorflow_serving PredictionServiceStub over grpc.aio.

Prints one JSON line: offered and achieved QPS (answers within the --timeout deadline per
second: the goodput), latency percentiles (ms) of the answers and of the calls refused with
RESOURCE_EXHAUSTED (how fast the excess learns it was refused), errors by code, and the
client's own CPU seconds. Prints LOAD_START and LOAD_END lines (flushed) around the load, so
that a caller can read the servers' CPU over the load alone and not over this process's start.
"""
import argparse
import asyncio
import collections
import gc
import json
import resource
import time

import grpc
import numpy as np
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.support.serving_testing import predict_request

WORDS = ("apple iphone samsung galaxy huawei xiaomi phone case charger cable usb-c wireless "
         "bluetooth headphones earbuds laptop notebook keyboard mouse monitor 27 inch 4k "
         "drill cordless 20v saw hammer screwdriver kit shoes running men women kids red blue "
         "black white pink green 128gb 256gb pro max mini lite 苹果 手机 华为 小米 耳机 鼠标 键盘 "
         "跑步鞋 男款 女款 红色 黑色").split()


LOAD_START, LOAD_END = "LOAD_START", "LOAD_END"


def make_queries(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 5)))) for _ in range(n)]


async def _run(args):
    # One TCP connection per channel (a local subchannel pool keeps gRPC from sharing one):
    # a server with several processes on one port (SO_REUSEPORT) balances connections, not
    # requests, so a client fleet is modelled by several connections used in turn.
    channels = [grpc.aio.insecure_channel(args.address, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)]
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in channels]
    requests = [predict_request(args.model, [q], k=args.k) for q in make_queries(2000, args.seed)]
    rng = np.random.default_rng(args.seed)
    loop = asyncio.get_running_loop()
    latencies, refused, errors = [], [], collections.Counter()
    answered = [0]  # every OK answer from LOAD_START, warm-up included (as the servers' CPU)
    tasks = set()

    async def one(request, scheduled, record, stub):
        try:
            await stub.Predict(request, timeout=args.timeout)
            answered[0] += 1
            if record:
                latencies.append(loop.time() - scheduled)
        except grpc.aio.AioRpcError as e:
            if record:
                errors[e.code().name] += 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused.append(loop.time() - scheduled)

    for n, request in enumerate(requests[:max(20, 2 * len(stubs))]):  # connect and warm up
        await one(request, loop.time(), False, stubs[n % len(stubs)])
    answered[0] = 0
    # TensorFlow comes in with the request helpers: without the freeze, a full collection
    # over its objects would stall this client, GIL held, in the middle of the load.
    gc.collect()
    gc.freeze()
    print(LOAD_START, flush=True)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = loop.time()
    warm_end = start + args.warmup
    end = warm_end + args.duration
    t = start
    i = 0
    sent = 0
    while True:
        t += rng.exponential(1.0 / args.rate)
        if t >= end:
            break
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        record = t >= warm_end
        task = asyncio.ensure_future(one(requests[i % len(requests)], t, record,
                                         stubs[i % len(stubs)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += record
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 5)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(LOAD_END, flush=True)
    for channel in channels:
        await channel.close()
    lat = np.array(latencies) * 1000
    ok = len(lat)
    pct = (lambda q: float(np.percentile(lat, q))) if ok else (lambda q: float("nan"))
    return {
        "rate": args.rate, "sent": sent, "ok": ok, "errors": dict(errors),
        "answered_all": answered[0],
        "achieved_qps": ok / args.duration,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
        "max_ms": float(lat.max()) if ok else float("nan"),
        "refused_p50_ms": float(np.percentile(refused, 50) * 1000) if refused else float("nan"),
        "refused_p99_ms": float(np.percentile(refused, 99) * 1000) if refused else float("nan"),
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--model", default="dpsr")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=1,
                        help="gRPC channels (TCP connections), used round-robin")
    args = parser.parse_args()
    start = time.time()
    result = asyncio.run(_run(args))
    result["wall_s"] = time.time() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
