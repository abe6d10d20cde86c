"""SavedModel round trips of a FAISS index: save, move the directory, delete the original index
file, reload in a FRESH process, and require the results computed before saving.

Covers both ways the lead's export may build the servable: a TF2 tf.Module (the index is a
tf.saved_model.Asset of a FaissIndex) and a TF1 graph saved with SavedModelBuilder (the load op
is the main_op via tables_initializer, the path a constant in ASSET_FILEPATHS).
"""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from dpsr_tf.search import faiss_ops
from tests.support import waiting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIM = 16
K = 7


class _Searcher(tf.Module):
    """The smallest servable: queries -> (scores, labels) from an index held as an asset."""

    def __init__(self, path):
        super().__init__()
        self.index = faiss_ops.FaissIndex(path)

    @tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32, name="queries"),
                                  tf.TensorSpec([], tf.int32, name="nprobe")])
    def search(self, queries, nprobe):
        scores, labels = faiss_ops.search(self.index, queries, K, nprobe=nprobe)
        return {"scores": scores, "labels": labels}


def _save_tf1(index_path, export_dir):
    with tf.Graph().as_default():
        index = faiss_ops.FaissIndex(index_path)
        queries = tf.compat.v1.placeholder(tf.float32, [None, DIM], name="queries")
        nprobe = tf.compat.v1.placeholder_with_default(0, [], name="nprobe")
        scores, labels = faiss_ops.search(index, queries, K, nprobe=nprobe)
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"queries": queries, "nprobe": nprobe}, {"scores": scores, "labels": labels})
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.tables_initializer())
            builder = tf.compat.v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                sess, [tf.saved_model.SERVING],
                signature_def_map={"serving_default": signature},
                assets_collection=tf.compat.v1.get_collection(
                    tf.compat.v1.GraphKeys.ASSET_FILEPATHS),
                main_op=tf.compat.v1.tables_initializer())
            builder.save()


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    from dpsr_tf import op_library
    op_library.load()  # a SavedModel with custom ops needs them registered before loading
    tf2_dir, tf1_dir, out = sys.argv[1:4]
    queries = np.load(out + ".queries.npy")
    results = {}
    model = tf.saved_model.load(tf2_dir)
    for nprobe in (0, 16):
        r = model.search(tf.constant(queries), tf.constant(nprobe))
        results[f"tf2_{nprobe}_labels"] = r["labels"].numpy()
        results[f"tf2_{nprobe}_scores"] = r["scores"].numpy()
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], tf1_dir)
        sig = meta.signature_def["serving_default"]
        for nprobe in (0, 16):
            labels, scores = sess.run(
                [sig.outputs["labels"].name, sig.outputs["scores"].name],
                {sig.inputs["queries"].name: queries, sig.inputs["nprobe"].name: nprobe})
            results[f"tf1_{nprobe}_labels"] = labels
            results[f"tf1_{nprobe}_scores"] = scores
    # The TF1 SavedModel through the TF2 loader too (what a TF2 server does).
    served = tf.saved_model.load(tf1_dir).signatures["serving_default"]
    r = served(queries=tf.constant(queries), nprobe=tf.constant(16))
    results["tf1_via_tf2_16_labels"] = r["labels"].numpy()
    np.savez(out, **results)
""")


def test_saved_model_round_trip_in_a_fresh_process_after_moving(tmp_path, make_index, ref):
    items = ref.clustered_unit_vectors(1500, DIM, seed=21)
    queries = ref.clustered_unit_vectors(6, DIM, seed=22)
    index_path = str(tmp_path / "items.faiss")
    shutil.copy(make_index("IVF16,Flat", items, nprobe=2), index_path)

    module = _Searcher(index_path)
    want = {n: module.search(tf.constant(queries), tf.constant(n)) for n in (0, 16)}
    tf.saved_model.save(module, str(tmp_path / "tf2"))
    _save_tf1(index_path, str(tmp_path / "tf1"))
    for name in ("tf2", "tf1"):  # the index file was copied into each SavedModel
        assets = os.listdir(tmp_path / name / "assets")
        assert assets == ["items.faiss"], assets

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(tmp_path / "tf2"), str(moved / "tf2"))
    shutil.move(str(tmp_path / "tf1"), str(moved / "tf1"))
    os.remove(index_path)  # only the SavedModels' copies remain
    out = str(tmp_path / "results.npz")
    np.save(out + ".queries.npy", queries)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(moved / "tf2"), str(moved / "tf1"),
                           out], env=env, capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)

    exact = ref.brute_force(items, queries, K)[1]
    for n in (0, 16):
        for flavour in ("tf2", "tf1"):
            np.testing.assert_array_equal(got[f"{flavour}_{n}_labels"], want[n]["labels"].numpy())
            np.testing.assert_allclose(got[f"{flavour}_{n}_scores"], want[n]["scores"].numpy())
    np.testing.assert_array_equal(got["tf1_via_tf2_16_labels"], exact)  # 16 of 16 lists: exact
    np.testing.assert_array_equal(got["tf2_16_labels"], exact)
    assert ref.recall(got["tf2_0_labels"], exact) < 1.0  # nprobe=2 by default: approximate
