"""DPR, the pairwise Siamese ranker (Li et al., SIGIR'19 SIRIP): the tower and the model_fn.

One tower scores one (query, item) pair:

    query text --Dpsr>Tokenize (word unigrams + bigrams)--> sum-pooled token embeddings  q [e]
    item title --Dpsr>Tokenize (same config, same table)--> sum-pooled token embeddings  t [e]
    numeric features [F] (dpsr_tf/ranking/features.py) --(x - mean) / std (train split)--> z
    [q, t, q * t, z] --3 ReLU layers (hidden_units)--> linear --> logit

Training feeds pairs (a, b) of the same session: both sides go through the SAME tower (the
variables live under "dpr/" with AUTO_REUSE, so the two calls share every weight) and the loss
is the sigmoid cross-entropy of logit_a - logit_b against label = 1 iff a was preferred. At
serving one tower call scores each candidate alone.

Checkpoint names:
  dpr/embeddings/tokens                 [tokenizer.num_buckets, token_embedding_dim]
  dpr/tower/layer_<i>/{kernel,bias}     i = 0..len(hidden_units) (the last is the logit)
"""
import dataclasses
import os
from typing import Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from dpsr_tf import config_json
from dpsr_tf.model import embedding
from dpsr_tf.ranking.features import NUM_FEATURES
from dpsr_tf.tokenization import tokenize_op
from dpsr_tf.tokenization.config import TokenizerConfig

SCOPE = "dpr"
CONFIG_FILE = "ranker_config.json"


def default_tokenizer() -> TokenizerConfig:
    """Word unigrams and bigrams (the paper's text features), CJK characters and pairs."""
    return TokenizerConfig(word_unigrams=True, word_bigrams=True, letter_trigrams=False,
                           cjk_unigrams=True, cjk_bigrams=True, num_buckets=1 << 18)


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """Hyper-parameters of the DPR tower and its training.

    Attributes:
      tokenizer: the text features of query and title (one token table for both).
      token_embedding_dim: width of a token embedding.
      combiner: "sum" (the paper), "mean" or "sqrtn".
      hidden_units: the ReLU layers (the paper: 3), then a linear layer to one logit.
      feature_mean, feature_std: [F] train-split moments of the numeric features (in-graph
        normalization); filled by training.
      learning_rate, optimizer: "adagrad" or "adam".
      batch_size: pairs per step.
      max_pairs_per_session: cap of pairs a session contributes (sessions.build_pairs).
      seed: pairs, shuffling and initialization.
      dpsr_model_dir, dpsr_index_dir: the retrieval model whose score and rank are features.
      retrieved_negatives: unshown retrieved items added to each TRAIN session
        (train.prepare_ranker_data).
      retrieval_depth: those items are drawn from the DPSR top `retrieval_depth` of the
        session's query; set it to the depth the servable re-ranks (`dpsr export --rerank_n`),
        so training sees the items serving will ask it to order.
    """

    tokenizer: TokenizerConfig = dataclasses.field(default_factory=default_tokenizer)
    token_embedding_dim: int = 32
    combiner: str = "sum"
    hidden_units: Tuple[int, ...] = (128, 64, 32)
    feature_mean: Tuple[float, ...] = (0.0,) * NUM_FEATURES
    feature_std: Tuple[float, ...] = (1.0,) * NUM_FEATURES
    learning_rate: float = 0.05
    optimizer: str = "adagrad"
    batch_size: int = 256
    max_pairs_per_session: int = 32
    seed: int = 0
    dpsr_model_dir: str = ""
    dpsr_index_dir: str = ""
    retrieved_negatives: int = 0
    retrieval_depth: int = 100

    def validate(self):
        if self.retrieval_depth < 1:
            raise ValueError(f"retrieval_depth must be >= 1, got {self.retrieval_depth}")
        if self.combiner not in ("sum", "mean", "sqrtn"):
            raise ValueError(f"combiner must be sum, mean or sqrtn, got {self.combiner!r}")
        if self.optimizer not in ("adagrad", "adam"):
            raise ValueError(f"optimizer must be adagrad or adam, got {self.optimizer!r}")
        if len(self.hidden_units) < 1 or min(self.hidden_units) < 1:
            raise ValueError(f"hidden_units must be >= 1 positive widths, got "
                             f"{self.hidden_units}")
        if len(self.feature_mean) != NUM_FEATURES or len(self.feature_std) != NUM_FEATURES:
            raise ValueError(f"feature_mean/std need {NUM_FEATURES} values")
        if self.tokenizer.vocab_file:
            raise ValueError("the ranker tokenizer runs in hashing mode (no vocab_file)")

    def to_json(self) -> str:
        return config_json.to_json(self)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "RankerConfig":
        return config_json.from_json(cls, text, source)


