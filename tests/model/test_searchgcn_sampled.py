"""The sampled SearchGCN: neighbour draws against their exact probabilities, the per-node cap,
the serving neighbourhood (top-N by weight), one and two convolution layers against a numpy
reference on a tiny graph, and the text tower exactly for a node without neighbours."""
import dataclasses
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.graph_sampling import choose_neighbours
from dpsr_tf.model.towers import item_tower, query_tower

D, NODES, WIDTH = 8, 12, 4


def _draw(nodes, weights, fanout, sample=True, seed=7):
    with tf.Graph().as_default():
        out = choose_neighbours(tf.constant(nodes), tf.constant(weights, tf.float32), fanout,
                                sample, seed=seed)
        with tf.compat.v1.Session() as sess:
            return sess.run(out)


def _inclusion(weights, k):
    """Exact P(j among the first k draws) of successive weighted sampling without replacement."""
    n = len(weights)
    p = np.zeros(n)
    for order in itertools.permutations(range(n), k):
        prob, left = 1.0, float(np.sum(weights))
        for j in order:
            prob *= weights[j] / left
            left -= weights[j]
        p[list(order)] += prob
    return p


@pytest.mark.parametrize("fanout", [1, 2, 3])
def test_draws_follow_the_click_weights(fanout):
    rows = 20000
    # Columns: four neighbours with 1, 2, 3, 6 clicks, one masked edge (weight 0, e.g. the
    # example's own click) and one padding slot (node 0).
    weights = np.array([1.0, 2.0, 3.0, 6.0, 0.0, 5.0])
    nodes = np.array([3, 4, 5, 6, 7, 0])
    ids, w = _draw(np.tile(nodes, [rows, 1]), np.tile(weights, [rows, 1]), fanout)
    assert ids.shape == (rows, fanout)
    counts = np.array([(ids == n).sum() for n in nodes[:4]])
    assert not np.isin(ids, [7]).any()                     # a masked edge is never drawn
    want = _inclusion(weights[:4], fanout)                 # e.g. fanout 1: w / 12
    bound = 5 * np.sqrt(rows * want * (1 - want)) + 1      # 5 binomial standard deviations
    assert np.all(np.abs(counts - rows * want) <= bound), (counts, rows * want)
    # The weights ride with their nodes.
    np.testing.assert_array_equal(w, np.select([ids == n for n in nodes[:4]], weights[:4], 0))


def test_each_node_gets_at_most_fanout_distinct_valid_neighbours():
    rng = np.random.RandomState(0)
    nodes = np.stack([rng.permutation(50)[:9] for _ in range(500)])   # distinct, 0 = padding
    weights = rng.randint(0, 4, [500, 9]).astype(np.float32)   # zeros: masked edges
    for fanout in (1, 3, 9, 12):
        ids, w = _draw(nodes, weights, fanout, seed=fanout)
        assert ids.shape == (500, min(fanout, 9))
        for r in range(500):
            valid = {(n, x) for n, x in zip(nodes[r], weights[r]) if n > 0 and x > 0}
            chosen = [(n, x) for n, x in zip(ids[r], w[r]) if n > 0]
            assert len(chosen) == min(fanout, len(valid))  # the cap, filled while it can be
            assert set(chosen) <= valid
            assert len(set(chosen)) == len(chosen)            # without replacement
            assert (w[r][ids[r] == 0] == 0).all()


def test_serving_keeps_the_top_n_by_weight():
    rng = np.random.RandomState(1)
    nodes = rng.randint(1, 99, [300, 7])
    weights = rng.randint(0, 5, [300, 7]).astype(np.float32)   # ties on purpose
    ids, w = _draw(nodes, weights, 3, sample=False)
    for r in range(300):
        order = [j for j in np.argsort(-weights[r], kind="stable") if weights[r][j] > 0][:3]
        want = np.zeros(3, np.int64)
        want[:len(order)] = nodes[r][order]
        np.testing.assert_array_equal(ids[r], want)
    # Deterministic: the same answer again, whatever the seed.
    np.testing.assert_array_equal(_draw(nodes, weights, 3, sample=False, seed=99)[0], ids)


# ---------------------------------------------------------------------------------------------
# The towers on a tiny graph.

# Node adjacency of the tiny graph (node 0 = none): ids and click weights, WIDTH per node.
_ADJ = np.zeros([NODES, WIDTH], np.int32)
_ADJ_W = np.zeros([NODES, WIDTH], np.float32)
for _node, _row in {1: [5, 6, 7], 2: [6, 8], 5: [1, 9, 3], 6: [1, 2, 10, 11], 7: [1],
                    8: [2, 4], 9: [5], 10: [6], 11: [6, 7]}.items():
    _ADJ[_node, :len(_row)] = _row
    _ADJ_W[_node, :len(_row)] = np.arange(len(_row), 0, -1) + _node % 3


class _Spec:
    token_id_space = 50
    item_features = {"brand": 5}
    user_features = {}
    num_items = 10

    def __init__(self, layout_dir):
        self.layout_dir = layout_dir

    def path(self, rel):
        return os.path.join(self.layout_dir, rel)


def _layout(tmp_path):
    os.makedirs(tmp_path / "graph", exist_ok=True)
    np.save(tmp_path / "graph" / "node_hop1.npy", _ADJ)
    np.save(tmp_path / "graph" / "node_hop1_weights.npy", _ADJ_W)
    return _Spec(str(tmp_path))


