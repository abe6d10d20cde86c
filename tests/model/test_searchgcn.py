"""The searchgcn towers: the DPSR tower plus attention over click-graph neighbours (numpy
reference of one hop), exactly the DPSR tower for a node without neighbours, and a clear error
when the layout has no graph."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.towers import item_tower, query_tower

D, NODES = 8, 30


class _Spec:
    token_id_space = 50
    item_features = {"brand": 5}
    user_features = {}
    num_items = 10
    layout_dir = "/nonexistent"

    def path(self, rel):
        return f"{self.layout_dir}/{rel}"


def _features(rng, b, graph):
    tokens = tf.RaggedTensor.from_row_lengths(
        tf.constant(rng.randint(0, 50, 3 * b), tf.int64), tf.constant([3] * b, tf.int64))
    out = {"item_tokens": tokens, "query_tokens": tokens,
           "item_brand": tf.constant(rng.randint(0, 5, b), tf.int64)}
    for side in ("item", "query"):
        for hop, k in (("hop1", 4), ("hop2", 3)):
            ids = rng.randint(1, NODES, [b, k]) if graph else np.zeros([b, k], np.int64)
            ids[0, -1] = 0                                   # padding inside a row
            out[f"{side}_graph_{hop}"] = tf.constant(ids, tf.int64)
            out[f"{side}_graph_{hop}_weight"] = tf.constant(
                rng.randint(1, 5, [b, k]).astype(np.float32))
    return out


CFG = ModelConfig(embedding_dim=D, token_embedding_dim=D, feature_embedding_dim=4,
                  item_hidden_units=(16,), adapter_hidden_units=(8,), num_heads=2,
                  tower="searchgcn", graph_num_nodes=NODES)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_no_neighbours_is_the_dpsr_tower_and_a_hop_matches_numpy():
    rng = np.random.RandomState(0)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(1)
        empty = _features(rng, 5, graph=False)
        full = _features(np.random.RandomState(1), 5, graph=True)
        gcn_empty = item_tower(empty, CFG, _Spec())
        dpsr_empty = item_tower(empty, dataclasses.replace(CFG, tower="dpsr"), _Spec())
        q_empty = query_tower(empty, CFG, _Spec())
        q_dpsr = query_tower(empty, dataclasses.replace(CFG, tower="dpsr"), _Spec())
        gcn_full = item_tower(full, CFG, _Spec())
        text_full = item_tower(full, dataclasses.replace(CFG, tower="dpsr"), _Spec())
        scope = "dpsr/searchgcn/item_hop1/"
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            a, b, qa, qb = sess.run([gcn_empty, dpsr_empty, q_empty, q_dpsr])
            np.testing.assert_allclose(a, b, atol=1e-6)
            np.testing.assert_allclose(qa, qb, atol=1e-6)
            # V starts at zero: the graph adds nothing before training.
            np.testing.assert_allclose(*sess.run([gcn_full, text_full]), atol=1e-6)
            # Set hop 1's output to the identity, hop 2's to zero, and check the formula.
            sess.run(variables[scope + "out/kernel"].assign(np.eye(D, dtype=np.float32)))
            got, text, table, w_att, b_att, ids, ws = sess.run(
                [gcn_full, text_full, variables["dpsr/embeddings/graph_nodes"],
                 variables[scope + "attend/kernel"], variables[scope + "attend/bias"],
                 full["item_graph_hop1"], full["item_graph_hop1_weight"]])
    for r in range(5):
        valid = ids[r] > 0
        n = table[ids[r][valid]]
        share = ws[r][valid] / ws[r][valid].sum()
        att = _softmax((text[r] @ w_att + b_att) @ n.T / np.sqrt(D) + np.log(share))
        want = text[r] + att @ n
        np.testing.assert_allclose(got[r], want / np.linalg.norm(want), atol=1e-5)


def test_searchgcn_without_a_graph_in_the_layout_says_how_to_build_one():
    with pytest.raises(FileNotFoundError, match="--graph"):
        dataclasses.replace(CFG, graph_num_nodes=0).with_graph(_Spec())
    with pytest.raises(ValueError, match="tower"):
        ModelConfig(tower="gcn")


def test_query_graph_dropout_empties_whole_rows_at_the_given_rate():
    from dpsr_tf.model.searchgcn import drop_query_graph  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(2)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(3)
        features = _features(rng, 4000, graph=True)
        dropped = drop_query_graph(features, 0.3)
        with tf.compat.v1.Session() as sess:
            before, after, w_after, item_before, item_after = sess.run(
                [features["query_graph_hop1"], dropped["query_graph_hop1"],
                 dropped["query_graph_hop2_weight"], features["item_graph_hop1"],
                 dropped["item_graph_hop1"]])
    emptied = (after == 0).all(axis=1) & (before != 0).any(axis=1)
    kept = (after == before).all(axis=1)
    assert (emptied | kept).all()                       # a row is kept or emptied, never cut
    assert (w_after[emptied] == 0).all()                # the same rows on every query list
    assert abs(emptied.mean() - 0.3) < 0.03             # 4000 rows: about 4 standard deviations
    np.testing.assert_array_equal(item_before, item_after)  # the item side is untouched


def test_no_neighbours_is_the_dpsr_tower_after_training_moved_the_biases_too():
    rng = np.random.RandomState(4)
    with tf.Graph().as_default():
        empty = _features(rng, 3, graph=False)
        gcn = [item_tower(empty, CFG, _Spec()), query_tower(empty, CFG, _Spec())]
        text_cfg = dataclasses.replace(CFG, tower="dpsr")
        text = [item_tower(empty, text_cfg, _Spec()), query_tower(empty, text_cfg, _Spec())]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for v in tf.compat.v1.global_variables():   # as a trained model's would be
                if "/searchgcn/" in v.op.name and "/out/bias" in v.op.name:
                    sess.run(v.assign(np.full(v.shape.as_list(), 0.3, np.float32)))
            for got, want in zip(*sess.run([gcn, text])):
                np.testing.assert_allclose(got, want, atol=1e-6)
