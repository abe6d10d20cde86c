"""The fusion choice's fast path (evaluation/fusion_scores.py: every candidate scored from the
relevant items' fused ranks, the lists grouped once) against the reference (each candidate's
fused rows through fused_rows, scored by metrics.per_request_metrics): the same per-request
values, bit for bit, on lists with ties, padding, repeated relevant items and rows the fast
path hands to the reference."""
import collections

import numpy as np
import pytest

from dpsr_tf.evaluation import fusion_choice, fusion_scores
from dpsr_tf.search.fusion import FusionConfig, fuse_np

EvalSet = collections.namedtuple("EvalSet", "relevant_splits relevant_rows relevant_gains")
NUM_ITEMS = 60


def _lists(rng, q, width, ties):
    """[q, width] (scores, rows): distinct items best first, coarse scores (many ties) when
    `ties`, a random number of -1 / -inf pads at the end of each row."""
    rows = np.stack([rng.permutation(NUM_ITEMS)[:width] for _ in range(q)]).astype(np.int64)
    raw = rng.rand(q, width)
    scores = -np.sort(-(np.round(raw * 4) / 4 if ties else raw), axis=1).astype(np.float32)
    for i in range(q):
        pad = rng.randint(0, width // 2)
        if pad:
            rows[i, -pad:], scores[i, -pad:] = -1, -np.inf
    return scores, rows


def _eval_set(rng, q):
    """Relevant items per request, some repeated with another gain (the last one counts)."""
    splits, rows, gains = [0], [], []
    for _ in range(q):
        items = list(rng.choice(NUM_ITEMS, size=rng.randint(1, 6), replace=False))
        if rng.rand() < 0.3:
            items.append(items[0])
        rows += items
        gains += list(rng.choice([1.0, 2.0, 3.0], size=len(items)))
        splits.append(len(rows))
    return EvalSet(np.array(splits, np.int64), np.array(rows, np.int64),
                   np.array(gains, np.float32))


CANDIDATES = fusion_choice.CANDIDATES + (FusionConfig(rrf_k=1.0, lexical_weight=2.0),
                                         FusionConfig(rule="blend", dense_weight=0.5))


@pytest.mark.parametrize("seed,ties,k,recall_ks,chunk", [
    (0, False, 30, (10, 20), 2048), (1, True, 30, (5, 30), 7), (2, True, 8, (3, 100), 16),
    (3, False, 50, (1, 10, 50), 11)])
def test_fast_values_equal_the_reference(seed, ties, k, recall_ks, chunk, monkeypatch):
    by_reference = set()
    reference = fusion_scores._score_by_reference  # pylint: disable=protected-access

    def spy(values, local_rows, lo, *args):
        by_reference.update(lo + r for r in local_rows)
        reference(values, local_rows, lo, *args)

    monkeypatch.setattr(fusion_scores, "_score_by_reference", spy)
    rng = np.random.RandomState(seed)
    q = 40
    dense = _lists(rng, q, 20, ties)
    lexical = _lists(rng, q, 15, ties)
    # Rows the fast path leaves to the reference: an item twice in one list, a non-finite score.
    lexical[1][3, 1] = lexical[1][3, 0]
    dense[0][5, 0] = np.inf
    eval_set = _eval_set(rng, q)
    fast = fusion_scores.candidate_values(*dense, *lexical, eval_set, k, CANDIDATES, recall_ks,
                                          chunk=chunk)
    want = fusion_scores.candidate_values_reference(*dense, *lexical, eval_set, k, CANDIDATES,
                                                    recall_ks)
    for cfg, got, ref in zip(CANDIDATES, fast, want):
        assert sorted(got) == sorted(ref)
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{cfg} {name}")
    assert by_reference == {3, 5}   # the blends' fused score of the infinite entry is NaN


def test_choose_fusion_equals_scoring_each_candidate_by_the_reference():
    """choose_fusion's rows and choice are the reference's: each candidate's mean metrics and
    their mean, the first best kept."""
    rng = np.random.RandomState(5)
    q, k = 50, 20
    dense, lexical = _lists(rng, q, 20, True), _lists(rng, q, 20, True)
    eval_set = _eval_set(rng, q)
    objective = ("recall@10", "recall@20", "ndcg@10", "mrr@10")
    choice = fusion_choice.choose_fusion(*dense, lambda cfg: lexical, eval_set, k, CANDIDATES,
                                         objective)
    want = fusion_scores.candidate_values_reference(*dense, *lexical, eval_set, k, CANDIDATES,
                                                    (10, 20))
    scores = []
    for row, ref in zip(choice.candidates, want):
        means = {m: float(ref[m].mean()) for m in objective}
        scores.append(float(np.mean([means[m] for m in objective])))
        assert row == {"fusion": row["fusion"], "score": scores[-1], **means}
    assert choice.config == CANDIDATES[int(np.argmax(scores))]
    assert choice.score == max(scores)


def test_a_request_without_relevant_items_is_refused_as_the_reference_does():
    scores, rows = np.array([[1.0, 0.5]] * 2, np.float32), np.array([[1, 2]] * 2, np.int64)
    eval_set = EvalSet(np.array([0, 1, 1], np.int64), np.array([1], np.int64),
                       np.ones(1, np.float32))
    with pytest.raises(ValueError, match="request 1 has no relevant item"):
        fusion_scores.candidate_values(scores, rows, scores, rows, eval_set, 2,
                                       [FusionConfig()], (1,))


@pytest.mark.parametrize("k", [5, 30, 40])
def test_fused_with_source_equals_fuse_np(k):
    """The hybrid evaluation's fused lists (scores, rows and each result's source) are fuse_np's,
    on lists with ties, padding, an empty lexical row and an item twice in one list."""
    rng = np.random.RandomState(11)
    dense, lexical = _lists(rng, 30, 20, True), _lists(rng, 30, 15, True)
    lexical[1][4] = -1
    lexical[0][4] = -np.inf
    dense[1][6, 2] = dense[1][6, 0]
    for cfg in CANDIDATES:
        got = fusion_scores.fused_with_source(*dense, *lexical, k, cfg)
        want = fuse_np(*dense, *lexical, k, cfg)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=str(cfg))
