"""Gradient-boosted tree baselines on the same numeric features (the paper's XGBoost row).

XGBoost with objective rank:pairwise (RankNet-style pairs inside each query group) and, as a
second baseline, rank:ndcg (LambdaMART). Groups are sessions; labels are the sessions' graded
labels mapped to dense integer grades (their order is all a pairwise objective uses).
"""
from typing import Dict

import numpy as np


def _xgboost():
    try:
        import xgboost  # optional: the tree baselines' package (not a runtime requirement)
    except ImportError as e:
        raise ImportError("the XGBoost baseline needs xgboost: pip install xgboost==2.0.3 (it is "
                          "in requirements.txt)") from e
    return xgboost


def dense_grades(labels: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[C] int grades: index of each label among the sorted distinct train labels."""
    return np.searchsorted(levels, labels, side="right").astype(np.int32) - 1


def train_xgboost(features: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                  objective: str = "rank:pairwise", rounds: int = 300, seed: int = 0,
                  params: Dict = None):
    """A booster trained on TRAIN candidates grouped by session.

    Args:
      features: [C, F] float32; labels: [C] float32; splits: [S + 1] int64 session bounds.
      objective: "rank:pairwise" or "rank:ndcg".
    """
    xgb = _xgboost()
    levels = np.unique(labels)
    dtrain = xgb.DMatrix(features, label=dense_grades(labels, levels))
    dtrain.set_group(np.diff(splits).astype(np.uint32))
    p = {"objective": objective, "eta": 0.1, "max_depth": 6, "min_child_weight": 1,
         "subsample": 0.8, "colsample_bytree": 0.9, "seed": seed, "nthread": 2,
         "tree_method": "hist", "eval_metric": "ndcg@5"}
    if objective == "rank:ndcg":
        p["lambdarank_pair_method"] = "topk"
    p.update(params or {})
    return xgb.train(p, dtrain, num_boost_round=rounds)


def predict(booster, features: np.ndarray) -> np.ndarray:
    xgb = _xgboost()
    return booster.predict(xgb.DMatrix(features)).astype(np.float32)
