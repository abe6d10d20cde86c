"""Tiny fake layouts, feature batches and datasets with the input contract's structure, for tests.

`FakeLayoutSpec` has the LayoutSpec fields the model reads; `FakeCatalog.batch` builds one
features dict as dpsr_tf.data.pipeline yields it, from a seeded RNG; `write_tiny_dataset` writes
the three input files of a small learnable catalog and `prepare_tiny_layout` runs the real
`dpsr prepare` on them; `train_shared_tiny_model` trains the one tiny DPSR-h model that the
export, serving and ranking tests share (tests/conftest.py's session fixture
`tiny_history_model`).
"""
import dataclasses
import os
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


def write_tiny_dataset(out_dir: str, *, num_items: int = 200, num_users: int = 30,
                       num_queries: int = 600, clicks_per_query: int = 3, num_words: int = 300,
                       seed: int = 0) -> Dict[str, str]:
    """Writes items.tsv, users.tsv, interactions.tsv of a seeded, learnable catalog.

    Item r's title is "<category> <brand> w.. w.. w.." (3 random words); a query takes 2 words
    of one item's title (so its items are found by meaning and by words), is clicked on that
    item by random users, and gets one human negative (a random other item).

    Returns:
      {"items": path, "users": path, "interactions": path}.
    """
    rng = np.random.RandomState(seed)
    os.makedirs(out_dir, exist_ok=True)
    cats = [f"cat{c}" for c in range(8)]
    brands = [f"brand{b}" for b in range(12)]
    item_cat = rng.randint(0, len(cats), size=num_items)
    item_brand = rng.randint(0, len(brands), size=num_items)
    words = [[f"w{w}" for w in rng.choice(num_words, size=3, replace=False)]
             for _ in range(num_items)]
    paths = {k: os.path.join(out_dir, f"{k}.tsv") for k in ("items", "users", "interactions")}
    with open(paths["items"], "w", encoding="utf-8") as f:
        f.write("item_id\ttitle\tbrand\tcategory\n")
        for r in range(num_items):
            title = " ".join([cats[item_cat[r]], brands[item_brand[r]]] + words[r])
            f.write(f"item{r}\t{title}\t{brands[item_brand[r]]}\t{cats[item_cat[r]]}\n")
    with open(paths["users"], "w", encoding="utf-8") as f:
        f.write("user_id\tgender\n")
        for u in range(num_users):
            f.write(f"user{u}\t{'mf'[u % 2]}\n")
    with open(paths["interactions"], "w", encoding="utf-8") as f:
        f.write("query\titem_id\tlabel\tuser_id\ttimestamp\n")
        t = 0
        for _ in range(num_queries):
            r = rng.randint(num_items)
            text = " ".join(rng.choice(words[r] + [cats[item_cat[r]]], size=2, replace=False))
            for _ in range(clicks_per_query):
                t += 1
                f.write(f"{text}\titem{r}\tclick\tuser{rng.randint(num_users)}\t{t}\n")
            neg = (r + 1 + rng.randint(num_items - 1)) % num_items
            t += 1
            f.write(f"{text}\titem{neg}\tnegative\tuser{rng.randint(num_users)}\t{t}\n")
    return paths


def prepare_tiny_layout(work_dir: str, *, num_buckets: int = 4096, seed: int = 0,
                        **dataset_kwargs):
    """write_tiny_dataset + the real `prepare` into <work_dir>/layout; returns the LayoutSpec."""
    from dpsr_tf.data.prepare import PrepareConfig, prepare  # pylint: disable=import-outside-toplevel
    from dpsr_tf.tokenization import TokenizerConfig  # pylint: disable=import-outside-toplevel
    paths = write_tiny_dataset(os.path.join(work_dir, "tsv"), seed=seed, **dataset_kwargs)
    return prepare(PrepareConfig(
        items=paths["items"], users=paths["users"], interactions=paths["interactions"],
        output=os.path.join(work_dir, "layout"),
        tokenizer=TokenizerConfig(num_buckets=num_buckets, num_oov_buckets=1),
        history_length=4, seed=seed), log=lambda _: None)


# Steps of the shared tiny model: its checkpoint is model.ckpt-<this>.
SHARED_TINY_MODEL_STEPS = 60


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """A trained tiny model; tests read it and copy it before changing anything in it."""
    spec: object  # the LayoutSpec of its layout (prepare_tiny_layout)
    model_dir: str
    model_config: object  # its ModelConfig
    train_steps: int
    input_files: Dict[str, str]  # write_tiny_dataset's {"items", "users", "interactions"}


def train_shared_tiny_model(work_dir: str) -> TinyModel:
    """prepare_tiny_layout + train_tiny_history_model for SHARED_TINY_MODEL_STEPS steps."""
    spec = prepare_tiny_layout(work_dir)
    model_dir = os.path.join(work_dir, "model")
    config = train_tiny_history_model(spec, model_dir, SHARED_TINY_MODEL_STEPS)
    tsv = os.path.join(work_dir, "tsv")
    return TinyModel(spec, model_dir, config, SHARED_TINY_MODEL_STEPS,
                     {name: os.path.join(tsv, f"{name}.tsv")
                      for name in ("items", "users", "interactions")})


def train_tiny_history_model(spec, model_dir: str, train_steps: int):
    """A tiny DPSR-h model (2 heads, user profile + history) trained on a prepare_tiny_layout
    layout with the real driver; returns its ModelConfig. For export and serving tests."""
    from dpsr_tf.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training import driver  # pylint: disable=import-outside-toplevel
    from dpsr_tf.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
    model_config = ModelConfig(num_heads=2, embedding_dim=16, token_embedding_dim=16,
                               feature_embedding_dim=4, history_embedding_dim=4,
                               item_hidden_units=(32,), query_hidden_units=(32,),
                               query_projection_dim=16, num_negatives=8, learning_rate=0.1,
                               personalization="history")
    train = TrainConfig(layout_dir=spec.layout_dir, model_dir=model_dir, batch_size=32,
                        train_steps=train_steps, save_checkpoints_steps=train_steps,
                        eval_random_negatives=20, seed=0)
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(model_config, train)
    return model_config
