"""Event-loop CPU per gRPC call: `dpsr serve` and `dpsr proxy` beside a trivial grpc.aio server.

Every gRPC call a server takes costs its one event loop some CPU, whoever sent it; a burst of N
calls holds the loop for N times that before a later client's call is read (docs/benchmarks.md,
"Per-call loop cost"). This measures it: one client fires --calls one-row Predict calls (k=10,
--concurrency at a time) at a server process, and the server's CPU time and its main thread's
(the event loop's) CPU time, read from /proc before and after, are divided by the calls. The
trivial server answers 300 fixed bytes from a grpc.aio handler: what gRPC itself costs.
With --steps, the request path's Python steps are also timed in-process (thread CPU time per
call of each step, the toy servable's ServerCore, no gRPC).

  python bench/loop_cost_bench.py [--calls=3000] [--rounds=2] [--systems=trivial,serve,proxy]
      [--serve_flag=--enable_batching] [--steps]

CPU times are per call and so depend less on other load than wall times, but still move by
about 10% between runs on a busy 2-core machine: alternate the systems (--rounds) and compare
them within one run.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.demo import server_processes as process  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402
from tests.support import toy_servable as ts  # noqa: E402

_TRIVIAL_SERVER = '''
import asyncio, sys, grpc
async def predict(request, context):
    return b"x" * 300
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(predict)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
'''
def _fire(address: str, payload: bytes, calls: int, concurrency: int) -> float:
    """Wall seconds for `calls` calls, at most `concurrency` outstanding; every one must be OK."""
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                               response_deserializer=None)
    call(payload, timeout=60)
    slots = threading.Semaphore(concurrency)
    done = threading.Semaphore(0)
    errors = []

    def finished(future):
        if future.exception() is not None:
            errors.append(future.exception())
        slots.release()
        done.release()

    start = time.perf_counter()
    for _ in range(calls):
        slots.acquire()
        call.future(payload, timeout=60).add_done_callback(finished)
    for _ in range(calls):
        done.acquire()
    wall = time.perf_counter() - start
    channel.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {calls} calls failed, e.g. {errors[0]}")
    return wall


class _Trivial:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _TRIVIAL_SERVER],
                                     stdout=subprocess.PIPE, text=True)
        self.address = f"127.0.0.1:{int(self.proc.stdout.readline())}"
        self.pid = self.proc.pid

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def _measure(name: str, address: str, pid: int, args, payload: bytes) -> None:
    _fire(address, payload, min(args.calls, 500), args.concurrency)  # warm
    process_cpu, loop_cpu = st.cpu_seconds(pid), st.cpu_seconds(pid, pid)
    wall = _fire(address, payload, args.calls, args.concurrency)
    process_cpu = st.cpu_seconds(pid) - process_cpu
    loop_cpu = st.cpu_seconds(pid, pid) - loop_cpu
    print(f"| {name} | {args.calls:,} | {wall:.2f} | {1e3 * process_cpu / args.calls:.3f} | "
          f"{1e3 * loop_cpu / args.calls:.3f} |", flush=True)


def _steps(model_dir: str) -> None:
    """Thread CPU per call of the request path's steps, in-process."""
    import concurrent.futures  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel
    from dpsr_tf.serving import config as config_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.serving.model_server.api.predict import (  # pylint: disable=import-outside-toplevel
        declared_elements, prepare_predict)
    from dpsr_tf.serving.model_server.api.server_core import (  # pylint: disable=import-outside-toplevel
        CoreOptions, ServerCore)
    core = ServerCore(CoreOptions())
    core.start(config_lib.single_model_config("dpsr", model_dir))
    try:
        payload = st.predict_request("dpsr", ["cordless drill"], k=10).SerializeToString()
        request = predict_pb2.PredictRequest.FromString(payload)
        handle = core.manager.acquire(request.model_spec)
        signature = handle.servable.signature("")
        handle.release()
        pending = []

        def predict():
            pending.append(core.predict(request, 60, "GRPC", "bench",
                                        finish=lambda r: r.SerializeToString()))
            if len(pending) >= 50:  # the runs' threads must not fall behind without bound
                for f in pending:
                    f.result()
                pending.clear()

        steps = [
            ("parse the request", lambda: predict_pb2.PredictRequest.FromString(payload)),
            ("declared_elements + ByteSize", lambda: (declared_elements(request),
                                                      request.ByteSize())),
            ("version lookup (acquire + release)",
             lambda: core.manager.acquire(request.model_spec).release()),
            ("prepare_predict (checks, numpy inputs)",
             lambda: prepare_predict(signature, request, core.options.limits)),
            ("a concurrent.futures.Future", concurrent.futures.Future),
            ("ServerCore.predict up to the queued run", predict),
        ]
        print("\n| step (in-process, one-row k=10 request) | us of thread CPU per call |")
        print("|---|---:|")
        for name, fn in steps:
            calls = 2000 if fn is predict else 5000
            fn()
            start = time.thread_time()
            for _ in range(calls):
                fn()
            print(f"| {name} | {1e6 * (time.thread_time() - start) / calls:.1f} |", flush=True)
    finally:
        core.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="each system this many times, "
                        "alternated")
    parser.add_argument("--systems", default="trivial,serve,proxy")
    parser.add_argument("--serve_flag", action="append", default=[],
                        help="a flag for `dpsr serve` (repeatable)")
    parser.add_argument("--steps", action="store_true")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - {"trivial", "serve", "proxy"}
    if unknown:
        parser.error(f"--systems: unknown {sorted(unknown)}; choose from trivial, serve, proxy")

    work = tempfile.mkdtemp(prefix="loop-cost-bench-")
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    model_dir = os.path.join(work, "dpsr")
    ts.write_toy_servable(os.path.join(model_dir, "1"), ids, emb, spec)
    payload = st.predict_request("dpsr", ["cordless drill"], k=10).SerializeToString()
    print(f"one-row Predict (k=10, toy servable), {args.concurrency} outstanding; serve flags: "
          f"{' '.join(args.serve_flag) or 'defaults'}\n")
    print("| system | calls | wall s | server CPU ms/call | event loop (main thread) CPU "
          "ms/call |")
    print("|---|---:|---:|---:|---:|")
    server = proxy = None
    try:
        if {"serve", "proxy"} & set(systems):
            server = process.start_model_server(model_dir, model_name="dpsr", log_dir=work,
                                                flags=args.serve_flag)
        if "proxy" in systems:
            proxy = process.start_proxy({"dpsr": ((server.address,),)}, log_dir=work,
                                        deadline_ms=60_000)
        for _ in range(args.rounds):
            for system in systems:
                if system == "trivial":
                    trivial = _Trivial()
                    try:
                        _measure("trivial grpc.aio", trivial.address, trivial.pid, args, payload)
                    finally:
                        trivial.stop()
                elif system == "serve":
                    _measure("dpsr serve", server.address, server.proc.pid, args, payload)
                else:
                    _measure("dpsr proxy (its own process)", proxy.address, proxy.proc.pid,
                             args, payload)
    finally:
        for p in (proxy, server):
            if p is not None:
                p.stop()
    if args.steps:
        _steps(model_dir)


if __name__ == "__main__":
    main()
