"""Runs the native front end's tests against a build of it under AddressSanitizer and UBSan,
with CPU-bound processes beside them, and fails on any sanitizer report.

Why: the front end's calls are started, answered and freed on different threads (gRPC's, the
framed hop's reader, another call's end), so a use after free needs a thread to be preempted
at the wrong instruction. Busy processes beside the tests make that common; ASan makes it a
report instead of a crash now and then (a call read after another thread freed it, in
call_reactor.cc, is the race this catches).

    python tools/front_end_sanitized.py              # what `make front-end-asan` runs
    python tools/front_end_sanitized.py --busy=4 -k profiler   # more load, some tests only

The build goes to build/front_end_asan/ (rebuilt when a source is newer); the servers the tests
start use it through DPSR_FRONT_END_BINARY; reports go to build/front_end_asan/reports/.
"""
import argparse
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "front_end_asan")
# The test files that send calls through the native front end in the ways that end them early
# or late: cancelled, expired, refused, never read, killed, profiled, streamed.
TESTS = ["test_native_front_end.py", "test_framed_predict.py", "test_gone_clients.py",
         "test_client_isolation.py", "test_slow_readers.py", "test_profiler_service.py",
         "test_front_end_process.py", "test_queue_delay.py", "test_unsent_answers.py",
         "test_stream_limits.py"]


def _front_end_sources():
    """FRONT_END_SRCS and FRONT_END_HDRS, as the Makefile lists them."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    lists = {}
    for line in text.splitlines():
        for name in ("FRONT_END_SRCS", "FRONT_END_HDRS"):
            if line.startswith(name + " :="):
                lists[name] = line.split(":=", 1)[1].split()
    return lists["FRONT_END_SRCS"], lists["FRONT_END_HDRS"]


def build() -> str:
    srcs, hdrs = _front_end_sources()
    exe = os.path.join(OUT, "dpsr_front_end")
    deps = [os.path.join(ROOT, p) for p in srcs + hdrs]
    if os.path.exists(exe) and max(map(os.path.getmtime, deps)) <= os.path.getmtime(exe):
        return exe
    os.makedirs(OUT, exist_ok=True)
    grpc = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], check=True,
                          capture_output=True, text=True).stdout.split()
    print("building the front end under ASan and UBSan ...", flush=True)
    subprocess.run(["g++", "-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer", "-Wall",
                    "-Werror", "-fsanitize=address,undefined", "-I", ROOT,
                    *[os.path.join(ROOT, s) for s in srcs], *grpc, "-o", exe],
                   check=True)
    return exe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=2,
                        help="CPU-bound processes run beside the tests (default 2)")
    parser.add_argument("-k", default="", help="pytest -k expression (default: every test)")
    args = parser.parse_args()
    exe = build()
    reports = os.path.join(OUT, "reports")
    os.makedirs(reports, exist_ok=True)
    for old in glob.glob(os.path.join(reports, "*")):
        os.remove(old)
    env = dict(os.environ, DPSR_FRONT_END_BINARY=exe, PYTHONPATH=ROOT,
               ASAN_OPTIONS=f"log_path={os.path.join(reports, 'front_end')}:detect_leaks=0",
               UBSAN_OPTIONS=f"log_path={os.path.join(reports, 'front_end')}:print_stacktrace=1")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   *[os.path.join(ROOT, "tests", "serving", t) for t in TESTS]]
        if args.k:
            command += ["-k", args.k]
        tests = subprocess.run(command, env=env, cwd=ROOT).returncode
    finally:
        for p in busy:
            p.kill()
    found = sorted(glob.glob(os.path.join(reports, "front_end*")))
    for path in found:
        with open(path, errors="replace") as f:
            print(f"--- {path}\n" + "".join(f.readlines()[:40]))
    print(f"sanitizer reports: {len(found)}; tests: {'passed' if tests == 0 else 'FAILED'}")
    return 1 if found or tests else 0


if __name__ == "__main__":
    sys.exit(main())
