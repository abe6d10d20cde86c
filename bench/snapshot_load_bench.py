"""Load time of a memory-mapped FAISS index with asset snapshots (docs/serving.md, "Changing a
serving version's files in place"): the first load on a host copies the file into the asset
cache; a load of the same bytes from another file reuses that copy; with no usable cache
directory the index is read into memory.

    python bench/snapshot_load_bench.py --n 400000 --dim 64      # results: docs/benchmarks.md

Each case is a fresh FaissIndex over a new copy of the file (another inode, so the in-process
cache of loaded indexes does not answer), timed from construction to the first search.
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    import faiss  # pylint: disable=import-outside-toplevel
    work = args.work or tempfile.mkdtemp(prefix="snapshot-bench-")
    cache = os.path.join(work, "cache")
    os.environ["DPSR_ASSET_CACHE_DIR"] = cache
    from dpsr_tf.search import faiss_ops  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    items = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    quantizer = faiss.IndexFlatIP(args.dim)
    index = faiss.IndexIVFFlat(quantizer, args.dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items[:args.nlist * 40])
    index.add(items)
    index.nprobe = 8
    source = os.path.join(work, "index.faiss")
    faiss.write_index(index, source)
    size_mb = os.path.getsize(source) / 2**20
    queries = items[:4]
    held = []

    def load(label):
        path = os.path.join(work, f"{label}.faiss")
        shutil.copyfile(source, path)
        start = time.perf_counter()
        loaded = faiss_ops.FaissIndex(path, mmap=True)
        faiss_ops.search(loaded, queries, 10)
        seconds = time.perf_counter() - start
        held.append(loaded)
        print(f"{label:28s} {seconds * 1000:8.1f} ms  ({size_mb:.0f} MB file)")

    load("first load (copy)")
    load("same bytes again (reuse)")
    os.environ["DPSR_ASSET_CACHE_DIR"] = os.path.join(source, "not-a-dir")
    load("unusable cache (memory)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
