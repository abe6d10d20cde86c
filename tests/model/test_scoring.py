"""The soft dot product and its attention weights against hand-worked values."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import scoring

# Two heads e1 = (1, 0), e2 = (0, 1); items g1 = (0.6, 0.8), g2 = (1, 0).
HEADS = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)          # [1, 2, 2]
ITEMS = np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)            # [2, 2]


@pytest.mark.parametrize("beta, expected", [
    # g1: dots (0.6, 0.8); beta 0.1: w = softmax(6, 8) = (0.119203, 0.880797),
    #     score = 0.6 * 0.119203 + 0.8 * 0.880797 = 0.776159.
    # g2: dots (1, 0); w = softmax(10, 0) = (0.9999546, 0.0000454), score = 0.9999546.
    (0.1, [0.776159, 0.9999546]),
    # beta 1: g1: w = softmax(0.6, 0.8) = (0.450166, 0.549834), score = 0.709967;
    #         g2: w = softmax(1, 0) = (0.731059, 0.268941), score = 0.731059.
    (1.0, [0.709967, 0.731059]),
    # beta 0: the max over heads.
    (0.0, [0.8, 1.0]),
])
def test_soft_dot_product_hand_worked(beta, expected):
    got = scoring.soft_dot_product(tf.constant(HEADS), tf.constant(ITEMS), beta).numpy()
    np.testing.assert_allclose(got, [expected], atol=1e-6)
    np.testing.assert_allclose(scoring.soft_dot_product_np(HEADS, ITEMS, beta), [expected],
                               atol=1e-6)
    paired = scoring.paired_soft_dot_product(
        tf.constant(np.repeat(HEADS, 2, axis=0)), tf.constant(ITEMS), beta).numpy()
    np.testing.assert_allclose(paired, expected, atol=1e-6)


def test_attention_weights_hand_worked():
    dots = tf.constant([[0.6, 0.8], [1.0, 0.0]])
    np.testing.assert_allclose(scoring.attention_weights(dots, 0.1).numpy(),
                               [[0.119203, 0.880797], [0.9999546, 0.0000454]], atol=1e-6)
    np.testing.assert_array_equal(scoring.attention_weights(dots, 0.0).numpy(),
                                  [[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("num_heads", [1, 3, 8])
@pytest.mark.parametrize("beta", [1e-3, 1e-4])
def test_small_beta_equals_max(num_heads, beta):
    rng = np.random.RandomState(num_heads)
    heads = rng.normal(size=(5, num_heads, 16)).astype(np.float32)
    heads /= np.linalg.norm(heads, axis=-1, keepdims=True)
    items = rng.normal(size=(7, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=-1, keepdims=True)
    brute = np.einsum("bmd,nd->bnm", heads, items).max(axis=-1)
    got = scoring.soft_dot_product(tf.constant(heads), tf.constant(items), beta).numpy()
    # exp(-gap / beta) vanishes unless two heads tie within ~beta; the bound covers ties.
    np.testing.assert_allclose(got, brute, atol=beta)
    np.testing.assert_allclose(scoring.soft_dot_product(tf.constant(heads), tf.constant(items),
                                                        0.0).numpy(), brute, atol=1e-6)


def test_large_beta_is_mean_over_heads():
    rng = np.random.RandomState(0)
    heads = rng.normal(size=(3, 4, 8)).astype(np.float32)
    items = rng.normal(size=(5, 8)).astype(np.float32)
    mean = np.einsum("bmd,nd->bnm", heads, items).mean(axis=-1)
    got = scoring.soft_dot_product(tf.constant(heads), tf.constant(items), 1e6).numpy()
    np.testing.assert_allclose(got, mean, atol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("num_heads", [1, 4])
def test_numpy_soft_dot_from_dots_equals_tf(beta, num_heads):
    # The one NumPy implementation (evaluation's pair scores and soft_dot_product_np) against
    # the TF one training uses, on [b, c, m] dots.
    rng = np.random.RandomState(7 + num_heads)
    heads = rng.normal(size=(6, num_heads, 8)).astype(np.float32)
    items = rng.normal(size=(6, 5, 8)).astype(np.float32)
    dots = np.einsum("bmd,bcd->bcm", heads, items)
    want = np.stack([scoring.paired_soft_dot_product(
        tf.constant(heads), tf.constant(items[:, c]), beta).numpy() for c in range(5)], axis=1)
    np.testing.assert_allclose(scoring.soft_dot_from_dots_np(dots, beta), want, atol=1e-5)
    np.testing.assert_allclose(scoring.soft_dot_product_np(heads, items[0], beta)[0],
                               want[0], atol=1e-5)


def test_numpy_soft_dot_rejects_negative_beta():
    with pytest.raises(ValueError, match="beta must be >= 0, got -0.1"):
        scoring.soft_dot_from_dots_np(np.zeros([2, 3], np.float32), -0.1)
