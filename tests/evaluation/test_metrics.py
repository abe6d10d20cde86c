"""Retrieval metrics against hand-worked values and brute-force references."""
import itertools

import numpy as np
import pytest

from dpsr_tf.evaluation import metrics


def test_retrieval_metrics_hand_worked():
    # Request 0: relevant {1: gain 2, 9: gain 1}; ranking 5, 1, 7, 9, ...
    #   recall@2 = 1/2, recall@4 = 2/2; MRR@10 = 1/2 (first hit at rank 2)
    #   DCG@10 = 2/log2(3) + 1/log2(5) = 1.2618595 + 0.4306766 = 1.6925361
    #   IDCG@10 = 2/log2(2) + 1/log2(3) = 2 + 0.6309298 = 2.6309298; nDCG = 0.6433223
    # Request 1: relevant {3: gain 1}; ranking 3 first: recall 1, MRR 1, nDCG 1.
    retrieved = np.array([[5, 1, 7, 9, 0, 2, 3, 4, 6, 8, 10, 11],
                          [3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]])
    splits = np.array([0, 2, 3])
    rows = np.array([1, 9, 3])
    gains = np.array([2.0, 1.0, 1.0], np.float32)
    got = metrics.retrieval_metrics(retrieved, splits, rows, gains, recall_ks=(2, 4),
                                    ndcg_k=10, mrr_k=10)
    assert got["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["recall@4"] == pytest.approx(1.0)
    assert got["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["ndcg@10"] == pytest.approx((0.6433223 + 1.0) / 2, abs=1e-6)
    assert got["requests"] == 2


def test_request_without_relevant_items_is_an_error():
    with pytest.raises(ValueError, match="no relevant item"):
        metrics.retrieval_metrics(np.zeros((1, 10), np.int64), np.array([0, 0]),
                                  np.zeros(0, np.int64), np.zeros(0, np.float32))


@pytest.mark.parametrize("k", [1, 5, 37, 100])
def test_top_k_rows_matches_argsort(k):
    rng = np.random.RandomState(k)
    scores = rng.normal(size=(6, 100)).astype(np.float32)
    scores[0, 10:20] = 0.5                         # ties: lower index first
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(metrics.top_k_rows(scores, k), want)


def test_retrieve_batches_like_one_call():
    rng = np.random.RandomState(0)
    scores = rng.normal(size=(10, 50)).astype(np.float32)
    got = metrics.retrieve(lambda idx: scores[idx], 10, 7, batch_size=3)
    np.testing.assert_array_equal(got, metrics.top_k_rows(scores, 7))


def test_top_k_among_random_hand_worked():
    # pair 0: 0 random items beat .9 -> rank 1; pair 1: 2 beat .5 (.6 and the tie .5) -> rank 3.
    pos = np.array([0.9, 0.5])
    rand = np.array([[0.1, 0.2, 0.3], [0.6, 0.5, 0.1]])
    assert metrics.top_k_among_random(pos, rand, ks=(1, 2, 3)) == {
        "top@1": 0.5, "top@2": 0.5, "top@3": 1.0}


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_pairwise_count(seed):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 2, size=40)
    scores = rng.randint(0, 6, size=40).astype(float)     # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    want = np.mean([1.0 if p > n else 0.5 if p == n else 0.0
                    for p, n in itertools.product(pos, neg)])
    assert metrics.auc(labels, scores) == pytest.approx(want)


def test_auc_one_class_is_nan():
    assert np.isnan(metrics.auc(np.ones(3), np.arange(3.0)))
