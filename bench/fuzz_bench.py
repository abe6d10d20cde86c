"""The fuzz properties of `make test` (request decoding, REST bodies, TSV/CSV readers), run for
many more cases from a fresh seed.

    PYTHONPATH=. python bench/fuzz_bench.py                    # 5,000 cases per property
    PYTHONPATH=. python bench/fuzz_bench.py --examples=50000 --seed=7

A failure prints hypothesis's minimal falsifying example; rerun with the printed seed to
reproduce it, then add it as a regression test.
"""
import argparse
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["tests/serving/test_fuzz_requests.py", "tests/data/test_fuzz_readers.py"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=5000, help="cases per property")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"fuzzing {args.examples:,} cases per property, --seed={seed}", flush=True)
    env = dict(os.environ, DPSR_FUZZ_EXAMPLES=str(args.examples),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.call([sys.executable, "-m", "pytest", "-q", f"--hypothesis-seed={seed}",
                            *FILES], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
