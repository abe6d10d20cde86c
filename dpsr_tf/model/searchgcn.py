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

Sampled neighbourhoods (graph_neighbourhood="sampled", the paper's form): layer 1 attends, as
above, over at most graph_fanout of the ego's hop1 neighbours x_j (node embeddings), drawn per
training step by click weight (graph_sampling.py; evaluation and serving: the top graph_fanout by
weight); with graph_layers=2 each chosen neighbour first aggregates its own drawn neighbours with
the same layer-1 weights, z_j = x_j + h^(1)(x_j; its neighbours), and layer 2 attends over the
z_j, keyed by e + h_1. The hop2 random-walk lists are unused. Layers are combined by their sum,
out = normalize(e + h_1 [+ h_2]) (the normalized mean of the layer outputs); V starts at zero
and empty lists give exactly the text tower, as above.

Variables (besides the DPSR towers'):
  dpsr/embeddings/graph_nodes                      [graph_num_nodes, d]
  dpsr/searchgcn/<side>_hop<l>/attend/{kernel,bias}   [d, d]    W_l  (fixed)
  dpsr/searchgcn/<side>_hop<l>/out/{kernel,bias}      [d, d]    V_l (zero-initialized)
  dpsr/searchgcn/<side>_layer<l>/{attend,out}/...     [d, d]    the same per layer (sampled)
  dpsr/searchgcn/node_neighbours, node_neighbour_weights  [graph_num_nodes, W]  non-trainable:
      the node adjacency (sampled, 2 layers)
"""
from typing import Mapping

import tensorflow as tf

from dpsr_tf.model import embedding, graph_sampling
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
            name: str, neighbours: tf.Tensor = None) -> tf.Tensor:
    """One hop: ego [B, d], nodes int64 [B, K] (0 = none), weights [B, K] -> [B, d].

    neighbours: [B, K, d] vectors of the nodes (default: their rows of `table`)."""
    with tf.compat.v1.variable_scope(name, reuse=tf.compat.v1.AUTO_REUSE):
        nodes = tf.cast(nodes, tf.int64)
        weights = tf.cast(weights, tf.float32)
        valid = (nodes > 0) & (weights > 0)
        if neighbours is None:
            neighbours = tf.nn.embedding_lookup(table, nodes)                  # [B, K, d]
        query = _dense(ego, d, "attend")                                        # [B, d]
        share = weights / tf.maximum(tf.reduce_sum(
            tf.where(valid, weights, tf.zeros_like(weights)), axis=1, keepdims=True), 1e-12)
        logits = tf.einsum("bd,bkd->bk", query, neighbours) * (d ** -0.5) + \
            tf.math.log(tf.maximum(share, 1e-12))
        logits = tf.where(valid, logits, tf.fill(tf.shape(logits), -1e9))
        attention = tf.nn.softmax(logits, axis=1) * tf.cast(valid, tf.float32)  # all-masked: 0
        pooled = tf.einsum("bk,bkd->bd", attention, neighbours)
        out = _dense(pooled, d, "out", zero_init=True)
        # No neighbour: exactly zero (V's bias would otherwise shift the text encoding).
        return tf.where(tf.reduce_any(valid, axis=1, keepdims=True), out, tf.zeros_like(out))


def neighbourhood(features: Mapping, ego: tf.Tensor, cfg: ModelConfig, side: str,
                  layout_spec=None, training: bool = False) -> tf.Tensor:
    """h_1 + h_2 of `side` ("query" or "item") for ego [B, d]; zeros without graph features.

    layout_spec: the layout (graph_neighbourhood "sampled" with 2 layers: its node adjacency
    initializes the model's copy); training: draw the sampled neighbourhoods (else top-N).
    Call inside the "dpsr" variable scope (AUTO_REUSE)."""
    if not has_graph_features(features, side):
        return tf.zeros_like(ego)
    if cfg.graph_num_nodes < 1:
        raise ValueError("ModelConfig.graph_num_nodes=0: resolve it from the layout's graph "
                         "(ModelConfig.with_graph) before building a searchgcn tower")
    d = int(ego.shape[-1])
    with tf.compat.v1.variable_scope("embeddings"):
        table = embedding.embedding_table("graph_nodes", int(cfg.graph_num_nodes), d)
    if cfg.graph_neighbourhood == "sampled":
        with tf.compat.v1.variable_scope("searchgcn"):
            return _sampled(features, ego, cfg, side, table, layout_spec, training)
    out = []
    with tf.compat.v1.variable_scope("searchgcn"):
        for hop in HOPS:
            out.append(_attend(ego, features[f"{side}_graph_{hop}"],
                               features[f"{side}_graph_{hop}_weight"], table, d,
                               f"{side}_{hop}"))
    return tf.add_n(out)


def _sampled(features, ego, cfg: ModelConfig, side: str, table, layout_spec,
             training: bool) -> tf.Tensor:
    """h_1 (+ h_2) of the sampled neighbourhood (module docstring)."""
    d = int(ego.shape[-1])
    fanout = int(cfg.graph_fanout)
    nodes1, weights1 = graph_sampling.choose_neighbours(
        features[f"{side}_graph_hop1"], features[f"{side}_graph_hop1_weight"], fanout, training)
    x1 = tf.nn.embedding_lookup(table, nodes1)                                 # [B, K1, d]
    layer1 = f"{side}_layer1"
    h1 = _attend(ego, nodes1, weights1, table, d, layer1, neighbours=x1)
    if cfg.graph_layers == 1:
        return h1
    if layout_spec is None:
        raise ValueError("graph_layers=2 needs the layout (its node adjacency): pass "
                         "layout_spec to the searchgcn tower")
    adjacency, adjacency_weights = graph_sampling.node_adjacency(layout_spec,
                                                                  cfg.graph_num_nodes)
    nodes2, weights2 = graph_sampling.choose_neighbours(
        tf.gather(adjacency, nodes1), tf.gather(adjacency_weights, nodes1), fanout,
        training)                                                              # [B, K1, K2]
    k1, k2 = tf.shape(nodes1)[1], tf.shape(nodes2)[2]
    flat_x1 = tf.reshape(x1, [-1, d])                                          # [B*K1, d]
    flat_nodes2 = tf.reshape(nodes2, [-1, k2])
    # Each neighbour's own layer-1 representation (same weights as the ego's layer 1).
    z = flat_x1 + _attend(flat_x1, flat_nodes2, tf.reshape(weights2, [-1, k2]), table, d,
                          layer1)
    z = tf.reshape(z, [-1, k1, d])                                              # [B, K1, d]
    h2 = _attend(ego + h1, nodes1, weights1, table, d, f"{side}_layer2", neighbours=z)
    return h1 + h2


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


def item_embedding(features: Mapping, text: tf.Tensor, cfg: ModelConfig, layout_spec=None,
                   training: bool = False) -> tf.Tensor:
    """[B, d] DPSR item embedding -> L2-normalized (text + h_1 + h_2)."""
    return tf.math.l2_normalize(
        text + neighbourhood(features, text, cfg, "item", layout_spec, training), axis=-1,
        name="item_embedding_graph")


def query_embedding(features: Mapping, heads: tf.Tensor, cfg: ModelConfig, layout_spec=None,
                    training: bool = False) -> tf.Tensor:
    """[B, m, d] DPSR query heads -> each head + the query's h_1 + h_2 (attention keyed by the
    heads' mean), L2-normalized."""
    ego = tf.reduce_mean(heads, axis=1)
    graph = neighbourhood(features, ego, cfg, "query", layout_spec, training)
    return tf.math.l2_normalize(heads + graph[:, None, :], axis=-1, name="query_embedding_graph")
