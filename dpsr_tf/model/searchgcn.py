"""SearchGCN: the towers' click-graph neighbourhood, added to their own encodings.

Each side (query, item) has its own aggregation weights (a two-side GCN). For an ego embedding
e [B, d] (the DPSR tower's output) and its neighbour lists from the layout's click graph
(dpsr_tf/data/graph/tables.py), hop l in {1, 2} gives

    a_j = softmax_j( (W_l e) . n_j / sqrt(d) + log(w_j / sum_k w_k) )   over the valid j
    h_l = V_l (sum_j a_j n_j)

with n_j rows of one node embedding table shared by both sides (dpsr/embeddings/graph_nodes)
and w_j the edge weights (click counts for hop 1, two-step walk probabilities for hop 2), so
the attention starts from the most-clicked neighbours and learns to re-weight them. The layers
are sum-fused: out = normalize(e + h_1 + h_2). V_l starts at zero, so an untrained graph part
is the DPSR tower itself, and a node without neighbours (a query never seen in training) gets
h_1 = h_2 = 0 exactly: the text tower alone. Features whose graph lists are absent (e.g. the
servable's item_embedding signature, which has only a title) take the same fallback.

Variables (besides the DPSR towers'):
  dpsr/embeddings/graph_nodes                      [graph_num_nodes, d]
  dpsr/searchgcn/<side>_hop<l>/attend/{kernel,bias}   [d, d]    W_l
  dpsr/searchgcn/<side>_hop<l>/out/{kernel,bias}      [d, d]    V_l (zero-initialized)
"""
from typing import Mapping

import tensorflow as tf

from dpsr_tf.model import embedding
from dpsr_tf.model.config import ModelConfig

HOPS = ("hop1", "hop2")


def has_graph_features(features: Mapping, side: str) -> bool:
    return all(f"{side}_graph_{hop}" in features for hop in HOPS)


def _dense(x, units, name, zero_init=False):
    with tf.compat.v1.variable_scope(name):
        kernel = tf.compat.v1.get_variable(
            "kernel", [int(x.shape[-1]), units], tf.float32,
            initializer=tf.compat.v1.zeros_initializer() if zero_init
            else tf.compat.v1.glorot_uniform_initializer())
        bias = tf.compat.v1.get_variable("bias", [units], tf.float32,
                                         initializer=tf.compat.v1.zeros_initializer())
        return tf.matmul(x, kernel) + bias


def _attend(ego: tf.Tensor, nodes: tf.Tensor, weights: tf.Tensor, table, d: int,
            name: str) -> tf.Tensor:
    """One hop: ego [B, d], nodes int64 [B, K] (0 = none), weights [B, K] -> [B, d]."""
    with tf.compat.v1.variable_scope(name):
        nodes = tf.cast(nodes, tf.int64)
        weights = tf.cast(weights, tf.float32)
        valid = (nodes > 0) & (weights > 0)
        neighbours = tf.nn.embedding_lookup(table, nodes)                      # [B, K, d]
        query = _dense(ego, d, "attend")                                        # [B, d]
        share = weights / tf.maximum(tf.reduce_sum(
            tf.where(valid, weights, tf.zeros_like(weights)), axis=1, keepdims=True), 1e-12)
        logits = tf.einsum("bd,bkd->bk", query, neighbours) * (d ** -0.5) + \
            tf.math.log(tf.maximum(share, 1e-12))
        logits = tf.where(valid, logits, tf.fill(tf.shape(logits), -1e9))
        attention = tf.nn.softmax(logits, axis=1) * tf.cast(valid, tf.float32)  # all-masked: 0
        pooled = tf.einsum("bk,bkd->bd", attention, neighbours)
        return _dense(pooled, d, "out", zero_init=True)


def neighbourhood(features: Mapping, ego: tf.Tensor, cfg: ModelConfig, side: str) -> tf.Tensor:
    """h_1 + h_2 of `side` ("query" or "item") for ego [B, d]; zeros without graph features.

    Call inside the "dpsr" variable scope (AUTO_REUSE)."""
    if not has_graph_features(features, side):
        return tf.zeros_like(ego)
    if cfg.graph_num_nodes < 1:
        raise ValueError("ModelConfig.graph_num_nodes=0: resolve it from the layout's graph "
                         "(ModelConfig.with_graph) before building a searchgcn tower")
    d = int(ego.shape[-1])
    with tf.compat.v1.variable_scope("embeddings"):
        table = embedding.embedding_table("graph_nodes", int(cfg.graph_num_nodes), d)
    out = []
    with tf.compat.v1.variable_scope("searchgcn"):
        for hop in HOPS:
            out.append(_attend(ego, features[f"{side}_graph_{hop}"],
                               features[f"{side}_graph_{hop}_weight"], table, d,
                               f"{side}_{hop}"))
    return tf.add_n(out)


def drop_query_graph(features: Mapping, rate: float) -> dict:
    """A copy of features in which each example's query lists are emptied with probability
    `rate` (training only: the text-only path of unseen queries gets trained too)."""
    if not has_graph_features(features, "query"):
        return dict(features)
    out = dict(features)
    first = features["query_graph_hop1"]
    keep = tf.random.uniform(tf.shape(first)[:1]) >= rate                   # [B]
    for hop in HOPS:
        for key in (f"query_graph_{hop}", f"query_graph_{hop}_weight"):
            value = features[key]
            out[key] = tf.where(keep[:, None], value, tf.zeros_like(value))
    return out


def item_embedding(features: Mapping, text: tf.Tensor, cfg: ModelConfig) -> tf.Tensor:
    """[B, d] DPSR item embedding -> L2-normalized (text + h_1 + h_2)."""
    return tf.math.l2_normalize(text + neighbourhood(features, text, cfg, "item"), axis=-1,
                                name="item_embedding_graph")


def query_embedding(features: Mapping, heads: tf.Tensor, cfg: ModelConfig) -> tf.Tensor:
    """[B, m, d] DPSR query heads -> each head + the query's h_1 + h_2 (attention keyed by the
    heads' mean), L2-normalized."""
    ego = tf.reduce_mean(heads, axis=1)
    return tf.math.l2_normalize(heads + neighbourhood(features, ego, cfg, "query")[:, None, :],
                                axis=-1, name="query_embedding_graph")
