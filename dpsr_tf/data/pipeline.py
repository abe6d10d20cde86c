"""tf.data input functions for the Estimator: interaction records joined in-graph with tables.

The tables are read in-graph once per input pipeline and joined with each batch of
interaction records there (dpsr_tf/data/table_join.py; docs/data_format.md, "Input
pipeline").

Per batch (B = batch size, R = num_random_negatives), `features` holds:
  query side   "query" string [B], "query_row" int64 [B], "query_tokens" ragged int64 [B, (Lq)],
               "user_row" int64 [B] (-1 = no user), "user_<name>" int64 [B] (0 = unknown),
               "user_history" ragged int64 [B, (H)] (item rows of earlier positives, newest last)
  labelled item "item_row" int64 [B], "item_tokens" ragged int64 [B, (Li)],
               "item_<name>" int64 [B], "label" float32 [B] (1 positive, 0 human negative),
               "gain" float32 [B]
  negatives    "neg_item_row" int64 [R], "neg_item_tokens" ragged int64 [R, (Li)],
               "neg_item_<name>" int64 [R]: uniform over the item table, drawn once per batch
               and shared by all its examples (DPSR §4.4.1).
  human negatives (make_train_input_fn(human_negatives=K > 0)) "human_negative_rows" ragged
               int64 [B, (h <= K)] from the layout's per-query table, and
               "human_negative_item_row" / "_tokens" / "_<name>" of its flat rows (§4.5).
  hard negatives (make_train_input_fn(hard_negatives=K > 0)) "hard_negative_rows" and
               "hard_negative_item_*" the same way, from the table mined from a trained
               model's ranking (dpsr_tf/data/hard_negative_table.py, docs/training.md).
  click graph  (layouts written with `dpsr prepare --graph`) "<x>_graph_hop1" int64 [b, K1],
               "<x>_graph_hop1_weight" float32, "<x>_graph_hop2" [b, K2], "_hop2_weight" for
               x = query and every item prefix (dpsr_tf/data/graph/tables.py; node 0 = none);
               in record batches the example's own query-item edge is hidden on both sides.
Batch negatives are the other examples' positives (the model masks equal item rows). In eval
splits human negatives are ordinary examples with label 0 next to their query. Training mixes
the layout's catalog pseudo-queries ("pseudo" split) into the train records by PseudoQueryMix.
"""
import dataclasses
import random
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from dpsr_tf.data import hard_negative_table
from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.data import table_join


def _check_record_files(spec: layout_lib.LayoutSpec, split: str):
    if split not in spec.record_files:
        raise ValueError(f"unknown split {split!r}; the layout {spec.layout_dir} has "
                         f"{list(spec.record_files)}")
    files = [spec.path(p) for p in spec.record_files[split]]
    for path in files:
        with open(path, "rb") as f:
            header = f.read(layout_lib.RECORD_HEADER_BYTES)
        if header[:8] != layout_lib.RECORD_MAGIC:
            raise ValueError(f"{path}: not a DPSR interaction record file; re-run dpsr prepare")
    return files


def _record_stream(files, shuffle_buffer: int, seed: Optional[int],
                   num_epochs: Optional[int], num_shards: int,
                   shard_index: int) -> tf.data.Dataset:
    """Raw 24-byte records of `files`: sharded, shuffled, repeated, not batched."""
    ds = tf.data.FixedLengthRecordDataset(files, layout_lib.RECORD_DTYPE.itemsize,
                                          header_bytes=layout_lib.RECORD_HEADER_BYTES,
                                          buffer_size=1 << 20)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.repeat(num_epochs)


