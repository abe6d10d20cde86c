"""Lexical (BM25) top-1,000 latency at 1M items: this project's C++ core beside bm25s.

Side by side in one process, on the same 1M synthetic titles (6-14 words drawn Zipf-like from a
50k-word vocabulary, bench/servable_bench.py's generator) and the same token streams:
  - dpsr core   dpsr_tf._lexical (the code Dpsr>LexicalSearch runs), one query per call
  - bm25s       bm25s 0.2.1 (method "lucene", k1 1.5, b 0.75, the same defaults), retrieve()
                of one query with n_threads=1
Queries are 2-4 catalog words (one common, the rest rarer). Both return the top 1,000; the
bench also checks that their scores agree. Ratios are the result; absolute numbers depend on
the machine (docs/benchmarks.md).

    python bench/lexical_bench.py [--num_items 1000000] [--queries 300] [--k 1000]
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=1000)
    args = parser.parse_args()

    import bm25s
    from servable_bench import _percentiles, _zipf_titles  # pylint: disable=import-error

    from dpsr_tf.tokenization.tokenizer import Tokenizer
    from dpsr_tf.indexing.lexical_index import _native  # pylint: disable=protected-access
    from dpsr_tf.indexing.lexical_manifest import LexicalConfig

    native = _native()
    _log(f"generating {args.num_items:,} titles")
    titles = _zipf_titles(args.num_items, seed=1)
    tok = Tokenizer(LexicalConfig().tokenizer_config())
    values, splits = tok.tokenize(titles)
    rng = np.random.default_rng(3)
    query_texts = [" ".join([f"w{rng.integers(0, 300)}"] +
                            [f"w{w}" for w in rng.integers(300, 30000, rng.integers(1, 4))])
                   for _ in range(args.queries)]
    qv, qs = tok.tokenize(query_texts)

    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "lexical.idx")
        t = time.perf_counter()
        stats = native.CorpusStats.compute(values, splits)
        native.write_index(path, values, splits, stats, 1.5, 0.75)
        ours_build = time.perf_counter() - t
        index = native.LexicalIndex(path)
        _log(f"dpsr core: built in {ours_build:.1f}s, {index.file_bytes / 1e6:.0f} MB, "
             f"{index.num_postings:,} postings")

        # bm25s on the same token streams (feature ids as strings).
        corpus_tokens = [values[splits[i]:splits[i + 1]].astype(str).tolist()
                         for i in range(len(titles))]
        t = time.perf_counter()
        retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        retriever.index(corpus_tokens, show_progress=False)
        bm25s_build = time.perf_counter() - t
        del corpus_tokens
        _log(f"bm25s: indexed in {bm25s_build:.1f}s")
        vocab = retriever.vocab_dict
        query_tokens = [[v for v in qv[qs[i]:qs[i + 1]].astype(str).tolist() if v in vocab]
                        for i in range(args.queries)]

        for i in range(10):  # warm-up
            index.search(qv[qs[i]:qs[i + 1]], np.array([0, qs[i + 1] - qs[i]]), args.k)
        ours_ms, theirs_ms, worst = [], [], 0.0
        for i in range(args.queries):
            one_v = qv[qs[i]:qs[i + 1]]
            one_s = np.array([0, len(one_v)], np.int64)
            t = time.perf_counter()
            scores, _ = index.search(one_v, one_s, args.k)
            ours_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            _, their_scores = retriever.retrieve([query_tokens[i]], k=args.k, n_threads=1,
                                                 show_progress=False)
            theirs_ms.append((time.perf_counter() - t) * 1e3)
            found = np.isfinite(scores[0])
            worst = max(worst, float(np.abs(scores[0][found] -
                                            their_scores[0][:found.sum()]).max(initial=0)))
    ours, theirs = _percentiles(ours_ms), _percentiles(theirs_ms)
    print(f"# lexical top {args.k} of {args.num_items:,} titles, {args.queries} single queries, "
          f"one thread; {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| system | build s | p50 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|")
    print(f"| dpsr core (Dpsr>LexicalSearch) | {ours_build:.1f} | {ours['p50']:.2f} | "
          f"{ours['p99']:.2f} | {ours['mean']:.2f} |")
    print(f"| bm25s 0.2.1 | {bm25s_build:.1f} | {theirs['p50']:.2f} | {theirs['p99']:.2f} | "
          f"{theirs['mean']:.2f} |")
    print(f"\nbm25s / dpsr p50: {theirs['p50'] / ours['p50']:.2f}x; largest |score difference| "
          f"over the top {args.k}: {worst:.2e}")


if __name__ == "__main__":
    main()
