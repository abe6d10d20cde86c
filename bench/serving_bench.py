"""Serving latency and throughput: query text -> top 1,000 items at 1M items, over gRPC.

    PYTHONPATH=. python bench/serving_bench.py                  # build (cached) + measure
    PYTHONPATH=. python bench/serving_bench.py --rates=250,500 --modes=direct

Servable: the DPSR serving signature (tests/support/toy_servable.py) over N clustered 64-d unit
items: in-graph tokenization (Dpsr>Tokenize), a 2-head query tower, a FAISS index searched per
head with the project's Dpsr>FaissSearch op (--factory, default IVF1024,PQ32, --nprobe 16),
per-head top-K merged and deduplicated in-graph. `--servable_dir` measures another servable
instead (a real `dpsr export`, or a small one to isolate the serving overhead; modes direct and
proxy1).

Modes (every server a real `dpsr serve` / `dpsr proxy` process; the load generator
bench/serving_loadgen.py runs in its own process, open loop, Poisson arrivals):
  direct  client -> model server (N items)
  proxy1  client -> proxy -> model server (N items): the proxy's routing cost
  proxy2  client -> proxy -> 2 shard servers (N/2 items each), merged to one top-K

  --server_processes=N (direct, proxy1): N `dpsr serve` processes sharing the port
  (SO_REUSEPORT); the kernel balances connections, so the load generator opens --channels and
  the proxy 4 per process (--backend_connections).

Reports p50/p90/p99 latency, achieved QPS, errors, the CPU cores each process used over the load
(a native front end counted as a process of its own; "machine": every process and the kernel),
the servers' CPU per answer and, per
server process, the cores of its main thread (the asyncio loop: gRPC and request handling in
Python) and of its other threads, what each model server saw of the calls (mean time from its
handler's start to the answer built, of the session run, and the runs ahead of it, from the
servers' Prometheus metrics: the rest of a client's latency is the transport's and the
client's), and the servable alone (one thread per batch size, then from as many threads as a
server runs it with: the ceiling of serving it on these cores); writes them as JSON next to the
servables. On a shared machine compare rows of one run.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dpsr_tf.demo import server_processes as process  # noqa: E402
from dpsr_tf.serving import capacity  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402
from tests.support import toy_servable as ts  # noqa: E402
from bench.serving_loadgen import LOAD_END, LOAD_START  # noqa: E402
from tests.support.server_metrics import METRICS_PATH  # noqa: E402

GRAPH_VERSION = "g2"  # bump when tests/support/toy_servable.py's graph changes

BATCHING = """max_batch_size {{ value: {max_batch} }}
batch_timeout_micros {{ value: {timeout_us} }}
max_enqueued_batches {{ value: 1000 }}
num_batch_threads {{ value: {threads} }}
"""


def build_servables(args):
    """base/<name>/1 for the full catalog and its two shards. The FAISS indexes (the slow
    part) are cached by catalog and factory; the SavedModels by the whole configuration."""
    key = f"n{args.num_items}_d{args.dim}_{args.factory.replace(',', '_')}"
    cache = os.path.join(args.work_dir, "faiss_cache", key)
    base = os.path.join(args.work_dir, f"{key}_p{args.nprobe}_{GRAPH_VERSION}")
    spec = ts.ToyServableSpec(dim=args.dim, num_heads=2, default_k=100, max_k=1000,
                              token_buckets=1 << 16, faiss_factory=args.factory,
                              nprobe=args.nprobe)
    wanted = {"full": None, "shard0": 0, "shard1": 1}
    missing = [n for n in wanted if not os.path.exists(os.path.join(base, n, "1"))]
    if missing:
        os.makedirs(cache, exist_ok=True)
        start = time.time()
        ids, emb = ts.make_items(args.num_items, args.dim, seed=1, num_clusters=2000)
        for name in missing:
            shard = wanted[name]
            sel = slice(None) if shard is None else slice(shard, None, 2)
            ts.write_toy_servable(os.path.join(base, name, "1"), ids[sel], emb[sel], spec,
                                  warmup_queries=["warm up", "apple phone", "cordless drill"],
                                  faiss_cache=os.path.join(cache, f"{name}.faiss"))
            print(f"built {name} ({len(ids[sel])} items) in {time.time() - start:.0f} s",
                  flush=True)
    return base, spec


def servable_cost(path, k, args, batches=(1, 8, 32)):
    """Per-query session-run time of the servable in this process (no serving around it), one
    thread at a time per batch size, then one-row runs from as many threads as `dpsr serve`
    runs them with (4 per core), with the servers' session settings."""
    # pylint: disable=g-import-not-at-top
    from bench.serving_loadgen import make_queries
    from dpsr_tf.serving.model_server.lifecycle.servable import SavedModelServable, SessionOptions

    threads = capacity.run_threads()  # `dpsr serve`'s default --num_run_threads
    servable = SavedModelServable("bench", 1, path, SessionOptions(
        intra_op_parallelism=args.intra_op, inter_op_parallelism=args.inter_op,
        session_runners=threads))
    servable.load()
    sig = servable.signature("")
    out = {}
    queries = make_queries(512, seed=7)
    for b in batches:
        feeds = {a: s.default for a, s in sig.inputs.items()}
        feeds["query"] = np.array([q.encode() for q in queries[:b]], dtype=object)
        feeds["k"] = np.array(k, np.int32)
        for _ in range(3):
            servable.run(sig, feeds, ("item_ids",))
        n = max(5, 64 // b)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            feeds["query"] = np.array([q.encode() for q in queries[i * b % 400:][:b]],
                                      dtype=object)
            servable.run(sig, feeds, ("item_ids", "scores", "heads"))
        out[b] = {"wall_ms_per_query": (time.perf_counter() - wall) / n / b * 1000,
                  "cpu_ms_per_query": (time.process_time() - cpu) / n / b * 1000}
    out["threads"] = _servable_threads(servable, sig, queries, k, threads)
    servable.close()
    return out


