"""What a large request costs a server's event loop under each of glibc's large-buffer
policies (dpsr_tf/serving/startup.py set_large_buffer_policy), in fresh interpreters side by
side.

Each request's bytes are copied out of gRPC and parsed (what the server and the proxy do), and
the request for the shards is made both ways the proxy could: a copy with the backend's model
name, serialized ("copy+serialize"), and the client's bytes with the name appended ("append",
dpsr_tf/serving/proxy/forwarding.py, what it does). Printed per request: wall milliseconds of
each step, and minor page faults (the first three steps, then "append").
Policies: `default` (glibc's moving threshold), `untrimmed` (buffers of 4 MiB or more get
pages of their own, unmapped when freed), `trimmed` (large buffers come from the heap, and
the heap trimmer gives them back).

  python bench/large_buffer_bench.py [--request_mib=4] [--requests=100] [--rounds=2]

Compare rows of one run: the machine may be shared.
"""
import argparse
import subprocess
import sys
import textwrap

_PROGRAM = textwrap.dedent("""
    import resource, sys, time
    from dpsr_tf.serving import startup
    policy, mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if policy != "default":
        assert startup.set_large_buffer_policy(trimmed=policy == "trimmed")
    from tensorflow_serving.apis import predict_pb2
    from dpsr_tf.serving.proxy.forwarding import ReceivedPredict, backend_payload
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dpsr"
    request.inputs["query"].dtype = 7  # DT_STRING
    request.inputs["query"].string_val.append(b"x" * (mib << 20))
    data = request.SerializeToString()
    steps, faults = [0.0] * 4, [0, 0]

    def minor_faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def one():
        f0, t0 = minor_faults(), time.perf_counter()
        received = bytes(bytearray(data))           # gRPC's message, copied into Python
        t1 = time.perf_counter()
        parsed = ReceivedPredict.parse(received)
        t2 = time.perf_counter()
        backend = predict_pb2.PredictRequest()
        backend.CopyFrom(parsed.message)
        backend.model_spec.name = "dpsr-backend"
        backend.SerializeToString()
        t3, f1 = time.perf_counter(), minor_faults()
        backend_payload(parsed, "dpsr-backend")
        t4, f2 = time.perf_counter(), minor_faults()
        for i, took in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[i] += took
        faults[0] += f1 - f0
        faults[1] += f2 - f1

    for _ in range(5):
        one()
    steps[:], faults[:] = [0.0] * 4, [0, 0]
    for _ in range(n):
        one()
    print(" ".join(f"{s / n * 1e3:.2f}" for s in steps), faults[0] // n, faults[1] // n)
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--request_mib", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.request_mib} MiB requests, ms per request")
    print(f"{'policy':10s} {'receive':>8s} {'parse':>8s} {'copy+serialize':>14s} "
          f"{'append':>8s} {'faults':>7s} {'faults append':>13s}")
    for _ in range(args.rounds):
        for policy in ("default", "untrimmed", "trimmed"):
            out = subprocess.run([sys.executable, "-c", _PROGRAM, policy,
                                  str(args.request_mib), str(args.requests)],
                                 capture_output=True, text=True, check=True).stdout.split()
            steps, faults = [float(v) for v in out[:4]], [int(v) for v in out[4:]]
            print(f"{policy:10s} {steps[0]:8.2f} {steps[1]:8.2f} {steps[2]:14.2f} "
                  f"{steps[3]:8.2f} {faults[0]:7d} {faults[1]:13d}", flush=True)


if __name__ == "__main__":
    main()
