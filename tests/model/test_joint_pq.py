"""The joint PQ layer (dpsr_tf/model/joint_pq.py) against its NumPy twin, and training with it.

The TF layer must assign the lists and codes that encode_np (the exporter's) assigns, return
R^T z_hat forward and the identity gradient backward, and keep R orthogonal; a tiny model
trained with --joint_pq warm-starts the quantizer and keeps it in its checkpoint.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import joint_pq
from dpsr_tf.model.config import ModelConfig


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """FAISS's OpenMP threads spin against each other on a loaded shared machine (a 2 s k-means
    took a minute); one thread keeps these tests to seconds."""
    import faiss  # pylint: disable=import-outside-toplevel
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def _random_quantizer(rng, d=8, nlist=5, m=4, w_scale=0.3):
    w = rng.normal(scale=w_scale, size=[d, d]).astype(np.float32)
    centroids = rng.normal(size=[nlist, d]).astype(np.float32)
    codebooks = rng.normal(scale=0.5, size=[m, joint_pq.KSUB, d // m]).astype(np.float32)
    return w, centroids, codebooks


def _run_layer(items, w, centroids, codebooks, upstream=None, codebook_gradient=False):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(items)
        variables = joint_pq.pq_variables(w.shape[0], centroids.shape[0], codebooks.shape[0])
        out = joint_pq.quantize(x, variables, codebook_gradient)
        v = tf.constant(upstream if upstream is not None else np.ones_like(items))
        wrt = [x, variables["codebooks"], variables["coarse_centroids"]]
        grads = [tf.zeros_like(t) if g is None else tf.convert_to_tensor(g)  # None: no path
                 for t, g in zip(wrt, tf.gradients(tf.reduce_sum(out["quantized"] * v), wrt))]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for name, value in (("cayley_w", w), ("coarse_centroids", centroids),
                                ("codebooks", codebooks)):
                variables[name].load(value, sess)
            return sess.run({**out, "grad_x": grads[0], "grad_codebooks": grads[1],
                             "grad_centroids": grads[2]})


@pytest.mark.parametrize("d,nlist,m,codebook_gradient", [
    (8, 5, 4, False), (8, 5, 4, True), (16, 3, 8, True), (12, 1, 3, False)])
def test_layer_matches_numpy_twin(d, nlist, m, codebook_gradient):
    rng = np.random.default_rng(d * 100 + m)
    w, centroids, codebooks = _random_quantizer(rng, d, nlist, m)
    items = rng.normal(size=[40, d]).astype(np.float32)
    upstream = rng.normal(size=items.shape).astype(np.float32)
    got = _run_layer(items, w, centroids, codebooks, upstream, codebook_gradient)

    rotation = joint_pq.cayley_rotation_np(w)
    np.testing.assert_allclose(got["rotation"], rotation, atol=1e-5)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(d), atol=1e-10)
    lists, codes = joint_pq.encode_np(items, rotation, centroids, codebooks)
    np.testing.assert_array_equal(got["lists"], lists)
    np.testing.assert_array_equal(got["codes"], codes)
    z_hat = joint_pq.reconstruct_np(lists, codes, centroids, codebooks)
    # Forward: R^T z_hat, i.e. row form z_hat @ R.
    np.testing.assert_allclose(got["quantized"], z_hat @ rotation, atol=1e-4)
    np.testing.assert_allclose(got["distortion"],
                               joint_pq.distortion_np(items, rotation, centroids, codebooks),
                               rtol=1e-4)
    # Backward: straight through (R^T R = I), so d/dx sum(quantized * v) = v.
    np.testing.assert_allclose(got["grad_x"], upstream, atol=1e-4)
    if not codebook_gradient:  # codewords and centroids learn from the distortion alone
        np.testing.assert_array_equal(got["grad_codebooks"], 0.0)
        np.testing.assert_array_equal(got["grad_centroids"], 0.0)
        return
    # Codewords: sub-vector j of (R v_i) accumulates on C_j[code_ij]; centroids get R v_i.
    rv = upstream.astype(np.float64) @ rotation.T
    dsub = d // m
    want_cb = np.zeros_like(codebooks, np.float64)
    want_c = np.zeros_like(centroids, np.float64)
    for i in range(len(items)):
        want_c[lists[i]] += rv[i]
        for j in range(m):
            want_cb[j, codes[i, j]] += rv[i, j * dsub:(j + 1) * dsub]
    np.testing.assert_allclose(got["grad_codebooks"], want_cb, atol=1e-4)
    np.testing.assert_allclose(got["grad_centroids"], want_c, atol=1e-4)


def test_identity_rotation_at_zero_and_hand_worked_codes():
    # d = 2, m = 2 (one dim per sub-space), centroids (0,0) and (10,0); the item (9, 1) goes to
    # list 1 (inner products 0 and 90), residual (-1, 1): codeword 3 of sub-space 0 holds -1.0,
    # codeword 7 of sub-space 1 holds 1.0 (the others 5.0), so codes (3, 7) and
    # z_hat = (10 - 1, 0 + 1) = (9, 1).
    codebooks = np.full([2, joint_pq.KSUB, 1], 5.0, np.float32)
    codebooks[0, 3, 0] = -1.0
    codebooks[1, 7, 0] = 1.0
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    got = _run_layer(np.array([[9.0, 1.0]], np.float32), np.zeros([2, 2], np.float32),
                     centroids, codebooks)
    np.testing.assert_array_equal(got["rotation"], np.eye(2))
    assert got["lists"].tolist() == [1]
    assert got["codes"].tolist() == [[3, 7]]
    np.testing.assert_allclose(got["quantized"], [[9.0, 1.0]])
    assert got["distortion"] == pytest.approx(0.0)


def test_warm_start_is_faiss_ivfpq_and_encodes_as_faiss():
    """Warm start = a FAISS IndexIVFPQ (inner product) trained on the vectors; the model's
    encoding (encode_np) of them reconstructs what that index, adding them itself, stores."""
    import faiss  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    x = rng.normal(size=[3000, 16]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids, codebooks = joint_pq.warm_start_np(x, nlist=8, m=4, seed=1)
    assert centroids.shape == (8, 16) and codebooks.shape == (4, 256, 4)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(16), 16, 8, 4, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1
    index.pq.cp.seed = 1
    index.do_polysemous_training = False
    index.train(x)
    index.add(x)
    index.make_direct_map()
    recon = np.stack([index.reconstruct(int(i)) for i in range(len(x))])
    lists, codes = joint_pq.encode_np(x, np.eye(16), centroids, codebooks)
    ours = joint_pq.reconstruct_np(lists, codes, centroids, codebooks)
    np.testing.assert_allclose(ours, recon, atol=1e-5)
    distortion = joint_pq.distortion_np(x, np.eye(16), centroids, codebooks)
    assert distortion == pytest.approx(float(((x - recon) ** 2).sum(1).mean()), rel=1e-4)
    assert distortion < 0.5  # it quantizes (unit vectors: 1.0 without a quantizer)


def test_warm_start_needs_enough_vectors():
    with pytest.raises(ValueError, match="pq_warm_start_vectors"):
        joint_pq.warm_start_np(np.zeros([100, 8], np.float32), nlist=4, m=2)


@pytest.mark.parametrize("field,value,message", [
    ("pq_m", 5, "must divide embedding_dim"),
    ("pq_warm_start_vectors", 100, ">= max"),
    ("pq_distortion_weight", -1.0, ">= 0"),
])
def test_config_errors(field, value, message):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}=.*{message}"):
        ModelConfig(joint_pq=True, **{field: value})


def _tiny_config(**kwargs):
    return ModelConfig(num_heads=2, embedding_dim=16, token_embedding_dim=16,
                       feature_embedding_dim=4, item_hidden_units=(32,),
                       query_hidden_units=(32,), query_projection_dim=16, learning_rate=0.1,
                       **kwargs)


@pytest.fixture(scope="module")
def base_model(tiny_layout, tmp_path_factory):
    """A tiny model trained without joint PQ (20 steps)."""
    from dpsr_tf.training import driver  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
    os.environ.pop("TF_CONFIG", None)
    base = str(tmp_path_factory.mktemp("pq_base") / "base")
    driver.train_and_evaluate(_tiny_config(), TrainConfig(
        layout_dir=tiny_layout.layout_dir, model_dir=base, batch_size=32, train_steps=20,
        save_checkpoints_steps=20, eval_random_negatives=20, eval_steps=1, seed=0))
    return base


def test_training_with_joint_pq_warm_starts_and_checkpoints(tiny_layout, base_model, tmp_path):
    from dpsr_tf.training import driver  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
    os.environ.pop("TF_CONFIG", None)
    base = base_model
    joint = str(tmp_path / "joint")
    cfg = _tiny_config(joint_pq=True, pq_nlist=4, pq_m=4, pq_warm_start_vectors=512)
    driver.train_and_evaluate(cfg, TrainConfig(
        layout_dir=tiny_layout.layout_dir, model_dir=joint, batch_size=32, train_steps=5,
        save_checkpoints_steps=5, eval_random_negatives=20, eval_steps=1, seed=0,
        warm_start_from=base))
    ckpt = tf.train.latest_checkpoint(joint)
    quantizer = joint_pq.read_quantizer(ckpt)
    d = 16
    np.testing.assert_allclose(quantizer["rotation"] @ quantizer["rotation"].T, np.eye(d),
                               atol=1e-10)
    assert quantizer["coarse_centroids"].shape == (4, d)
    assert quantizer["codebooks"].shape == (4, 256, 4)
    assert np.abs(quantizer["coarse_centroids"]).sum() > 0  # warm-started, then trained
    assert not np.allclose(quantizer["rotation"], np.eye(d))  # R moved, stayed orthogonal
    # The towers came from the base model (warm start), then took 5 steps.
    src = tf.train.load_checkpoint(tf.train.latest_checkpoint(base))
    dst = tf.train.load_checkpoint(ckpt)
    name = "dpsr/text_encoder/layer_0/kernel"
    moved = np.abs(dst.get_tensor(name) - src.get_tensor(name)).max()
    spread = np.abs(src.get_tensor(name)).max()
    assert moved < 0.5 * spread


def test_read_quantizer_refuses_model_without_pq(base_model):
    with pytest.raises(ValueError, match="no joint PQ variables"):
        joint_pq.read_quantizer(tf.train.latest_checkpoint(base_model))