def _servable_threads(servable, sig, queries, k, threads, runs_per_thread=300):
    """One-row runs from `threads` threads at once, as the server's run threads call them:
    the rate the servable alone reaches on this machine's cores, the ceiling of serving it."""
    import threading  # pylint: disable=g-import-not-at-top

    def work(i):
        feeds = {a: s.default for a, s in sig.inputs.items()}
        feeds["k"] = np.array(k, np.int32)
        for j in range(runs_per_thread):
            feeds["query"] = np.array([queries[(i * 37 + j) % len(queries)].encode()],
                                      dtype=object)
            servable.run(sig, feeds, ("item_ids", "scores", "heads"))

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    wall, cpu = time.perf_counter(), time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    runs = threads * runs_per_thread
    return {"threads": threads, "runs_per_s": runs / wall, "cores": cpu / wall,
            "cpu_ms_per_run": 1000 * cpu / runs}


def cores_available(seconds: float = 1.0) -> float:
    """CPU cores this process group gets right now: two busy threads, CPU time over wall time.

    On a shared machine the kernel's autogroup scheduler gives each busy session an equal
    share, so another user's job halves what the benchmark gets; the report says so.
    """
    import threading  # pylint: disable=g-import-not-at-top
    a = np.random.default_rng(0).random((400, 400)).astype(np.float32)
    stop = time.perf_counter() + seconds

    def spin():
        while time.perf_counter() < stop:
            a @ a

    threads = [threading.Thread(target=spin) for _ in range(os.cpu_count() or 2)]
    wall, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def _front_ends(procs):
    """{"<name> front end": pid} of the servers' native front ends (their own processes)."""
    out = {}
    for name, p in procs.items():
        for child in psutil.Process(p.proc.pid).children():
            if child.name() == "dpsr_front_end":
                out[f"{name} front end"] = child.pid
    return out


