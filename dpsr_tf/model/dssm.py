"""DSSM (Huang et al., CIKM 2013), the paper's neural baseline, on the project's data path.

Word hashing: the text is the bag of letter trigrams of "#word#" for each word ("good" ->
#go, goo, ood, od#), which is what the project's tokenizer emits as "t:" features; a layout
for DSSM is prepared with letter trigrams only (`dpsr prepare --features=t`, or `t,c` to
give CJK text, which has no letters to hash, its characters) and hashed ids
(`--num_buckets`, e.g. 65,536: the paper's trigram vocabulary has about 30k entries).

Towers (query and item, separate weights): the first layer multiplies the trigram count
vector by W1 (a sum-combined bag over the trigram ids: the same product without building the
30k-wide vector), then tanh layers: l1 = tanh(W1 x + b1), l_i = tanh(W_i l_{i-1} + b_i), the
last of width d = embedding_dim (paper: 300, 300, 128). Embeddings are L2-normalized, so the
dot product the index and the servable compute is the cosine R(Q, D) of the paper.

Loss: for each clicked (query, item) pair, the softmax over the clicked item and
dssm_negatives unclicked random catalog items, with smoothing factor gamma:
  P(D+ | Q) = exp(gamma R(Q, D+)) / sum_{D in {D+} + negatives} exp(gamma R(Q, D)),
  L = -mean over positives of log P(D+ | Q).
Example i of a batch of B takes the random items i*k .. i*k + k - 1 (k = dssm_negatives) of
the batch's R >= k*B independent uniform random items; one that is the clicked item itself
does not count (it is not unclicked).

Variables (scope "dpsr"): dssm_query/tokens, dssm_query/layer_<i>/{kernel,bias} and the same
under dssm_item/.
"""
from typing import Mapping, Optional

import tensorflow as tf

from dpsr_tf.model import embedding

SCOPE = "dpsr"


def check_layout(layout_spec) -> None:
    """Raises ValueError unless the layout's tokens are DSSM word hashing (letter trigrams,
    optionally CJK characters; no word or bigram features)."""
    tok = getattr(layout_spec, "tokenizer_config", None)
    if tok is None:
        return
    extra = [name for name in ("word_unigrams", "word_bigrams", "cjk_bigrams")
             if getattr(tok, name)]
    if extra or not tok.letter_trigrams:
        raise ValueError(
            f"--model=dssm: layout {getattr(layout_spec, 'layout_dir', '')!r} was tokenized "
            f"with {extra or ['no letter trigrams']}; DSSM reads letter trigrams only: prepare "
            "it with `dpsr prepare --features=t --num_buckets=65536` (or --features=t,c for "
            "CJK text)")


def _tower(tokens, cfg, layout_spec, side: str) -> tf.Tensor:
    """[B, d] L2-normalized: trigram bag (W1 x) + bias, tanh, then tanh layers."""
    widths = list(cfg.dssm_hidden_units) + [cfg.embedding_dim]
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        with tf.compat.v1.variable_scope(f"dssm_{side}"):
            table = embedding.embedding_table(
                "tokens", int(layout_spec.token_id_space), widths[0],
                partitions=max(1, cfg.embedding_partitions), partitioner=cfg.partitioner,
                min_slice_size_bytes=cfg.min_slice_size_bytes)
            x = embedding.embedding_bag(table, tokens, combiner="sum",
                                        aggregate_on_ps=cfg.aggregate_on_ps,
                                        name=f"{side}_trigram_bag")
            with tf.compat.v1.variable_scope("layer_0"):
                bias = tf.compat.v1.get_variable("bias", shape=[widths[0]], dtype=tf.float32,
                                                 initializer=tf.compat.v1.zeros_initializer())
            x = tf.tanh(x + bias)
            for i, units in enumerate(widths[1:], start=1):
                with tf.compat.v1.variable_scope(f"layer_{i}"):
                    kernel = tf.compat.v1.get_variable(
                        "kernel", shape=[int(x.shape[-1]), units], dtype=tf.float32,
                        initializer=tf.compat.v1.glorot_uniform_initializer())
                    b = tf.compat.v1.get_variable("bias", shape=[units], dtype=tf.float32,
                                                  initializer=tf.compat.v1.zeros_initializer())
                    x = tf.tanh(tf.matmul(x, kernel) + b)
            return tf.math.l2_normalize(x, axis=-1)


def item_tower(features: Mapping, cfg, layout_spec) -> tf.Tensor:
    """[B, d] item embeddings from "item_tokens" (the title's trigram ids)."""
    return tf.identity(_tower(features["item_tokens"], cfg, layout_spec, "item"),
                       name="item_embedding")


def query_tower(features: Mapping, cfg, layout_spec) -> tf.Tensor:
    """[B, 1, d] query embeddings from "query_tokens" (one head: the score is the cosine)."""
    out = _tower(features["query_tokens"], cfg, layout_spec, "query")
    return tf.identity(out[:, None, :], name="query_embedding")


def per_example_negatives(random_scores: tf.Tensor, random_rows: tf.Tensor,
                          item_rows: tf.Tensor, k: int):
    """Example i's k random items: columns i*k .. i*k + k - 1.

    Returns:
      (scores [B, k], valid [B, k] bool: the random item is not example i's clicked item).
    """
    b = tf.shape(random_scores)[0]
    with tf.control_dependencies([tf.debugging.assert_greater_equal(
            tf.shape(random_scores)[1], b * k,
            message="DSSM needs dssm_negatives * batch random items per batch")]):
        columns = tf.range(b)[:, None] * k + tf.range(k)[None, :]           # [B, k]
    scores = tf.gather(random_scores, columns, batch_dims=1)
    rows = tf.gather(random_rows, columns)
    return scores, tf.not_equal(rows, item_rows[:, None])


def softmax_loss(positive: tf.Tensor, negatives: tf.Tensor, valid: tf.Tensor, gamma: float,
                 weights: Optional[tf.Tensor] = None) -> tf.Tensor:
    """-log P(D+ | Q) averaged over the examples with weight 1 (see the module docstring).

    Args:
      positive: [B] cosine of each query with its clicked item.
      negatives: [B, k] cosines with its unclicked random items.
      valid: [B, k] bool, False = leave that negative out.
      gamma: smoothing factor.
      weights: [B] float32 (1 = a clicked pair; 0 = a labelled negative, not a training pair);
        None = all 1.
    """
    logits = gamma * tf.concat([positive[:, None], negatives], axis=1)
    mask = tf.concat([tf.ones_like(positive[:, None], tf.bool), valid], axis=1)
    logits = tf.where(mask, logits, tf.fill(tf.shape(logits), -1e9))
    nll = tf.reduce_logsumexp(logits, axis=1) - logits[:, 0]
    if weights is None:
        return tf.reduce_mean(nll)
    return tf.reduce_sum(nll * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
