"""Recall@100 of a trained model on the subsets SearchGCN is meant for, beside the whole split.

    python bench/searchgcn_subsets.py --model_dir=M [--model_dir=M2 ...] [--k=100]

Prints one JSON line per model with, on the layout's eval split (exact ranking, as `dpsr
evaluate` ranks without --served):
  recall        Recall@k over all requests (the dashboard metric)
  short         Recall@k over requests whose query has 1-2 whitespace-separated words
  unseen        Recall@k over requests whose query has no train record (never in the graph)
  seen          Recall@k over the other requests
  low_click     share of (request, relevant item) pairs found in the top k, over the relevant
                items whose train click count is in the catalog's bottom quartile (<= the 25th
                percentile of per-item positive train records, zero-click items included)
  all_pairs     the same share over every relevant pair (to compare low_click with)
"""
import json
import sys

import numpy as np
from absl import app, flags

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation.evaluate import EmbeddingScorer, EvalConfig, load_split
from dpsr_tf.evaluation.metrics import per_request_metrics, retrieve
from dpsr_tf.model.embedder import CheckpointEmbedder

_MODELS = flags.DEFINE_multi_string("model_dir", None, "Trained model directories.")
_K = flags.DEFINE_integer("k", 100, "Recall cut-off.")


def _train_counts(spec):
    records = layout_lib.read_records(spec, "train")
    positive = records[records["label_kind"] != 2]
    clicks = np.bincount(positive["item_row"], minlength=spec.num_items)
    return clicks, set(np.unique(positive["query_row"]).tolist())


def subset_recall(model_dir: str, k: int) -> dict:
    with CheckpointEmbedder(model_dir) as emb:
        spec = emb.layout_spec
        eval_set, pairs = load_split(spec, EvalConfig())
        scorer = EmbeddingScorer(emb, spec, eval_set, pairs)
    retrieved = retrieve(scorer.score_requests, len(eval_set.query_rows), k)
    recall = per_request_metrics(retrieved, eval_set.relevant_splits, eval_set.relevant_rows,
                                 eval_set.relevant_gains, recall_ks=(k,))[f"recall@{k}"]
    clicks, train_queries = _train_counts(spec)
    short = np.array([len(q.split()) <= 2 for q in eval_set.queries])
    unseen = np.array([int(r) not in train_queries for r in eval_set.query_rows])
    threshold = np.percentile(clicks, 25)
    sizes = np.diff(eval_set.relevant_splits)
    request_of_pair = np.repeat(np.arange(len(sizes)), sizes)
    hit = np.array([row in set(retrieved[q].tolist()) for q, row in
                    zip(request_of_pair, eval_set.relevant_rows)])
    low = clicks[eval_set.relevant_rows] <= threshold

    def mean(mask):
        return round(float(np.mean(recall[mask])), 4) if mask.any() else None

    return {"model_dir": model_dir, "tower": emb.model_config.tower, "requests": len(recall),
            f"recall@{k}": mean(np.ones_like(short)), "short": mean(short),
            "short_requests": int(short.sum()), "unseen": mean(unseen),
            "unseen_requests": int(unseen.sum()), "seen": mean(~unseen),
            "low_click": round(float(hit[low].mean()), 4) if low.any() else None,
            "low_click_pairs": int(low.sum()), "low_click_threshold": float(threshold),
            "all_pairs": round(float(hit.mean()), 4)}


def main(argv):
    del argv
    for model_dir in _MODELS.value:
        print(json.dumps(subset_recall(model_dir, _K.value)), flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    sys.exit(app.run(main))