def _cpu(procs):
    pids = {name: p.proc.pid for name, p in procs.items()}
    pids.update(_front_ends(procs))
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.NoSuchProcess:  # a front end restarted mid-run
            out[name] = float("nan")
    return out


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process, the kernel)."""
    with open("/proc/stat", encoding="utf-8") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid):
    """{thread group: CPU seconds} of one process from /proc: "main" is the thread that runs
    the asyncio loop (gRPC handling, request decoding, response encoding: Python, under the
    GIL); "other" the threads that kept the process's own name (Python's threads and
    TensorFlow's Eigen pools, which run the servable outside the GIL); threads that name
    themselves (gRPC's event engine, ...) are grouped by their name."""
    with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
        own_name = f.read().strip()
    out = {}
    for tid, name, seconds in st.thread_stats(pid):
        if tid == pid:
            group = "main"
        elif name == own_name:
            group = "other"
        else:
            group = re.sub(r"[-_:]?\d+$", "", name) or name
        out[group] = out.get(group, 0.0) + seconds
    return out


def _threads(procs):
    return {name: thread_cpu(p.proc.pid) for name, p in procs.items()}


# Histograms the model servers export (docs/serving.md, "Monitoring"), as (report key, metric,
# scale): where a call's time goes inside a server, apart from the client's and the transport's
# share of its latency.
_INSIDE = (("request_ms", "dpsr_serving_request_latency_seconds", 1000.0),
           ("session_run_ms", "dpsr_serving_runtime_latency_seconds", 1000.0),
           ("runs_ahead", "dpsr_serving_unbatched_runs_ahead", 1.0))
MONITORING = f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n'


def _inside(procs):
    """{server: {metric_sum|metric_count: value}} read from each model server's REST port."""
    out = {}
    for name, p in procs.items():
        if name.startswith("proxy") or not p.rest_api_port:
            continue
        sums = {f"{metric}_{part}": 0.0 for _, metric, _ in _INSIDE for part in ("sum", "count")}
        for sample, _, value in st.prometheus_samples(p.rest_url + METRICS_PATH):
            if sample in sums:
                sums[sample] += value
        out[name] = sums
    return out


def _inside_means(before, after):
    """{server: {request_ms, session_run_ms, runs_ahead}}: means over the calls of one rate."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        means = {}
        for key, metric, scale in _INSIDE:
            n = a[f"{metric}_count"] - b.get(f"{metric}_count", 0.0)
            total = a[f"{metric}_sum"] - b.get(f"{metric}_sum", 0.0)
            means[key] = scale * total / n if n else float("nan")
        out[name] = means
    return out


LOADGEN = os.path.join(ROOT, "bench", "dpsr_loadgen")


def native_client(args) -> str:
    """The native load generator's request file (the Python one's 2,000 queries, serialized),
    built with the generator itself (`make bench/dpsr_loadgen`) when missing."""
    if not os.path.exists(LOADGEN):
        subprocess.run(["make", "-s", "-C", ROOT, os.path.relpath(LOADGEN, ROOT)], check=True)
    from bench.serving_loadgen import make_queries
    path = os.path.join(args.work_dir, f"requests_k{args.k}.bin")
    with open(path, "wb") as f:
        for query in make_queries(2000):
            message = st.predict_request("dpsr", [query], k=args.k).SerializeToString()
            f.write(len(message).to_bytes(4, "little") + message)
    return path


def run_load(address, rate, args, procs):
    if args.client == "native":
        cmd = [LOADGEN, f"--requests={args.requests_file}"]
    else:
        cmd = [sys.executable, os.path.join(ROOT, "bench", "serving_loadgen.py"), f"--k={args.k}"]
    cmd += [f"--address={address}", f"--rate={rate}", f"--duration={args.duration}",
            f"--warmup={args.warmup}", f"--channels={args.channels}"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    # The servers' CPU is read between the load generator's LOAD_START and LOAD_END lines: over
    # the load alone, not over the seconds the generator takes to start (its imports), which
    # would dilute the cores it reports.
    errors = tempfile.TemporaryFile(mode="w+")  # a pipe left unread could block the generator
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    stdout, before, after = [], None, None
    for line in gen.stdout:
        stdout.append(line)
        if line.strip() == LOAD_START:
            inside_before = _inside(procs)
            before, threads_before, wall = _cpu(procs), _threads(procs), time.time()
            busy_before = _machine_busy_s()
        elif line.strip() == LOAD_END and before is not None:
            elapsed = time.time() - wall
            after, threads_after = _cpu(procs), _threads(procs)
            busy = _machine_busy_s() - busy_before
            inside = _inside_means(inside_before, _inside(procs))
    gen.wait()
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    done = subprocess.CompletedProcess(cmd, gen.returncode, "".join(stdout), stderr)
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode or not lines or after is None:
        raise RuntimeError(f"load generator failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    result["cores"] = {n: (after[n] - before[n]) / elapsed for n in after if n in before}
    # The servers' CPU over every answer of the load, warm-up included (refused calls' cost
    # is part of what the answers cost); NaN: a restarted front end.
    served = sum(after[n] - before[n] for n in result["cores"] if after[n] == after[n])
    result["server_cpu_ms_per_answer"] = (1e3 * served / result["answered_all"]
                                          if result["answered_all"] else float("nan"))
    result["cores"]["loadgen"] = result["client_cpu_s"] / elapsed
    # Every process and the kernel: what is left of the machine for the servers.
    result["cores"]["machine"] = busy / elapsed
    result["inside_servers"] = inside
    result["thread_cores"] = {
        n: {g: round((c - threads_before[n].get(g, 0.0)) / elapsed, 3)
            for g, c in sorted(threads_after[n].items(), key=lambda kv: -kv[1])
            if c - threads_before[n].get(g, 0.0) > 0.005 * elapsed}
        for n in procs}
    return result


def start_mode(mode, base, args, logs):
    batching = (["--enable_batching", f"--batching_parameters_file={args.batching_file}"]
                if args.batching else [])
    flags = batching + [f"--tensorflow_intra_op_parallelism={args.intra_op}",
                        f"--tensorflow_inter_op_parallelism={args.inter_op}",
                        "--max_k=1000", f"--monitoring_config_file={args.monitoring_file}"
                        ] + args.server_flag
    model_dir = args.servable_dir or os.path.join(base, "full")
    proxy_flags, routes = [], None
    local = args.local_shards and mode != "direct"  # Predict from the proxy as frames
    if mode in ("direct", "proxy1") and args.server_processes > 1:
        # Several processes on one port (SO_REUSEPORT): the kernel spreads connections.
        port = process.free_port()
        servers = {f"server{i}": process.model_server_process(
            model_dir, "dpsr", flags=flags + ["--grpc_channel_arguments=grpc.so_reuseport=1"],
            name=f"server{i}", log_dir=logs, port=port, rest=True)
            for i in range(args.server_processes)}
        process.start_all(list(servers.values()))
        if mode == "direct":
            return servers, servers["server0"].address
        routes = {"dpsr": ((servers["server0"].address,),)}
        proxy_flags = [f"--backend_connections={4 * args.server_processes}"]
    elif mode in ("direct", "proxy1"):
        servers = {"server": process.model_server_process(
            model_dir, "dpsr", flags=flags, name="server", log_dir=logs, rest=True,
            local=local)}
    else:
        servers = {f"shard{s}": process.model_server_process(
            os.path.join(base, f"shard{s}"), "dpsr", flags=flags, name=f"shard{s}",
            log_dir=logs, port=process.free_port(), rest=True, local=local) for s in range(2)}
    if mode == "direct":
        process.start_all(list(servers.values()))
        return servers, servers["server"].address
    if routes is None and mode == "proxy1":
        process.start_all(list(servers.values()))
        routes = {"dpsr": ((servers["server"].replica,),)}
    elif routes is None:
        routes = {"dpsr": tuple((p.replica,) for p in servers.values())}
    proxy = process.proxy_process(routes, log_dir=logs, flags=proxy_flags + args.proxy_flag,
                                  deadline_ms=2000)
    procs = dict(servers, proxy=proxy)
    process.start_all([p for p in procs.values() if p.proc is None])
    return procs, proxy.address


def _errors(errors: dict) -> str:
    """`n` or `n (RESOURCE_EXHAUSTED a, DEADLINE_EXCEEDED b)`: what the errors were."""
    total = sum(errors.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) + ")"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--factory", default="IVF1024,PQ32")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--rates", default="100,250,500,750")
    parser.add_argument("--modes", default="direct,proxy1,proxy2")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max_batch", type=int, default=32)
    parser.add_argument("--batch_timeout_us", type=int, default=0)
    parser.add_argument("--batch_threads", type=int, default=2)
    parser.add_argument("--intra_op", type=int, default=1)
    parser.add_argument("--inter_op", type=int, default=2)
    parser.add_argument("--servable_dir", default="",
                        help="a real export: base/<model> holding numbered versions")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "out", "bench", "serving"))
    parser.add_argument("--build_only", action="store_true", help="build the servables, stop")
    parser.add_argument("--server_processes", type=int, default=1,
                        help="direct and proxy1: this many `dpsr serve` processes sharing the port "
                             "(grpc.so_reuseport=1); give --channels >= 4x as many")
    parser.add_argument("--channels", type=int, default=1,
                        help="the load generator's gRPC connections, used round-robin")
    parser.add_argument("--client", choices=("native", "python"), default="native",
                        help="the load generator: bench/loadgen_cc (C++, a small share of the "
                             "cores the server is measured on) or bench/serving_loadgen.py "
                             "(grpc.aio: the client a Python user has, about 1 ms of CPU per "
                             "call)")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="serve with --enable_batching (--no-batching: one run per "
                             "request, `dpsr serve`'s default)")
    parser.add_argument("--server_flag", action="append", default=[],
                        help="one more `dpsr serve` flag (repeat), e.g. "
                             "--server_flag=--front_end=python")
    parser.add_argument("--proxy_flag", action="append", default=[],
                        help="one more `dpsr proxy` flag (repeat)")
    parser.add_argument("--local_shards", action="store_true",
                        help="proxy1 and proxy2 (one server per shard): the proxy sends Predict "
                             "to the servers as frames on their --framed_predict_socket "
                             "(local_replica) instead of over gRPC")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    base, _ = build_servables(args) if not args.servable_dir else (None, None)
    if args.build_only:
        return
    args.batching_file = os.path.join(args.work_dir, "batching.config")
    with open(args.batching_file, "w") as f:
        f.write(BATCHING.format(max_batch=args.max_batch, timeout_us=args.batch_timeout_us,
                                threads=args.batch_threads))
    args.monitoring_file = os.path.join(args.work_dir, "monitoring.config")
    with open(args.monitoring_file, "w") as f:
        f.write(MONITORING)
    if args.client == "native":
        args.requests_file = native_client(args)
    model_path = os.path.join(args.servable_dir or os.path.join(base, "full"), "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
              "cores": os.cpu_count(), "cores_available_before": cores_available(),
              "load_avg_before": os.getloadavg(), "args": vars(args),
              "servable_cost": servable_cost(model_path, args.k, args), "runs": []}
    print("servable alone (session run):", json.dumps(report["servable_cost"]), flush=True)
    logs = os.path.join(args.work_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    print("| mode | offered QPS | achieved QPS | p50 ms | p90 ms | p99 ms | errors | "
          "refused p99 ms | server CPU ms/answer | CPU cores used (per process) | "
          "cores free before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for mode in args.modes.split(","):
        if mode == "proxy2" and args.servable_dir:
            continue
        procs, address = start_mode(mode, base, args, logs)
        try:
            for rate in rates:
                available = cores_available(0.5)
                r = run_load(address, rate, args, procs)
                r["mode"] = mode
                r["cores_available_before"] = available
                report["runs"].append(r)
                cores = ", ".join(f"{n} {c:.2f}" for n, c in r["cores"].items())
                print(f"| {mode} | {rate:.0f} | {r['achieved_qps']:.0f} | {r['p50_ms']:.1f} | "
                      f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                      f"{_errors(r['errors'])} | {r['refused_p99_ms']:.1f} | "
                      f"{r['server_cpu_ms_per_answer']:.2f} | {cores} | "
                      f"{available:.1f} |", flush=True)
                for n, groups in r["thread_cores"].items():
                    print(f"    {n} threads (cores): " + ", ".join(
                        f"{g} {c:.2f}" for g, c in groups.items()), flush=True)
                for n, m in r["inside_servers"].items():
                    print(f"    {n} inside, mean per call: request {m['request_ms']:.1f} ms, "
                          f"session run {m['session_run_ms']:.1f} ms, runs ahead of it "
                          f"{m['runs_ahead']:.1f}", flush=True)
        finally:
            for p in procs.values():
                p.stop()
    report["load_avg_after"] = os.getloadavg()
    report["cores_available_after"] = cores_available()
    out = os.path.join(args.work_dir, "results.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"cores available to the benchmark before/after: "
          f"{report['cores_available_before']:.2f} / {report['cores_available_after']:.2f}; "
          f"load average before/after: {report['load_avg_before']} / "
          f"{report['load_avg_after']}; results in {out}")


if __name__ == "__main__":
    main()