@dataclasses.dataclass(frozen=True)
class PseudoQueryMix:
    """Share of catalog pseudo-queries among the training examples, by local step.

    The share goes linearly from `ratio` at step 0 to `final_ratio` at `decay_steps` and stays
    there (decay_steps = 0: `ratio` throughout). Each example is drawn from the pseudo-query
    stream with that probability (seeded), otherwise from the logged interactions.
    start_step: local steps trained before this input starts (a resumed run continues the
    schedule where its checkpoint left it).
    """

    ratio: float = 0.0
    final_ratio: Optional[float] = None
    decay_steps: int = 0
    start_step: int = 0

    def __post_init__(self):
        for name in ("ratio", "final_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"pseudo-query {name} must be in [0, 1], got {value}")
        if self.decay_steps < 0:
            raise ValueError(f"pseudo-query decay_steps must be >= 0, got {self.decay_steps}")
        if self.start_step < 0:
            raise ValueError(f"pseudo-query start_step must be >= 0, got {self.start_step}")

    def at_step(self, step):
        """The share at a (float tensor or number) local step of this input."""
        final = self.ratio if self.final_ratio is None else self.final_ratio
        if self.decay_steps == 0 or final == self.ratio:
            return self.ratio
        frac = tf.minimum((tf.cast(step, tf.float32) + float(self.start_step))
                          / float(self.decay_steps), 1.0)
        return self.ratio + (final - self.ratio) * frac

    @property
    def active(self) -> bool:
        return self.ratio > 0 or (self.final_ratio or 0) > 0


def _mixed_stream(spec, mix: PseudoQueryMix, batch_size: int, shuffle_buffer: int,
                  seed: int, num_shards: int, shard_index: int) -> tf.data.Dataset:
    """Train records, with pseudo-query records mixed in by `mix` (see PseudoQueryMix)."""
    real = _record_stream(_check_record_files(spec, "train"), shuffle_buffer, seed, None,
                          num_shards, shard_index) if spec.num_records.get("train") else None
    if "pseudo" not in spec.record_files:
        raise ValueError(f"--pseudo_query_ratio={mix.ratio} but the layout {spec.layout_dir} "
                         f"has no pseudo-queries; re-run dpsr prepare with "
                         f"--pseudo_queries_per_item=16 (or train with --pseudo_query_ratio=0)")
    pseudo = _record_stream(_check_record_files(spec, "pseudo"), shuffle_buffer, seed + 7,
                            None, num_shards, shard_index)
    if real is None:
        return pseudo
    mix_seed = tf.constant(seed + 11, tf.int64)

    def choose(index):
        share = mix.at_step(index // batch_size)
        draw = tf.random.stateless_uniform([], seed=tf.stack([mix_seed, index]))
        return tf.cast(draw < share, tf.int64)

    choices = tf.data.Dataset.counter().map(choose)
    return tf.data.Dataset.choose_from_datasets([real, pseudo], choices)


def _examples(spec, split, batch_size, num_random_negatives, shuffle_buffer, seed, num_epochs,
              drop_remainder, num_shards=1, shard_index=0,
              pseudo_mix: Optional[PseudoQueryMix] = None,
              human_negatives: int = 0, hard_negatives: int = 0,
              hard_negative_dir: str = "", item_texts: bool = False) -> tf.data.Dataset:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_random_negatives < 0:
        raise ValueError(f"num_random_negatives must be >= 0, got {num_random_negatives}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    if human_negatives < 0:
        raise ValueError(f"human_negatives must be >= 0, got {human_negatives}")
    if hard_negatives < 0:
        raise ValueError(f"hard_negatives must be >= 0, got {hard_negatives}")
    if hard_negatives:
        hard_negative_table.load_table(hard_negative_dir, spec.num_queries)  # fails early
    if pseudo_mix is not None:  # training: logged interactions + pseudo-queries, forever
        records = _mixed_stream(spec, pseudo_mix, batch_size, shuffle_buffer,
                                seed if seed is not None else 0, num_shards, shard_index)
    else:
        records = _record_stream(_check_record_files(spec, split), shuffle_buffer, seed,
                                 num_epochs, num_shards, shard_index)
    records = records.batch(batch_size, drop_remainder=drop_remainder)
    parts = ("items", "queries", "users") + (("human_negatives",) if human_negatives else ()) \
        + (("hard_negatives",) if hard_negatives else ()) + (("item_texts",) if item_texts else ())
    tables = table_join.read_tables(spec, parts, hard_negative_dir)
    ds = tf.data.Dataset.zip((records, tf.data.Dataset.counter()))
    neg_seed = (seed if seed is not None else 0) * 1000003 + shard_index
    static_batch = batch_size if drop_remainder else -1
    join = table_join.record_join(spec, num_random_negatives, neg_seed, static_batch,
                                  human_negatives, hard_negatives)
    ds = ds.map(lambda raw, index: join(raw, index, tables),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_train_input_fn(layout_dir: str, *, batch_size: int = 64,
                        num_random_negatives: int = 64, shuffle_buffer: int = 65536,
                        seed: Optional[int] = None, num_epochs: Optional[int] = None,
                        split: str = "train", num_shards: int = 1, shard_index: int = 0,
                        pseudo_mix: Optional[PseudoQueryMix] = None,
                        human_negatives: int = 0, hard_negatives: int = 0,
                        hard_negative_dir: str = "", item_texts: bool = False) -> Callable:
    """Training input_fn for tf.estimator: shuffled, repeated, full batches.

    Args:
      layout_dir: a directory written by `dpsr prepare`.
      batch_size: B; batches are full (drop_remainder) so shapes are static [B].
      num_random_negatives: R items drawn uniformly per batch (0 = none).
      shuffle_buffer: records in the shuffle buffer (0 = the prepared order, which is already
        a seeded global permutation of the train split).
      seed: shuffle and negative-sampling seed; None = a fresh random seed per input_fn.
      num_epochs: passes over the split; None = forever.
      split: which record split to read.
      num_shards, shard_index: read every num_shards-th record starting at shard_index (one
        shard per worker in a cluster); also decorrelates the negatives of workers.
      pseudo_mix: with split "train", mix the layout's catalog pseudo-queries into the
        logged interactions (PseudoQueryMix; None or ratio 0 = logged interactions only).
        The mixed stream repeats forever (num_epochs is then ignored).
      human_negatives: at most this many human negatives of each example's query per example
        ("human_negative_rows" ragged [B, (h)] + "human_negative_item_*" features of the flat
        rows); 0 = none.
      hard_negatives: at most this many mined hard negatives of each example's query per
        example, from the table in the model directory hard_negative_dir
        (dpsr_tf/data/hard_negative_table.py): "hard_negative_rows" ragged [B, (h)] +
        "hard_negative_item_*"; 0 = none.
      hard_negative_dir: the model directory holding the mined table.
      item_texts: also each item's title as "<prefix>_text" string (towers with a pretrained
        encoder read raw text).

    Returns:
      input_fn(params=None) -> tf.data.Dataset of feature dicts (labels None; the "label"
      feature carries 1 for positives, 0 for human negatives). See the module docstring.
    """
    spec = layout_lib.load_layout_spec(layout_dir)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)

    def input_fn(params=None):
        del params
        mix = pseudo_mix if split == "train" and pseudo_mix is not None and \
            pseudo_mix.active else None
        if mix is None and split == "train" and not spec.num_records.get("train"):
            raise ValueError(f"the layout {spec.layout_dir} has no train interactions; train "
                             f"on the catalog's pseudo-queries (--pseudo_query_ratio=1)")
        return _examples(spec, split, batch_size, num_random_negatives, shuffle_buffer, seed,
                         num_epochs, drop_remainder=True, num_shards=num_shards,
                         shard_index=shard_index, pseudo_mix=mix,
                         human_negatives=human_negatives, hard_negatives=hard_negatives,
                         hard_negative_dir=hard_negative_dir, item_texts=item_texts)

    return input_fn


def make_eval_input_fn(layout_dir: str, *, batch_size: int = 256,
                       num_random_negatives: int = 64, split: str = "eval",
                       seed: int = 0, item_texts: bool = False) -> Callable:
    """Evaluation input_fn: one pass over a split in file order, no shuffle.

    The last batch may be smaller than batch_size (batch dimension None). The random negatives
    are seeded, so two evaluations see the same negatives. item_texts: as make_train_input_fn.
    """
    spec = layout_lib.load_layout_spec(layout_dir)

    def input_fn(params=None):
        del params
        return _examples(spec, split, batch_size, num_random_negatives, shuffle_buffer=0,
                         seed=seed, num_epochs=1, drop_remainder=False, item_texts=item_texts)

    return input_fn


def make_item_input_fn(layout_dir: str, *, batch_size: int = 1024) -> Callable:
    """Every item once, in row order (indexing and full-corpus evaluation).

    Per batch: "item_row" int64 [b], "item_id" string [b], "item_tokens" ragged int64
    [b, (Li)], "item_<name>" int64 [b]; the last batch may be smaller.
    """
    spec = layout_lib.load_layout_spec(layout_dir)

    def input_fn(params=None):
        del params
        rows = tf.data.Dataset.range(spec.num_items).batch(batch_size)
        t = table_join.read_tables(spec, ("items", "item_ids"))

        def join(r):
            out = table_join.item_features(spec, t, r, "item")
            out["item_id"] = tf.gather(t["item_ids"], r)
            return out

        return (rows.map(join, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

    return input_fn


def make_request_input_fn(layout_dir: str, eval_set: eval_set_lib.EvalSet, *,
                          batch_size: int = 256) -> Callable:
    """Query-side features of each EvalSet request, in order (full-corpus retrieval eval).

    Per batch: "request_index" int64 [b] (index into eval_set), "query", "query_row",
    "query_tokens", "user_row", "user_<name>", "user_history" as in the training batches.
    """
    spec = layout_lib.load_layout_spec(layout_dir)
    arrays = (np.arange(len(eval_set), dtype=np.int64), eval_set.query_rows.astype(np.int64),
              eval_set.user_rows.astype(np.int64), eval_set.history_ends.astype(np.int64))

    def input_fn(params=None):
        del params
        rows = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
        t = table_join.read_tables(spec, ("queries", "users"))

        def join(index, query_row, user_row, history_end):
            out = table_join.query_features(t, query_row)
            out.update(table_join.user_features(spec, t, user_row, history_end))
            out["request_index"] = index
            return out

        return (rows.map(join, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

    return input_fn


def feature_keys(layout_dir: str) -> Dict[str, list]:
    """The feature keys the input functions emit for a layout, by input function."""
    spec = layout_lib.load_layout_spec(layout_dir)
    item = ["item_row", "item_tokens"] + [f"item_{n}" for n in spec.item_features]
    user = ["user_row"] + [f"user_{n}" for n in spec.user_features] + ["user_history"]
    query = ["query", "query_row", "query_tokens"]
    neg = ["neg_item_row", "neg_item_tokens"] + [f"neg_item_{n}" for n in spec.item_features]
    human = ["human_negative_rows", "human_negative_item_row", "human_negative_item_tokens"] + [
        f"human_negative_item_{n}" for n in spec.item_features]
    return {"train": query + user + item + ["label", "gain"] + neg,
            "train_with_human_negatives": query + user + item + ["label", "gain"] + neg + human,
            "item": item + ["item_id"],
            "request": ["request_index"] + query + user}

