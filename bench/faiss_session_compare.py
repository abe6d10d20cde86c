"""Dpsr>FaissSearch through TF1 Session.run (what a model server runs) vs the faiss-cpu wheel
with one OpenMP thread, single queries, on the 1M-item index files bench/faiss_bench.py built.
The Session.run fixed cost is measured as a tf.identity on the same placeholder, in the same
interleaved blocks of 20 queries. CPU per query = process_time over each side's calls; recall
is against the exact top 1,000 faiss_bench.py stored.

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python bench/faiss_session_compare.py /tmp/r14/fb OUT.json \\
        --indexes ivfsq8@64,ivfsq8@96,ivfpq@64,fs32_rsq8.k8@64
(run bench/faiss_bench.py --indexes ivfsq8,ivfpq,fs32_rsq8@k8 --work_dir DIR first). An entry is
NAME[_NLIST]@NPROBE, as in faiss_bench.py's built_*_NAME_NLIST.json (NLIST 4096 when left out);
NAME.kF picks the index.kF.faiss file of a refine index. The op searches IVF-SQ8 with its own
scan (ivf_sq8_scan.cc), every other type with FAISS's, so "op - identity" against "wheel1" is
the op's saving or overhead.
"""
import argparse
import json
import os
import sys
import time

import faiss
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.search import faiss_ops  # noqa: E402

STEM = "1000000_64_1000_0.5_0"


def _index_file(work_dir, name):
    base, _, refine = name.partition(".")
    if not base.rsplit("_", 1)[-1].isdigit():
        base += "_4096"  # faiss_bench.py's default --nlist
    path = json.load(open(f"{work_dir}/built_{STEM}_{base}.json"))["index_file"]
    return path.replace("index.faiss", f"index.{refine}.faiss") if refine else path


def _recall(labels, exact):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(labels, exact)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("out_json")
    parser.add_argument("--indexes", default="ivfsq8@64,ivfsq8@96,ivfsq8@128,ivfpq@64")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    q = np.load(f"{args.work_dir}/queries_{STEM}_1000.npy")
    exact = np.load(f"{args.work_dir}/exact_{STEM}_1000_1000.npy")
    entries = [(e.partition("@")[0], int(e.partition("@")[2])) for e in args.indexes.split(",")]
    files = {name: _index_file(args.work_dir, name) for name, _ in entries}
    faiss.omp_set_num_threads(1)
    out = {}
    with tf.Graph().as_default():
        ph = tf.compat.v1.placeholder(tf.float32, [None, 64])
        ident = tf.identity(ph)
        handles = {name: faiss_ops.FaissIndex(path) for name, path in files.items()}
        fetch = {(name, nprobe): faiss_ops.search(handles[name], ph, 1000, nprobe=nprobe)[1]
                 for name, nprobe in entries}
        sess = tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=2))
        sess.run(tf.compat.v1.tables_initializer())
        wheels = {name: faiss.read_index(path) for name, path in files.items()}
        for name, nprobe in entries:
            faiss.extract_index_ivf(wheels[name]).nprobe = nprobe
            sess.run(fetch[name, nprobe], {ph: q[:1]})
            wheels[name].search(q[:1], 1000)
            cpu = {"op": 0.0, "wheel1": 0.0, "identity": 0.0}
            wall = {k: [] for k in cpu}
            found = {"op": [], "wheel1": []}
            n = args.queries
            for lo in range(0, n, 20):
                for side in cpu:
                    c0 = time.process_time()
                    for i in range(lo, lo + 20):
                        x = q[i % len(q)][None]
                        t0 = time.perf_counter()
                        if side == "op":
                            found[side].append(sess.run(fetch[name, nprobe], {ph: x})[0])
                        elif side == "identity":
                            sess.run(ident, {ph: x})
                        else:
                            found[side].append(wheels[name].search(x, 1000)[1][0])
                        wall[side].append(time.perf_counter() - t0)
                    cpu[side] += time.process_time() - c0
            r = {s: {"median_ms": float(np.median(wall[s]) * 1e3), "cpu_ms": cpu[s] * 1e3 / n}
                 for s in cpu}
            r["recall_op"] = _recall(found["op"], exact[:n])
            r["recall_wheel"] = _recall(found["wheel1"], exact[:n])
            r["op_minus_identity_cpu_ms"] = r["op"]["cpu_ms"] - r["identity"]["cpu_ms"]
            r["ratio_cpu"] = r["op_minus_identity_cpu_ms"] / r["wheel1"]["cpu_ms"]
            r["ratio_median"] = ((r["op"]["median_ms"] - r["identity"]["median_ms"])
                                 / r["wheel1"]["median_ms"])
            out[f"{name}@{nprobe}"] = r
            print(f"{name}@{nprobe}", json.dumps(r), flush=True)
    json.dump({"load": os.getloadavg(), "results": out}, open(args.out_json, "w"), indent=1)


if __name__ == "__main__":
    main()
