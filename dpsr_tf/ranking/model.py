"""DPR, the pairwise Siamese ranker (Li et al., SIGIR'19 SIRIP): the tower and the model_fn.

One tower scores one (user, query, item) triple from the paper's three feature groups
(`feature_groups`, each optional so that e.g. numeric-only stays available):

  "numeric": numeric features [F] (dpsr_tf/ranking/features.py) --(x - mean) / std--> z
  "text":    query text --Dpsr>Tokenize (word unigrams + bigrams, hashed)--> sum-pooled  q [e]
             item title --Dpsr>Tokenize (same config, same table)--> sum-pooled      t [e]
             -> [q, t, q * t]
  "user":    profile ids [U] --one table per feature--> p [U * u] (concatenated);
             the candidate's categorical ids [I] (the layout's item columns: price tier,
             gender...) --one table per column--> i [I * u], what p is crossed with;
             click stream: item rows of the last history_length clicks [H] (-1 pads)
             --sum-pooled item embeddings--> h [r]; the candidate's own row --> c [r]
             -> [p, i, h, c, h * c], with profile_cross also x [U * I], the inner product of
             every profile embedding with every candidate column's: a preference that is a
             cross (purchase power x price tier) is one weight on x, where through the
             concatenated [p, i] the ReLU layers must first carve it out of small embeddings;
             with cross_embedding_dim also k [U * I * cross_embedding_dim], one embedding per
             (profile value, candidate column value) pair (a crossed id, as Wide & Deep's
             crossed columns): the cross as its own weights, where x is a product of two
             small embeddings whose gradient starts near zero
  concat --3 ReLU layers (hidden_units)--> linear --> logit

Training feeds pairs (a, b) of the same session: both sides go through the SAME tower (the
variables live under "dpr/" with AUTO_REUSE, so the two calls share every weight) and the loss
is the sigmoid cross-entropy of logit_a - logit_b against label = 1 iff a was preferred. At
serving one tower call scores each candidate alone.

Checkpoint names:
  dpr/embeddings/tokens                 [tokenizer.num_buckets, token_embedding_dim]   "text"
  dpr/embeddings/user_<name>            [vocab size, user_embedding_dim]               "user"
  dpr/embeddings/item_<name>            [vocab size, user_embedding_dim]               "user"
  dpr/embeddings/history_items          [num_items, history_embedding_dim]           "user"
  dpr/embeddings/cross_<user>_<item>    [user vocab * item vocab, cross_embedding_dim] "user"
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
FEATURE_GROUPS = ("numeric", "text", "user")


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
      feature_groups: the tower's inputs, a subset of FEATURE_GROUPS (module docstring).
      user_features, user_vocab_sizes: the layout's user profile columns (features.npy order)
        and their vocabulary sizes ("user" group).
      item_features, item_vocab_sizes: the layout's item categorical columns (features.npy
        order) and their vocabulary sizes ("user" group: what the profile is crossed with).
      history_length: clicks of the history bag (0 = no history); num_items: rows of the
        history item table (the layout's items).
      user_embedding_dim, history_embedding_dim: widths of those tables.
      profile_cross: the "user" group also gives the inner products of each profile
        embedding with each candidate column embedding (module docstring); False in a config
        written before it existed, so such a model restores as it was trained.
      cross_embedding_dim: width of the crossed-id embeddings of the "user" group (module
        docstring; 0 = none, also in a config written before it existed).
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
    feature_groups: Tuple[str, ...] = ("numeric", "text")
    user_features: Tuple[str, ...] = ()
    user_vocab_sizes: Tuple[int, ...] = ()
    item_features: Tuple[str, ...] = ()
    item_vocab_sizes: Tuple[int, ...] = ()
    history_length: int = 0
    num_items: int = 0
    user_embedding_dim: int = 4
    history_embedding_dim: int = 4
    profile_cross: bool = False
    cross_embedding_dim: int = 0

    def validate(self):
        bad = [g for g in self.feature_groups if g not in FEATURE_GROUPS]
        if bad or not self.feature_groups or len(set(self.feature_groups)) != len(
                self.feature_groups):
            raise ValueError(f"feature_groups must be distinct names from {FEATURE_GROUPS}, got "
                             f"{self.feature_groups}")
        if len(self.user_features) != len(self.user_vocab_sizes):
            raise ValueError(f"user_features {self.user_features} and user_vocab_sizes "
                             f"{self.user_vocab_sizes} differ in length")
        if len(self.item_features) != len(self.item_vocab_sizes):
            raise ValueError(f"item_features {self.item_features} and item_vocab_sizes "
                             f"{self.item_vocab_sizes} differ in length")
        if "user" in self.feature_groups:
            if not self.user_features and self.history_length <= 0:
                raise ValueError("feature group 'user' needs user profile features or a "
                                 "history (history_length > 0); the layout has neither: leave "
                                 "'user' out of feature_groups")
            if self.history_length > 0 and self.num_items < 1:
                raise ValueError(f"history_length {self.history_length} needs num_items >= 1")
        if self.cross_embedding_dim < 0:
            raise ValueError(f"cross_embedding_dim must be >= 0, got {self.cross_embedding_dim}")
        if self.history_length < 0:
            raise ValueError(f"history_length must be >= 0, got {self.history_length}")
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


def padded_bag(table: tf.Tensor, rows: tf.Tensor, combiner: str) -> tf.Tensor:
    """[B, D] pooled rows of `table` [V, D] for ids `rows` [B, H] int64 with -1 padding
    (combiner "sum", "mean" or "sqrtn"; a row of padding only gives zeros)."""
    valid = tf.cast(rows >= 0, tf.float32)                                   # [B, H]
    vectors = tf.gather(table, tf.maximum(rows, 0)) * valid[:, :, None]      # [B, H, D]
    total = tf.reduce_sum(vectors, axis=1)
    count = tf.reduce_sum(valid, axis=1, keepdims=True)
    if combiner == "mean":
        return total / tf.maximum(count, 1.0)
    if combiner == "sqrtn":
        return total / tf.sqrt(tf.maximum(count, 1.0))
    return total


def _categorical(prefix: str, names, sizes, ids, dim: int) -> list:
    """One [B, dim] embedding per column j of ids [B, len(names)] int64 (0 = unknown)."""
    out = []
    for j, (name, size) in enumerate(zip(names, sizes)):
        table = embedding.embedding_table(f"{prefix}_{name}", max(1, int(size)), dim,
                                          stddev=0.05)
        column = tf.clip_by_value(tf.cast(ids[:, j], tf.int64), 0, max(1, int(size)) - 1)
        out.append(tf.gather(table, column))
    return out


def crossed_ids(user: tf.Tensor, item_cats: tf.Tensor, user_sizes, item_sizes) -> list:
    """[B] int64 ids of each (profile column j, item column k) pair, j major: user id u and
    item id v (each clipped to its vocabulary) give u * item_sizes[k] + v."""
    out = []
    for j, u_size in enumerate(user_sizes):
        u = tf.clip_by_value(tf.cast(user[:, j], tf.int64), 0, max(1, int(u_size)) - 1)
        for k, i_size in enumerate(item_sizes):
            v = tf.clip_by_value(tf.cast(item_cats[:, k], tf.int64), 0, max(1, int(i_size)) - 1)
            out.append(u * max(1, int(i_size)) + v)
    return out


def _user_inputs(cfg: RankerConfig, user, item_cats, history, item_row) -> list:
    """[p, i, (x,) (k,) h, c, h * c] of the "user" group (module docstring)."""
    with tf.compat.v1.variable_scope("embeddings"):
        profile = _categorical("user", cfg.user_features, cfg.user_vocab_sizes, user,
                               cfg.user_embedding_dim)
        cats = _categorical("item", cfg.item_features, cfg.item_vocab_sizes, item_cats,
                            cfg.user_embedding_dim)
        if cfg.history_length > 0:
            items = embedding.embedding_table("history_items", cfg.num_items,
                                              cfg.history_embedding_dim, stddev=0.05)
    out = profile + cats
    if cfg.profile_cross and profile and cats:
        x = tf.einsum("bud,bid->bui", tf.stack(profile, 1), tf.stack(cats, 1))
        out.append(tf.reshape(x, [-1, len(profile) * len(cats)]))
    if cfg.cross_embedding_dim > 0 and profile and cats:
        ids = crossed_ids(user, item_cats, cfg.user_vocab_sizes, cfg.item_vocab_sizes)
        pairs = [(u, i, max(1, int(us)) * max(1, int(vs)))
                 for u, us in zip(cfg.user_features, cfg.user_vocab_sizes)
                 for i, vs in zip(cfg.item_features, cfg.item_vocab_sizes)]
        with tf.compat.v1.variable_scope("embeddings"):
            for (u, i, size), column in zip(pairs, ids):
                table = embedding.embedding_table(f"cross_{u}_{i}", size,
                                                  cfg.cross_embedding_dim, stddev=0.05)
                out.append(tf.gather(table, column))
    if cfg.history_length > 0:
        h = padded_bag(items, tf.cast(history, tf.int64), cfg.combiner)
        c = tf.gather(items, tf.clip_by_value(tf.cast(item_row, tf.int64), 0, cfg.num_items - 1))
        out += [h, c, h * c]
    return out


def tower(query: tf.Tensor, title: tf.Tensor, numeric: tf.Tensor,
          config: RankerConfig, user: tf.Tensor = None, history: tf.Tensor = None,
          item_row: tf.Tensor = None, item_cats: tf.Tensor = None) -> tf.Tensor:
    """One DPR tower over the config's feature groups.

    Args:
      query: [B] tf.string query texts.
      title: [B] tf.string item titles.
      numeric: [B, NUM_FEATURES] float32 raw numeric features (normalized here).
      config: RankerConfig.
      user: [B, len(user_features)] int64 profile ids ("user" group).
      history: [B, history_length] int64 item rows of the last clicks, -1 pads ("user").
      item_row: [B] int64 the candidate's layout row ("user" with a history).
      item_cats: [B, len(item_features)] int64 the candidate's categorical ids ("user").

    Returns:
      [B] float32 logits.
    """
    cfg = config
    groups = set(cfg.feature_groups)
    parts = []
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        if "text" in groups:
            with tf.compat.v1.variable_scope("embeddings"):
                table = embedding.embedding_table("tokens", cfg.tokenizer.num_buckets,
                                                  cfg.token_embedding_dim, stddev=0.05)
            q = embedding.embedding_bag(table, tokenize_op.tokenize(query, cfg.tokenizer),
                                        combiner=cfg.combiner, name="query_bag")
            t = embedding.embedding_bag(table, tokenize_op.tokenize(title, cfg.tokenizer),
                                        combiner=cfg.combiner, name="title_bag")
            parts += [q, t, q * t]
        if "numeric" in groups:
            mean = tf.constant(cfg.feature_mean, tf.float32)
            std = tf.constant(cfg.feature_std, tf.float32)
            parts.append((tf.cast(numeric, tf.float32) - mean) / std)
        if "user" in groups:
            parts += _user_inputs(cfg, user, item_cats, history, item_row)
        x = tf.concat(parts, axis=1)
        with tf.compat.v1.variable_scope("tower"):
            for i, units in enumerate(cfg.hidden_units):
                x = _dense(x, units, f"layer_{i}", tf.nn.relu)
            logit = _dense(x, 1, f"layer_{len(cfg.hidden_units)}")
        return tf.squeeze(logit, axis=1, name="logit")


def pairwise_logits(features: Mapping[str, tf.Tensor], config: RankerConfig):
    """(logit_a [B], logit_b [B]) from the same tower (shared weights)."""
    user, history = features.get("user"), features.get("history")
    logit_a = tower(features["query"], features["title_a"], features["numeric_a"], config,
                    user, history, features.get("item_row_a"), features.get("item_cats_a"))
    logit_b = tower(features["query"], features["title_b"], features["numeric_b"], config,
                    user, history, features.get("item_row_b"), features.get("item_cats_b"))
    return logit_a, logit_b


def pairwise_loss(logit_a: tf.Tensor, logit_b: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    """Mean sigmoid cross-entropy of (logit_a - logit_b) with label 1 iff a is preferred."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(label, tf.float32), logits=logit_a - logit_b))


def model_fn(features, labels, mode, params):
    """tf.estimator model_fn.

    features: TRAIN/EVAL: "query" [B] string, "title_a"/"title_b" [B] string, "numeric_a"/
      "numeric_b" [B, F] float32, with the "user" group also "user" [B, U] int64, "history"
      [B, H] int64, "item_row_a"/"item_row_b" [B] int64, "item_cats_a"/"item_cats_b" [B, I]
      int64; labels [B] float32 (1 iff a
      preferred). PREDICT: "query", "title", "numeric" (and "user", "history", "item_row",
      "item_cats")
      -> predictions {"score": [B]}.
    params: {"config": RankerConfig}.
    """
    cfg: RankerConfig = params["config"]
    if mode == tf.estimator.ModeKeys.PREDICT:
        score = tower(features["query"], features["title"], features["numeric"], cfg,
                      features.get("user"), features.get("history"), features.get("item_row"),
                      features.get("item_cats"))
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
