"""The paper's Figure 7: the random-negative weight alpha against the popularity of what the
model retrieves.

For each alpha the report trains a small model from the reference model's configuration (same
layout, same architecture, `alpha` replaced, random negatives switched on for the softmax loss)
for a fixed step budget, then ranks the eval split's requests over the whole catalog and
reports the mean log(1 + train clicks) of the top-k items (popularity = positive interactions
of the layout's train split).
"""
import dataclasses
import os
import shutil
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.model.model_dir import load_model_config, read_config_file
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig


def item_popularity(spec) -> np.ndarray:
    """[N] int64 positive (click or human-positive) train interactions of each item row."""
    rec = layout_lib.read_records(spec, "train")
    rows = rec["item_row"][rec["label_kind"] != 2].astype(np.int64)
    return np.bincount(rows, minlength=spec.num_items).astype(np.int64)


def mean_log_popularity(retrieved: np.ndarray, popularity: np.ndarray) -> float:
    """Mean over requests and ranks of log(1 + popularity) of [Q, k] retrieved item rows."""
    return float(np.mean(np.log1p(popularity[retrieved].astype(np.float64))))


def sweep_model_config(base, alpha: float):
    """The reference ModelConfig with `alpha` replaced; the softmax loss gets as many random
    negatives as the hinge draws (num_negatives) when it had none, or alpha would do nothing."""
    changes = {"alpha": float(alpha)}
    if base.loss == "sampled_softmax" and base.softmax_random_negatives == 0:
        changes["softmax_random_negatives"] = max(1, base.num_negatives)
    return dataclasses.replace(base, **changes)


def alpha_dir_name(alpha: float) -> str:
    return f"alpha_{alpha:g}"


def run_alpha_sweep(reference_model_dir: str, alphas: Sequence[float], steps: int,
                    work_dir: str, cfg: evaluate_lib.EvalConfig, ks: Sequence[int] = (10, 100),
                    keep_checkpoints: bool = False,
                    log: Callable[[str], None] = print) -> Dict[str, object]:
    """Trains one model per alpha for `steps` steps and measures what it retrieves.

    Args:
      reference_model_dir: a `dpsr train` model directory (its layout and configuration).
      alphas: values in [0, 1].
      steps: training steps of each model.
      work_dir: models go to work_dir/alpha_<a> (replaced).
      cfg: the evaluation split and settings.
      ks: cut-offs of the popularity and recall.
      keep_checkpoints: keep the checkpoints (else only the events and dpsr_config.json stay).

    Returns:
      {"alphas": [...], "steps": steps, "runs": [{"alpha", "model_dir", "train_seconds",
       "mean_log_popularity@k", "recall@k", ...}], "catalog_mean_log_popularity": float}.

    Raises:
      ValueError: an alpha outside [0, 1] or steps < 1.
    """
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad or not alphas:
        raise ValueError(f"--alpha_sweep values must be in [0, 1], got {list(alphas)}")
    if steps < 1:
        raise ValueError(f"--sweep_steps must be >= 1, got {steps}")
    base, spec = load_model_config(reference_model_dir)
    saved_train = read_config_file(reference_model_dir).get("train", {})
    popularity = item_popularity(spec)
    runs: List[Dict[str, object]] = []
    for n, alpha in enumerate(alphas):
        model_dir = os.path.join(work_dir, alpha_dir_name(alpha))
        shutil.rmtree(model_dir, ignore_errors=True)
        model_config = sweep_model_config(base, alpha)
        train = TrainConfig(layout_dir=spec.layout_dir, model_dir=model_dir,
                            batch_size=int(saved_train.get("batch_size", 256)), train_steps=steps,
                            save_checkpoints_steps=steps, save_summary_steps=max(1, steps // 10),
                            eval_steps=1, seed=int(saved_train.get("seed", 0)))
        log(f"alpha sweep {n + 1}/{len(alphas)}: alpha={alpha:g}, {steps} steps -> {model_dir}")
        start = time.time()
        os.environ.pop("TF_CONFIG", None)
        driver.train_and_evaluate(model_config, train)
        seconds = time.time() - start
        scorer, _, eval_set, _, _ = evaluate_lib.load_model_scorer(model_dir, None, cfg,
                                                                   log=lambda _: None)
        retrieved = metrics_lib.retrieve(scorer.score_requests, len(eval_set), max(ks),
                                         cfg.batch_size)
        run = {"alpha": float(alpha), "model_dir": model_dir, "train_seconds": round(seconds, 1),
               "loss": model_config.loss,
               "random_negatives": int(model_config.random_negatives_for(train.batch_size))}
        for k in ks:
            run[f"mean_log_popularity@{k}"] = mean_log_popularity(retrieved[:, :k], popularity)
        run.update({key: value for key, value in metrics_lib.retrieval_metrics(
            retrieved, eval_set.relevant_splits, eval_set.relevant_rows,
            eval_set.relevant_gains, recall_ks=tuple(k for k in ks)).items()
            if key.startswith("recall@")})
        runs.append(run)
        if not keep_checkpoints:
            for name in os.listdir(model_dir):
                if name.startswith("model.ckpt") or name in ("checkpoint", "graph.pbtxt"):
                    os.remove(os.path.join(model_dir, name))
    return {"alphas": [float(a) for a in alphas], "steps": int(steps), "runs": runs,
            "catalog_mean_log_popularity": float(np.mean(np.log1p(popularity.astype(
                np.float64)))),
            "ks": list(ks)}
