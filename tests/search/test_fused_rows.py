"""search/fused_rows.py, the evaluation's vectorized fusion, equals fuse_np (the rule written
one item at a time) on lists with ties, padding and an item repeated in one list, whole and in
chunks of requests."""
import numpy as np
import pytest

from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.search.fused_rows import FusionPlan, fused_rows
from dpsr_tf.search.fusion import FusionConfig, fuse_np


@pytest.mark.parametrize("candidate", list(fusion_choice.CANDIDATES) + [
    FusionConfig(rule="blend", lexical_weight=0.7)])
def test_vectorized_fusion_equals_fuse_np(candidate):
    rng = np.random.RandomState(17)
    q, kd, kl = 60, 25, 20
    # Overlapping lists from a small catalog, tied scores, -1 padding, a repeated item.
    dense_rows = np.stack([rng.permutation(40)[:kd] for _ in range(q)]).astype(np.int64)
    lexical_rows = np.stack([rng.permutation(40)[:kl] for _ in range(q)]).astype(np.int64)
    dense_scores = -np.sort(-np.round(rng.rand(q, kd) * 6), axis=1).astype(np.float32)
    lexical_scores = -np.sort(-np.round(rng.rand(q, kl) * 3), axis=1).astype(np.float32)
    dense_rows[:5, -7:] = -1
    dense_scores[:5, -7:] = -np.inf
    lexical_rows[5:12, -12:] = -1
    lexical_rows[12] = -1
    lexical_rows[13, 3] = lexical_rows[13, 1]     # an item twice in one list
    for k, chunk in ((10, 2048), (30, 7), (kd + kl + 5, 1)):
        got = fused_rows(dense_scores, dense_rows, lexical_scores, lexical_rows, k, candidate,
                         chunk=chunk)
        want_scores, want, _ = fuse_np(dense_scores, dense_rows, lexical_scores, lexical_rows,
                                       k, candidate)
        np.testing.assert_array_equal(got, want)
        plan = FusionPlan(dense_scores, dense_rows, lexical_scores, lexical_rows)
        scores, rows = plan.scored_rows(k, candidate)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(scores, want_scores)   # float32 bits, -inf pads
