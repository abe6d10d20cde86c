"""Training a rewriter: vocabulary, pairs, tf.estimator loop, and the model directory.

<model_dir>/
  rewriter_config.json   RewriterConfig (vocab_size filled in) + the layout it learned from
  units.txt              the unit vocabulary (dpsr_tf/rewriting/units.py)
  model.ckpt-*           checkpoints (tf.estimator), events for TensorBoard
"""
import dataclasses
import json
import os
import time
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf

from dpsr_tf.rewriting import data as data_lib
from dpsr_tf.rewriting import model as model_lib
from dpsr_tf.rewriting import units as units_lib
from dpsr_tf.rewriting.config import RewriterConfig
from dpsr_tf.model.progress import ProgressHook

CONFIG_JSON = "rewriter_config.json"
UNITS_TXT = "units.txt"


def load_rewriter(model_dir: str) -> Tuple[RewriterConfig, units_lib.UnitVocab, dict]:
    """(config, vocabulary, the config file's other fields) of a trained rewriter directory.

    Raises:
      FileNotFoundError: not a `dpsr train-rewriter` directory.
      ValueError: the config file is not JSON, has no config section, or has a field
        RewriterConfig does not have (naming the file and field).
    """
    path = os.path.join(model_dir, CONFIG_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: train a rewriter with `dpsr train-rewriter "
                                f"--model_dir={model_dir}` first")
    with open(path, encoding="utf-8") as f:
        try:
            body = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(body, dict) or "config" not in body:
        raise ValueError(f"{path}: expected an object with a 'config' section (written by "
                         f"`dpsr train-rewriter`)")
    cfg = RewriterConfig.from_dict(body.pop("config"), source=path, path="config")
    vocab = units_lib.UnitVocab.load(os.path.join(model_dir, UNITS_TXT))
    if len(vocab) != cfg.vocab_size:
        raise ValueError(f"{model_dir}: {UNITS_TXT} has {len(vocab)} units but the config says "
                         f"{cfg.vocab_size}")
    return cfg, vocab, body


def train_rewriter(layout_dir: str, model_dir: str, cfg: RewriterConfig,
                   max_units: int = 4000,
                   log_every: int = 100, save_every: int = 500,
                   log: Callable[[str], None] = print,
                   holdout_percent: int = 0) -> Dict[str, float]:
    """Trains (or resumes) a rewriter on the layout's train pairs; returns the final losses on
    the eval split's pairs (teacher-forced), or {} when the eval split has none.

    Args:
      cfg: shape and losses; vocab_size is set from the vocabulary built here (or read back
        when model_dir already holds one, so a resumed run keeps its ids).
      max_units: vocabulary size bound, reserved ids included.
      holdout_percent: the train queries with data.in_holdout(query, holdout_percent) are
        left out of training (recorded in rewriter_config.json), so that rewrites of them can
        tune the filters and the merge on data the rewriter never saw and that is not the
        eval split.
    """
    start = time.time()
    pairs = data_lib.load_pairs(layout_dir, "train", holdout_percent=holdout_percent)
    os.makedirs(model_dir, exist_ok=True)
    units_path = os.path.join(model_dir, UNITS_TXT)
    if os.path.exists(units_path):
        vocab = units_lib.UnitVocab.load(units_path)
    else:
        vocab = units_lib.UnitVocab.build(pairs.queries + pairs.titles, max_units)
        vocab.save(units_path)
    cfg = dataclasses.replace(cfg, vocab_size=len(vocab))
    cfg.validate()
    with open(os.path.join(model_dir, CONFIG_JSON), "w", encoding="utf-8") as f:
        json.dump({"config": cfg.to_dict(), "layout_dir": os.path.abspath(layout_dir),
                   "train_pairs": len(pairs), "holdout_percent": int(holdout_percent)},
                  f, indent=2, sort_keys=True)
    queries, titles = data_lib.encode_pairs(pairs, vocab, cfg.query_len, cfg.title_len)
    log(f"rewriter: {len(pairs)} train pairs (held-out queries: {holdout_percent}%), "
        f"{len(vocab)} units, "
        f"{cfg.num_layers} layers x d={cfg.d_model}, {cfg.train_steps} steps of "
        f"{cfg.batch_size}")
    run_config = tf.estimator.RunConfig(model_dir=model_dir, tf_random_seed=cfg.seed,
                                        save_checkpoints_steps=save_every,
                                        keep_checkpoint_max=3, log_step_count_steps=None,
                                        save_summary_steps=log_every)
    def hook_fn(features, labels, mode, params):
        spec = model_lib.model_fn(features, labels, mode, params)
        if mode == tf.estimator.ModeKeys.TRAIN:
            spec = spec._replace(training_hooks=[ProgressHook(spec.loss, cfg.batch_size,
                                                              log_every, "rewriter")])
        return spec

    estimator = tf.estimator.Estimator(hook_fn, config=run_config, params={"config": cfg})
    estimator.train(data_lib.input_fn(queries, titles, cfg.batch_size, cfg.seed),
                    max_steps=cfg.train_steps)
    log(f"rewriter trained to step {cfg.train_steps} in {time.time() - start:.0f}s")
    try:
        eval_pairs = data_lib.load_pairs(layout_dir, "eval")
    except ValueError:
        return {}
    eq, et = data_lib.encode_pairs(eval_pairs, vocab, cfg.query_len, cfg.title_len)
    result = estimator.evaluate(data_lib.input_fn(eq, et, 256, cfg.seed, repeat=False))
    out = {k: float(v) for k, v in result.items() if k.startswith("loss")}
    log(f"eval-split pairs ({len(eval_pairs)}), teacher-forced losses: "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(out.items())))
    return out
