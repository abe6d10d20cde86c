"""Joint product quantization: the IVF-PQ index of the item embeddings as a layer of the model.

With `--joint_pq` the item tower's output g [N, d] goes through the quantizer that the servable's
FAISS index applies (FAISS IndexPreTransform(LinearTransform(R), IndexIVFPQ), by_residual):

    z     = R g                                   rotation, R orthogonal ([d, d])
    a     = argmax_l <z, c_l>                     coarse (IVF) list, c: [nlist, d] (FAISS's
                                                  IndexFlatIP quantizer: how an inner-product
                                                  IVF assigns items and probes lists)
    r     = z - c_a                               residual after the coarse centroid
    k_j   = argmin_k ||r_j - C_j[k]||^2           PQ code of sub-space j (m sub-spaces of
                                                  d / m dims, 256 codewords each: 8 bits)
    z_hat = c_a + concat_j C_j[k_j]               the reconstruction FAISS scores against
    g_q   = R^T (z + stop_gradient(z_hat - z))    what the loss scores queries against

so the loss sees the quantized items (forward value R^T z_hat) while the gradient reaches the
item tower as if the layer were the identity (straight-through: R^T R = I). The query side needs
no layer of its own: R is orthogonal, so <q, R^T z_hat> = <R q, z_hat>, which is what FAISS
computes after rotating the query with the same LinearTransform. A distortion term

    pq_distortion_weight * (mean_i ||z_i - z_hat_i||^2 [centroids held]
                            + mean_i ||stop_gradient(z_i) - c_{a_i}||^2)

pulls the codewords toward the residuals they encode and the embeddings toward their
reconstruction (first part), and keeps each coarse centroid at the mean of its list's embeddings
(second part: online k-means, so the centroids stay good routers for the nprobe lists a query
visits). By default the codewords and centroids learn from these terms alone;
--pq_codebook_retrieval_gradient also lets the ranking loss reach them through z_hat
(g_q = R^T (z_hat + z - stop_gradient(z))). That variant is off by default: at the in-batch
softmax's low temperature the ranking gradient outweighs the distortion's and moves codewords
away from the items they encode, which costs served recall (docs/results.md, "Joint PQ").

Orthogonality: Cayley parameterization, R = (I + A)^{-1} (I - A) with A = W - W^T skew-symmetric
and W a free [d, d] variable initialized to 0 (so R = I at the start). R is orthogonal at every
step by construction (up to float rounding; the exporter recomputes it in float64), needs no
extra op after each optimizer step (a re-orthogonalization step would have to run after every
update on every worker of a parameter-server cluster, and would fight AdaGrad's accumulators
with jumps the optimizer did not make), and the d x d solve is cheap for d = 64. Cayley covers
the rotations without eigenvalue -1, which includes every rotation near the identity it starts
from.

The model's lists and codes are exactly FAISS IndexIVFPQ's by_residual encoding (inner
product quantizer, L2 PQ of the residual); the exporter writes them into the inverted lists and
checks that FAISS's own encoding of the residuals with the copied codebooks agrees. At search
time FAISS probes the nprobe lists of largest <R q, c_l> and scores
<R q, c_l> + sum_j <(R q)_j, C_j[k_j]> (adc_search_np is its NumPy twin).

Warm start: before the first step, JointPQWarmStartHook runs the item tower on the first
training batches (pq_warm_start_vectors item embeddings), trains a FAISS IndexIVFPQ (inner
product) on them, loads its coarse centroids and PQ codebooks into the variables and sets
joint_pq/initialized, which the checkpoint keeps (a restarted job does not redo it).

Variables (checkpoint names):
  joint_pq/cayley_w            [d, d]              float32, R = cayley(W)
  joint_pq/coarse_centroids    [nlist, d]          float32, in the rotated space
  joint_pq/codebooks           [m, 256, d / m]     float32, residual codewords
  joint_pq/initialized         []                  bool, set by the warm start
"""
import time
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from dpsr_tf.model import model_dir

SCOPE = "joint_pq"
NBITS = 8
KSUB = 1 << NBITS
VARIABLE_NAMES = ("cayley_w", "coarse_centroids", "codebooks")


