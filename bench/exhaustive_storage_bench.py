"""An exhaustive index's storage: Flat (32-bit floats) against SQfp16 and SQ8 at catalog sizes.

    python bench/exhaustive_storage_bench.py [--sizes=5000,20000,54667,100000] [--dims=64,128]
        [--queries=300] [--repeats=3]

One query at a time, k = 100, one thread, seeded unit vectors; the CPU ms per query of each
index is the best of `repeats` passes over the queries (this process's CPU time), so the
machine's other work counts as little as it can. Also the overlap of each index's top 100
with exact search. What `index_builder.auto_factory`'s SQfp16 band rests on: where the
vectors no longer fit in the CPU's caches the scan waits on memory, and 16-bit floats read
half of it (docs/benchmarks.md, "An exhaustive index's storage").
"""
import argparse
import time

import faiss
import numpy as np

FACTORIES = ("Flat", "SQfp16", "SQ8")


def cpu_ms_per_query(index, queries: np.ndarray, k: int, repeats: int) -> float:
    for q in queries[:5]:   # warm: first searches allocate
        index.search(q[None, :], k)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for q in queries:
            index.search(q[None, :], k)
        best = min(best, (time.process_time() - start) / len(queries) * 1e3)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,54667,100000")
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'items':>8s} {'d':>4s} " + " ".join(f"{f + ' ms':>10s}" for f in FACTORIES)
          + "  " + " ".join(f"{f + '/Flat':>11s}" for f in FACTORIES[1:])
          + "  " + " ".join(f"{f + ' top':>10s}" for f in FACTORIES[1:]))
    for n in (int(s) for s in args.sizes.split(",")):
        for d in (int(s) for s in args.dims.split(",")):
            items = rng.standard_normal((n, d)).astype(np.float32)
            items /= np.linalg.norm(items, axis=1, keepdims=True)
            queries = rng.standard_normal((args.queries, d)).astype(np.float32)
            exact = np.argsort(-(queries @ items.T), axis=1)[:, :args.k]
            ms, overlap = {}, {}
            for factory in FACTORIES:
                index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
                index.train(items)
                index.add(items)
                ms[factory] = cpu_ms_per_query(index, queries, args.k, args.repeats)
                _, got = index.search(queries, args.k)
                overlap[factory] = np.mean([len(set(g) & set(e)) / args.k
                                            for g, e in zip(got, exact)])
            print(f"{n:8d} {d:4d} " + " ".join(f"{ms[f]:10.3f}" for f in FACTORIES)
                  + "  " + " ".join(f"{ms[f] / ms['Flat']:11.2f}" for f in FACTORIES[1:])
                  + "  " + " ".join(f"{overlap[f]:10.4f}" for f in FACTORIES[1:]), flush=True)


if __name__ == "__main__":
    main()
