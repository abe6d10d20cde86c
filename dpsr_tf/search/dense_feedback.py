"""Dense pseudo-relevance feedback: each query head moved toward its own first hits (Rocchio).

A first search finds the query's top `items` items (all heads merged); each head h becomes

    q_h' = q_h + weight * |q_h| * u,    u = the unit mean of those items' embeddings,

and the dense list is the search with the moved heads. Why: the tower places many queries near,
not on, the items their clicks went to; the first hits are mostly right, and their centroid pulls
the query into that region, so relevant items the first search ranked 100-1000 rise
(docs/results.md, "Dense feedback").
The step is scaled by the head's own norm so one weight suits every model's scale. A query
whose first search found nothing keeps its heads. The scores the second search returns are
inner products with the moved heads (the `query_embedding` signature still returns q).

moved_heads is the in-graph version (the servable's table of item embeddings is indexed by the
shard's FAISS labels); moved_heads_np is its NumPy twin for evaluation and the export's choice
(tests/search/test_dense_feedback.py checks both against a hand-worked case).

Sharded servables: the first hits must be the whole catalog's, which no shard knows. So each
searching signature S of a feedback servable has two more (docs/export.md "Dense feedback over
shards"): S + HITS_SUFFIX returns the shard's first hits (scores and embeddings), and
S + SEARCH_SUFFIX searches with the heads moved along a given DIRECTION_INPUT. The proxy calls the
first on every shard, pools the hits (direction_of_hits_np: the top `items` by score, their unit
mean) and sends that direction to the second; S itself moves toward the shard's own first hits,
which is the whole answer for a one-shard servable.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from dpsr_tf import config_json

MAX_ITEMS = 100  # first hits a query may average: the first search is a cost on every request

HITS_SUFFIX = ".feedback_hits"      # signature S's first hits: HIT_SCORES [B, f], HIT_EMBEDDINGS
SEARCH_SUFFIX = ".feedback_search"  # signature S with the heads moved along DIRECTION_INPUT
DIRECTION_INPUT = "feedback_direction"   # [B, d] float32; normalised by the servable
HIT_SCORES = "hit_scores"           # [B, f] float32, best first, -inf pads
HIT_EMBEDDINGS = "hit_embeddings"   # [B, f, d] float32, zeros pad


@dataclasses.dataclass(frozen=True)
class FeedbackConfig(config_json.OneLineConfig):
    """items: first hits averaged (0 = no feedback); weight: the step, a share of |q_h|."""

    items: int = 0
    weight: float = 0.25

    @property
    def enabled(self) -> bool:
        return self.items > 0

    def validate(self) -> None:
        if isinstance(self.items, bool) or not isinstance(self.items, (int, np.integer)) \
                or not 0 <= self.items <= MAX_ITEMS:
            raise ValueError(f"dense feedback items must be in [0, {MAX_ITEMS}] (0 = off), got "
                             f"{self.items}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not (np.isfinite(self.weight) and 0 < self.weight <= 10):
            raise ValueError(f"dense feedback weight must be in (0, 10], got {self.weight}")

    def describe(self) -> str:
        return (f"feedback {self.items} items x {self.weight:g}" if self.enabled
                else "no feedback")


# `dpsr export --dense_feedback=auto`'s setting (and `dpsr crossval --hybrid`'s): the best or
# near it across catalogs and splits (docs/results.md, "Dense feedback").
DEFAULT = FeedbackConfig(items=10, weight=0.25)


def unit_mean_np(vectors: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[Q, d] the unit mean of each row's valid vectors ([Q, f, d], valid [Q, f]); zeros for a
    row with none (or whose mean is zero)."""
    vectors = np.asarray(vectors, np.float32)
    mean = (vectors * valid[..., None]).sum(1) / np.maximum(valid.sum(1), 1)[:, None]
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return np.where(norm > 0, mean / np.where(norm > 0, norm, 1), 0).astype(np.float32)


def move_np(heads: np.ndarray, direction: np.ndarray, cfg: FeedbackConfig) -> np.ndarray:
    """[Q, m, d] each head moved weight * |head| along its query's unit direction [Q, d]."""
    heads = np.asarray(heads, np.float32)
    head_norm = np.linalg.norm(heads, axis=2, keepdims=True)
    return heads + np.float32(cfg.weight) * head_norm * direction[:, None, :]


def moved_heads_np(heads: np.ndarray, first_rows: np.ndarray, item_emb: np.ndarray,
                   cfg: FeedbackConfig) -> np.ndarray:
    """[Q, m, d] the heads moved toward the mean of their first hits.

    Args:
      heads: [Q, m, d] float32 query heads.
      first_rows: [Q, f] int rows of item_emb, best first; -1 pads (fewer hits). Only the
        first cfg.items columns are used.
      item_emb: [N, d] item embeddings.
    """
    rows = np.asarray(first_rows)[:, :cfg.items]
    valid = rows >= 0
    vectors = np.asarray(item_emb, np.float32)[np.where(valid, rows, 0)]        # [Q, f, d]
    return move_np(heads, unit_mean_np(vectors, valid), cfg)


def direction_of_hits_np(scores: np.ndarray, embeddings: np.ndarray, items: int) -> np.ndarray:
    """[Q, d] the unit mean of the `items` best of pooled first hits (the shards' HIT_SCORES
    [Q, n] and HIT_EMBEDDINGS [Q, n, d] side by side); -inf scores pad. Ties keep pool order
    (a stable sort), as the proxy's merge of result lists does."""
    scores = np.asarray(scores, np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :items]
    top = np.take_along_axis(scores, order, axis=1)
    vectors = np.take_along_axis(np.asarray(embeddings, np.float32), order[..., None], axis=1)
    return unit_mean_np(vectors, np.isfinite(top))


def hit_embeddings(first_labels: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """[B, f, d] the table rows of first hits (labels [B, f] int64, -1 pads -> zeros)."""
    valid = first_labels >= 0
    vectors = tf.gather(table, tf.where(valid, first_labels, tf.zeros_like(first_labels)))
    return vectors * tf.cast(valid, vectors.dtype)[..., tf.newaxis]


def hit_mean(first_labels: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """[B, d] the mean table row of each query's first hits (zeros for a query without any)."""
    count = tf.reduce_sum(tf.cast(first_labels >= 0, tf.float32), axis=1, keepdims=True)
    return tf.reduce_sum(hit_embeddings(first_labels, table), axis=1) / tf.maximum(count, 1.0)


def move(heads: tf.Tensor, direction: tf.Tensor, cfg: FeedbackConfig) -> tf.Tensor:
    """move_np in-graph, the direction [B, d] normalised here (zero stays zero; scaled by its
    largest element first, so that no finite direction overflows or underflows the norm)."""
    scale = tf.reduce_max(tf.abs(direction), axis=1, keepdims=True)
    scaled = tf.math.divide_no_nan(direction, scale)
    unit = tf.math.divide_no_nan(scaled, tf.norm(scaled, axis=1, keepdims=True))
    head_norm = tf.norm(heads, axis=2, keepdims=True)
    return heads + cfg.weight * head_norm * unit[:, tf.newaxis, :]


def moved_heads(heads: tf.Tensor, first_labels: tf.Tensor, table: tf.Tensor,
                cfg: FeedbackConfig) -> tf.Tensor:
    """moved_heads_np in-graph: heads [B, m, d], first_labels [B, f] int64 (-1 pads) indexing
    table [n, d]."""
    return move(heads, hit_mean(first_labels, table), cfg)
