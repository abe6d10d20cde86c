"""Tiny fake layouts and feature batches with the input contract's structure, for tests.

`FakeLayoutSpec` has the LayoutSpec fields the model reads; `fake_batch` builds one features dict
as dpsr_tf.data.pipeline yields it (numpy in, tf tensors out), from a seeded RNG.
"""
import dataclasses
from typing import Dict, Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class FakeLayoutSpec:
    token_id_space: int = 97
    num_items: int = 40
    num_users: int = 10
    item_features: Dict[str, int] = dataclasses.field(
        default_factory=lambda: {"brand": 7, "category": 5})
    user_features: Dict[str, int] = dataclasses.field(default_factory=lambda: {"gender": 3})
    history_length: int = 4


def _ragged(rows):
    lengths = [len(r) for r in rows]
    values = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros(
        [0], np.int64)
    return tf.RaggedTensor.from_row_lengths(tf.constant(values, tf.int64),
                                            tf.constant(lengths, tf.int64))


class FakeCatalog:
    """A seeded catalog: item tokens and categorical features per row, queries drawn from items.

    A query for item r is a random subset of r's tokens, so a model can learn the task.
    """

    def __init__(self, layout: FakeLayoutSpec, seed: int = 0, tokens_per_item: int = 6):
        rng = np.random.RandomState(seed)
        self.layout = layout
        self.item_tokens = [rng.randint(0, layout.token_id_space, size=tokens_per_item)
                            for _ in range(layout.num_items)]
        self.item_feats = {name: rng.randint(0, vocab, size=layout.num_items)
                           for name, vocab in layout.item_features.items()}
        self.user_feats = {name: rng.randint(0, vocab, size=layout.num_users)
                           for name, vocab in layout.user_features.items()}

    def items(self, rows, prefix="item_") -> dict:
        rows = np.asarray(rows, np.int64)
        out = {prefix + "row": tf.constant(rows),
               prefix + "tokens": _ragged([self.item_tokens[r] for r in rows])}
        for name, values in self.item_feats.items():
            out[prefix + name] = tf.constant(values[rows].astype(np.int64))
        return out

    def batch(self, batch_size: int, num_random: int, rng: np.random.RandomState,
              labels: Optional[np.ndarray] = None, item_rows: Optional[np.ndarray] = None,
              queries: Optional[list] = None) -> dict:
        layout = self.layout
        rows = (rng.randint(0, layout.num_items, size=batch_size) if item_rows is None
                else np.asarray(item_rows, np.int64))
        query_tokens = [rng.choice(self.item_tokens[r], size=rng.randint(1, 4), replace=False)
                        for r in rows]
        if queries is None:
            queries = [" ".join(map(str, sorted(t))) for t in query_tokens]
        users = rng.randint(-1, layout.num_users, size=len(rows))
        features = {"query": tf.constant(queries), "query_tokens": _ragged(query_tokens),
                    "user_row": tf.constant(users.astype(np.int64))}
        for name, values in self.user_feats.items():
            features["user_" + name] = tf.constant(
                np.where(users >= 0, values[np.maximum(users, 0)], 0).astype(np.int64))
        history = [rng.randint(0, layout.num_items, size=rng.randint(0, layout.history_length + 1))
                   for _ in rows]
        features["user_history"] = _ragged(history)
        features.update(self.items(rows, "item_"))
        features["label"] = tf.constant(
            np.ones(len(rows), np.float32) if labels is None else np.asarray(labels, np.float32))
        features.update(self.items(rng.randint(0, layout.num_items, size=num_random), "neg_item_"))
        return features

    def input_fn(self, batch_size: int, num_random: int, seed: int = 0):
        """An Estimator input_fn: an endless stream of seeded fake batches (tf.data generator)."""
        catalog = self
        signature = _signature(self.layout)

        def fn(params=None):
            del params

            def gen():
                rng = np.random.RandomState(seed)
                while True:
                    yield catalog.batch(batch_size, num_random, rng)
            return tf.data.Dataset.from_generator(gen, output_signature=signature)
        return fn


def _signature(layout: FakeLayoutSpec) -> dict:
    ragged = tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1, row_splits_dtype=tf.int64)
    vec = tf.TensorSpec([None], tf.int64)
    sig = {"query": tf.TensorSpec([None], tf.string), "query_tokens": ragged, "user_row": vec,
           "user_history": ragged, "label": tf.TensorSpec([None], tf.float32)}
    for name in layout.user_features:
        sig["user_" + name] = vec
    for prefix in ("item_", "neg_item_"):
        sig[prefix + "row"] = vec
        sig[prefix + "tokens"] = ragged
        for name in layout.item_features:
            sig[prefix + name] = vec
    return sig
