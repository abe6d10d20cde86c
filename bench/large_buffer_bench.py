"""What a large request costs a server's event loop under each of glibc's large-buffer
policies (dpsr_tf/serving/startup.py set_large_buffer_policy), in fresh interpreters side by
side.

Each request goes the proxy's way through Python: the message's bytes copied out of gRPC,
parsed, copied for the shards with a new model name, and serialized; the server's way is the
first two steps. Printed per request: wall milliseconds of each step and minor page faults.
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
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dpsr"
    request.inputs["query"].dtype = 7  # DT_STRING
    request.inputs["query"].string_val.append(b"x" * (mib << 20))
    data = request.SerializeToString()
    steps = [0.0] * 4

    def one():
        t0 = time.perf_counter()
        received = bytes(bytearray(data))           # gRPC's message, copied into Python
        t1 = time.perf_counter()
        parsed = predict_pb2.PredictRequest.FromString(received)
        t2 = time.perf_counter()
        backend = predict_pb2.PredictRequest()      # the proxy's copy for the shards
        backend.CopyFrom(parsed)
        backend.model_spec.name = "dpsr-backend"
        t3 = time.perf_counter()
        backend.SerializeToString()
        t4 = time.perf_counter()
        for i, took in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[i] += took

    for _ in range(5):
        one()
    steps[:] = [0.0] * 4
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        one()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(" ".join(f"{s / n * 1e3:.2f}" for s in steps), faults // n)
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--request_mib", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.request_mib} MiB requests, ms per request")
    print(f"{'policy':10s} {'receive':>8s} {'parse':>8s} {'copy':>8s} {'serialize':>9s} "
          f"{'total':>8s} {'faults':>7s}")
    for _ in range(args.rounds):
        for policy in ("default", "untrimmed", "trimmed"):
            out = subprocess.run([sys.executable, "-c", _PROGRAM, policy,
                                  str(args.request_mib), str(args.requests)],
                                 capture_output=True, text=True, check=True).stdout.split()
            steps, faults = [float(v) for v in out[:4]], int(out[4])
            print(f"{policy:10s} " + " ".join(f"{s:8.2f}" for s in steps[:3]) +
                  f" {steps[3]:9.2f} {sum(steps):8.2f} {faults:7d}", flush=True)


if __name__ == "__main__":
    main()
