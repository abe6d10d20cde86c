"""The XGBoost baselines learn a ranking that one feature determines (session AUC 1) and
ignore a noise feature; dense grades keep the label order."""
import numpy as np
import pytest

from dpsr_tf.ranking import baselines, metrics

xgboost = pytest.importorskip("xgboost")


def test_dense_grades_keep_order():
    levels = np.array([0.0, 0.33, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(
        baselines.dense_grades(np.array([2.0, 0.0, 0.33, 1.0], np.float32), levels), [3, 0, 1, 2])


@pytest.mark.parametrize("objective", ["rank:pairwise", "rank:ndcg"])
def test_learns_the_informative_feature(objective):
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 8, size=300)
    splits = np.concatenate([[0], np.cumsum(lengths)])
    labels = rng.integers(0, 3, size=splits[-1]).astype(np.float32)
    # Feature 0 = label + small noise (orders the labels inside a session); feature 1 = noise.
    feats = np.stack([labels + 0.1 * rng.random(len(labels)), rng.normal(size=len(labels))],
                     1).astype(np.float32)
    booster = baselines.train_xgboost(feats, labels, splits, objective, rounds=30)
    got = metrics.session_metrics(baselines.predict(booster, feats), labels, splits)
    assert got["session_auc"] == pytest.approx(1.0)
    shuffled = metrics.session_metrics(feats[:, 1], labels, splits)
    assert shuffled["session_auc"] < 0.6
