"""The DPR Siamese tower: both sides share one set of weights, and the logit difference and
the pairwise loss equal values worked out by hand."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.ranking import model as M
from dpsr_tf.ranking.features import NUM_FEATURES
from dpsr_tf.tokenization.tokenizer import Tokenizer

CONFIG = dataclasses.replace(M.RankerConfig(), token_embedding_dim=2, hidden_units=(2,),
                             tokenizer=dataclasses.replace(M.default_tokenizer(), num_buckets=64))


def _graph(label):
    graph = tf.Graph()
    with graph.as_default():
        numeric_a = np.zeros([1, NUM_FEATURES], np.float32)
        numeric_a[0, 0] = 1.0
        features = {"query": tf.constant(["red shoe"]),
                    "title_a": tf.constant(["red running shoe"]),
                    "title_b": tf.constant(["drill"]),
                    "numeric_a": tf.constant(numeric_a),
                    "numeric_b": tf.zeros([1, NUM_FEATURES])}
        logit_a, logit_b = M.pairwise_logits(features, CONFIG)
        loss = M.pairwise_loss(logit_a, logit_b, tf.constant([label], tf.float32))
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    return graph, logit_a, logit_b, loss, variables


def test_both_sides_share_one_set_of_weights():
    _, _, _, _, variables = _graph(1.0)
    # One tower's variables, created once: the second side reuses them.
    assert sorted(variables) == ["dpr/embeddings/tokens", "dpr/tower/layer_0/bias",
                                 "dpr/tower/layer_0/kernel", "dpr/tower/layer_1/bias",
                                 "dpr/tower/layer_1/kernel"]
    assert variables["dpr/tower/layer_0/kernel"].shape == (2 + 2 + 2 + NUM_FEATURES, 2)


@pytest.mark.parametrize("label", [1.0, 0.0])
def test_logit_difference_and_loss_hand_worked(label):
    # The tokenizer's features: "red shoe" -> 2 words + 1 word pair = 3; "red running shoe" ->
    # 3 + 2 = 5; "drill" -> 1.
    tok = Tokenizer(CONFIG.tokenizer)
    _, splits = tok.tokenize(["red shoe", "red running shoe", "drill"])
    assert list(np.diff(splits)) == [3, 5, 1]
    graph, logit_a, logit_b, loss, v = _graph(label)
    with tf.compat.v1.Session(graph=graph) as sess:
        # Token table all ones: a sum-pooled bag = [count, count].
        sess.run(v["dpr/embeddings/tokens"].assign(np.ones([64, 2], np.float32)))
        k0 = np.zeros([6 + NUM_FEATURES, 2], np.float32)
        k0[:, 0], k0[:, 1] = 0.1, -0.1        # unit 1 never fires (ReLU of a negative sum)
        sess.run([v["dpr/tower/layer_0/kernel"].assign(k0),
                  v["dpr/tower/layer_0/bias"].assign(np.zeros(2, np.float32)),
                  v["dpr/tower/layer_1/kernel"].assign(np.array([[2.0], [5.0]], np.float32)),
                  v["dpr/tower/layer_1/bias"].assign(np.array([0.5], np.float32))])
        a, b, l = sess.run([logit_a, logit_b, loss])
    # Side a: x = [q 3,3 | t 5,5 | q*t 15,15 | z 1,0..0] -> sum 47 -> h = 4.7 -> 2*4.7 + 0.5.
    # Side b: x = [3,3 | 1,1 | 3,3 | 0..0] -> sum 14 -> h = 1.4 -> 2*1.4 + 0.5.
    assert a[0] == pytest.approx(9.9, abs=1e-5)
    assert b[0] == pytest.approx(3.3, abs=1e-5)
    # Sigmoid cross-entropy of d = 6.6: label 1 -> log(1 + e^-6.6); label 0 -> 6.6 + log(1 + e^-6.6).
    want = np.log1p(np.exp(-6.6)) + (0.0 if label == 1.0 else 6.6)
    assert l == pytest.approx(want, rel=1e-5)


def test_config_json_round_trip_and_validation():
    cfg = dataclasses.replace(CONFIG, feature_mean=tuple(range(NUM_FEATURES)))
    assert M.RankerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="combiner must be"):
        dataclasses.replace(CONFIG, combiner="max").validate()
