"""precision@k of dpsr_tf/evaluation/index_compare.py against hand-worked values."""
import numpy as np
import pytest

from dpsr_tf.evaluation.index_compare import _overlap, precision_at


def test_precision_hand_worked():
    # Request 0: relevant {1, 2, 9}; top 4 = [2, 5, 1, -1] -> 2 hits / 4 = 0.5.
    # Request 1: relevant {7};       top 4 = [0, 3, 4, 6]  -> 0 hits / 4 = 0.
    retrieved = np.array([[2, 5, 1, -1, 9], [0, 3, 4, 6, 7]], np.int64)
    splits = np.array([0, 3, 4], np.int64)
    rows = np.array([1, 2, 9, 7], np.int64)
    assert precision_at(retrieved, splits, rows, 4) == pytest.approx(0.25)
    # At k = 5 both find one more: (3/5 + 1/5) / 2 = 0.4.
    assert precision_at(retrieved, splits, rows, 5) == pytest.approx(0.4)


def test_overlap_ignores_padding():
    a = np.array([[1, 2, -1, -1]], np.int64)
    b = np.array([[2, 1, 3, 4]], np.int64)
    assert _overlap(a, b, 4) == pytest.approx(0.5)
