"""What large Predict requests cost the native front end: its CPU, page faults and resident
memory per request, for builds of dpsr_front_end side by side.

    PYTHONPATH=. python bench/front_end_large_requests.py --binary=new:dpsr_tf/serving/dpsr_front_end \
        --binary=old:/tmp/dpsr_front_end_old [--requests=200] [--rounds=2] [--connections=4] [--wave=16]

Each round starts one real `dpsr serve` (the tests' toy servable, tests/support/toy_servable.py)
per binary in turn (DPSR_FRONT_END_BINARY) and sends, over `--connections` connections, `--wave` calls at a time:

  refused  Predict calls of one 4 MiB query: over --max_string_input_bytes, refused by the
           front end (front_end_cc/string_limit.h) before the server reads them;
  framed   valid Predict calls of 250 queries of 3,900 bytes (about 1 MiB, just under
           --front_end_framed_max_request_bytes): forwarded over the framed hop, k = 1.

Printed per binary and kind: the front end's CPU ms and minor page faults per request
(/proc/PID/stat, over the whole batch), its resident memory at the peak (sampled every 5 ms)
and 1 s after the batch, above what it was before. Compare rows of one run: the machine may be
shared.
"""
import argparse
import functools
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grpc  # noqa: E402

from dpsr_tf.demo import server_processes as process  # noqa: E402
from tests.support import serving_testing as st  # noqa: E402
from tests.support import toy_servable as ts  # noqa: E402


def _requests() -> dict:
    refused = st.predict_request("dpsr", [b"x" * (4 << 20)], k=1).SerializeToString()
    framed = st.predict_request("dpsr", [f"drill {i} " + "y" * 3900 for i in range(250)],
                                k=1).SerializeToString()
    assert len(framed) < 1 << 20, len(framed)
    return {"refused": refused, "framed": framed}


def _send(address: str, request: bytes, count: int, connections: int, wave: int) -> dict:
    """`count` calls of `request`, spread over `connections` connections, `wave` at once (the
    next wave once they are answered); their status codes counted."""
    channels = [grpc.insecure_channel(address, options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20)]) for _ in range(connections)]
    codes = {}
    try:
        calls = [c.unary_unary(st.PREDICT_METHOD, request_serializer=None,
                               response_deserializer=None) for c in channels]
        for start in range(0, count, wave):
            futures = [calls[i % connections].future(request, timeout=300)
                       for i in range(start, min(count, start + wave))]
            for f in futures:
                try:
                    f.result()
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                codes[code] = codes.get(code, 0) + 1
    finally:
        for c in channels:
            c.close()
    return codes


def _measure(binary: str, model_base: str, work: str, requests: dict, args) -> dict:
    os.environ["DPSR_FRONT_END_BINARY"] = binary
    server = process.model_server_process(model_base_path=model_base, model_name="dpsr",
                                          log_dir=work, port=process.free_port(),
                                          flags=["--front_end=native"])
    process.start_all([server])
    out = {}
    try:
        fe = [pid for pid, _ in st.children(server.proc.pid)
              if os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(binary)]
        assert len(fe) == 1, f"no front end {binary}: {server.log_tail()}"
        fe = fe[0]
        for kind, request in requests.items():
            _send(server.address, request, 4, 1, 4)  # warm: connections, first buffers
            time.sleep(1.0)
            rss0 = st.rss_bytes(fe)
            cpu0, faults0 = st.cpu_seconds(fe), st.minor_faults(fe)
            peak, codes = st.peak_rss_growth(fe, functools.partial(
                _send, server.address, request, args.requests, args.connections, args.wave))
            cpu1, faults1 = st.cpu_seconds(fe), st.minor_faults(fe)
            time.sleep(1.0)
            out[kind] = {
                "codes": codes,
                "cpu_ms": (cpu1 - cpu0) * 1e3 / args.requests,
                "faults": (faults1 - faults0) / args.requests,
                "peak_mib": peak / 2**20,
                "after_mib": (st.rss_bytes(fe) - rss0) / 2**20,
            }
    finally:
        server.stop()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--binary", action="append", required=True,
                        help="NAME:PATH of a dpsr_front_end build; give two or more")
    parser.add_argument("--requests", type=int, default=200, help="calls of each kind")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--wave", type=int, default=16,
                        help="calls sent at once (within the server's request byte budgets)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    binaries = [b.split(":", 1) for b in args.binary]
    work = tempfile.mkdtemp(prefix="front_end_large_")
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    ts.write_toy_servable(os.path.join(work, "dpsr", "1"), ids, emb, spec)
    requests = _requests()
    print(f"{args.requests} calls of each kind over {args.connections} connections, "
          f"{args.wave} at a time; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}", flush=True)
    print("| round | binary | kind | codes | CPU ms per call | minor faults per call | "
          "RSS peak / 1 s after (MiB) |\n|---|---|---|---|---:|---:|---|", flush=True)
    for r in range(args.rounds):
        for name, path in (binaries if r % 2 == 0 else binaries[::-1]):
            for kind, m in _measure(os.path.abspath(path), os.path.join(work, "dpsr"), work,
                                    requests, args).items():
                print(f"| {r + 1} | {name} | {kind} | {m['codes']} | {m['cpu_ms']:.2f} | "
                      f"{m['faults']:.0f} | +{m['peak_mib']:.0f} / +{m['after_mib']:.0f} |",
                      flush=True)
    print(f"load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
