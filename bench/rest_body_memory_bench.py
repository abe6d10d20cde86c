"""Peak memory of `dpsr serve` while it takes one 16 MiB REST predict body.

    PYTHONPATH=. python bench/rest_body_memory_bench.py [--tree PATH] [--repeats 3]

One real `dpsr serve` process serving the toy servable of the tests (tests/support/
toy_servable.py) is sent, one at a time, 16 MiB bodies that are expensive to parse:

  strings_rows_limit  {"instances": ["ab", "ab", ...]} (3.36M tiny strings) to a server started
                      with --max_request_rows=256: refused (400) for its rows;
  strings_default     the same body, default limits: refused for its values
                      (--max_input_elements, 1M per input);
  floats_columnar     {"inputs": {"query": ["drill"], "k": 5, "extra": [0.125, ...]}}
                      (2.8M floats in an input the signature lacks): refused.

The server's RSS is sampled every 5 ms from before the body is sent until its answer; the
result is the peak minus the RSS before, per case (max over --repeats sends), as JSON.
--tree runs the server (and the test helpers) from another checkout of the project, for a
before/after comparison with the same script.
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY_BYTES = 16 << 20


def _bodies():
    strings = (BODY_BYTES - 64) // 5  # '"ab",' is 5 bytes
    tiny = b'{"instances": [' + b",".join([b'"ab"'] * strings) + b"]}"
    floats = (BODY_BYTES - 128) // 6  # '0.125,' is 6 bytes
    columnar = (b'{"inputs": {"query": ["drill"], "k": 5, "extra": ['
                + b",".join([b"0.125"] * floats) + b"]}}")
    return {"strings": tiny, "floats": columnar}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tree", default=ROOT, help="checkout whose server is measured")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.tree))
    from dpsr_tf.demo import server_processes as process  # pylint: disable=import-outside-toplevel
    from tests.support import serving_testing as st  # pylint: disable=import-outside-toplevel
    from tests.support import toy_servable as ts  # pylint: disable=import-outside-toplevel
    assert process.__file__.startswith(os.path.abspath(args.tree)), process.__file__

    work = tempfile.mkdtemp(prefix="rest_body_memory_")
    spec = ts.ToyServableSpec(dim=16, num_heads=2, default_k=10, max_k=300, seed=0)
    ids, emb = ts.make_items(240, spec.dim, seed=1)
    ts.write_toy_servable(os.path.join(work, "dpsr", "1"), ids, emb, spec)
    bodies = _bodies()
    cases = [("strings_rows_limit", ["--max_request_rows=256"], "strings"),
             ("strings_default", [], "strings"),
             ("floats_columnar", [], "floats")]
    results = {"tree": os.path.abspath(args.tree), "body_bytes": {
        k: len(v) for k, v in bodies.items()}, "cases": {}}
    for name, flags, body_name in cases:
        server = process.start_model_server(
            os.path.join(work, "dpsr"), "dpsr", rest=True, log_dir=work,
            flags=flags + ["--rest_api_timeout_in_ms=120000"])
        try:
            def send(body=bodies[body_name]):
                return st.send_http("127.0.0.1", server.rest_api_port, "POST",
                                    "/v1/models/dpsr:predict", {}, body, timeout=300)
            for _ in range(3):  # warm: the first request's allocations are not the body's
                st.send_http("127.0.0.1", server.rest_api_port, "POST",
                             "/v1/models/dpsr:predict", {},
                             b'{"instances": ["cordless drill"]}', timeout=60)
            growths, statuses, seconds = [], set(), []
            for i in range(args.repeats):
                start = time.monotonic()
                growth, (status, answer) = st.peak_rss_growth(server.proc.pid, send)
                seconds.append(time.monotonic() - start)
                growths.append(growth)
                statuses.add(status)
                print(f"{name} #{i}: HTTP {status}, peak RSS growth {growth / 2**20:.0f} MiB, "
                      f"{seconds[-1]:.1f} s: {answer[:160]!r}", file=sys.stderr, flush=True)
            results["cases"][name] = {
                "peak_rss_growth_mib": round(max(growths) / 2**20, 1),
                "each_mib": [round(g / 2**20, 1) for g in growths],
                "http_status": sorted(statuses), "answer_seconds_max": round(max(seconds), 2)}
        finally:
            server.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
