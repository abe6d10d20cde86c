"""The zero-shot baselines of `dpsr evaluate --zero_shot`: reciprocal-rank fusion worked by hand,
the encoder scorer against numpy brute force over the golden embeddings, and the catalog's
embeddings cached beside the layout."""
import os

import numpy as np
import pytest

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.evaluation import zero_shot
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
from tests.support import tiny_model

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model",
                      "testdata", "minilm_golden.npz")


class _Fixed:
    """A scorer with fixed full-corpus scores per request (and per pair: pair p = request p)."""

    def __init__(self, rows):
        self.rows = np.asarray(rows, np.float32)
        self.num_items = self.rows.shape[1]

    def score_requests(self, idx):
        return self.rows[idx]

    def score_pairs(self, pair_idx, items):
        return np.take_along_axis(self.rows[pair_idx], np.asarray(items), axis=1)


def test_reciprocal_ranks_by_hand():
    # Row [0.3, 0.9, 0.3]: item 1 first, then items 0 and 2 tied, ranked by row: ranks 2, 1, 3.
    np.testing.assert_allclose(zero_shot.reciprocal_ranks(np.array([[0.3, 0.9, 0.3]])),
                               [[1 / 62, 1 / 61, 1 / 63]])


def test_rrf_of_two_rankings_by_hand():
    bm25 = _Fixed([[5.0, 0.0, 2.0, 1.0]])       # ranks: item0 1, item2 2, item3 3, item1 4
    dense = _Fixed([[0.1, 0.8, 0.7, 0.2]])      # ranks: item1 1, item2 2, item3 3, item0 4
    fused = zero_shot.RRFScorer(bm25, dense).score_requests(np.array([0]))[0]
    expected = [1 / 61 + 1 / 64, 1 / 64 + 1 / 61, 2 / 62, 2 / 63]
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    assert np.argsort(-fused, kind="stable")[0] == 2    # both lists' second beats either's first
    pairs = zero_shot.RRFScorer(bm25, dense).score_pairs(np.array([0]), np.array([[3, 2]]))
    np.testing.assert_allclose(pairs[0], [expected[3], expected[2]], rtol=1e-6)


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN, allow_pickle=True)
    return list(data["texts"]), data["embeddings"]


def test_text_embedder_keeps_the_order_of_length_sorted_batches(golden):
    texts, expected = golden
    with TextEmbedder() as embedder:
        got = embedder.embed(texts, batch_size=5)      # several batches, sorted by length
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_encoder_scorer_is_brute_force_cosine(golden):
    _, vectors = golden
    items, requests = vectors[:10], vectors[10:14]
    scorer = zero_shot.EncoderScorer(items, requests, requests)
    np.testing.assert_allclose(scorer.score_requests(np.array([2, 0])),
                               np.stack([requests[2] @ items.T, requests[0] @ items.T]),
                               rtol=0, atol=1e-6)
    got = scorer.score_pairs(np.array([1, 3]), np.array([[4, 9], [0, 0]]))
    np.testing.assert_allclose(got, [[requests[1] @ items[4], requests[1] @ items[9]],
                                     [requests[3] @ items[0], requests[3] @ items[0]]],
                               rtol=0, atol=1e-6)


def test_catalog_embeddings_are_cached_beside_the_layout(tmp_path, monkeypatch):
    spec = tiny_model.prepare_tiny_layout(str(tmp_path))
    eval_set = eval_set_lib.load_eval_set(spec, "eval")
    pairs = eval_set_lib.load_labeled_pairs(spec, "eval")
    calls = []
    real_embed = TextEmbedder.embed

    def counting(self, texts, **kwargs):
        calls.append(len(texts))
        return real_embed(self, texts, **kwargs)

    monkeypatch.setattr(TextEmbedder, "embed", counting)
    bm25 = _Fixed(np.zeros([len(eval_set), spec.num_items]))
    first = zero_shot.zero_shot_scorers(spec, eval_set, pairs, bm25, log=lambda _: None)
    assert calls[0] == spec.num_items
    cached = os.listdir(os.path.join(spec.layout_dir, zero_shot.CACHE_DIR))
    assert len(cached) == 1 and cached[0].endswith(".npy")
    calls.clear()
    second = zero_shot.zero_shot_scorers(spec, eval_set, pairs, bm25, log=lambda _: None)
    assert spec.num_items not in calls          # the catalog came from the cache
    np.testing.assert_array_equal(first["zero_shot"].item_emb, second["zero_shot"].item_emb)
    idx = np.arange(min(3, len(eval_set)))
    np.testing.assert_allclose(first["zero_shot"].score_requests(idx),
                               second["zero_shot"].score_requests(idx), rtol=1e-6)
