"""A small servable with the DPSR serving signature, made by code (tests, benchmarks, demos).

It has the contract of the real `dpsr export` servable, so the server and proxy are built and
tested against it:

  serving_default:
    query   string [B]            raw query text (tokenized in-graph by the Dpsr>Tokenize op)
    k       int32  []             results per query (default `default_k`; 1 <= k <= max_k,
                                  checked in-graph -> INVALID_ARGUMENT)
    user_id int64  [B] or [0]     optional user feature (default: none)
    ->
    item_ids string  [B, K]       K = min(k, items held)
    scores   float32 [B, K]       descending per row
    heads    int32   [B, K]       the query head that found the item
  query_embedding:
    query -> embeddings float32 [B, num_heads, dim]   (the same on every shard)

Query tower: mean of hashed token embeddings (+ a user embedding), then one projection per head,
L2-normalised. Search: exact (brute force) or, with `nlist` > 0, an IVF-flat search written in
TF ops (centroids, `nprobe` lists per head). Per-head top-K lists are merged into one top-K with
duplicates removed (an item keeps its best head) by the product's Dpsr>MergeHeads op. Every
shard built with the same spec has the same query tower, so shards over disjoint item subsets
merge to the unsharded answer.

`reference_search` is an independent numpy implementation (pybind11 tokenizer + brute force).
"""
import dataclasses
import os
import shutil
import tempfile
from typing import Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.tokenization import Tokenizer, TokenizerConfig


@dataclasses.dataclass(frozen=True)
class ToyServableSpec:
    """Shape of the toy servable.

    Attributes:
      dim: embedding size.
      num_heads: query heads.
      default_k: k when the request has none.
      max_k: largest k accepted.
      token_buckets: hashing-mode id space of the tokenizer (rows of the token table).
      user_buckets: rows of the user table (user_id is taken modulo this).
      seed: seed of the query tower weights.
      nlist: IVF lists of the TF-ops IVF search (0: exact search).
      nprobe: lists probed per head (IVF, TF ops or FAISS).
      faiss_factory: if set, search a FAISS index of this index_factory string through the
        project's Dpsr>FaissSearch op (dpsr_tf/search/faiss_ops.py), as the real servable does.
    """

    dim: int = 16
    num_heads: int = 2
    default_k: int = 10
    max_k: int = 1000
    token_buckets: int = 4096
    user_buckets: int = 64
    seed: int = 0
    nlist: int = 0
    nprobe: int = 8
    faiss_factory: str = ""

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(num_buckets=self.token_buckets)


def tower_weights(spec: ToyServableSpec):
    """(token table [buckets, dim], user table [users, dim], head projections [H, dim, dim])."""
    rng = np.random.default_rng(spec.seed)
    tokens = rng.standard_normal((spec.token_buckets, spec.dim)).astype(np.float32)
    users = (0.5 * rng.standard_normal((spec.user_buckets, spec.dim))).astype(np.float32)
    heads = rng.standard_normal((spec.num_heads, spec.dim, spec.dim)).astype(np.float32)
    return tokens, users, heads


