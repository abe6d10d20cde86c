"""`dpsr evaluate --served`: the ranking users get, beside the exact one it approximates.

Three full-corpus rankings of the same requests, scored by the same metrics:

  soft dot  exact soft dot product with the model's beta (what training optimizes;
            evaluate.EmbeddingScorer, brute force in NumPy);
  max       exact max over heads (beta = 0): the serving rule, without the index;
  served    what the servable and the proxy return: each of the m query heads searched through
            the FAISS index built by `dpsr index` (every shard, the index's own nprobe unless
            one is given), each shard's hits merged by max over heads with dedupe
            (dpsr_tf/search/head_merge.py, merge_heads_np = the servable's merge_heads), the shards
            merged into one global top K by score (as dpsr_tf/serving/proxy/merge.py does).

    out = evaluate_served_model("/models/m", "/indexes/m")     # soft-dot metrics + below
    out["served_recall@100"], out["recall_lost_to_max@100"], out["recall_lost_to_index@100"]

recall_lost_to_max@K = recall@K(soft dot) - recall@K(max), recall_lost_to_index@K =
recall@K(max) - recall@K(served); either can be slightly negative (a cheaper ranking may
happen to rank a relevant item higher). served_overlap@K is the fraction of the exact max top K
that the index returns in its top K (the index's own recall, <= 1). When beta = 0 or m = 1 the
soft dot product is the max over heads: max_equals_soft_dot is true and the loss is 0.
"""
import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import tie_metrics
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.model.scoring import soft_dot_product_np
from dpsr_tf.indexing import encoder_index, index_builder, index_layout
from dpsr_tf.indexing.catalog_index import EMBEDDING_IDS_FILE, EMBEDDINGS_FILE
from dpsr_tf.search import dense_feedback
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.head_merge import merge_heads_np

# Largest |difference| between the index's saved item embeddings and the evaluated model's.
EMBEDDING_TOLERANCE = 1e-3


def _faiss():
    try:
        import faiss  # optional: the faiss-cpu wheel (the op library links its own FAISS)
    except ImportError as e:
        raise ImportError("dpsr evaluate --served needs the faiss-cpu wheel (pinned 1.7.3 in "
                          "requirements.txt): run tools/bootstrap.sh") from e
    return faiss


def _rebuild_hint(index_dir: str, model_dir: Optional[str]) -> str:
    return (f"build it from this model with `dpsr index --model_dir={model_dir or 'MODEL'} "
            f"--output_dir={index_dir}` (add --overwrite to replace an old one)")


