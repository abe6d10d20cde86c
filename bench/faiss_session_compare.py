"""Dpsr>FaissSearch through TF1 Session.run (what a model server runs) vs the faiss-cpu wheel
with one OpenMP thread, single queries, on the index files bench/faiss_bench.py built; the
Session.run fixed cost is measured as a tf.identity on the same placeholder, in the same
interleaved blocks of 20 queries. CPU per query = process_time over each side's calls.

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python bench/faiss_session_compare.py /tmp/r14/fb OUT.json
(run bench/faiss_bench.py --indexes ivfpq,ivfpq_fs32,fs32_rsq8@k8 --work_dir DIR first).
"""
import json, os, sys, time
import numpy as np, faiss, tensorflow as tf
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpsr_tf.export import faiss_ops
fb = sys.argv[1]; q = np.load(f"{fb}/queries_1000000_64_1000_0.5_0_1000.npy")
files = {n: json.load(open(f"{fb}/built_1000000_64_1000_0.5_0_{n}_4096.json"))["index_file"] for n in ["ivfpq", "ivfpq_fs32"]}
files["fs32_rsq8@k8"] = files["ivfpq_fs32"].replace("ivfpq_fs32", "fs32_rsq8").replace("index.faiss", "index.k8.faiss")
print(files, file=sys.stderr)
faiss.omp_set_num_threads(1)
out = {}
with tf.Graph().as_default():
    ph = tf.compat.v1.placeholder(tf.float32, [None, 64])
    ident = tf.identity(ph)
    fetch = {n: faiss_ops.search(faiss_ops.FaissIndex(p), ph, 1000)[1] for n, p in files.items()}
    sess = tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=2))
    sess.run(tf.compat.v1.tables_initializer())
    wheels = {n: faiss.read_index(p) for n, p in files.items()}
    for n in files:
        sess.run(fetch[n], {ph: q[:1]}); wheels[n].search(q[:1], 1000)
        cpu = {"op": 0.0, "wheel1": 0.0, "identity": 0.0}; wall = {k: [] for k in cpu}
        N = 300
        for lo in range(0, N, 20):
            for side in cpu:
                c0 = time.process_time()
                for i in range(lo, lo + 20):
                    x = q[i % len(q)][None]; t0 = time.perf_counter()
                    if side == "op": sess.run(fetch[n], {ph: x})
                    elif side == "identity": sess.run(ident, {ph: x})
                    else: wheels[n].search(x, 1000)
                    wall[side].append(time.perf_counter() - t0)
                cpu[side] += time.process_time() - c0
        r = {s: {"median_ms": float(np.median(wall[s]) * 1e3), "cpu_ms": cpu[s] * 1e3 / N} for s in cpu}
        r["op_minus_identity_cpu_ms"] = r["op"]["cpu_ms"] - r["identity"]["cpu_ms"]
        r["ratio_cpu"] = r["op_minus_identity_cpu_ms"] / r["wheel1"]["cpu_ms"]
        r["ratio_median"] = (r["op"]["median_ms"] - r["identity"]["median_ms"]) / r["wheel1"]["median_ms"]
        out[n] = r
        print(n, json.dumps(r), flush=True)
json.dump({"load": os.getloadavg(), "results": out}, open(sys.argv[2], "w"), indent=1)
