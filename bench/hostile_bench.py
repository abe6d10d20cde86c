"""Latency of normal requests while each class of hostile request is sent.

    PYTHONPATH=. python bench/hostile_bench.py                 # 2 s per class
    PYTHONPATH=. python bench/hostile_bench.py --seconds=5 --rate=200

One real `dpsr serve` (the toy DPSR servable, batching, REST) and a `dpsr proxy` in front of it.
A normal request ("cordless drill", k=10) is sent at --rate per second (open loop, alternating
direct and through the proxy, each channel with the retry policy on UNAVAILABLE that
docs/search_api.md asks clients to set: dpsr_tf/serving/client_retry.py) by a load process
of its own (so that the attacker's client-side work, e.g. serializing a 64 MiB message under
the GIL, does not delay the measuring client: a real attacker does not share the victim
client's interpreter) while a thread of this process
sends the hostile requests of one class back to back (tests/support/serving_testing.py: hostile_grpc_cases, hostile_rest_cases); the same with no hostile
traffic is the baseline. The classes of misbehaving clients follow (tests/serving/
test_client_isolation.py's cases, sent by the real gRPC client or a raw HTTP/2 one): bursts of
200 large requests ("big": 256 rows, k=300 over a 20,000-item model) whose 50 ms deadline
passes in the queue, the same cancelled by the client at once, 2,000 concurrent calls on one
connection, 8 connections that each send 16 calls of 4 MiB at once (512 MiB a burst),
connections that open 100 streams each with a zero flow-control window and never read,
streams reset right after they open ("rapid reset"), and the process-level classes:
300 connections that each open one such stream, a 1 MB gzip request that inflates to 1 GiB,
the native front end's descriptors exhausted by idle connections (its RLIMIT_NOFILE lowered
to what it uses plus 32, then 100 idle connections opened and closed), and the native front
end killed (SIGKILL; it is restarted). Three more, each with a normal client of its own whose
outcome is printed under the class's row: a REST body declared as 16 MiB, of which 100 KiB come
at once and then a byte every 2 s (the pace rule of http_body.py answers it 408 about 10.4 s
after its first bytes; give --seconds=12 to see it), while normal 80 KiB Predict bodies go every
0.1 s; the same with the headers trickled instead (no body; http_head.py answers 408 10 s
after the first bytes); a 16 MB REST :classify body of 2M examples to the DPSR servable once
per --burst_period (refused 400 before it is decoded; the server's peak RSS is sampled); and a second `dpsr proxy`
(--proxy_flag applies) over two shards, the second one replica (a `dpsr serve` of its own)
SIGSTOPped for the class (SIGCONT after), with normal calls through it at 20/s: partial answers
once the replica is ejected. Prints p50/p99/max of the
normal requests per class (and p99 of those sent direct and through the proxy apart), their
errors, the statuses the hostile requests got, and both
processes' RSS growth since the start after each class (the server's with its native front
end's), and the CPU seconds the server's and the proxy's
event-loop threads (their main threads) used during the class: a count of the loop's work that a
loaded machine distorts far less than latencies. The targets: p99 < 50 ms and RSS
growth < 150 MiB under every class. Compare rows of one run (the machine may be shared).
"""
import argparse
import collections
import gc
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.demo import server_processes as process  # noqa: E402
from dpsr_tf.export.servable_info import SERVABLE_INFO  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402
from tests.support.raw_http2 import RawHttp2, gzip_zeros  # noqa: E402
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
        except grpc.RpcError as e:  # which path failed, how (e.g. the transport's refusal)
            details = e.details() or ""
            error = (f"{e.code().name} via {'serve' if stub is stubs[0] else 'proxy'}"
                     + (" (RST_STREAM)" if "RST_STREAM" in details else f" ({details[:60]})"))
        with lock:
            out.append((time.perf_counter() - sent_at, error, stub is stubs[0]))

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
    sends back the (latency seconds, error, sent direct to the server) of each."""
    stubs = [process.prediction_stub(a, retry_unavailable=True) for a in addresses]
    request = st.predict_request("dpsr", ["cordless drill"], k=10)
    for stub in stubs:  # channels connected before the first measured request
        stub.Predict(request, timeout=30)
    # This process imported TensorFlow (with the bench module): a full collection walks all of
    # its objects with the GIL held, a pause every normal call in flight would show, and the
    # sender would then send the calls it missed in a burst (docs/benchmarks.md). Frozen, the
    # collector walks only the objects made while measuring.
    gc.collect()
    gc.freeze()
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


BIG_ITEMS = 20_000
BURST = 200
SLOW_READERS = 8
STREAMS_PER_READER = 100
IDLE_READERS = 300  # connections of one zero-window stream each
INFLATED_BYTES = 1 << 30  # what the gzip request inflates to (about 1 MB sent)
LARGE_CONNECTIONS, LARGE_CALLS, LARGE_BYTES = 8, 16, 4 << 20  # large requests at once


def _big_request(rows=256):
    return st.predict_request("big", [f"cordless drill {i}" for i in range(rows)], k=300)


def _tree_rss(pid: int) -> int:
    """RSS of process `pid` and its children (the native front end's memory counts too)."""
    total = st.rss_bytes(pid)
    for child, _ in st.children(pid):
        try:
            total += st.rss_bytes(child)
        except (OSError, RuntimeError):
            pass
    return total


def _statuses(futures) -> str:
    """The status names a burst got, e.g. "DEADLINE_EXCEEDED=197,OK=3"."""
    codes = collections.Counter()
    for f in futures:
        try:
            f.result()
            codes["OK"] += 1
        except grpc.FutureCancelledError:
            codes["CANCELLED"] += 1
        except grpc.RpcError as e:
            codes[e.code().name] += 1
    return ",".join(f"{k}={v}" for k, v in sorted(codes.items()))


class _Misbehaving:
    """The misbehaving-client classes against one address; send() is one round of a class,
    close() ends what a class left open (the slow readers' connections)."""

    def __init__(self, address: str, grpc_port: int, server_pid: int = 0):
        self.address, self.grpc_port, self.server_pid = address, grpc_port, server_pid
        self.readers = []
        self._once = False  # the once-per-class attacks (fd exhaustion, kill) done
        self._gzip = None
        self._large = None
        self._big = _big_request().SerializeToString()
        self._flood = _big_request(64).SerializeToString()
        self._slow = st.predict_request("dpsr", [f"phone {i}" for i in range(64)],
                                        k=300).SerializeToString()

    def _call(self):
        # A connection of its own (gRPC shares one between channels of equal settings).
        channel = grpc.insecure_channel(self.address,
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        return channel, channel.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                                            response_deserializer=None)

    def expired(self) -> str:
        channel, call = self._call()
        futures = [call.future(self._big, timeout=0.05) for _ in range(BURST)]
        out = _statuses(futures)
        channel.close()
        return out

    def cancelled(self) -> str:
        channel, call = self._call()
        futures = [call.future(self._big, timeout=600) for _ in range(BURST)]
        for f in futures:
            f.cancel()
        out = _statuses(futures)
        channel.close()
        return out

    def flood(self) -> str:
        channel, call = self._call()
        futures = [call.future(self._flood, timeout=600) for _ in range(2000)]
        out = _statuses(futures)
        channel.close()
        return out

    def large(self) -> str:
        # Valid framing, a 4 MiB query string the server refuses (INVALID_ARGUMENT) once it
        # reads it: what the front end holds meanwhile is the class's point.
        if self._large is None:
            self._large = st.predict_request("dpsr", [b"x" * LARGE_BYTES]).SerializeToString()
        channels = [grpc.insecure_channel(self.address, options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)])
            for _ in range(LARGE_CONNECTIONS)]
        futures = []
        for channel in channels:
            call = channel.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                                       response_deserializer=None)
            futures += [call.future(self._large, timeout=30) for _ in range(LARGE_CALLS)]
        out = _statuses(futures)
        for channel in channels:
            channel.close()
        return out

    def slow_reader(self) -> str:
        if len(self.readers) >= SLOW_READERS:  # all open: they stay until the class ends
            time.sleep(0.05)
            return "held"
        reader = RawHttp2(self.grpc_port)
        self.readers.append(reader)
        for _ in range(STREAMS_PER_READER):
            reader.open_predict(self._slow)
        return "opened"

    def rapid_reset(self) -> str:
        client = RawHttp2(self.grpc_port, window=1 << 20)
        try:
            for _ in range(STREAMS_PER_READER):
                client.open_predict(self._big, reset=True)
        finally:
            client.close()
        return "reset"

    def idle_readers(self) -> str:
        if self.readers:  # all open: they stay until the class ends
            time.sleep(0.05)
            return "held"
        for _ in range(IDLE_READERS):
            reader = RawHttp2(self.grpc_port)
            self.readers.append(reader)
            reader.open_predict(self._slow)
        return "opened"

    def compressed(self) -> str:
        if self._gzip is None:
            self._gzip = gzip_zeros(INFLATED_BYTES)
        client = RawHttp2(self.grpc_port, window=1 << 20)
        try:
            headers = client.compressed_predict(self._gzip)
        finally:
            client.close()
        return grpc.StatusCode(next(c for c in grpc.StatusCode
                                    if str(c.value[0]) == headers.get("grpc-status"))).name

    def fd_exhaustion(self) -> str:
        pid = st.front_end_pid(self.server_pid)
        if self._once or pid is None:
            time.sleep(0.05)
            return "done" if self._once else "no native front end"
        self._once = True
        limit = len(os.listdir(f"/proc/{pid}/fd")) + 32
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        idle = [socket.create_connection(("127.0.0.1", self.grpc_port)) for _ in range(100)]
        time.sleep(0.5)  # accepted up to the limit
        for s in idle:
            s.close()
        return "exhausted"

    def kill_front_end(self) -> str:
        pid = st.front_end_pid(self.server_pid)
        if self._once or pid is None:
            time.sleep(0.05)
            return "done" if self._once else "no native front end"
        self._once = True
        os.kill(pid, signal.SIGKILL)
        return "killed"

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers = []
        self._once = False