def make_items(num_items: int, dim: int, seed: int = 1, prefix: str = "item-",
               num_clusters: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Item ids (object array of bytes [N]) and unit-norm embeddings (float32 [N, dim]).

    num_clusters > 0 draws items around that many random centres (as real catalogs cluster).
    """
    rng = np.random.default_rng(seed)
    if num_clusters > 0:
        centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
        assign = rng.integers(0, num_clusters, num_items)
        emb = centres[assign] + 0.5 * rng.standard_normal((num_items, dim)).astype(np.float32)
    else:
        emb = rng.standard_normal((num_items, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.empty(num_items, dtype=object)
    ids[:] = [f"{prefix}{i:07d}".encode() for i in range(num_items)]
    return ids, emb


def _ivf_layout(emb: np.ndarray, nlist: int, seed: int):
    """Centroids [nlist, dim], item order (sorted by list) and list offsets [nlist + 1]."""
    rng = np.random.default_rng(seed)
    n = emb.shape[0]
    sample = emb[rng.choice(n, size=min(n, nlist * 64), replace=False)]
    centroids = sample[rng.choice(sample.shape[0], size=nlist, replace=False)].copy()
    for _ in range(8):  # spherical k-means on the sample
        assign = np.argmax(sample @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        filled = np.bincount(assign, minlength=nlist) > 0
        centroids[filled] = sums[filled]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    assign = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65536):
        assign[start:start + 65536] = np.argmax(emb[start:start + 65536] @ centroids.T, axis=1)
    order = np.argsort(assign, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=nlist))])
    return centroids.astype(np.float32), order, offsets.astype(np.int64)


def _faiss_index_file(item_emb: np.ndarray, factory: str, nprobe: int, path: str, seed: int):
    """Trains and fills a FAISS inner-product index over the items; writes it to `path`."""
    import faiss  # pylint: disable=g-import-not-at-top

    index = faiss.index_factory(item_emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = item_emb[rng.choice(item_emb.shape[0], size=min(item_emb.shape[0], 100_000),
                                replace=False)]
    index.train(np.ascontiguousarray(train))
    index.add(np.ascontiguousarray(item_emb))
    if nprobe:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    faiss.write_index(index, path)
    return path


def _build_module(item_ids, item_emb, spec: ToyServableSpec, scratch_dir: str = "",
                  faiss_cache: Optional[str] = None):
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    from dpsr_tf.search import head_merge
    from dpsr_tf.tokenization import tokenize_op

    tokens, users, heads = tower_weights(spec)
    faiss_path = None
    if spec.faiss_factory:
        if faiss_cache and os.path.exists(faiss_cache):
            faiss_path = faiss_cache
        else:
            faiss_path = _faiss_index_file(item_emb, spec.faiss_factory, spec.nprobe,
                                           os.path.join(scratch_dir, "items.faiss"), spec.seed)
            if faiss_cache:
                shutil.copyfile(faiss_path, faiss_cache)
    if spec.nlist:
        centroids, order, offsets = _ivf_layout(item_emb, spec.nlist, spec.seed + 7)
        item_emb, item_ids = item_emb[order], item_ids[order]
    n_items = item_emb.shape[0]
    config = spec.tokenizer_config

    class ToyDpsr(tf.Module):
        """Query tower + search; see the module docstring."""

        def __init__(self):
            super().__init__()
            self.tokens = tf.Variable(tokens, trainable=False, name="token_table")
            self.users = tf.Variable(users, trainable=False, name="user_table")
            self.heads = tf.Variable(heads, trainable=False, name="head_projections")
            if not faiss_path:  # a FAISS index holds the items itself
                self.items = tf.Variable(item_emb, trainable=False, name="item_embeddings")
            self.ids = tf.Variable(item_ids.astype(object), trainable=False, name="item_ids",
                                   dtype=tf.string)
            if spec.nlist:
                self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
                self.offsets = tf.Variable(offsets, trainable=False, name="list_offsets")
            if faiss_path:
                from dpsr_tf.search import faiss_ops  # pylint: disable=g-import-not-at-top
                self.index = faiss_ops.FaissIndex(faiss_path)

        def _query(self, query, user_id):
            ids = tokenize_op.tokenize(query, config)
            emb = tf.gather(self.tokens, ids)  # ragged [B, (n), dim]
            count = tf.cast(tf.maximum(ids.row_lengths(), 1), tf.float32)[:, None]
            q = tf.reduce_sum(emb, axis=1) / count  # [B, dim]
            q = tf.cond(tf.size(user_id) > 0,
                        lambda: q + tf.gather(self.users, user_id % spec.user_buckets),
                        lambda: q)
            qh = tf.einsum("bd,hde->bhe", q, self.heads)
            return tf.math.l2_normalize(qh, axis=-1)  # [B, H, dim]

        def _search_exact(self, qh, kk):
            scores = tf.einsum("bhd,nd->bhn", qh, self.items)  # [B, H, N]
            top, idx = tf.math.top_k(scores, kk)  # [B, H, kk]
            return idx, top

        def _search_faiss(self, qh, kk):
            from dpsr_tf.search import faiss_ops  # pylint: disable=g-import-not-at-top
            idx_h, top_h = [], []
            for h in range(spec.num_heads):
                top, labels = faiss_ops.search(self.index, qh[:, h, :], kk, nprobe=spec.nprobe)
                idx_h.append(labels)
                top_h.append(top)
            return idx_h, top_h

        def _search_ivf(self, qh, kk):
            idx_h, top_h = [], []
            for h in range(spec.num_heads):
                q = qh[:, h, :]  # [B, dim]
                _, probe = tf.math.top_k(tf.matmul(q, self.centroids, transpose_b=True),
                                         min(spec.nprobe, spec.nlist))
                starts = tf.gather(self.offsets, probe)
                ends = tf.gather(self.offsets, probe + 1)
                ranges = tf.ragged.range(tf.reshape(starts, [-1]), tf.reshape(ends, [-1]))
                cand = tf.RaggedTensor.from_uniform_row_length(
                    ranges, tf.shape(probe, out_type=tf.int64)[1])
                cand = cand.merge_dims(1, 2)  # [B, (n)] item positions
                dense_i = cand.to_tensor(default_value=-1)  # [B, n]
                emb = tf.gather(self.items, tf.maximum(dense_i, 0))  # [B, n, dim]
                s = tf.linalg.matvec(emb, q)  # [B, n]
                dense_s = tf.where(dense_i >= 0, s, tf.fill(tf.shape(s), -np.inf))
                width = tf.shape(dense_s)[1]
                top, pos = tf.math.top_k(dense_s, tf.minimum(kk, width))
                idx_h.append(tf.gather(dense_i, pos, batch_dims=1))
                top_h.append(top)
            return idx_h, top_h

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="query"),
            tf.TensorSpec([], tf.int32, name="k"),
            tf.TensorSpec([None], tf.int64, name="user_id")])
        def serve(self, query, k=tf.constant(spec.default_k, tf.int32),
                  user_id=tf.zeros([0], tf.int64)):
            tf.debugging.assert_greater_equal(
                k, 1, message=f"k must be in [1, {spec.max_k}]")
            tf.debugging.assert_less_equal(
                k, spec.max_k, message=f"k must be in [1, {spec.max_k}]")
            qh = self._query(query, user_id)
            kk = tf.minimum(k, n_items)
            if spec.nlist or spec.faiss_factory:
                search = self._search_faiss if spec.faiss_factory else self._search_ivf
                idx_h, top_h = search(qh, kk)
                # Each head's list padded to kk (an IVF probe may hold fewer items).
                idx3 = tf.stack([tf.pad(tf.cast(i, tf.int64), [[0, 0], [0, kk - tf.shape(i)[1]]],
                                        constant_values=-1) for i in idx_h], axis=1)
                top3 = tf.stack([tf.pad(t, [[0, 0], [0, kk - tf.shape(t)[1]]],
                                        constant_values=-np.inf) for t in top_h], axis=1)
            else:
                idx3, top3 = self._search_exact(qh, kk)
            # The product's merge (one Dpsr>MergeHeads op), as a `dpsr export` servable has it.
            top, idx, head = head_merge.merge_heads(top3, tf.cast(idx3, tf.int64), kk)
            valid = idx >= 0
            item_ids = tf.where(valid, tf.gather(self.ids, tf.maximum(idx, 0)), "")
            return {"item_ids": item_ids, "scores": top,
                    "heads": tf.where(valid, head, -1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
        def query_embedding(self, query):
            return {"embeddings": self._query(query, tf.zeros([0], tf.int64))}

    return ToyDpsr()


def write_toy_servable(export_dir: str, item_ids: np.ndarray, item_embeddings: np.ndarray,
                       spec: ToyServableSpec = ToyServableSpec(),
                       warmup_queries: Optional[Sequence[str]] = None,
                       faiss_cache: Optional[str] = None) -> str:
    """Writes a SavedModel version directory atomically (temp dir + rename).

    Args:
      export_dir: the version directory to create (base/<model>/<version>); must not exist.
      item_ids: [N] object array of bytes.
      item_embeddings: [N, dim] float32.
      spec: ToyServableSpec.
      warmup_queries: if given, written as assets.extra/tf_serving_warmup_requests.
      faiss_cache: with spec.faiss_factory, reuse the index file at this path if it exists,
        else build it and keep a copy there (the caller keys it by items and factory).

    Returns:
      export_dir.
    """
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    from dpsr_tf.export.warmup import write_warmup_requests

    if item_embeddings.shape[1] != spec.dim:
        raise ValueError(f"item_embeddings have dim {item_embeddings.shape[1]}, spec.dim is "
                         f"{spec.dim}")
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    scratch = tempfile.mkdtemp(prefix=".scratch-", dir=parent)
    try:
        module = _build_module(np.asarray(item_ids, dtype=object),
                               np.asarray(item_embeddings, dtype=np.float32), spec, scratch,
                               faiss_cache)
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve,
                                                     "query_embedding": module.query_embedding})
        if warmup_queries:
            write_warmup_requests(tmp, [{"query": np.array([q.encode()], dtype=object)}
                                        for q in warmup_queries])
        os.rename(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return export_dir


def reference_search(queries: Sequence[str], item_ids: np.ndarray, item_embeddings: np.ndarray,
                     spec: ToyServableSpec, k: int,
                     user_ids: Optional[Sequence[int]] = None):
    """Exact answer of the toy servable, computed independently in numpy.

    Returns:
      (item_ids [B, K] object, scores [B, K] float32, heads [B, K] int32), K = min(k, N); an
      item's score is its best head's dot product, ties broken by item index.
    """
    tokens, users, heads = tower_weights(spec)
    tok = Tokenizer(spec.tokenizer_config)
    ids, splits = tok.tokenize(list(queries))
    out_ids, out_scores, out_heads = [], [], []
    kk = min(k, item_embeddings.shape[0])
    for i in range(len(queries)):
        row = ids[splits[i]:splits[i + 1]]
        q = tokens[row].sum(0) / max(len(row), 1)
        if user_ids is not None:
            q = q + users[user_ids[i] % spec.user_buckets]
        qh = np.einsum("d,hde->he", q, heads)
        qh /= np.maximum(np.linalg.norm(qh, axis=1, keepdims=True), 1e-12)
        s = qh @ item_embeddings.T  # [H, N]
        best = s.max(0)
        order = np.lexsort((np.arange(best.size), -best))[:kk]
        out_ids.append(item_ids[order])
        out_scores.append(best[order])
        out_heads.append(s.argmax(0)[order].astype(np.int32))
    return np.stack(out_ids), np.stack(out_scores).astype(np.float32), np.stack(out_heads)