def read_index_manifest(index_dir: str, dimension: int, num_items: int,
                        model_dir: Optional[str] = None) -> index_layout.IndexManifest:
    """Reads an index build directory's manifest and checks it fits the model and layout.

    Cheap (no FAISS, no shard loaded): run it before embedding anything.

    Args:
      index_dir: a directory written by `dpsr index` (dpsr_tf/indexing/index_layout.py).
      dimension: the model's embedding dimension d.
      num_items: the layout's item count.
      model_dir: named in the messages' fix.

    Raises:
      FileNotFoundError: no such directory, or no manifest.json in it.
      ValueError: a bad manifest, a missing shard file, an l2 index, or a dimension or item
        count other than the model's and layout's.
    """
    hint = _rebuild_hint(index_dir, model_dir)
    if not os.path.isdir(index_dir):
        raise FileNotFoundError(f"index directory {index_dir} does not exist: {hint}")
    try:
        manifest = index_layout.read_manifest(index_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; {hint}") from None
    except ValueError as e:
        raise ValueError(f"{e}; {hint}") from None
    if manifest.metric != "inner_product":
        raise ValueError(f"index {index_dir} has metric {manifest.metric!r}; DPSR scores are "
                         f"inner products: {hint}")
    if manifest.dimension != dimension:
        raise ValueError(f"index {index_dir} holds {manifest.dimension}-dimensional vectors but "
                         f"the model's embeddings have {dimension}: it was built from another "
                         f"model; {hint}")
    if manifest.num_items != num_items:
        raise ValueError(f"index {index_dir} holds {manifest.num_items} items but the layout "
                         f"has {num_items}: it was built from another catalog; {hint}")
    return manifest


@dataclasses.dataclass
class ServedIndex:
    """The shards of an index build directory, loaded with the faiss-cpu wheel.

    Attributes:
      directory: the build directory.
      manifest: its IndexManifest.
      indexes: one faiss.Index per shard.
      rows: per shard, [n_s] int64 layout item row of each FAISS label.
      nprobe: IVF lists probed per search (clamped to nlist), 0 for other index types.
      dimension: the vectors' dimension (the dense shards': the manifest's; the encoder list's:
        its encoder's).
    """
    directory: str
    manifest: index_layout.IndexManifest
    indexes: list
    rows: List[np.ndarray]
    nprobe: int
    dimension: int


def open_served_index(index_dir: str, item_ids: Sequence[str], dimension: int,
                      nprobe: Optional[int] = None,
                      model_dir: Optional[str] = None) -> ServedIndex:
    """Loads every shard of an index build directory and maps its labels to layout rows.

    Args:
      index_dir: a directory written by `dpsr index`.
      item_ids: [N] the layout's item ids; item_ids[r] is item row r.
      dimension: the model's embedding dimension.
      nprobe: IVF lists to probe; None = the value stored in the index (what the servable
        uses by default). Must be >= 1; larger than nlist probes every list.
      model_dir: named in the messages' fix.

    Raises:
      FileNotFoundError, ValueError: see read_index_manifest; also an id the layout lacks, an
        id in two shards, or an nprobe for an index that is not IVF.
    """
    faiss = _faiss()
    manifest = read_index_manifest(index_dir, dimension, len(item_ids), model_dir)
    hint = _rebuild_hint(index_dir, model_dir)
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    seen = np.zeros(len(item_ids), bool)
    indexes, rows = [], []
    for info in manifest.shards:
        index_file, ids_file = manifest.shard_paths(index_dir, info.shard)
        index = faiss.read_index(index_file)
        if index.d != dimension or index.ntotal != info.num_items:
            raise ValueError(f"{index_file} holds {index.ntotal} vectors of dimension {index.d}; "
                             f"the manifest says {info.num_items} of {manifest.dimension}: {hint}")
        ids = index_layout.read_id_map(ids_file, expected_count=info.num_items)
        shard_rows = np.empty(len(ids), np.int64)
        for label, item_id in enumerate(ids):
            row = row_of.get(item_id)
            if row is None:
                raise ValueError(f"{ids_file}:{label + 1}: item id {item_id!r} is not in the "
                                 f"layout: the index was built from another catalog; {hint}")
            if seen[row]:
                raise ValueError(f"{ids_file}:{label + 1}: item id {item_id!r} is in two shards: "
                                 f"{hint}")
            seen[row] = True
            shard_rows[label] = row
        indexes.append(index)
        rows.append(shard_rows)
    effective = 0
    ivfs = [index_builder.extract_ivf(index) for index in indexes]
    if nprobe is not None:
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1 (or unset for the index's own), got {nprobe}")
        if any(ivf is None for ivf in ivfs):
            raise ValueError(f"nprobe={nprobe} given but index {index_dir} ({manifest.factory}) "
                             "is not an IVF index; leave --nprobe unset")
        for ivf in ivfs:
            ivf.nprobe = min(nprobe, ivf.nlist)
    if ivfs and all(ivf is not None for ivf in ivfs):
        effective = int(ivfs[0].nprobe)
    return ServedIndex(index_dir, manifest, indexes, rows, effective, manifest.dimension)


def open_encoder_index(index_dir: str, item_ids: Sequence[str]) -> ServedIndex:
    """The build's encoder list (dpsr_tf/indexing/encoder_index.py) as a ServedIndex: its shards
    (exact or IVF, nprobe stored), labelled as the dense shards are, so search_served searches it
    as it searches them.

    Raises:
      ValueError: the build has no encoder list, or an id of a shard the layout lacks.
    """
    faiss = _faiss()
    manifest = index_layout.read_manifest(index_dir)
    if manifest.encoder is None:
        raise ValueError(f"{index_dir} has no encoder list; add one with `dpsr index "
                         f"--encoder_only --output_dir={index_dir} --layout_dir=LAYOUT`")
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    indexes, rows = [], []
    for info in manifest.encoder.shards:
        indexes.append(faiss.read_index(os.path.join(index_dir, info.file)))
        rows.append(encoder_index.shard_rows(index_dir, manifest, info.shard, row_of))
    return ServedIndex(index_dir, manifest, indexes, rows, 0, manifest.encoder.dimension)


def check_index_embeddings(index_dir: str, item_emb: np.ndarray, item_ids: Sequence[str],
                           model_dir: Optional[str] = None, chunk: int = 65536) -> Optional[float]:
    """Checks the item embeddings `dpsr index` saved beside the shards against the model's.

    An index built from another checkpoint would rank with other item vectors than the ones
    the query tower was trained with.

    Args:
      index_dir: the build directory.
      item_emb: [N, d] float32 item embeddings of the evaluated model; row r = item_ids[r].
      item_ids: [N] layout item ids.

    Returns:
      The largest absolute difference, or None when the directory has no saved embeddings
      (an index built by dpsr_tf.indexing.index_builder.build_index directly).

    Raises:
      ValueError: a difference above EMBEDDING_TOLERANCE or mismatched saved files.
    """
    path = os.path.join(index_dir, EMBEDDINGS_FILE)
    if not os.path.exists(path):
        return None
    saved = np.load(path, mmap_mode="r")
    hint = _rebuild_hint(index_dir, model_dir)
    if saved.shape != item_emb.shape:
        raise ValueError(f"{path} has shape {saved.shape}, the model's item embeddings "
                         f"{item_emb.shape}: {hint}")
    saved_ids = index_layout.read_id_map(os.path.join(index_dir, EMBEDDING_IDS_FILE),
                                         expected_count=saved.shape[0])
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    try:
        rows = np.array([row_of[i] for i in saved_ids], np.int64)
    except KeyError as e:
        raise ValueError(f"{path}: item id {e.args[0]!r} is not in the layout: {hint}") from None
    worst = 0.0
    for lo in range(0, len(rows), chunk):
        diff = np.abs(np.asarray(saved[lo:lo + chunk], np.float32) - item_emb[rows[lo:lo + chunk]])
        worst = max(worst, float(diff.max(initial=0.0)))
    if worst > EMBEDDING_TOLERANCE:
        raise ValueError(f"index {index_dir} was built from other item embeddings than the "
                         f"evaluated checkpoint's (largest difference {worst:.4g} > "
                         f"{EMBEDDING_TOLERANCE}): evaluate the checkpoint it was built from "
                         f"(--checkpoint) or rebuild it; {hint}")
    return worst


def merge_shards_np(scores: Sequence[np.ndarray], rows: Sequence[np.ndarray],
                    k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Global top k of the shards' answers, as the proxy merges them (dpsr_tf/serving/proxy/merge.py).

    Shards hold disjoint items (open_served_index checks it), so the merge is a sort by score:
    stable, in shard order for ties, padding (row -1) dropped.

    Args:
      scores: per shard, [B, k_s] float32 scores, best first.
      rows: per shard, [B, k_s] int64 item rows; -1 marks padding.
      k: results per request.

    Returns:
      scores [B, k] float32 (-inf padding) and rows [B, k] int64 (-1 padding).
    """
    s = np.concatenate([np.where(r >= 0, x, -np.inf) for x, r in zip(scores, rows)], axis=1)
    r = np.concatenate(rows, axis=1)
    order = np.argsort(-s.astype(np.float64), axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(s, order, axis=1).astype(np.float32)
    top_r = np.take_along_axis(r, order, axis=1)
    top_r = np.where(np.isneginf(top_s), -1, top_r)
    pad = k - top_s.shape[1]
    if pad > 0:
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_r = np.pad(top_r, ((0, 0), (0, pad)), constant_values=-1)
    return top_s, top_r


def search_served(index: ServedIndex, query_heads: np.ndarray, k: int,
                  batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """The served top k of each request.

    Args:
      index: an open ServedIndex.
      query_heads: [Q, m, d] float32 query head embeddings.
      k: results per request (each head searches k items in each shard).
      batch_size: requests per FAISS search call.

    Returns:
      scores [Q, k] float32 descending (-inf padding) and item rows [Q, k] int64 (-1 padding).
    """
    query_heads = np.asarray(query_heads, np.float32)
    if query_heads.ndim != 3 or query_heads.shape[2] != index.dimension:
        raise ValueError(f"query_heads must be [num_queries, heads, {index.dimension}], "
                         f"got shape {query_heads.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q, m, _ = query_heads.shape
    out_s = np.full([q, k], -np.inf, np.float32)
    out_r = np.full([q, k], -1, np.int64)
    for lo in range(0, q, batch_size):
        hi = min(q, lo + batch_size)
        shard_scores, shard_rows = [], []
        for faiss_index, label_rows in zip(index.indexes, index.rows):
            scores = np.empty([hi - lo, m, k], np.float32)
            labels = np.empty([hi - lo, m, k], np.int64)
            for h in range(m):
                scores[:, h], labels[:, h] = faiss_index.search(
                    np.ascontiguousarray(query_heads[lo:hi, h]), k)
            s, lab, _ = merge_heads_np(scores, labels, k)
            shard_scores.append(s)
            shard_rows.append(np.where(lab >= 0, label_rows[np.maximum(lab, 0)]
                                       if len(label_rows) else -1, -1))
        out_s[lo:hi], out_r[lo:hi] = merge_shards_np(shard_scores, shard_rows, k)
    return out_s, out_r


def search_with_feedback(index: ServedIndex, query_heads: np.ndarray, item_emb: np.ndarray,
                         k: int, feedback: FeedbackConfig,
                         batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """search_served after dense feedback, as a feedback servable searches: a first search of
    feedback.items, each head moved toward their mean (search/dense_feedback.py), then the
    search of k. item_emb: [N, d] the layout rows' item embeddings. Without feedback, the plain
    search. The first hits are the whole index's, merged over its shards, as a sharded feedback
    servable behind the proxy finds them (dpsr_tf/serving/proxy/feedback_rounds.py)."""
    if not feedback.enabled:
        return search_served(index, query_heads, k, batch_size)
    _, first = search_served(index, query_heads, feedback.items, batch_size)
    moved = dense_feedback.moved_heads_np(query_heads, first, item_emb, feedback)
    return search_served(index, moved, k, batch_size)


def served_metrics(scorer, eval_set, index: ServedIndex, cfg: evaluate_lib.EvalConfig,
                   soft_metrics: Dict[str, float],
                   log: Callable[[str], None] = print,
                   served: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Dict[str, float]:
    """Retrieval metrics of the max and served rankings and the recall lost to each.

    Args:
      scorer: an evaluate.EmbeddingScorer (request_emb [Q, m, d], item_emb [N, d], beta).
      eval_set: the split's EvalSet (Q requests).
      index: the open ServedIndex.
      cfg: the evaluation's EvalConfig (recall_ks, batch_size).
      soft_metrics: evaluate.evaluate_scorer's result for the soft dot product.
      served: search_served's (scores, rows) of these requests at k = the largest recall
        cut-off (capped at the corpus), when the caller already searched; None = search here.

    Returns:
      {max_<metric>, served_<metric>, served_overlap@K, recall_lost_to_max@K,
       recall_lost_to_index@K, max_equals_soft_dot, served_* settings}.
    """
    start = time.time()
    num_items = scorer.item_emb.shape[0]
    k = min(max(cfg.recall_ks + (10,)), num_items)
    heads = scorer.request_emb
    relevant = (eval_set.relevant_splits, eval_set.relevant_rows, eval_set.relevant_gains)
    exact = metrics_lib.retrieve(
        lambda idx: soft_dot_product_np(heads[idx], scorer.item_emb, 0.0), len(eval_set), k,
        cfg.batch_size)
    if served is None:
        served = search_served(index, heads, k, cfg.batch_size)
    served_scores, served = served
    log(f"  served search of {len(eval_set)} requests x {heads.shape[1]} heads through "
        f"{index.directory} ({index.manifest.factory}, {index.manifest.num_shards} shard(s), "
        f"nprobe={index.nprobe or 'n/a'}): {time.time() - start:.1f}s")
    equal = scorer.beta == 0 or heads.shape[1] == 1
    out: Dict[str, float] = {"max_equals_soft_dot": bool(equal)}
    for name, ranked in (("max", exact), ("served", served)):
        values = metrics_lib.retrieval_metrics(ranked, *relevant, recall_ks=cfg.recall_ks,
                                               with_per_request=cfg.per_request)
        out.update({f"{name}_{key}": v for key, v in values.items() if key != "requests"})
    for cut in cfg.recall_ks:
        top = min(cut, k)
        overlap = [len(set(a[:top].tolist()) & set(b[:top].tolist())) / top
                   for a, b in zip(served, exact)]
        out[f"served_overlap@{cut}"] = float(np.mean(overlap))
        key = f"recall@{cut}"
        out[f"recall_lost_to_max@{cut}"] = (0.0 if equal else
                                            soft_metrics[key] - out[f"max_{key}"])
        out[f"recall_lost_to_index@{cut}"] = out[f"max_{key}"] - out[f"served_{key}"]
    if cfg.tie_aware:   # the served list's length k; the catalog's other items tie after it
        evaluate_lib.add_tie_aware(out, tie_metrics.per_request_tie_metrics(
            served, served_scores, *relevant, recall_ks=cfg.recall_ks, catalog_size=num_items),
            cfg, prefix="served_")
    out.update({"served_index_dir": index.directory, "served_factory": index.manifest.factory,
                "served_num_shards": index.manifest.num_shards, "served_nprobe": index.nprobe,
                "served_seconds": round(time.time() - start, 1)})
    return out


def evaluate_served_model(model_dir: str, index_dir: str, layout_dir: Optional[str] = None,
                          cfg: evaluate_lib.EvalConfig = evaluate_lib.EvalConfig(),
                          checkpoint: Optional[str] = None, nprobe: Optional[int] = None,
                          log: Callable[[str], None] = print) -> Dict[str, float]:
    """evaluate.evaluate_model's metrics plus the max and served rankings' (module docstring).

    Args:
      model_dir: written by `dpsr train`.
      index_dir: written by `dpsr index` from that model (and checkpoint).
      layout_dir: default the model's training layout.
      cfg: an EvalConfig.
      checkpoint: default the newest.
      nprobe: IVF lists to probe; None = the index's own.

    Raises:
      FileNotFoundError, ValueError: a missing or mismatched index (read_index_manifest,
        open_served_index, check_index_embeddings) or model/layout (evaluate.py).
    """
    model_config, saved_spec = load_model_config(model_dir)
    spec = layout_lib.load_layout_spec(layout_dir or saved_spec.layout_dir)
    # Fail on a wrong index before the minutes of embedding.
    read_index_manifest(index_dir, model_config.embedding_dim, spec.num_items, model_dir)
    scorer, spec, eval_set, pairs, checkpoint = evaluate_lib.load_model_scorer(
        model_dir, layout_dir, cfg, checkpoint, log)
    item_ids = layout_lib.load_item_ids(spec)
    check_index_embeddings(index_dir, scorer.item_emb, item_ids, model_dir)
    index = open_served_index(index_dir, item_ids, model_config.embedding_dim, nprobe, model_dir)
    out = evaluate_lib.evaluate_scorer(scorer, spec, eval_set, pairs, cfg, log)
    out["checkpoint"] = checkpoint
    out.update(served_metrics(scorer, eval_set, index, cfg, out, log))
    return out


def summarize_served(metrics: Dict[str, float],
                     recall_ks: Sequence[int] = (10, 100, 1000)) -> str:
    """Printable lines: the max and served rankings' metrics and the recall lost to each."""
    def line(prefix):
        keys = [f"recall@{k}" for k in recall_ks] + ["ndcg@10", "mrr@10"]
        return "  ".join(f"{key}={metrics[prefix + key]:.4f}" for key in keys
                         if prefix + key in metrics)
    note = " (= soft dot: beta=0 or one head)" if metrics.get("max_equals_soft_dot") else ""
    nprobe = metrics.get("served_nprobe") or "n/a"
    # With dense feedback the served list answers moved query heads: it may beat the exact one.
    feedback = f", {metrics['served_feedback']}" if metrics.get("served_feedback") else ""
    lost_note = " (negative: the feedback list found more)" if feedback else ""
    lost = "  ".join(
        f"to_max@{k}={metrics[f'recall_lost_to_max@{k}']:+.4f} "
        f"to_index@{k}={metrics[f'recall_lost_to_index@{k}']:+.4f}"
        for k in recall_ks if f"recall_lost_to_max@{k}" in metrics)
    overlap = "  ".join(f"overlap@{k}={metrics[f'served_overlap@{k}']:.4f}" for k in recall_ks
                        if f"served_overlap@{k}" in metrics)
    return "\n".join([
        f"  max over heads, exact{note}: {line('max_')}",
        f"  served ({metrics.get('served_factory')}, {metrics.get('served_num_shards')} "
        f"shard(s), nprobe={nprobe}{feedback}): {line('served_')}",
        f"  recall lost{lost_note}: {lost}",
        f"  served top-K overlap with exact max: {overlap}"])
