"""`dpsr evaluate --tie_aware` (EvalConfig.tie_aware): every ranking also scored in expectation
over the orders of its tied scores. A full-corpus scorer against hand-worked values; the served
dense and hybrid lists of `--hybrid` against tie_metrics over the same lists, and against the
as-ranked metrics where a row has no tie."""
import numpy as np
import pytest

from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import hybrid as hybrid_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import tie_metrics
from dpsr_tf.search.fusion import FusionConfig, fuse_np

PER_REQUEST = metrics_lib.PER_REQUEST
LOG3, LOG6 = np.log2(3.0), np.log2(6.0)


class _EvalSet:
    relevant_splits = np.array([0, 1, 3], np.int64)
    relevant_rows = np.array([2, 2, 4], np.int64)
    relevant_gains = np.ones(3, np.float32)

    def __len__(self):
        return 2


class _Scorer:
    """Request 0 ties items 0, 1, 2 (relevant: 2); request 1 ranks 0 > {1, 2} > 3 > 4
    (relevant: 2 and 4)."""
    scores = np.array([[1, 1, 1, 0, 0], [3, 2, 2, 1, 0]], np.float32)

    def score_requests(self, idx):
        return self.scores[idx]

    pair_request = np.array([0, 1, 1])      # the labelled pairs: one per relevant item

    def score_pairs(self, idx, items):
        return self.scores[self.pair_request[idx][:, None], items]


class _Spec:
    num_items = 5


def test_a_full_corpus_scorer_is_scored_by_hand_over_its_tied_orders():
    cfg = evaluate_lib.EvalConfig(recall_ks=(1, 3), num_random=0, per_request=True,
                                  tie_aware=True)
    pairs = {"label": np.ones(3, np.float32), "item_row": np.array([2, 2, 4], np.int64)}
    got = evaluate_lib.evaluate_scorer(_Scorer(), _Spec(), _EvalSet(), pairs, cfg,
                                       log=lambda _: None)
    ties = got[evaluate_lib.TIE_AWARE + "_" + PER_REQUEST]
    # Request 0: item 2 is first, second or third with probability 1/3 each.
    # Request 1: item 2 second or third, item 4 fifth.
    np.testing.assert_allclose(ties["recall@1"], [1 / 3, 0.0])
    np.testing.assert_allclose(ties["recall@3"], [1.0, 0.5])
    np.testing.assert_allclose(ties["ndcg@10"], [
        (1 + 1 / LOG3 + 0.5) / 3,
        ((1 / LOG3 + 0.5) / 2 + 1 / LOG6) / (1 + 1 / LOG3)])
    assert got[evaluate_lib.TIE_AWARE] == pytest.approx(
        {m: float(np.mean(v)) for m, v in ties.items()})
    # As ranked, the catalog's order puts item 2 last of its group in both requests.
    np.testing.assert_allclose(got[PER_REQUEST]["recall@1"], [0.0, 0.0])
    np.testing.assert_allclose(got[PER_REQUEST]["ndcg@10"], [
        0.5, (0.5 + 1 / LOG6) / (1 + 1 / LOG3)])
    off = evaluate_lib.evaluate_scorer(_Scorer(), _Spec(), _EvalSet(), pairs,
                                       evaluate_lib.EvalConfig(recall_ks=(1, 3), num_random=0),
                                       log=lambda _: None)
    assert evaluate_lib.TIE_AWARE not in off


def test_hybrid_scores_its_served_and_fused_lists_over_their_tied_orders(
        tiny_history_model, tiny_flat_index):
    model_dir = tiny_history_model.model_dir
    quiet = lambda *_: None
    cfg = evaluate_lib.EvalConfig(num_random=0, per_request=True, tie_aware=True)
    fusion = FusionConfig()
    got = hybrid_lib.evaluate_hybrid(model_dir, tiny_flat_index, cfg=cfg, fusion=fusion,
                                     log=quiet)
    run = hybrid_lib.open_hybrid(model_dir, tiny_flat_index, cfg=cfg, log=quiet)
    num_items = run.spec.num_items
    lex_scores, lex_rows = run.lexical_lists(fusion)
    fused_scores, fused_rows, _ = fuse_np(run.dense_scores, run.dense_rows, lex_scores,
                                          lex_rows, run.k, fusion)
    for ranked, system, key in (((run.dense_rows, run.dense_scores), "dpsr", "served_"),
                                ((fused_rows, fused_scores), "hybrid", "")):
        want = tie_metrics.per_request_tie_metrics(*ranked, *run.relevant, recall_ks=(10, 100,
                                                   1000), catalog_size=num_items)
        have = got[system][key + evaluate_lib.TIE_AWARE + "_" + PER_REQUEST]
        as_ranked = got[system][(key or "") + PER_REQUEST]
        rows, scores = ranked
        valid = rows >= 0
        untied = np.array([len(np.unique(s[v])) == v.sum() for s, v in zip(scores, valid)])
        assert untied.any()
        for metric, values in want.items():
            np.testing.assert_allclose(have[metric], values, atol=1e-12)
            # No tie and the whole catalog listed: the expectation is the one order.
            whole = untied & (valid.sum(axis=1) == num_items)
            assert whole.any()
            np.testing.assert_allclose(have[metric][whole], as_ranked[metric][whole],
                                       atol=1e-12)
    # The lexical index's full-corpus scorer: unmatched items score 0 and tie.
    assert set(got["lexical"][evaluate_lib.TIE_AWARE]) == {"recall@10", "recall@100",
                                                           "recall@1000", "ndcg@10"}
