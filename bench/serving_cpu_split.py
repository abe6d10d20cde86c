"""Where a Predict call's CPU goes: per call, by process and thread group, of a real `dpsr serve`.

One client fires --calls Predict calls (one query, k = --k, --concurrency outstanding on one
connection) at a `dpsr serve` of --servable_dir; the CPU time of the server's threads and of its
native front end's (a process of its own), read from /proc before and after, is divided by the
calls answered. Thread groups: "main" is the asyncio loop (gRPC handling and request decoding in
Python), "other" the threads that kept the process's name (run threads, TensorFlow's pools),
named threads by their name. With --perf_out, `perf record` samples both processes meanwhile
(`perf report -i FILE --sort dso,sym` splits the time by library and function). "Threads
blocked per answer" counts each process's voluntary context switches: hand-offs of a call
between threads and waits for the GIL.

    PYTHONPATH=. python bench/serving_cpu_split.py --servable_dir=S [--rounds=2]
        [--server_flag=--norun_in_caller_thread ...] [--perf_out=/tmp/serve.perf]

CPU per call depends less on other load than latency does; compare configurations run
alternately on one machine.
"""
import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.serving_bench import thread_cpu  # noqa: E402
from bench.serving_loadgen import make_queries  # noqa: E402
from dpsr_tf.demo import server_processes as process  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402


def voluntary_switches(pid: int) -> int:
    """Times the threads of `pid` blocked (/proc voluntary_ctxt_switches, all threads): each
    hand-off of a call between threads, or of the GIL, is one on the thread that waits."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                total += next(int(line.split()[1]) for line in f
                              if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration):
            continue  # the thread ended
    return total


def _fire(address: str, payloads, calls: int, concurrency: int):
    """(wall seconds, OK answers, {status: count} of the others)."""
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])
    call = channel.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                               response_deserializer=None)
    slots, done = threading.Semaphore(concurrency), threading.Semaphore(0)
    failed = {}

    def finished(future):
        if future.exception() is not None:
            code = future.exception().code().name
            failed[code] = failed.get(code, 0) + 1
        slots.release()
        done.release()

    start = time.perf_counter()
    for i in range(calls):
        slots.acquire()
        call.future(payloads[i % len(payloads)], timeout=60).add_done_callback(finished)
    for _ in range(calls):
        done.acquire()
    wall = time.perf_counter() - start
    channel.close()
    return wall, calls - sum(failed.values()), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servable_dir", required=True, help="base/<model>, numbered versions")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server_flag", action="append", default=[],
                        help="a `dpsr serve` flag (repeatable)")
    parser.add_argument("--perf_out", default="", help="perf record data file (needs perf)")
    args = parser.parse_args()
    payloads = [st.predict_request("dpsr", [q], k=args.k).SerializeToString()
                for q in make_queries(500, seed=3)]
    server = process.start_model_server(args.servable_dir, model_name="dpsr",
                                        flags=["--max_k=1000"] + args.server_flag)
    try:
        _fire(server.address, payloads, 300, args.concurrency)  # warm up
        for _ in range(args.rounds):
            front_end = st.front_end_pid(server.proc.pid)
            pids = {"server": server.proc.pid, "front end": front_end}
            pids = {k: v for k, v in pids.items() if v}
            before = {k: thread_cpu(v) for k, v in pids.items()}
            switches = {k: voluntary_switches(v) for k, v in pids.items()}
            perf = None
            if args.perf_out:
                perf = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "fp",
                     "-p", ",".join(str(v) for v in pids.values()), "-o", args.perf_out],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            wall, ok, failed = _fire(server.address, payloads, args.calls, args.concurrency)
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait()
            per_call = {}
            switches = {k: (voluntary_switches(v) - switches[k]) / ok for k, v in pids.items()}
            for name, pid in pids.items():
                after = thread_cpu(pid)
                for group, cpu in after.items():
                    per_call[f"{name}: {group}"] = 1e3 * (cpu - before[name].get(group, 0.0)) / ok
            print(f"flags {' '.join(args.server_flag) or '(defaults)'}: {ok} answered in "
                  f"{wall:.2f} s, others {failed or 0}; CPU ms per answer "
                  f"{sum(per_call.values()):.3f}: " + ", ".join(
                      f"{g} {v:.3f}" for g, v in sorted(per_call.items(), key=lambda kv: -kv[1])
                      if v >= 0.005) + "; threads blocked per answer: " + ", ".join(
                          f"{k} {v:.1f}" for k, v in switches.items()), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