TRICKLE_DECLARED = 16 << 20  # the trickler's Content-Length (the default body limit)
TRICKLE_FIRST = 100 << 10  # sent at once; then a byte every TRICKLE_EVERY_S
TRICKLE_EVERY_S = 2.0
NORMAL_REST_BYTES = 80 << 10  # normal REST bodies: over the budget's 64 KiB exemption
CLASSIFY_EXAMPLES = 2_000_000  # 8 bytes each: a 16 MB :classify body, under the 16 MiB limit
STOPPED_REPLICA_RATE = 20.0  # normal calls per second through the proxy of the stopped replica


def _ms(values) -> str:
    """"p50/p99/max ms" of latencies in seconds ("none" when there are none)."""
    if not values:
        return "none"
    a = np.array(values) * 1e3
    return f"{np.percentile(a, 50):.0f}/{np.percentile(a, 99):.0f}/{a.max():.0f} ms"


class _RestAbuse:
    """REST classes: a body trickled a byte at a time under a 16 MiB Content-Length (normal
    80 KiB Predict bodies sent one after another meanwhile), and a 2M-example :classify body.
    report() sums up a class after it ends."""

    def __init__(self, rest_port: int, server_pid: int):
        self.port, self.server_pid = rest_port, server_pid
        self._stop = threading.Event()
        self._trickler = None
        self._head_only = False  # trickle the headers (no body) instead
        self._trickled = ""
        self._normal = []  # (seconds, status) of the normal REST bodies
        self._senders = []
        self._classified = []  # (seconds, status, peak RSS growth MiB) of the :classify calls
        self._classify_body = None
        head = b'{"instances": ["cordless drill"]}'
        # Valid JSON padded with whitespace: the size, not the rows, is what the budget counts.
        self._normal_body = head + b" " * (NORMAL_REST_BYTES - len(head))

    def _rest(self, path: str, body: bytes, timeout: float = 60.0):
        start = time.perf_counter()
        try:
            status = st.send_http("127.0.0.1", self.port, "POST", path, {}, body,
                                  timeout=timeout)[0]
        except OSError as e:
            status = type(e).__name__
        return time.perf_counter() - start, status

    def _normal_one(self) -> None:
        self._normal.append(self._rest("/v1/models/dpsr:predict", self._normal_body))

    def _trickle(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        opening = (b"POST /v1/models/dpsr:predict HTTP/1.1\r\nHost: bench\r\n"
                   b"Content-Type: application/json\r\n")
        if self._head_only:  # a header that never ends
            opening += b"X-Slow: "
        else:
            opening += (f"Content-Length: {TRICKLE_DECLARED}\r\n\r\n".encode()
                        + b" " * TRICKLE_FIRST)
        try:
            sock.sendall(opening)
            first = time.monotonic()
            sock.settimeout(TRICKLE_EVERY_S)
            sent = len(opening)
            while not self._stop.is_set():
                try:
                    answer = sock.recv(4096)
                except socket.timeout:
                    sock.sendall(b"a" if self._head_only else b" ")
                    sent += 1
                    continue
                except OSError as e:
                    answer = f"{type(e).__name__} ".encode()
                status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") \
                    else (answer.decode().strip() or "closed")
                self._trickled = (f"trickler: {status} {time.monotonic() - first:.1f} s after "
                                  f"its first bytes, {sent:,} bytes sent")
                return
            self._trickled = (f"trickler: unanswered when the class ended "
                              f"{time.monotonic() - first:.1f} s after its first bytes")
        finally:
            sock.close()

    def trickle(self) -> str:
        """Starts the trickler once, then one normal body every 0.1 s (open loop: a body
        that waits does not hold back the next)."""
        if self._trickler is None:
            self._trickler = threading.Thread(target=self._trickle, daemon=True)
            self._trickler.start()
            time.sleep(0.2)  # its first 100 KiB in (and the budget taken) before the first body
        self._senders.append(threading.Thread(target=self._normal_one, daemon=True))
        self._senders[-1].start()
        time.sleep(0.1)
        return "normal body sent"

    def trickle_head(self) -> str:
        """trickle() with the headers trickled instead of a body (http_head.py answers it 408
        10 s after its first bytes)."""
        self._head_only = True
        return self.trickle()

    def classify(self) -> str:
        if self._classify_body is None:
            self._classify_body = (b'{"examples": [' + b'{"a":1},' * (CLASSIFY_EXAMPLES - 1)
                                   + b'{"a":1}]}')
        grown, (seconds, status) = st.peak_rss_growth(
            self.server_pid, lambda: self._rest("/v1/models/dpsr:classify", self._classify_body))
        self._classified.append((seconds, status, grown / 2**20))
        return str(status)

    def report(self) -> str:
        parts = []
        if self._trickler is not None:
            self._stop.set()
            self._trickler.join()
            for sender in self._senders:
                sender.join()
            codes = collections.Counter(s for _, s in self._normal)
            parts.append(f"{self._trickled}; normal {NORMAL_REST_BYTES >> 10} KiB bodies "
                         f"{dict(codes)} in {_ms([t for t, _ in self._normal])}, "
                         f"{sum(t > 1 for t, _ in self._normal)} over 1 s")
        if self._classified:
            parts.append(f"{len(self._classify_body) / 1e6:.0f} MB :classify body "
                         f"{dict(collections.Counter(s for _, s, _ in self._classified))} in "
                         f"{_ms([t for t, _, _ in self._classified])}, server peak RSS "
                         f"+{max(g for _, _, g in self._classified):.0f} MiB")
        self._stop.clear()
        self._trickler, self._trickled, self._normal, self._classified = None, "", [], []
        self._head_only = False
        self._senders = []
        return "; ".join(parts)


class _StoppedReplica:
    """A proxy route of two shards, the second one replica that is SIGSTOPped for the class
    (SIGCONT after); normal calls through that proxy at `rate` per second meanwhile."""

    def __init__(self, proxy_address: str, replica_pids, rate: float):
        self.address, self.pids, self.rate = proxy_address, replica_pids, rate
        self._stop = threading.Event()
        self._load = None
        self._out = []  # (seconds since the stop, latency seconds, partial or error name)

    def _one(self, stub, request, stopped_at):
        sent = time.perf_counter()
        try:
            response = stub.Predict(request, timeout=10)
            how = "partial" if response.outputs["partial"].bool_val[0] else "whole"
        except grpc.RpcError as e:
            how = e.code().name
        self._out.append((sent - stopped_at, time.perf_counter() - sent, how))

    def _send(self, stopped_at):
        stub = process.prediction_stub(self.address)
        request = st.predict_request("dpsr", ["cordless drill"], k=10)
        calls, next_at = [], time.perf_counter()
        while not self._stop.is_set():
            time.sleep(max(0.0, next_at - time.perf_counter()))
            calls.append(threading.Thread(target=self._one, args=(stub, request, stopped_at),
                                          daemon=True))
            calls[-1].start()
            next_at += 1.0 / self.rate
        for call in calls:
            call.join()

    def send(self) -> str:
        if self._load is None:
            for pid in self.pids:
                st.stop_process(pid)
            self._load = threading.Thread(target=self._send, args=(time.perf_counter(),),
                                          daemon=True)
            self._load.start()
        time.sleep(0.05)
        return "stopped"

    def report(self) -> str:
        if self._load is None:
            return ""
        self._stop.set()
        self._load.join()
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)
        self._load = None
        self._stop.clear()
        out, self._out = sorted(self._out), []
        # Ejected: from the first call sent that got a partial answer in under 100 ms.
        fast = [s for s, t, how in out if how == "partial" and t < 0.1]
        ejected_at = fast[0] if fast else float("inf")
        before = [(t, how) for s, t, how in out if s < ejected_at]
        after = [(t, how) for s, t, how in out if s >= ejected_at]
        return (f"through the proxy: {len(before)} calls sent before the ejection "
                f"({ejected_at:.1f} s after the stop) "
                f"{dict(collections.Counter(h for _, h in before))} in "
                f"{_ms([t for t, _ in before])}; {len(after)} after "
                f"{dict(collections.Counter(h for _, h in after))} in "
                f"{_ms([t for t, _ in after])}, {sum(t > 0.1 for t, _ in after)} over 100 ms")