CFG = ModelConfig(embedding_dim=D, token_embedding_dim=D, feature_embedding_dim=4,
                  item_hidden_units=(16,), num_heads=2, tower="searchgcn",
                  graph_num_nodes=NODES, graph_neighbourhood="sampled", graph_fanout=3,
                  graph_query_dropout=0.0)


def _features(b, egos):
    rng = np.random.RandomState(3)
    tokens = tf.RaggedTensor.from_row_lengths(
        tf.constant(rng.randint(0, 50, 3 * b), tf.int64), tf.constant([3] * b, tf.int64))
    out = {"item_tokens": tokens, "query_tokens": tokens,
           "item_brand": tf.constant(rng.randint(0, 5, b), tf.int64)}
    for side in ("item", "query"):
        out[f"{side}_graph_hop1"] = tf.constant(_ADJ[egos], tf.int64)
        out[f"{side}_graph_hop1_weight"] = tf.constant(_ADJ_W[egos])
        out[f"{side}_graph_hop2"] = tf.zeros([b, 2], tf.int64)          # unused when sampled
        out[f"{side}_graph_hop2_weight"] = tf.zeros([b, 2], tf.float32)
    return out


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _top(node, k):
    """numpy: the top-k neighbours of a node by weight, ties to the earlier slot."""
    row, w = _ADJ[node], _ADJ_W[node]
    order = [j for j in np.argsort(-w, kind="stable") if w[j] > 0 and row[j] > 0][:k]
    return row[order], w[order]


def _attend_np(ego, nbr_vectors, w, var, scope):
    """numpy reference of one attention layer (searchgcn._attend) over the given vectors."""
    if len(w) == 0:
        return np.zeros(D, np.float32)
    query = ego @ var[scope + "attend/kernel"] + var[scope + "attend/bias"]
    att = _softmax(query @ nbr_vectors.T / np.sqrt(D) + np.log(w / w.sum()))
    return (att @ nbr_vectors) @ var[scope + "out/kernel"] + var[scope + "out/bias"]


@pytest.mark.parametrize("layers", [1, 2])
def test_layers_against_numpy_on_a_tiny_graph(tmp_path, layers):
    spec = _layout(tmp_path)
    cfg = dataclasses.replace(CFG, graph_layers=layers)
    egos = np.array([1, 2, 6, 3])                 # node 3 has no neighbours
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(1)
        features = _features(len(egos), egos)
        got_t = item_tower(features, cfg, spec)   # mode None: serving = top-N by weight
        text_t = item_tower(features, dataclasses.replace(cfg, tower="dpsr"), spec)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        rng = np.random.RandomState(5)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for name, v in variables.items():     # every graph weight nonzero, biases too
                if "/searchgcn/item_layer" in name:
                    sess.run(v.assign(rng.normal(0, 0.5, v.shape.as_list()).astype(np.float32)))
            got, text = sess.run([got_t, text_t])
            var = {n: sess.run(v) for n, v in variables.items() if "searchgcn" in n}
            table = sess.run(variables["dpsr/embeddings/graph_nodes"])
    if layers == 2:   # the model holds the adjacency it read from the layout
        np.testing.assert_array_equal(var["dpsr/searchgcn/node_neighbours"], _ADJ)
    l1, l2 = "dpsr/searchgcn/item_layer1/", "dpsr/searchgcn/item_layer2/"
    for r, ego_node in enumerate(egos):
        e = text[r]
        nodes1, w1 = _top(ego_node, 3)
        x1 = table[nodes1]
        h1 = _attend_np(e, x1, w1, var, l1)
        want = e + h1
        if layers == 2:
            z = np.stack([x1[j] + _attend_np(x1[j], table[_top(n, 3)[0]], _top(n, 3)[1], var, l1)
                          for j, n in enumerate(nodes1)]) if len(nodes1) else x1
            want = want + _attend_np(e + h1, z, w1, var, l2)
        np.testing.assert_allclose(got[r], want / np.linalg.norm(want), atol=1e-5)
    # Node 3 (no neighbours): exactly the text tower, although every graph weight is nonzero.
    np.testing.assert_allclose(got[3], text[3], atol=1e-6)


def test_a_query_without_neighbours_is_the_text_tower_in_training_too(tmp_path):
    spec = _layout(tmp_path)
    egos = np.array([3, 4, 0])
    for layers in (1, 2):
        cfg = dataclasses.replace(CFG, graph_layers=layers)
        with tf.Graph().as_default():
            features = _features(len(egos), egos)
            got_t = query_tower(features, cfg, spec, tf.estimator.ModeKeys.TRAIN)
            text_t = query_tower(features, dataclasses.replace(cfg, tower="dpsr"), spec)
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for v in tf.compat.v1.global_variables():
                    if "/searchgcn/query_layer" in v.op.name and "bias" in v.op.name:
                        sess.run(v.assign(np.full(v.shape.as_list(), 0.3, np.float32)))
                got, text = sess.run([got_t, text_t])
        np.testing.assert_allclose(got, text, atol=1e-6)


def test_two_layers_on_a_layout_without_node_adjacency_says_how_to_fix(tmp_path):
    with tf.Graph().as_default():
        with pytest.raises(FileNotFoundError, match="dpsr prepare .* --graph"):
            item_tower(_features(2, np.array([1, 2])), CFG, _Spec(str(tmp_path)))
