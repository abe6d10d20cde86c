"""The two transformers of the cycle-consistent rewriter and its tf.estimator model_fn.

    forward   query units  -> title units     (p_f(t | q))
    backward  title units  -> query units     (p_b(q | t))
    loss = forward_weight * CE_f + backward_weight * CE_b + q2q_weight * CE_q2q

CE_q2q is the joint query-to-query loss: the forward decoder, teacher-forced on the clicked
title, gives a distribution over units at each title position; the backward encoder reads the
expected unit embedding of each position (softmax @ the unit table, so the loss reaches both
models) and the backward decoder must reconstruct the query. All cross-entropies are means over
the non-pad target units (EOS included), with teacher forcing.

Both models share one unit embedding table, also used as the output projection. Variables:
units/embedding, {forward,backward}/{encoder,decoder}/layer_<i>/...
"""
import math

import numpy as np
import tensorflow as tf

from dpsr_tf.rewriting import units as units_lib
from dpsr_tf.rewriting.config import RewriterConfig

NEG = -1e9


def _dense(x, width, name, bias=True):
    return tf.compat.v1.layers.dense(x, width, use_bias=bias, name=name)


def _norm(x, name):
    with tf.compat.v1.variable_scope(name):
        d = x.shape[-1]
        gamma = tf.compat.v1.get_variable("gamma", [d], initializer=tf.ones_initializer())
        beta = tf.compat.v1.get_variable("beta", [d], initializer=tf.zeros_initializer())
        mean, var = tf.nn.moments(x, [-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-6) * gamma + beta


def _attention(x, memory, bias, cfg: RewriterConfig, name):
    """Multi-head attention of x [B, T, d] over memory [B, S, d]; bias [B or 1, 1, T or 1, S]."""
    with tf.compat.v1.variable_scope(name):
        h, d = cfg.num_heads, cfg.d_model

        def split(t):
            b, n = tf.shape(t)[0], tf.shape(t)[1]
            return tf.transpose(tf.reshape(t, [b, n, h, d // h]), [0, 2, 1, 3])

        q = split(_dense(x, d, "q", bias=False))
        k = split(_dense(memory, d, "k", bias=False))
        v = split(_dense(memory, d, "v", bias=False))
        logits = tf.matmul(q, k, transpose_b=True) / math.sqrt(d // h) + bias
        out = tf.matmul(tf.nn.softmax(logits), v)                     # [B, h, T, d/h]
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b, t, d])
        return _dense(out, d, "out", bias=False)


def _feed_forward(x, cfg, name):
    with tf.compat.v1.variable_scope(name):
        return _dense(tf.nn.relu(_dense(x, cfg.ff_dim, "in")), cfg.d_model, "out")


def _positions(length, cfg, name):
    table = tf.compat.v1.get_variable(
        name, [max(cfg.query_len, cfg.title_len) + 1, cfg.d_model],
        initializer=tf.compat.v1.random_normal_initializer(stddev=0.02))
    return table[:length]


def unit_table(cfg: RewriterConfig):
    with tf.compat.v1.variable_scope("units", reuse=tf.compat.v1.AUTO_REUSE):
        return tf.compat.v1.get_variable(
            "embedding", [cfg.vocab_size, cfg.d_model],
            initializer=tf.compat.v1.random_normal_initializer(stddev=cfg.d_model ** -0.5))


def _drop(x, cfg, training):
    return tf.nn.dropout(x, rate=cfg.dropout) if training and cfg.dropout > 0 else x


def encode(embedded, mask, cfg: RewriterConfig, scope: str, training: bool):
    """Encoder over embedded units [B, S, d] with mask [B, S] (1 = unit) -> [B, S, d]."""
    with tf.compat.v1.variable_scope(scope, reuse=tf.compat.v1.AUTO_REUSE):
        x = embedded * math.sqrt(cfg.d_model) + _positions(tf.shape(embedded)[1], cfg,
                                                            "positions")
        x = _drop(x, cfg, training)
        bias = (1.0 - tf.cast(mask, tf.float32))[:, tf.newaxis, tf.newaxis, :] * NEG
        for i in range(cfg.num_layers):
            with tf.compat.v1.variable_scope(f"layer_{i}"):
                y = _norm(x, "norm_self")
                x += _drop(_attention(y, y, bias, cfg, "self"), cfg, training)
                x += _drop(_feed_forward(_norm(x, "norm_ff"), cfg, "ff"), cfg, training)
        return _norm(x, "norm_out")


def decode(memory, memory_mask, targets_in, cfg: RewriterConfig, scope: str, training: bool):
    """Decoder logits [B, T, V] over the unit vocabulary, from decoder inputs [B, T] (BOS
    first) attending causally to themselves and to memory [B, S, d] (memory_mask [B, S])."""
    table = unit_table(cfg)
    with tf.compat.v1.variable_scope(scope, reuse=tf.compat.v1.AUTO_REUSE):
        t = tf.shape(targets_in)[1]
        x = tf.nn.embedding_lookup(table, targets_in) * math.sqrt(cfg.d_model)
        x = _drop(x + _positions(t, cfg, "positions"), cfg, training)
        causal = (1.0 - tf.linalg.band_part(tf.ones([t, t]), -1, 0))[tf.newaxis, tf.newaxis]
        self_bias = causal * NEG
        mem_bias = (1.0 - tf.cast(memory_mask, tf.float32))[:, tf.newaxis, tf.newaxis, :] * NEG
        for i in range(cfg.num_layers):
            with tf.compat.v1.variable_scope(f"layer_{i}"):
                y = _norm(x, "norm_self")
                x += _drop(_attention(y, y, self_bias, cfg, "self"), cfg, training)
                x += _drop(_attention(_norm(x, "norm_cross"), memory, mem_bias, cfg, "cross"),
                           cfg, training)
                x += _drop(_feed_forward(_norm(x, "norm_ff"), cfg, "ff"), cfg, training)
        x = _norm(x, "norm_out")
        return tf.einsum("btd,vd->btv", x, table)


def shift_right(targets):
    """[B, T] targets -> decoder inputs: BOS then the targets without their last unit."""
    bos = tf.fill([tf.shape(targets)[0], 1], tf.constant(units_lib.BOS, targets.dtype))
    return tf.concat([bos, targets[:, :-1]], axis=1)


def translate_logits(source, targets_in, cfg, direction: str, training=False):
    """Logits [B, T, V] of one direction ("forward" or "backward") from source ids [B, S]."""
    mask = tf.not_equal(source, units_lib.PAD)
    memory = encode(tf.nn.embedding_lookup(unit_table(cfg), source), mask, cfg,
                    f"{direction}/encoder", training)
    return decode(memory, mask, targets_in, cfg, f"{direction}/decoder", training)


def masked_cross_entropy(logits, targets):
    """Mean -log p(target) over the non-pad targets of [B, T] (logits [B, T, V])."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    mask = tf.cast(tf.not_equal(targets, units_lib.PAD), tf.float32)
    return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def losses(query, title, cfg: RewriterConfig, training: bool):
    """{"forward", "backward", "q2q", "total"} scalar losses of a batch of (query [B, Tq],
    title [B, Tt]) int32 unit ids (EOS-terminated, PAD-padded; module docstring)."""
    fwd_logits = translate_logits(query, shift_right(title), cfg, "forward", training)
    fwd = masked_cross_entropy(fwd_logits, title)
    bwd = masked_cross_entropy(
        translate_logits(title, shift_right(query), cfg, "backward", training), query)
    out = {"forward": fwd, "backward": bwd}
    if cfg.q2q_weight > 0:
        title_mask = tf.not_equal(title, units_lib.PAD)
        soft_title = tf.einsum("btv,vd->btd", tf.nn.softmax(fwd_logits), unit_table(cfg))
        memory = encode(soft_title, title_mask, cfg, "backward/encoder", training)
        q2q_logits = decode(memory, title_mask, shift_right(query), cfg, "backward/decoder",
                            training)
        out["q2q"] = masked_cross_entropy(q2q_logits, query)
    else:
        out["q2q"] = tf.constant(0.0)
    out["total"] = (cfg.forward_weight * fwd + cfg.backward_weight * bwd
                    + cfg.q2q_weight * out["q2q"])
    return out


def learning_rate(cfg: RewriterConfig, step):
    step = tf.cast(step, tf.float32) + 1.0
    warm = float(max(cfg.warmup_steps, 1))
    return cfg.learning_rate * tf.minimum(step / warm, tf.math.rsqrt(step / warm))


def model_fn(features, labels, mode, params):
    """tf.estimator model_fn: features {"query", "title"} int32 unit ids; params["config"]."""
    del labels
    cfg: RewriterConfig = params["config"]
    training = mode == tf.estimator.ModeKeys.TRAIN
    parts = losses(features["query"], features["title"], cfg, training)
    for name, value in parts.items():
        tf.compat.v1.summary.scalar(f"loss/{name}", value)
    if mode == tf.estimator.ModeKeys.EVAL:
        return tf.estimator.EstimatorSpec(
            mode, loss=parts["total"],
            eval_metric_ops={f"loss/{k}": tf.compat.v1.metrics.mean(v)
                             for k, v in parts.items()})
    step = tf.compat.v1.train.get_or_create_global_step()
    optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate(cfg, step), beta2=0.98)
    grads, variables = zip(*optimizer.compute_gradients(parts["total"]))
    grads, _ = tf.clip_by_global_norm(grads, 1.0)
    train_op = optimizer.apply_gradients(zip(grads, variables), global_step=step)
    return tf.estimator.EstimatorSpec(mode, loss=parts["total"], train_op=train_op)


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax in float64 (decoding works on log-probabilities)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