def _write_models(work: str, spec) -> str:
    """dpsr (240 items) and big (BIG_ITEMS) toy servables and a model config file for both."""
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    ts.write_toy_servable(os.path.join(work, "dpsr", "1"), ids, emb, spec)
    ids, emb = ts.make_items(BIG_ITEMS, spec.dim, seed=3)
    ts.write_toy_servable(os.path.join(work, "big", "1"), ids, emb, spec)
    for model in ("dpsr", "big"):  # marked as `dpsr export` marks its servables (their rows
        # are independent), so --max_rows_per_run's default chunks them as it would those
        extra = os.path.join(work, model, "1", "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, SERVABLE_INFO), "w") as f:
            f.write("{}\n")
    path = os.path.join(work, "models.config")
    with open(path, "w") as f:
        f.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{os.path.join(work, m)}" '
            f'model_platform: "tensorflow" }}\n' for m in ("dpsr", "big")) + "}\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per class")
    parser.add_argument("--rate", type=float, default=100.0, help="normal requests per second")
    parser.add_argument("--classes", default="", help="substrings separated by |: only the classes whose name holds one")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="serve with --enable_batching (--no-batching: the default "
                             "unbatched path)")
    parser.add_argument("--burst_period", type=float, default=1.0,
                        help="seconds from one burst of a misbehaving class to the next (an "
                             "attack as first probed: one burst); 0: bursts back to back at the "
                             "attacker's full speed")
    parser.add_argument("--server_flag", action="append", default=[],
                        help="an extra `dpsr serve` flag (repeatable), e.g. --num_run_threads=2")
    parser.add_argument("--proxy_flag", action="append", default=[],
                        help="an extra `dpsr proxy` flag (repeatable), e.g. "
                             "--max_backend_calls_per_peer=32")
    parser.add_argument("--local_shards", action="store_true",
                        help="the proxies send Predict to their model servers as frames on "
                             "the servers' --framed_predict_socket (local_replica)")
    parser.add_argument("--keep_work", action="store_true",
                        help="keep the work folder (servables and the servers' logs) at the end")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hostile-bench-")
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    server = process.model_server_process(
        model_config_file=_write_models(work, spec), rest=True, log_dir=work,
        port=process.free_port(),
        flags=["--enable_batching"] * args.batching + ["--max_k=300", "--max_request_rows=256"]
        + args.server_flag, local=args.local_shards)
    proxy = process.proxy_process({"dpsr": ((server.replica,),), "big": ((server.replica,),)},
                                  log_dir=work, deadline_ms=5000, flags=args.proxy_flag)
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
    clients = {"serve": _Misbehaving(server.address, server.grpc_port, server.proc.pid),
               "proxy": _Misbehaving(proxy.address, 0)}
    # Bursts (paced by --burst_period): the abandoned ones, the flood, rapid resets.
    bursts = []
    for target in ("serve", "proxy"):
        c = clients[target]
        bursts += [(f"{BURST} big requests, 50 ms deadline, via {target}", c.expired),
                   (f"{BURST} big requests cancelled at once, via {target}", c.cancelled),
                   (f"2,000 concurrent calls on one connection, via {target}", c.flood),
                   (f"{LARGE_CONNECTIONS} connections x {LARGE_CALLS} calls of "
                    f"{LARGE_BYTES >> 20} MiB at once, via {target}", c.large)]
    bursts.append((f"{STREAMS_PER_READER} streams reset at once (rapid reset), repeated",
                   clients["serve"].rapid_reset))
    paced = {name for name, _ in bursts}
    classes += bursts[:-1]
    classes.append((f"{SLOW_READERS}x{STREAMS_PER_READER} streams, zero window, never read",
                    clients["serve"].slow_reader))
    classes.append(bursts[-1])
    serve = clients["serve"]
    classes += [(f"{IDLE_READERS} connections x 1 stream, zero window, never read",
                 serve.idle_readers),
                ("gzip request of 1 MB inflating to 1 GiB, repeated", serve.compressed),
                ("fds exhausted by idle connections, then freed", serve.fd_exhaustion),
                ("native front end killed (SIGKILL)", serve.kill_front_end)]
    rest_abuse = _RestAbuse(server.rest_api_port, server.proc.pid)
    stopped = []  # the _StoppedReplica, made only when its class runs
    stopped_name = "proxy shard of one replica, SIGSTOPped, SIGCONT after"
    classes += [(f"REST body trickled (16 MiB declared, 1 B / {TRICKLE_EVERY_S:g} s)",
                 rest_abuse.trickle),
                (f"REST headers trickled (1 B / {TRICKLE_EVERY_S:g} s)", rest_abuse.trickle_head),
                (f"REST :classify of {CLASSIFY_EXAMPLES:,} examples (16 MB)",
                 rest_abuse.classify),
                (stopped_name, lambda: stopped[0].send())]
    reports = {name: rest_abuse.report for name, send in classes[-4:-1]}
    paced.add(classes[-2][0])  # one 16 MB body a period (--burst_period=0: back to back)
    reports[stopped_name] = lambda: stopped[0].report()
    wanted = args.classes.split("|")
    classes = [c for c in classes if any(w in c[0] for w in wanted) or c[1] is None]
    extra = []  # the stopped replica and the proxy in front of it, stopped at the end
    if any(name == stopped_name for name, _ in classes):
        replica = process.model_server_process(
            model_base_path=os.path.join(work, "dpsr"), model_name="dpsr", log_dir=work,
            name="replica", local=args.local_shards)
        process.start_all([replica])
        proxy2 = process.proxy_process({"dpsr": ((server.replica,), (replica.replica,))},
                                       log_dir=work, name="proxy2", flags=args.proxy_flag)
        process.start_all([proxy2])
        extra = [proxy2, replica]
        warm = process.prediction_stub(proxy2.address)
        for _ in range(5):  # both shards connected and answering before the stop
            warm.Predict(st.predict_request("dpsr", ["cordless drill"], k=10), timeout=30)
        stopped.append(_StoppedReplica(
            proxy2.address, [replica.proc.pid] + [p for p, _ in st.children(replica.proc.pid)],
            STOPPED_REPLICA_RATE))
    stub = process.prediction_stub(server.address)
    for _ in range(5):  # the big model warm: later growth of memory is the classes'
        stub.Predict(_big_request(), timeout=60)
    rss_start = {p.name: _tree_rss(p.proc.pid) for p in (server, proxy)}
    print(f"{'class':58s} {'n':>5s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} "
          f"{'p99 direct':>10s} {'p99 proxy':>9s} errors "
          f"{'+RSS serve':>10s} {'+RSS proxy':>10s} {'loop CPU s':>10s}  hostile statuses\n"
          f"{'':>113s}{'serve/proxy':>11s}")
    try:
        for name, send in classes:
            ours.send("start")
            loop_cpu = [st.cpu_seconds(p.proc.pid, p.proc.pid) for p in (server, proxy)]
            deadline = time.monotonic() + args.seconds
            statuses = {}
            while time.monotonic() < deadline:
                if send is None:
                    time.sleep(0.05)
                    continue
                round_start = time.monotonic()
                status = send()
                statuses[status] = statuses.get(status, 0) + 1
                if args.burst_period and name in paced:  # the next burst a period later
                    time.sleep(max(0.0, round_start + args.burst_period - time.monotonic()))
            ours.send("stop")
            out = ours.recv()
            loop_cpu = [st.cpu_seconds(p.proc.pid, p.proc.pid) - before
                        for p, before in zip((server, proxy), loop_cpu)]
            grown = [(_tree_rss(p.proc.pid) - rss_start[p.name]) / 2**20
                     for p in (server, proxy)]
            for c in clients.values():
                c.close()
            lat = np.array([t for t, _, _ in out]) * 1e3
            # Each path apart: a slow proxy and a slow server call for different remedies.
            by_path = [np.array([t for t, _, d in out if d == direct] or [np.nan]) * 1e3
                       for direct in (True, False)]
            errors = collections.Counter(e for _, e, _ in out if e is not None)
            print(f"{name[:58]:58s} {len(lat):5d} {np.percentile(lat, 50):7.1f} "
                  f"{np.percentile(lat, 99):7.1f} {lat.max():7.1f} "
                  f"{np.percentile(by_path[0], 99):10.1f} {np.percentile(by_path[1], 99):9.1f} "
                  f"{sum(errors.values()):6d} "
                  f"{grown[0]:10.0f} {grown[1]:10.0f} {loop_cpu[0]:5.2f}/{loop_cpu[1]:4.2f}  {statuses}"
                  + (f" normal errors: {dict(errors)}" if errors else ""), flush=True)
            if name in reports:
                print(f"    {reports[name]()}", flush=True)
        print(f"RSS at the end: server {_tree_rss(server.proc.pid) / 2**20:.0f} MiB, "
              f"proxy {_tree_rss(proxy.proc.pid) / 2**20:.0f} MiB")
    finally:
        ours.send("exit")
        loader.join(timeout=10)
        if stopped:
            stopped[0].report()  # SIGCONT: a stopped process does not act on SIGTERM
        for p in extra + [proxy, server]:
            p.stop()
        if args.keep_work:
            print(f"servables and the servers' logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