def _dense(x, units, name, activation=None):
    with tf.compat.v1.variable_scope(name):
        kernel = tf.compat.v1.get_variable(
            "kernel", [int(x.shape[-1]), units], tf.float32,
            initializer=tf.compat.v1.glorot_uniform_initializer())
        bias = tf.compat.v1.get_variable("bias", [units], tf.float32,
                                         initializer=tf.compat.v1.zeros_initializer())
        y = tf.matmul(x, kernel) + bias
        return activation(y) if activation is not None else y


def tower(query: tf.Tensor, title: tf.Tensor, numeric: tf.Tensor,
          config: RankerConfig) -> tf.Tensor:
    """One DPR tower.

    Args:
      query: [B] tf.string query texts.
      title: [B] tf.string item titles.
      numeric: [B, NUM_FEATURES] float32 raw numeric features (normalized here).
      config: RankerConfig.

    Returns:
      [B] float32 logits.
    """
    cfg = config
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        with tf.compat.v1.variable_scope("embeddings"):
            table = embedding.embedding_table("tokens", cfg.tokenizer.num_buckets,
                                              cfg.token_embedding_dim, stddev=0.05)
        q = embedding.embedding_bag(table, tokenize_op.tokenize(query, cfg.tokenizer),
                                    combiner=cfg.combiner, name="query_bag")
        t = embedding.embedding_bag(table, tokenize_op.tokenize(title, cfg.tokenizer),
                                    combiner=cfg.combiner, name="title_bag")
        mean = tf.constant(cfg.feature_mean, tf.float32)
        std = tf.constant(cfg.feature_std, tf.float32)
        z = (tf.cast(numeric, tf.float32) - mean) / std
        x = tf.concat([q, t, q * t, z], axis=1)
        with tf.compat.v1.variable_scope("tower"):
            for i, units in enumerate(cfg.hidden_units):
                x = _dense(x, units, f"layer_{i}", tf.nn.relu)
            logit = _dense(x, 1, f"layer_{len(cfg.hidden_units)}")
        return tf.squeeze(logit, axis=1, name="logit")


def pairwise_logits(features: Mapping[str, tf.Tensor], config: RankerConfig):
    """(logit_a [B], logit_b [B]) from the same tower (shared weights)."""
    logit_a = tower(features["query"], features["title_a"], features["numeric_a"], config)
    logit_b = tower(features["query"], features["title_b"], features["numeric_b"], config)
    return logit_a, logit_b


def pairwise_loss(logit_a: tf.Tensor, logit_b: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    """Mean sigmoid cross-entropy of (logit_a - logit_b) with label 1 iff a is preferred."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(label, tf.float32), logits=logit_a - logit_b))


def model_fn(features, labels, mode, params):
    """tf.estimator model_fn.

    features: TRAIN/EVAL: "query" [B] string, "title_a"/"title_b" [B] string, "numeric_a"/
      "numeric_b" [B, F] float32; labels [B] float32 (1 iff a preferred). PREDICT: "query",
      "title", "numeric" -> predictions {"score": [B]}.
    params: {"config": RankerConfig}.
    """
    cfg: RankerConfig = params["config"]
    if mode == tf.estimator.ModeKeys.PREDICT:
        score = tower(features["query"], features["title"], features["numeric"], cfg)
        return tf.estimator.EstimatorSpec(mode, predictions={"score": score})
    logit_a, logit_b = pairwise_logits(features, cfg)
    loss = pairwise_loss(logit_a, logit_b, labels)
    correct = tf.cast(tf.equal(tf.cast(logit_a > logit_b, tf.float32),
                               tf.cast(labels, tf.float32)), tf.float32)
    metrics = {"pair_accuracy": tf.compat.v1.metrics.mean(correct)}
    if mode == tf.estimator.ModeKeys.EVAL:
        return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics)
    if cfg.optimizer == "adagrad":
        opt = tf.compat.v1.train.AdagradOptimizer(cfg.learning_rate)
    else:
        opt = tf.compat.v1.train.AdamOptimizer(cfg.learning_rate)
    train_op = opt.minimize(loss, global_step=tf.compat.v1.train.get_or_create_global_step())
    tf.compat.v1.summary.scalar("pair_accuracy", tf.reduce_mean(correct))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def load_config(model_dir: str) -> RankerConfig:
    """The RankerConfig of a `dpsr train-ranker` model directory.

    Raises:
      FileNotFoundError: the directory has no ranker config.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a ranker model directory; "
                                f"train one with `dpsr train-ranker`")
    with open(path, encoding="utf-8") as f:
        return RankerConfig.from_json(f.read())


def utf8(texts) -> np.ndarray:
    """[n] object array of UTF-8 bytes (what tf.string tensors are fed with)."""
    return np.array([t.encode("utf-8") for t in texts], dtype=object)