# ------------------------------------------------------------------------------------------------
# TensorFlow layer


def pq_variables(dim: int, nlist: int, m: int) -> Dict[str, tf.Variable]:
    """The quantizer's variables (created once per graph, AUTO_REUSE)."""
    if dim % m:
        raise ValueError(f"pq_m={m} must divide embedding_dim={dim} (sub-spaces of equal width)")
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        zeros = tf.compat.v1.zeros_initializer()
        return {
            "cayley_w": tf.compat.v1.get_variable("cayley_w", [dim, dim], tf.float32, zeros),
            "coarse_centroids": tf.compat.v1.get_variable("coarse_centroids", [nlist, dim],
                                                          tf.float32, zeros),
            "codebooks": tf.compat.v1.get_variable("codebooks", [m, KSUB, dim // m], tf.float32,
                                                   zeros),
            "initialized": tf.compat.v1.get_variable(
                "initialized", [], tf.bool, tf.compat.v1.constant_initializer(False),
                trainable=False),
        }


def cayley_rotation(w: tf.Tensor) -> tf.Tensor:
    """R = (I + A)^{-1} (I - A), A = W - W^T: [d, d] orthogonal (R = I for W = 0)."""
    a = w - tf.transpose(w)
    eye = tf.eye(tf.shape(w)[0], dtype=w.dtype)
    return tf.linalg.solve(eye + a, eye - a)


def _nearest(x: tf.Tensor, centers: tf.Tensor) -> tf.Tensor:
    """[..., n, k] x [..., c, k] -> [..., n] int32 index of the nearest center (L2)."""
    dist = (tf.reduce_sum(tf.square(centers), axis=-1)[..., None, :]
            - 2.0 * tf.matmul(x, centers, transpose_b=True))
    return tf.argmin(dist, axis=-1, output_type=tf.int32)


def quantize(items: tf.Tensor, variables: Dict[str, tf.Tensor],
             codebook_retrieval_gradient: bool = False) -> Dict[str, tf.Tensor]:
    """Quantizes item embeddings as the exported index does (module docstring).

    Args:
      items: [N, d] float32 item tower output.
      variables: pq_variables(...).
      codebook_retrieval_gradient: let the loss's gradient through the quantized items reach
        the codewords and centroids too; False (default): they learn from the distortion term
        alone (k-means in SGD form), the towers and R from both.

    Returns:
      {"quantized": [N, d] float32 R^T z_hat with the straight-through gradient,
       "distortion": [] float32 mean_i ||R g_i - z_hat_i||^2,
       "loss_term": [] float32 the distortion term of the loss: mean_i ||R g_i - z_hat_i||^2
         with the centroids held + mean_i ||R g_i - c_{a_i}||^2 for the centroids alone,
       "lists": [N] int32 coarse lists, "codes": [N, m] int32 PQ codes,
       "rotation": [d, d] float32 R}.
    """
    codebooks = variables["codebooks"]
    m, _, dsub = codebooks.shape.as_list()
    rotation = cayley_rotation(variables["cayley_w"])
    z = tf.matmul(items, rotation, transpose_b=True)                       # [N, d] = g R^T
    centroids = variables["coarse_centroids"]
    # FAISS's IVF with METRIC_INNER_PRODUCT assigns (and probes) by the largest <z, c_l>.
    lists = tf.argmax(tf.matmul(tf.stop_gradient(z), tf.stop_gradient(centroids),
                                transpose_b=True), axis=-1, output_type=tf.int32)  # [N]
    coarse = tf.gather(centroids, lists)                                   # [N, d]
    residual = tf.reshape(tf.stop_gradient(z - coarse), [-1, m, dsub])      # [N, m, dsub]
    codes_mn = _nearest(tf.transpose(residual, [1, 0, 2]),
                        tf.stop_gradient(codebooks))                        # [m, N]
    words = tf.gather(codebooks, codes_mn, axis=1, batch_dims=1)           # [m, N, dsub]
    words = tf.transpose(words, [1, 0, 2])                                 # [N, m, dsub]
    codes = tf.transpose(codes_mn)                                         # [N, m]
    words = tf.reshape(words, [-1, m * dsub])
    z_hat = coarse + words
    distortion = tf.reduce_mean(tf.reduce_sum(tf.square(z - z_hat), axis=1))
    # The loss's term: the reconstruction error trains the codewords (and pulls z toward z_hat);
    # the coarse centroids follow k-means of the embeddings of their lists instead, so that they
    # keep routing queries to the right lists (trained on the full residual error they drift
    # into worse routers: docs/results.md, "Joint PQ").
    recon = tf.reduce_mean(tf.reduce_sum(tf.square(z - tf.stop_gradient(coarse) - words), 1))
    coarse_kmeans = tf.reduce_mean(tf.reduce_sum(tf.square(tf.stop_gradient(z) - coarse), 1))
    if codebook_retrieval_gradient:
        straight = z_hat + z - tf.stop_gradient(z)
    else:
        straight = z + tf.stop_gradient(z_hat - z)
    quantized = tf.matmul(straight, rotation)                              # R^T, row form
    return {"quantized": quantized, "distortion": distortion, "lists": lists, "codes": codes,
            "rotation": rotation, "loss_term": recon + coarse_kmeans}


class JointPQWarmStartHook(tf.compat.v1.train.SessionRunHook):
    """Initializes the quantizer from the first batches' item embeddings (module docstring).

    The chief embeds batches (session.run of the raw item tower output, which draws from the
    training input) until it holds num_vectors vectors, trains a FAISS IndexIVFPQ (inner
    product) on them, loads its centroids and codebooks and sets joint_pq/initialized. Other
    workers wait until the flag is set. A checkpoint whose flag is set (a restarted job) is kept.
    """

    def __init__(self, items: tf.Tensor, variables: Dict[str, tf.Variable], num_vectors: int,
                 is_chief: bool = True, seed: int = 0, poll_secs: float = 1.0):
        self._items = items
        self._variables = variables
        self._num_vectors = int(num_vectors)
        self._is_chief = is_chief
        self._seed = seed
        self._poll_secs = poll_secs
        self._feeds = self._assign = None

    def begin(self):
        self._feeds = {name: tf.compat.v1.placeholder(self._variables[name].dtype,
                                                      self._variables[name].shape)
                       for name in VARIABLE_NAMES}
        self._assign = tf.group(
            *[self._variables[name].assign(self._feeds[name]) for name in VARIABLE_NAMES],
            self._variables["initialized"].assign(True))

    def after_create_session(self, session, coord):
        del coord
        if session.run(self._variables["initialized"]):
            return
        if not self._is_chief:
            logging.info("joint PQ: waiting for the chief's warm start")
            while not session.run(self._variables["initialized"]):
                time.sleep(self._poll_secs)
            return
        start = time.monotonic()
        chunks, count = [], 0
        while count < self._num_vectors:
            batch = session.run(self._items)
            chunks.append(batch)
            count += len(batch)
        vectors = np.concatenate(chunks)[:self._num_vectors].astype(np.float32)
        nlist = self._variables["coarse_centroids"].shape[0]
        m = self._variables["codebooks"].shape[0]
        centroids, codebooks = warm_start_np(vectors, int(nlist), int(m), self._seed)
        dim = vectors.shape[1]
        session.run(self._assign, {self._feeds["cayley_w"]: np.zeros([dim, dim], np.float32),
                                   self._feeds["coarse_centroids"]: centroids,
                                   self._feeds["codebooks"]: codebooks})
        logging.info("joint PQ: warm start on %d item embeddings (%d batches): IVF%d,PQ%d "
                     "trained in %.1fs, distortion %.4f", len(vectors), len(chunks), nlist, m,
                     time.monotonic() - start,
                     distortion_np(vectors, np.eye(dim, dtype=np.float32), centroids, codebooks))


# ------------------------------------------------------------------------------------------------
# NumPy / FAISS twins (warm start, export, tests)


def _faiss():
    try:
        import faiss  # optional: the faiss-cpu wheel (the op library links its own FAISS)
    except ImportError as e:
        raise ImportError("joint PQ needs the faiss-cpu wheel (pinned 1.7.3 in requirements.txt):"
                          " run tools/bootstrap.sh") from e
    return faiss


def cayley_rotation_np(w: np.ndarray) -> np.ndarray:
    """NumPy twin of cayley_rotation, in float64: [d, d] orthogonal."""
    w = np.asarray(w, np.float64)
    a = w - w.T
    eye = np.eye(w.shape[0])
    return np.linalg.solve(eye + a, eye - a)


def warm_start_np(vectors: np.ndarray, nlist: int, m: int,
                  seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The coarse centroids and PQ codebooks of a FAISS IndexIVFPQ (inner product, 8 bits)
    trained on the vectors: k-means with inner-product assignment, then PQ on the residuals.

    Args:
      vectors: [n, d] float32 item embeddings (R = I at the warm start), n >= max(nlist, 256).

    Returns:
      coarse centroids [nlist, d] float32 and codebooks [m, 256, d / m] float32.
    """
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, d = vectors.shape
    if n < max(nlist, KSUB):
        raise ValueError(f"joint PQ warm start got {n} vectors; it needs at least "
                         f"max(pq_nlist={nlist}, {KSUB}): raise --pq_warm_start_vectors")
    if d % m:
        raise ValueError(f"pq_m={m} must divide the embedding dimension {d}")
    coarse = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(coarse, d, nlist, m, NBITS, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.do_polysemous_training = False
    index.train(vectors)
    centroids = faiss.rev_swig_ptr(faiss.downcast_index(index.quantizer).get_xb(),
                                   nlist * d).reshape(nlist, d).astype(np.float32)
    codebooks = faiss.vector_to_array(index.pq.centroids).reshape(m, KSUB, d // m).astype(
        np.float32)
    return centroids, codebooks


def nearest_np(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[n, k] x [c, k] -> [n] int64 nearest center by L2 (first on ties), in float64."""
    x = np.asarray(x, np.float64)
    centers = np.asarray(centers, np.float64)
    dist = (centers ** 2).sum(axis=1)[None, :] - 2.0 * x @ centers.T
    return np.argmin(dist, axis=1)


def encode_np(items: np.ndarray, rotation: np.ndarray, centroids: np.ndarray,
              codebooks: np.ndarray, chunk: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """The model's assignment of item embeddings (the quantize layer in NumPy).

    Args:
      items: [N, d] float32 item tower output.
      rotation: [d, d] R; centroids: [nlist, d]; codebooks: [m, 256, d / m].

    Returns:
      lists [N] int64 and codes [N, m] uint8.
    """
    m, _, dsub = codebooks.shape
    n = items.shape[0]
    lists = np.empty(n, np.int64)
    codes = np.empty([n, m], np.uint8)
    for lo in range(0, n, chunk):
        z = np.asarray(items[lo:lo + chunk], np.float64) @ np.asarray(rotation, np.float64).T
        a = np.argmax(z @ np.asarray(centroids, np.float64).T, axis=1)
        r = z - centroids[a]
        lists[lo:lo + chunk] = a
        for j in range(m):
            codes[lo:lo + chunk, j] = nearest_np(r[:, j * dsub:(j + 1) * dsub], codebooks[j])
    return lists, codes


def reconstruct_np(lists: np.ndarray, codes: np.ndarray, centroids: np.ndarray,
                   codebooks: np.ndarray) -> np.ndarray:
    """z_hat [N, d] float64 in the rotated space: c_list + concat_j C_j[code_j]."""
    m = codebooks.shape[0]
    words = np.concatenate([codebooks[j][codes[:, j]] for j in range(m)], axis=1)
    return np.asarray(centroids, np.float64)[lists] + words


def distortion_np(items: np.ndarray, rotation: np.ndarray, centroids: np.ndarray,
                  codebooks: np.ndarray) -> float:
    """mean_i ||R g_i - z_hat_i||^2 (the loss's distortion term, unweighted)."""
    lists, codes = encode_np(items, rotation, centroids, codebooks)
    z = np.asarray(items, np.float64) @ np.asarray(rotation, np.float64).T
    return float(((z - reconstruct_np(lists, codes, centroids, codebooks)) ** 2).sum(1).mean())


def adc_search_np(queries: np.ndarray, rotation: np.ndarray, centroids: np.ndarray,
                  codebooks: np.ndarray, lists: np.ndarray, codes: np.ndarray, nprobe: int,
                  k: int) -> Tuple[np.ndarray, np.ndarray]:
    """What FAISS's IndexPreTransform(R, IndexIVFPQ inner product) returns, in NumPy.

    The nprobe lists of largest <R q, c_l> are scanned; item i in list l scores
    <R q, c_l> + sum_j <(R q)_j, C_j[code_ij]> (asymmetric distance computation).

    Args:
      queries: [Q, d] float32; items' lists [N] and codes [N, m] (labels are row numbers).

    Returns:
      scores [Q, k] float32 descending (-inf padding) and labels [Q, k] int64 (-1 padding);
      ties broken by the smaller label.
    """
    zq = np.asarray(queries, np.float64) @ np.asarray(rotation, np.float64).T
    recon = reconstruct_np(lists, codes, centroids, codebooks)            # [N, d]
    coarse_scores = zq @ np.asarray(centroids, np.float64).T              # [Q, nlist]
    out_s = np.full([len(zq), k], -np.inf, np.float32)
    out_l = np.full([len(zq), k], -1, np.int64)
    for i, q in enumerate(zq):
        probe = np.argsort(-coarse_scores[i], kind="stable")[:nprobe]
        rows = np.flatnonzero(np.isin(lists, probe))
        scores = recon[rows] @ q
        order = np.lexsort((rows, -scores))[:k]
        out_s[i, :len(order)] = scores[order]
        out_l[i, :len(order)] = rows[order]
    return out_s, out_l


def read_quantizer(checkpoint: str) -> Dict[str, np.ndarray]:
    """The learned quantizer of a checkpoint: rotation [d, d] float64 (R, recomputed from W),
    coarse_centroids [nlist, d] float32, codebooks [m, 256, d / m] float32.

    Raises:
      ValueError: the checkpoint has no joint PQ variables, or they were never initialized.
      model_dir.CorruptCheckpointError: its files cannot be read.
    """
    try:
        return _read_quantizer(checkpoint)
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
        raise model_dir.CorruptCheckpointError(
            model_dir.describe_unreadable_checkpoint(checkpoint, e)) from None


def _read_quantizer(checkpoint: str) -> Dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(checkpoint)
    names = reader.get_variable_to_shape_map()
    missing = [n for n in VARIABLE_NAMES + ("initialized",) if f"{SCOPE}/{n}" not in names]
    if missing:
        raise ValueError(f"checkpoint {checkpoint} has no joint PQ variables ({SCOPE}/"
                         f"{missing[0]} missing): train with --joint_pq, or build the index "
                         "with `dpsr index` instead")
    if not bool(reader.get_tensor(f"{SCOPE}/initialized")):
        raise ValueError(f"checkpoint {checkpoint}: joint PQ was never warm-started "
                         "(joint_pq/initialized is False); train at least one step")
    return {"rotation": cayley_rotation_np(reader.get_tensor(f"{SCOPE}/cayley_w")),
            "coarse_centroids": reader.get_tensor(f"{SCOPE}/coarse_centroids").astype(np.float32),
            "codebooks": reader.get_tensor(f"{SCOPE}/codebooks").astype(np.float32)}


def apply_to_items(items: tf.Tensor, cfg, mode, seed: int = 0,
                   is_chief: bool = True) -> Tuple[tf.Tensor, tf.Tensor, Optional[object]]:
    """model_fn's use of the layer: (quantized items [N, d], weighted distortion [], warm-start
    hook or None). cfg is the ModelConfig (joint_pq, pq_nlist, pq_m, ...)."""
    variables = pq_variables(cfg.embedding_dim, cfg.pq_nlist, cfg.pq_m)
    out = quantize(items, variables, cfg.pq_codebook_retrieval_gradient)
    hook = None
    if mode == tf.estimator.ModeKeys.TRAIN:
        hook = JointPQWarmStartHook(tf.stop_gradient(items), variables,
                                    cfg.pq_warm_start_vectors, is_chief=is_chief, seed=seed)
        tf.compat.v1.summary.scalar("train/pq_distortion", out["distortion"])
    return out["quantized"], cfg.pq_distortion_weight * out["loss_term"], hook
