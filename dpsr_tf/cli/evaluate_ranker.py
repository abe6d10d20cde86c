"""dpsr evaluate-ranker: session AUC and NDCG@5/@10 (per-session averages) of the DPR ranker
on the eval sessions, beside the DPSR score alone and XGBoost baselines trained in the same run
on the same split: on the numeric features, and on the numeric + hashed sparse features
(ranking/sparse_features.py); DPR minus each baseline with a paired test over sessions
(docs/ranking.md)."""
import json

import numpy as np
from absl import flags, logging

from dpsr_tf.cli import ranker_flags as rf
from dpsr_tf.ranking import baselines
from dpsr_tf.ranking import features as features_lib
from dpsr_tf.ranking import metrics
from dpsr_tf.ranking import sparse_features
from dpsr_tf.ranking import train as train_lib
from dpsr_tf.evaluation import paired

_BASELINES = flags.DEFINE_list("baselines", ["xgboost_pairwise", "xgboost_sparse", "lambdamart"],
                               "Tree baselines to train and score: xgboost_pairwise "
                               "(rank:pairwise), xgboost_sparse (rank:pairwise on numeric + "
                               "hashed sparse features), lambdamart (rank:ndcg); empty for none.")
_SPARSE_BUCKETS = flags.DEFINE_integer("sparse_buckets", 4096, "Hash buckets of each sparse "
                                       "block of xgboost_sparse.")
_ROUNDS = flags.DEFINE_integer("xgboost_rounds", 300, "Boosting rounds of each baseline.")
_OUTPUT = flags.DEFINE_string("output_json", None, "Also write the table as JSON here.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Ranker checkpoint; default the newest.")
flags.mark_flags_as_required(["sessions_dir", "model_dir"])

_OBJECTIVES = {"xgboost_pairwise": "rank:pairwise", "xgboost_sparse": "rank:pairwise",
               "lambdamart": "rank:ndcg"}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        config = train_lib.load_config(rf.MODEL_DIR.value)
        data = train_lib.prepare_ranker_data(
            rf.SESSIONS.value, rf.DPSR_MODEL.value or config.dpsr_model_dir,
            rf.DPSR_INDEX.value or config.dpsr_index_dir, rf.MODEL_DIR.value,
            layout_dir=rf.LAYOUT.value, retrieved_negatives=config.retrieved_negatives,
            retrieval_depth=config.retrieval_depth,
            history_length=config.history_length if "user" in config.feature_groups else None)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dpsr evaluate-ranker: {e}") from None
    ev = data.eval_sessions
    rows = {}
    per = {}
    dpsr_col = features_lib.FEATURE_NAMES.index("dpsr_score")
    bm25_col = features_lib.FEATURE_NAMES.index("bm25")
    rows["bm25 (feature alone)"] = metrics.session_metrics(
        data.eval_features[:, bm25_col], ev.labels, ev.splits)
    rows["dpsr score (feature alone)"] = metrics.session_metrics(
        data.eval_features[:, dpsr_col], ev.labels, ev.splits)
    for name in [b for b in _BASELINES.value if b]:
        if name not in _OBJECTIVES:
            raise SystemExit(f"dpsr evaluate-ranker: unknown baseline {name!r}; choose from "
                             f"{sorted(_OBJECTIVES)}")
        train_x, eval_x = data.train_features, data.eval_features
        if name == "xgboost_sparse":
            train_x, eval_x = (sparse_features.sparse_features(
                feats, table, data.titles, config.tokenizer, users,
                train_lib.user_config(data.layout_spec)["user_vocab_sizes"],
                _SPARSE_BUCKETS.value) for feats, table, users in (
                    (data.train_features, data.train_sessions, data.train_users),
                    (data.eval_features, ev, data.eval_users)))
        booster = baselines.train_xgboost(train_x, data.train_sessions.labels,
                                          data.train_sessions.splits, _OBJECTIVES[name],
                                          rounds=_ROUNDS.value, seed=config.seed)
        pred = baselines.predict(booster, eval_x)
        rows[name] = metrics.session_metrics(pred, ev.labels, ev.splits)
        per[name] = metrics.per_session(pred, ev.labels, ev.splits)
    scores = train_lib.predict_scores(rf.MODEL_DIR.value, data, ev, data.eval_features,
                                      checkpoint=_CHECKPOINT.value)
    rows["dpr (siamese)"] = metrics.session_metrics(scores, ev.labels, ev.splits)
    dpr = metrics.per_session(scores, ev.labels, ev.splits)
    tests = []
    for name, other in per.items():
        diff = metrics.paired_difference(dpr, other)
        rows[f"dpr - {name}"] = {f"{k}_diff": v for k, v in diff.items()}
        for key in ("session_auc", "ndcg@5"):
            tests.append(paired.paired_test(dpr[key], other[key], key, "dpr", name,
                                            seed=config.seed))
    print(f"{'model':<28} {'session_auc':>11} {'ndcg@5':>7} {'ndcg@10':>7} {'sessions':>8}")
    for name, m in rows.items():
        if name.startswith("dpr - "):
            print(f"{name:<28} " + "  ".join(f"{k[:-5]} {v[0]:+.4f} +- {v[1]:.4f} (se)"
                                            for k, v in m.items()))
            continue
        print(f"{name:<28} {m['session_auc']:>11.4f} {m['ndcg@5']:>7.4f} {m['ndcg@10']:>7.4f} "
              f"{m['sessions']:>8}")
    for t in tests:
        print(t.line())
    if _OUTPUT.value:
        rows["paired_tests"] = [t.to_json() for t in tests]
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
