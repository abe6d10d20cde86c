"""evaluation/tie_metrics.py: expected Recall@k and nDCG@k over the orders of tied scores,
against the mean over every permutation of the tied groups (metrics.per_request_metrics on
each order) and a hand-worked case."""
import itertools

import numpy as np
import pytest

from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation.tie_metrics import per_request_tie_metrics


def _all_orders(rows, scores):
    """Every ranking of `rows` that keeps the score order (tied groups permuted)."""
    groups = [[r for r, s in zip(rows, scores) if s == v]
              for v in sorted(set(scores), reverse=True)]
    for combo in itertools.product(*[itertools.permutations(g) for g in groups]):
        yield [r for g in combo for r in g]


def _brute_force(rows, scores, relevant, gains, recall_ks):
    values = []
    for order in _all_orders(rows, scores):
        got = metrics_lib.per_request_metrics(
            np.array([order], np.int64), np.array([0, len(relevant)]),
            np.array(relevant, np.int64), np.array(gains, np.float32), recall_ks=recall_ks)
        values.append(got)
    return {m: np.mean([v[m][0] for v in values]) for m in values[0]}


@pytest.mark.parametrize("seed", range(6))
def test_expectation_equals_the_mean_over_every_tied_order(seed):
    rng = np.random.RandomState(seed)
    n = 8
    rows = rng.permutation(20)[:n].tolist()
    scores = sorted(rng.randint(0, 3, size=n).astype(np.float32).tolist(), reverse=True)
    relevant = sorted(set(rng.choice(rows, 3, replace=False).tolist()) | {int(rng.randint(20, 25))})
    gains = rng.choice([1.0, 2.0, 3.0], size=len(relevant)).tolist()
    want = _brute_force(rows, scores, relevant, gains, (2, 5))
    got = per_request_tie_metrics(np.array([rows], np.int64), np.array([scores], np.float32),
                                  np.array([0, len(relevant)]), np.array(relevant, np.int64),
                                  np.array(gains, np.float32), recall_ks=(2, 5))
    for m in ("recall@2", "recall@5", "ndcg@10"):
        assert got[m][0] == pytest.approx(want[m], abs=1e-12), m


def test_hand_worked_group_across_the_cut_off():
    # Scores 3, 2, 2, 2, 1: the group of three holds positions 1-3 and one relevant item (row
    # 30); row 10 (first, relevant) alone. Recall@2: 1 + 1/3 of 2 relevant. nDCG@2: DCG =
    # 1 / log2(2) + (1 / 3) * 1 / log2(3) (the group's mean gain 1/3 at position 1); ideal =
    # 1 + 1 / log2(3).
    rows = np.array([[10, 20, 30, 40, 50]], np.int64)
    scores = np.array([[3, 2, 2, 2, 1]], np.float32)
    got = per_request_tie_metrics(rows, scores, np.array([0, 2]), np.array([10, 30]),
                                  np.array([1.0, 1.0], np.float32), recall_ks=(2,), ndcg_k=2)
    assert got["recall@2"][0] == pytest.approx((1 + 1 / 3) / 2)
    assert got["ndcg@2"][0] == pytest.approx((1 + (1 / 3) / np.log2(3)) / (1 + 1 / np.log2(3)))


def test_lists_without_ties_score_as_ranked_and_padding_is_skipped():
    rng = np.random.RandomState(3)
    rows = np.stack([rng.permutation(50)[:12] for _ in range(5)]).astype(np.int64)
    scores = -np.sort(-rng.rand(5, 12), axis=1).astype(np.float32)
    rows[2, 9:] = -1
    scores[2, 9:] = -np.inf
    splits = np.array([0, 2, 4, 5, 8, 9])
    relevant = np.array([rows[0, 0], 49, rows[1, 11], rows[1, 3], rows[2, 10 - 2], 1, 2,
                         rows[3, 5], rows[4, 0]], np.int64)
    gains = np.ones(len(relevant), np.float32)
    want = metrics_lib.per_request_metrics(rows, splits, relevant, gains, recall_ks=(3, 10))
    got = per_request_tie_metrics(rows, scores, splits, relevant, gains, recall_ks=(3, 10))
    for m in ("recall@3", "recall@10", "ndcg@10"):
        np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-12)


def test_bad_input_is_named():
    rows = np.array([[1, 2]], np.int64)
    with pytest.raises(ValueError, match="increase"):
        per_request_tie_metrics(rows, np.array([[1.0, 2.0]]), np.array([0, 1]),
                                np.array([1]), np.array([1.0]))
    with pytest.raises(ValueError, match="shape"):
        per_request_tie_metrics(rows, np.array([[1.0]]), np.array([0, 1]), np.array([1]),
                                np.array([1.0]))
    with pytest.raises(ValueError, match="no relevant"):
        per_request_tie_metrics(rows, np.array([[2.0, 1.0]]), np.array([0, 0]),
                                np.zeros(0, np.int64), np.zeros(0))


