"""Builds and runs the C++ unit tests listed in sources.bzl (TOKENIZER_CORE_TESTS,
LEXICAL_CORE_TESTS, TOPK_CORE_TESTS and FAIR_GATE_CORE_TESTS), each with the sources of its core.

Each test is compiled with the core sources under AddressSanitizer and UBSan, so an
out-of-bounds read on hostile input fails the test instead of passing by luck.

    python tools/run_cc_tests.py      # what `make cc-test` runs
"""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "cc_tests")


def _sources():
    with open(os.path.join(ROOT, "sources.bzl")) as f:
        tree = ast.parse(f.read())
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign)}


def main() -> int:
    src = _sources()
    os.makedirs(OUT, exist_ok=True)
    flags = ["-std=c++17", "-O1", "-g", "-Wall", "-Werror", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-I", ROOT]
    failed = []
    suites = [(test, "TOKENIZER") for test in src["TOKENIZER_CORE_TESTS"]]
    suites += [(test, "LEXICAL") for test in src["LEXICAL_CORE_TESTS"]]
    suites += [(test, "TOPK") for test in src["TOPK_CORE_TESTS"]]
    suites += [(test, "FAIR_GATE") for test in src["FAIR_GATE_CORE_TESTS"]]
    for test, core in suites:
        exe = os.path.join(OUT, os.path.splitext(os.path.basename(test))[0])
        inputs = [os.path.join(ROOT, p) for p in [test] + src[f"{core}_CORE_SRCS"]]
        deps = inputs + [os.path.join(ROOT, h)
                         for h in src[f"{core}_CORE_HDRS"] + src["CC_TEST_SUPPORT_HDRS"]]
        stale = (not os.path.exists(exe) or
                 max(os.path.getmtime(p) for p in deps) > os.path.getmtime(exe))
        if stale:
            subprocess.run(["g++", *flags, *inputs, "-o", exe], check=True)
        result = subprocess.run([exe])
        print(f"{'PASS' if result.returncode == 0 else 'FAIL'} {test}")
        if result.returncode:
            failed.append(test)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
