"""The encoder list's fusion: a hand-worked example, the graph's fuse against fuse_np on random
lists (pads, repeats in the encoder list, k beyond both lists), and the config's checks."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.search.encoder_fusion import EncoderFusionConfig, fuse, fuse_np


def test_fusion_worked_by_hand():
    # rrf_k 1, weight 1: item 10 = 1/2 + 1/4, 11 = 1/3, 12 = 1/4 + 1/2, 13 = 1/3.
    # Ties keep (served list, then encoder list) order: 10 before 12, 11 before 13.
    cfg = EncoderFusionConfig(weight=1.0, rrf_k=1.0)
    scores, rows, served_at = fuse_np(np.array([[10, 11, 12]]), np.array([[12, 13, 10]]), 5, cfg)
    assert rows.tolist() == [[10, 12, 11, 13, -1]]
    np.testing.assert_allclose(scores[0, :4], [0.75, 0.75, 1 / 3, 1 / 3], rtol=1e-6)
    assert scores[0, 4] == -np.inf
    assert served_at.tolist() == [[0, 2, 1, -1, -1]]
    # Weight 0.5 halves the encoder's share: 10 = 1/2 + 1/8, 12 = 1/4 + 1/4, 11 = 1/3, 13 = 1/6.
    _, rows, _ = fuse_np(np.array([[10, 11, 12]]), np.array([[12, 13, 10]]), 4,
                         EncoderFusionConfig(weight=0.5, rrf_k=1.0))
    assert rows.tolist() == [[10, 12, 11, 13]]


def test_graph_fuse_equals_fuse_np_on_random_lists():
    rng = np.random.default_rng(0)
    for _ in range(40):
        b, n_served, n_enc = 3, int(rng.integers(1, 12)), int(rng.integers(1, 12))
        k = int(rng.integers(1, 26))
        served = np.stack([np.concatenate([rng.permutation(20)[:n_served - pad],
                                           -np.ones(pad, np.int64)])
                           for pad in rng.integers(0, n_served, b)])
        encoder = rng.integers(-1, 20, [b, n_enc])          # pads and repeats
        cfg = EncoderFusionConfig(weight=float(rng.choice([0.25, 1.0, 3.0])),
                                  rrf_k=float(rng.choice([1.0, 10.0, 60.0])))
        want_s, want_r, want_at = fuse_np(served, encoder, k, cfg)
        got_s, got_r, got_at, got_enc = [t.numpy() for t in fuse(
            tf.constant(served), tf.constant(encoder), tf.constant(k), cfg,
            with_encoder_at=True)]
        width = got_r.shape[1]
        assert width == min(k, n_served + n_enc)
        assert np.array_equal(got_r, want_r[:, :width])
        assert np.array_equal(got_s, want_s[:, :width])
        assert np.array_equal(got_at, want_at[:, :width])
        assert (want_r[:, width:] == -1).all()
        for i in range(b):
            first = {}
            for pos, row in enumerate(encoder[i]):
                if row >= 0:
                    first.setdefault(int(row), pos)
            assert got_enc[i].tolist() == [first.get(int(r), -1) if r >= 0 else -1
                                           for r in got_r[i]]


@pytest.mark.parametrize("cfg, message", [
    (EncoderFusionConfig(weight=-1.0), "weight must be in"),
    (EncoderFusionConfig(weight=float("nan")), "weight must be in"),
    (EncoderFusionConfig(weight=1.0, rrf_k=0.0), "rrf_k must be > 0"),
])
def test_bad_settings_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_config_travels_as_one_line_of_json():
    cfg = EncoderFusionConfig(weight=0.75, rrf_k=30.0)
    assert EncoderFusionConfig.from_json(cfg.to_json()) == cfg
    assert not EncoderFusionConfig().enabled
    assert cfg.describe() == "encoder list weight 0.75 (rrf k=30)"
