"""What is served through one or more indexes of one model, beside the model's exact search.

For a model directory and index build directories made from it (`dpsr index`, or
`dpsr index --from_model_pq` for a --joint_pq model), every request of the split is ranked

  exact     max over heads by brute force over the model's (unquantized) item embeddings;
  <index>   as the servable ranks it (dpsr_tf/evaluation/served.py: each head searched through
            every shard at the index's nprobe or the one given, merged by best head, shards
            merged by score),

and scored by recall@10/100/1000, precision@100 (relevant items among the first 100, over 100),
nDCG@10 and the overlap of the index's top 100 / 1000 with the exact top 100 / 1000.

    rows = compare_indexes("/models/m_pq", ["/idx/m_pq_joint", "/idx/m_pq_faiss"], nprobe=16)
    rows["exact"]["recall@100"], rows["/idx/m_pq_joint"]["precision@100"]

bench/joint_pq_compare.py prints the table of docs/results.md ("Joint PQ").
"""
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import served as served_lib
from dpsr_tf.model.scoring import soft_dot_product_np

PRECISION_K = 100


def precision_at(retrieved: np.ndarray, relevant_splits: np.ndarray,
                 relevant_rows: np.ndarray, k: int) -> float:
    """Mean over requests of |relevant among the first k| / k.

    Args:
      retrieved: [Q, K] int64 item rows, best first (-1 padding counts as not relevant).
      relevant_splits: [Q + 1]; relevant_rows: [R] (metrics.retrieval_metrics' layout).
    """
    hits = []
    for i in range(retrieved.shape[0]):
        relevant = set(relevant_rows[relevant_splits[i]:relevant_splits[i + 1]].tolist())
        hits.append(sum(1 for r in retrieved[i, :k].tolist() if r in relevant) / float(k))
    return float(np.mean(hits)) if hits else 0.0


def ranking_metrics(retrieved: np.ndarray, eval_set, recall_ks=(10, 100, 1000)) -> Dict:
    """recall@K, nDCG@10, MRR@10 (metrics.retrieval_metrics) and precision@100."""
    out = metrics_lib.retrieval_metrics(retrieved, eval_set.relevant_splits,
                                        eval_set.relevant_rows, eval_set.relevant_gains,
                                        recall_ks=recall_ks)
    out[f"precision@{PRECISION_K}"] = precision_at(retrieved, eval_set.relevant_splits,
                                                   eval_set.relevant_rows, PRECISION_K)
    return out


def _overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(x[:k].tolist()) & set(y[:k].tolist()) - {-1}) / k
                          for x, y in zip(a, b)]))


def compare_indexes(model_dir: str, index_dirs: Sequence[str], layout_dir: Optional[str] = None,
                    nprobe: Optional[int] = None, checkpoint: Optional[str] = None,
                    cfg: evaluate_lib.EvalConfig = evaluate_lib.EvalConfig(),
                    log: Callable[[str], None] = print) -> Dict[str, Dict]:
    """{"exact": metrics, <index_dir>: metrics + factory, nprobe, overlap@K} (module docstring).

    Raises:
      FileNotFoundError, ValueError: an index built from other item embeddings than this
        model's checkpoint (served.check_index_embeddings), or for another catalog.
    """
    scorer, spec, eval_set, _, ckpt = evaluate_lib.load_model_scorer(model_dir, layout_dir, cfg,
                                                                     checkpoint, log)
    item_ids = layout_lib.load_item_ids(spec)
    heads = scorer.request_emb
    num_items, dim = scorer.item_emb.shape
    k = min(max(cfg.recall_ks), num_items)
    exact = metrics_lib.retrieve(
        lambda idx: soft_dot_product_np(heads[idx], scorer.item_emb, 0.0), len(eval_set), k,
        cfg.batch_size)
    out = {"exact": {**ranking_metrics(exact, eval_set, cfg.recall_ks), "checkpoint": ckpt}}
    for index_dir in index_dirs:
        served_lib.check_index_embeddings(index_dir, scorer.item_emb, item_ids, model_dir)
        index = served_lib.open_served_index(index_dir, item_ids, dim, nprobe, model_dir)
        _, rows = served_lib.search_served(index, heads, k, cfg.batch_size)
        values = ranking_metrics(rows, eval_set, cfg.recall_ks)
        for cut in (100, 1000):
            if cut <= k:
                values[f"overlap@{cut}"] = _overlap(rows, exact, cut)
        values.update({"factory": index.manifest.factory, "nprobe": index.nprobe,
                       "index_bytes": sum(s.index_bytes for s in index.manifest.shards)})
        out[index_dir] = values
        log(f"  {index_dir} ({index.manifest.factory}, nprobe {index.nprobe}): "
            f"recall@100 {values['recall@100']:.4f} recall@1000 {values.get('recall@1000', 0):.4f}"
            f" precision@100 {values['precision@100']:.4f}")
    return out
