"""Catalog speller cost: building it, its memory, and correcting queries, beside tokenizing them.

On Home Depot's titles (vocabulary) and search terms (queries) from ../shared/datasets when
present, else a seeded synthetic catalog with typos: the time and RSS of building the speller
(symmetric-delete map), then per query the time of Speller.correct (pybind11, batch), of
Dpsr>SpellCorrect in a tf.function, and of Dpsr>Tokenize on the same queries for scale, and of
a hostile batch (100-word queries of made-up long words, the most a word can cost). The
serving cost of spelling is the op's time per query; the ratio to the tokenizer carries across
machines.

    python bench/speller_bench.py [--repeats 5]
"""
import argparse
import csv
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DATA = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "home_depot", "train.csv")


def load():
    if os.path.exists(DATA):
        with open(DATA, encoding="latin-1", newline="") as f:
            rows = list(csv.DictReader(f))
        titles = sorted({r["product_title"] for r in rows})
        queries = sorted({r["search_term"] for r in rows})
        return titles, queries, f"Home Depot: {len(titles)} titles, {len(queries)} queries"
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10)))
             for _ in range(20000)]
    titles = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(50000)]
    queries = []
    for _ in range(10000):
        q = [rng.choice(words) for _ in range(3)]
        w = q[0]
        i = rng.randrange(len(w))
        q[0] = w[:i] + w[i + 1:]                       # one deletion typo
        queries.append(" ".join(q))
    return titles, queries, "synthetic: 50,000 titles of 20,000 words, 10,000 queries"


def rss_mib():
    """Resident memory now (Linux /proc; the max RSS would hide a build after the data load)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_LOAD_RSS = """
import os, sys
from dpsr_tf.tokenization.speller import Speller
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss()
speller = Speller.load(sys.argv[1])
print(rss() - before)
"""


def timed(fn, repeats):
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from dpsr_tf.tokenization import Tokenizer, TokenizerConfig
    from dpsr_tf.tokenization.speller import Speller, vocabulary, write_vocabulary

    titles, queries, source = load()
    counts = vocabulary(titles)
    start = time.perf_counter()
    speller = Speller(counts)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        # Memory in a fresh process that only loads the file: in this one, heap freed by the
        # data load would be reused and hide the map.
        path = os.path.join(tmp, "vocab.txt")
        write_vocabulary(path, counts)
        grown = float(subprocess.run(
            [sys.executable, "-c", _LOAD_RSS, path], check=True, capture_output=True,
            text=True, env=dict(os.environ, PYTHONPATH=ROOT)).stdout.split()[-1])
    changed = sum(a != b for a, b in zip(queries, speller.correct(queries)))

    tok = Tokenizer(TokenizerConfig())
    t_correct = timed(lambda: speller.correct(queries), args.repeats)
    t_tokenize = timed(lambda: tok.tokenize(queries), args.repeats)
    # A hostile client's queries: many long made-up words, each a miss that costs the most
    # (every delete probed, then every split tried); the speller bounds words and length.
    rng = random.Random(1)
    hostile = [" ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(length))
                        for _ in range(100)) for length in (12, 20, 30) for _ in range(100)]
    t_hostile = timed(lambda: speller.correct(hostile), args.repeats)
    t_hostile_tok = timed(lambda: tok.tokenize(hostile), args.repeats)

    import tensorflow as tf
    from dpsr_tf.tokenization import tokenize_op
    from dpsr_tf.tokenization.spell_op import spell_correct
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.txt")
        write_vocabulary(path, counts)
        batch = tf.constant(queries)
        spell_fn = tf.function(lambda q: spell_correct(q, tf.constant(path))[0])
        tok_fn = tf.function(lambda q: tokenize_op.tokenize(q).flat_values)
        start = time.perf_counter()
        spell_fn(batch)                                  # loads the vocabulary once
        op_first_s = time.perf_counter() - start
        tok_fn(batch)
        t_op = timed(lambda: spell_fn(batch).numpy(), args.repeats)
        t_tok_op = timed(lambda: tok_fn(batch).numpy(), args.repeats)

    n = len(queries)
    print(f"speller bench, {time.strftime('%Y-%m-%d')}, {platform.node()} "
          f"({os.cpu_count()} cores), {source}")
    print(f"vocabulary {len(counts):,} words; build {build_s:.2f} s, RSS +{grown:.0f} MiB; "
          f"{changed:,} of {n:,} queries changed; first op call (loads the vocabulary) "
          f"{op_first_s:.2f} s")
    print("| path | µs per query | queries/s | vs tokenizing the same queries |")
    print("|---|---:|---:|---:|")
    for name, t, ref in (("Speller.correct (pybind11)", t_correct, t_tokenize),
                         ("Dpsr>SpellCorrect (tf.function)", t_op, t_tok_op),
                         ("Tokenizer.tokenize (pybind11)", t_tokenize, t_tokenize),
                         ("Dpsr>Tokenize (tf.function)", t_tok_op, t_tok_op)):
        print(f"| {name} | {t / n * 1e6:.1f} | {n / t:,.0f} | {t / ref:.2f}x |")
    h = len(hostile)
    print(f"| hostile: {h} queries of 100 made-up words (12, 20, 30 letters), Speller.correct | "
          f"{t_hostile / h * 1e6:.1f} | {h / t_hostile:,.0f} | {t_hostile / t_hostile_tok:.2f}x |")


if __name__ == "__main__":
    main()
