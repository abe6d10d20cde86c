"""Dense feedback (search/dense_feedback.py): hand-worked moves, the graph twin equal to numpy,
padding, and the config's checks."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search import dense_feedback
from dpsr_tf.search.dense_feedback import FeedbackConfig

ITEMS = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], np.float32)


def _graph(heads, rows, table, cfg):
    return tf.function(lambda h, r: dense_feedback.moved_heads(
        h, r, tf.constant(table), cfg))(tf.constant(heads, tf.float32),
                                       tf.constant(rows, tf.int64)).numpy()


def test_a_head_moves_a_share_of_its_norm_toward_the_unit_mean_of_its_first_hits():
    cfg = FeedbackConfig(items=2, weight=0.25)
    # One query, two heads of norms 1 and 2; first hits items 0 and 2: mean (0.5, 0.5), unit
    # (0.7071, 0.7071); head 0 (1, 0) -> (1 + 0.25 * 0.7071, 0.25 * 0.7071); head 1 (0, 2)
    # -> (0.5 * 0.7071, 2 + 0.5 * 0.7071). The third hit (item 1) is past cfg.items.
    heads = np.array([[[1.0, 0.0], [0.0, 2.0]]], np.float32)
    rows = np.array([[0, 2, 1]])
    u = 0.5 ** 0.5
    want = np.array([[[1 + 0.25 * u, 0.25 * u], [0.5 * u, 2 + 0.5 * u]]], np.float32)
    np.testing.assert_allclose(dense_feedback.moved_heads_np(heads, rows, ITEMS, cfg), want,
                               rtol=1e-6)
    np.testing.assert_allclose(_graph(heads, rows[:, :2], ITEMS, cfg), want, rtol=1e-6)


def test_padding_is_left_out_and_a_query_without_hits_keeps_its_heads():
    cfg = FeedbackConfig(items=3, weight=1.0)
    heads = np.array([[[1.0, 0.0]], [[0.0, 3.0]]], np.float32)
    rows = np.array([[3, -1, -1], [-1, -1, -1]])
    # Query 0: only item 3 (0.6, 0.8), a unit vector: (1, 0) + (0.6, 0.8). Query 1: unchanged.
    want = np.array([[[1.6, 0.8]], [[0.0, 3.0]]], np.float32)
    np.testing.assert_allclose(dense_feedback.moved_heads_np(heads, rows, ITEMS, cfg), want,
                               rtol=1e-6)
    np.testing.assert_allclose(_graph(heads, rows, ITEMS, cfg), want, rtol=1e-6)


def test_the_graph_equals_numpy_on_seeded_random_heads():
    rng = np.random.default_rng(7)
    heads = rng.normal(size=(6, 3, 8)).astype(np.float32)
    table = rng.normal(size=(40, 8)).astype(np.float32)
    rows = rng.integers(-1, 40, size=(6, 5))
    cfg = FeedbackConfig(items=5, weight=0.4)
    np.testing.assert_allclose(_graph(heads, rows, table, cfg),
                               dense_feedback.moved_heads_np(heads, rows, table, cfg),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("items, weight, match", [
    (-1, 0.25, "items must be in"), (101, 0.25, "items must be in"),
    (True, 0.25, "items must be in"), ("3", 0.25, "items must be in"),
    (3, 0.0, "weight must be in"), (3, -1.0, "weight must be in"),
    (3, float("nan"), "weight must be in"), (3, 11.0, "weight must be in"),
])
def test_bad_settings_are_refused(items, weight, match):
    with pytest.raises(ValueError, match=match):
        FeedbackConfig(items=items, weight=weight).validate()


def test_json_round_trip_and_names():
    cfg = FeedbackConfig(items=3, weight=0.25)
    assert FeedbackConfig.from_json(cfg.to_json()) == cfg
    assert cfg.describe() == "feedback 3 items x 0.25" and cfg.enabled
    assert FeedbackConfig().describe() == "no feedback" and not FeedbackConfig().enabled
    with pytest.raises(ValueError, match="items must be in"):
        FeedbackConfig.from_json('{"items": 500, "weight": 0.25}')


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_a_given_direction_moves_by_its_unit_vector_whatever_its_scale(scale):
    """move normalises the direction itself, scaled first: a finite direction far from 1 in
    magnitude neither overflows nor underflows its norm (which would leave the heads still)."""
    cfg = FeedbackConfig(items=3, weight=0.5)
    heads = np.array([[[3.0, 4.0]], [[1.0, 0.0]]], np.float32)
    direction = np.array([[0.0, 2.0], [0.0, 0.0]], np.float32) * np.float32(scale)
    # Row 0: (3, 4) + 0.5 * 5 * (0, 1); row 1 (a zero direction) stays.
    want = np.array([[[3.0, 6.5]], [[1.0, 0.0]]], np.float32)
    got = tf.function(lambda h, d: dense_feedback.move(h, d, cfg))(
        tf.constant(heads), tf.constant(direction)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