class _ScoresOf:
    """A scorer with fixed [Q, N] scores (evaluate.tie_aware_metrics' interface)."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, np.float32)

    def score_requests(self, idx):
        return self.scores[idx]


def test_a_full_corpus_scorer_is_judged_over_the_whole_tie_group():
    # Request 0: one item scores 3, five score 0 (unmatched by BM25, say); its relevant item
    # 5 scores 0, so it is in the top 2 with probability 1 / 5, whatever the catalog order.
    # A list cut at 2 would hold item 1 (catalog order) and judge the group as that one entry.
    # Request 1: no ties; relevant items 2 and 4 at ranks 1 and 4 (recall@2 = 1/2).
    from dpsr_tf.data.eval_set import EvalSet
    from dpsr_tf.evaluation.evaluate import EvalConfig, tie_aware_metrics
    scores = [[0, 0, 3, 0, 0, 0], [1, 5, 6, 3, 2, 0]]
    eval_set = EvalSet(queries=["a", "b"], query_rows=np.array([0, 1]),
                       user_rows=np.array([-1, -1]), history_ends=np.zeros(2, np.int64),
                       relevant_splits=np.array([0, 1, 3]),
                       relevant_rows=np.array([5, 2, 4]),
                       relevant_gains=np.ones(3, np.float32), min_gain=1.0)
    got = tie_aware_metrics(_ScoresOf(scores), eval_set,
                            EvalConfig(recall_ks=(2, 6), batch_size=1))
    np.testing.assert_allclose(got["recall@2"], [1 / 5, 1 / 2])
    np.testing.assert_allclose(got["recall@6"], [1.0, 1.0])
    # nDCG@10 of request 0: gain 1 spread over positions 2-6 (0-based 1-5), ideal 1.
    want0 = np.mean(1 / np.log2(np.arange(3, 8)))
    want1 = (1 / np.log2(2) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    np.testing.assert_allclose(got["ndcg@10"], [want0, want1])


@pytest.mark.parametrize("seed", range(4))
def test_items_a_short_list_lacks_tie_after_it(seed):
    # A lexical list of the 4 matched items of a catalog of 8: the other 4 score 0 and tie,
    # so the whole ranking is the list followed by them in any order.
    rng = np.random.RandomState(seed)
    catalog = rng.permutation(8)
    listed, rest = catalog[:4].tolist(), catalog[4:].tolist()
    scores = sorted(rng.randint(1, 3, size=4).astype(np.float32).tolist(), reverse=True)
    relevant = sorted(rng.choice(8, 3, replace=False).tolist())
    gains = rng.choice([1.0, 2.0], size=3).tolist()
    want = _brute_force(listed + rest, scores + [0.0] * 4, relevant, gains, (2, 5, 8))
    padded = np.array([listed + [-1] * 2], np.int64)
    got = per_request_tie_metrics(padded, np.array([scores + [-np.inf] * 2], np.float32),
                                  np.array([0, 3]), np.array(relevant, np.int64),
                                  np.array(gains, np.float32), recall_ks=(2, 5, 8),
                                  catalog_size=8)
    for m in ("recall@2", "recall@5", "recall@8", "ndcg@10"):
        assert got[m][0] == pytest.approx(want[m], abs=1e-12), m


def test_an_empty_list_is_the_whole_catalog_tied():
    # A query BM25 matches nothing: every one of the 6 items scores 0. Each relevant item is at
    # each position with probability 1/6: Recall@k = k / 6; its expected DCG@10 is the mean
    # discount of the 6 positions times its gain. Beside it, a non-empty row is unaffected.
    discounts = 1.0 / np.log2(np.arange(2, 8))
    got = per_request_tie_metrics(
        np.array([[-1, -1, -1], [4, 5, -1]], np.int64),
        np.array([[-np.inf] * 3, [2.0, 1.0, -np.inf]], np.float32),
        np.array([0, 2, 3]), np.array([1, 3, 4], np.int64), np.array([2.0, 1.0, 1.0],
                                                                    np.float32),
        recall_ks=(2, 5), catalog_size=6)
    np.testing.assert_allclose(got["recall@2"], [2 / 6, 1.0])
    np.testing.assert_allclose(got["recall@5"], [5 / 6, 1.0])
    ideal = 2.0 + 1.0 / np.log2(3)
    np.testing.assert_allclose(got["ndcg@10"], [3.0 * discounts.mean() / ideal, 1.0])
