"""Stage `dense_search`: Dpsr>FaissSearch of every query head over the shard's FAISS index (an
asset, loaded once), the heads' hits merged (dedupe, best score, the head that found it).

With dense feedback (DenseSearchConfig.dense_feedback, dpsr_tf/search/dense_feedback.py) the
heads first search their top few items, move toward those items' mean embedding (a variable of
the shard's item embeddings by label, filled at export from the index build's embeddings) and
then search for the list. A shard knows only its own first hits, so each searching signature S
also gets S.feedback_hits (the shard's first hits and their embeddings) and S.feedback_search (S
with the heads moved along a given feedback_direction [B, d]): over shards, the proxy pools every
shard's first hits and sends each the whole catalog's direction
(dpsr_tf/serving/proxy/feedback_rounds.py).
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from dpsr_tf.export.stages.base import ExportFlag, Stage, check
from dpsr_tf.indexing import index_layout
from dpsr_tf.indexing.catalog_index import EMBEDDING_IDS_FILE, EMBEDDINGS_FILE
from dpsr_tf.search import dense_feedback, faiss_ops
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.head_merge import check_min_share, merge_heads, merge_heads_quota

# The signatures that search, and so get feedback rounds when feedback is on.
SEARCHING_SIGNATURES = ("serving_default", "personalized")


@dataclasses.dataclass(frozen=True)
class DenseSearchConfig:
    """Attributes:
      nprobe: IVF lists probed per search (0 = the value stored in the index).
      ef_search: HNSW efSearch per search (0 = the value stored in the index).
      mmap_index: memory-map the FAISS index's IVF inverted lists read-only instead of reading
        them into each process: several `dpsr serve` processes serving the version (one port,
        docs/serving.md) then share one copy in the page cache. What is mapped is a snapshot
        of the asset in the asset cache directory, never the file under the model path. Other
        index types are read either way (FaissIndex's mmap).
      dense_feedback: move each query head toward its first hits before the dense search.
      head_min_share: each query head keeps its own best floor(head_min_share * k) items in the
        merged list (search/head_merge.py, merge_heads_quota), so a head whose scores run lower
        still shows its items; 0 = the best-score merge. At most 1 / num_heads. Over several
        shards each shard's list keeps the quota and the proxy merges them by score.
    """

    nprobe: int = 0
    ef_search: int = 0
    mmap_index: bool = False
    dense_feedback: FeedbackConfig = FeedbackConfig()
    head_min_share: float = 0.0


def feedback_table(index_dir: str, ids_file: str) -> np.ndarray:
    """[labels of the shard, d] float32: the index build's item embedding of each FAISS label of
    the shard (the vectors the index holds), the table a dense feedback servable averages.

    Raises:
      ValueError: the build has no saved item embeddings, or they lack an item of the shard.
    """
    path = os.path.join(index_dir, EMBEDDINGS_FILE)
    if not os.path.exists(path):
        raise ValueError(f"dense feedback needs the index build's item embeddings: {path} is "
                         "missing; rebuild the index with `dpsr index`, or export with "
                         "--dense_feedback=off")
    embeddings = np.load(path, mmap_mode="r")
    row_of = {item_id: row for row, item_id in enumerate(index_layout.read_id_map(
        os.path.join(index_dir, EMBEDDING_IDS_FILE), expected_count=embeddings.shape[0]))}
    labels = index_layout.read_id_map(ids_file)
    missing = [i for i in labels if i not in row_of]
    if missing:
        raise ValueError(f"{path} has no embedding of item {missing[0]!r} of shard {ids_file} "
                         f"({len(missing)} missing); rebuild the index with `dpsr index`")
    return np.asarray(embeddings[np.array([row_of[i] for i in labels], np.int64)], np.float32)


class DenseSearchStage(Stage):
    """ctx.embeddings -> ranked scores [B, K], labels [B, K] (-1 pads), heads [B, K]."""

    NAME = "dense_search"
    Config = DenseSearchConfig
    FLAGS = (
        ExportFlag("nprobe", "integer", 0, "IVF nprobe per search; 0 = the index's."),
        ExportFlag("ef_search", "integer", 0, "HNSW efSearch per search; 0 = the index's."),
        ExportFlag("mmap_index", "bool", False,
                   "Memory-map the FAISS index's IVF lists instead of reading them: processes "
                   "serving this version on one machine share one copy."),
        ExportFlag("head_min_share", "float", 0.0,
                   "Per-head quota of the merged dense list: each query head keeps its best "
                   "floor(share * k) items (at most 1/num_heads; 0 = merge by best score)."),
    )

    def __init__(self, index_file: str, index_dir: str, ids_file: str):
        self._index_file = index_file
        self._index_dir = index_dir
        self._ids_file = ids_file
        self._table = None   # the feedback table variable (dense feedback only)

    @classmethod
    def validate(cls, section: DenseSearchConfig) -> None:
        if section.nprobe < 0 or section.ef_search < 0:
            raise ValueError(f"nprobe and ef_search must be >= 0, got {section.nprobe}, "
                             f"{section.ef_search}")
        section.dense_feedback.validate()
        check_min_share(section.head_min_share, 1)

    @classmethod
    def prepare(cls, source):
        index_file, ids_file = source.manifest.shard_paths(source.index_dir, source.shard)
        return cls(source.stage_file(index_file, "index.faiss"), source.index_dir, ids_file)

    def _index(self, ctx):
        return ctx.once("item_index", lambda: faiss_ops.FaissIndex(
            self._index_file, mmap=ctx.servable.mmap_index, shared_name=None, name="item_index"))

    def _search_heads(self, ctx, embeddings, k, prefix="", quota=False):
        """(scores [B, k], labels [B, k], heads [B, k]) of every head's search, merged (with
        quota, under the servable's per-head quota)."""
        s = ctx.servable
        scores, labels = [], []
        for h in range(ctx.model_config.num_heads):
            sc, lb = faiss_ops.search(self._index(ctx), embeddings[:, h, :], k, nprobe=s.nprobe,
                                      ef_search=s.ef_search, name=f"{prefix}head_{h}")
            scores.append(sc)
            labels.append(lb)
        scores, labels = tf.stack(scores, axis=1), tf.stack(labels, axis=1)
        if quota and s.head_min_share > 0:
            check_min_share(s.head_min_share, ctx.model_config.num_heads)
            return merge_heads_quota(scores, labels, k, s.head_min_share)
        return merge_heads(scores, labels, k)

    def rank(self, ctx, ranked, direction):
        """The dense list (after dense feedback, along `direction` [B, d] when given, else
        toward the shard's own first hits)."""
        del ranked
        embeddings = ctx.embeddings
        feedback = ctx.servable.dense_feedback
        if feedback.enabled:
            with tf.name_scope("dense_feedback"):
                if direction is None:   # the shard's own first hits (the catalog's: one shard)
                    _, first_labels = self._first_hits(ctx)
                    direction = dense_feedback.hit_mean(first_labels, self._feedback_table(ctx))
                embeddings = dense_feedback.move(embeddings, direction, feedback)
        with tf.name_scope("search"):
            scores, labels, heads = self._search_heads(ctx, embeddings, ctx.k, quota=True)
        return {"scores": scores, "labels": labels, "heads": heads}

    def _first_hits(self, ctx):
        """([B, f] scores, [B, f] labels) of each query's first `items` hits in the shard, merged
        over heads as the served list is (-1 labels pad); built once for every signature."""
        def build():
            with tf.name_scope("dense_feedback"):
                first = tf.constant(ctx.servable.dense_feedback.items, tf.int32)
                scores, labels, _ = self._search_heads(ctx, ctx.embeddings, first, "first_")
                return scores, labels
        return ctx.once("first_hits", build)

    def _feedback_table(self, ctx):
        """[labels of the shard, d] the shard's item embeddings by FAISS label (one variable
        however many searches read it; restore() fills it)."""
        def build():
            labels_in_shard = len(index_layout.read_id_map(self._ids_file))
            return tf.compat.v1.Variable(
                tf.zeros([labels_in_shard, ctx.model_config.embedding_dim], tf.float32),
                trainable=False, name="feedback_item_embeddings")
        self._table = ctx.once("feedback_table", build)
        return self._table

    def owns(self, variable) -> bool:
        return self._table is not None and variable.op.name == self._table.op.name

    def restore(self, session, ctx) -> None:
        if self._table is not None:   # its initializer fed the build's embeddings
            session.run(self._table.initializer, {
                self._table.initial_value: feedback_table(self._index_dir, self._ids_file)})

    def finish(self, ctx) -> None:
        if ctx.servable.dense_feedback.enabled:
            for name in SEARCHING_SIGNATURES:
                if name in ctx.signatures:
                    self._add_feedback_rounds(ctx, name)

    def _add_feedback_rounds(self, ctx, name: str) -> None:
        """Signature `name`'s two feedback rounds, which the proxy uses over shards (module
        docstring; a one-shard servable has them too, so any export can be sharded later):
        name.feedback_hits (its inputs without k) -> hit_scores [B, f] (-inf pads) and
        hit_embeddings [B, f, d]; name.feedback_search (its inputs and feedback_direction) ->
        its outputs, the heads moved along the direction."""
        inputs, _ = ctx.signatures[name]
        d = ctx.model_config.embedding_dim

        def hits():
            scores, labels = self._first_hits(ctx)
            with tf.name_scope("feedback_hits"):
                return {
                    dense_feedback.HIT_SCORES: tf.identity(tf.where(
                        labels >= 0, scores, tf.fill(tf.shape(scores), -np.inf)),
                        name=dense_feedback.HIT_SCORES),
                    dense_feedback.HIT_EMBEDDINGS: tf.identity(dense_feedback.hit_embeddings(
                        labels, self._feedback_table(ctx)), name=dense_feedback.HIT_EMBEDDINGS)}

        def search():
            given = tf.compat.v1.placeholder(tf.float32, [None, d],
                                             name=dense_feedback.DIRECTION_INPUT)
            rows, queries = tf.shape(given)[0], tf.shape(ctx.query)[0]
            checks = [
                check(tf.equal(rows, queries), f"{dense_feedback.DIRECTION_INPUT} must have one "
                      "row per query; got rows, queries", rows, queries),
                check(tf.reduce_all(tf.math.is_finite(given)),
                      f"{dense_feedback.DIRECTION_INPUT} must be finite"),
            ]
            with tf.control_dependencies(checks):
                checked = tf.identity(given)
            with tf.name_scope("feedback_search"):
                return given, ctx.rank(checked)

        given, outputs = ctx.once("feedback_search", search)
        ctx.signatures[name + dense_feedback.HITS_SUFFIX] = (
            {k: v for k, v in inputs.items() if k != "k"}, ctx.once("feedback_hits", hits))
        ctx.signatures[name + dense_feedback.SEARCH_SUFFIX] = (
            dict(inputs, **{dense_feedback.DIRECTION_INPUT: given}), outputs)
        ctx.defaults[name + dense_feedback.SEARCH_SUFFIX] = ctx.defaults[name]
