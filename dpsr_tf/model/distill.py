"""Score distillation from a teacher into the towers (`dpsr train --teacher_dir`).

For example i of a batch and the C candidates the loss already scores (the batch's items, then
the shared random negatives), with T[i, c] the teacher's cosine of query i and item c (max over
the teacher's query heads, as its servable ranks) and S[i, c] the student's score (the soft dot
product the model is trained and served with):

    p_i = softmax(T[i, :] / tau),  s_i = softmax(S[i, :] / tau)
    L_distill = mean over examples whose query the teacher embedded of KL(p_i || s_i)
              = sum_c p_i[c] * (log p_i[c] - log s_i[c])

and the loss is L + distill_weight * L_distill. One tau for both sides: the student's scores
are cosines like the teacher's, and the default (0.05) is the sampled softmax's temperature.

A query encoder in the teacher's own space (`--item_side=teacher`) can also match the teacher's
query vector t_i itself, not only its scores over the batch's candidates, which says nothing
about how the teacher orders the items near the top:

    L_query = mean over the same rows of (1 - cos(q_i, t_i))

added as distill_query_weight * L_query.

The teacher never enters the student's graph as a network: its embeddings come from the cache
of dpsr_tf/model/distill_cache.py, read into local (unsaved) variables when the training
session starts, so checkpoints, `dpsr index` and `dpsr export` see only the student.
"""
import dataclasses
import weakref

import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.model import distill_cache

SCOPE = "distill"
# The teacher's tables of each graph (a graph collection cannot hold a dict: the meta graph
# export warns on it).
_TABLES = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """What the model_fn needs to add the distillation term (params["distill"])."""

    cache: distill_cache.TeacherCache
    weight: float
    temperature: float
    query_weight: float = 0.0


def kl_distillation_loss(student_scores: tf.Tensor, teacher_scores: tf.Tensor,
                         valid: tf.Tensor, temperature: float) -> tf.Tensor:
    """Mean over valid rows of KL(softmax(T / tau) || softmax(S / tau)).

    Args:
      student_scores: [B, C] float32 S.
      teacher_scores: [B, C] float32 T.
      valid: [B] float32, 1 where the row has a teacher target.
      temperature: tau > 0.

    Returns:
      scalar float32 (0 when no row is valid).
    """
    log_p = tf.nn.log_softmax(teacher_scores / temperature, axis=1)
    log_s = tf.nn.log_softmax(student_scores / temperature, axis=1)
    per_row = tf.reduce_sum(tf.exp(log_p) * (log_p - log_s), axis=1)
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_row * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


def _raw_table(path: str, dtype, shape, name: str) -> tf.Variable:
    """A local variable holding a little-endian raw file of `shape`, read when the session's
    local variables are initialized (not in the graph's constants, never checkpointed)."""
    raw = tf.io.decode_raw(tf.io.read_file(path), dtype, little_endian=True)
    return tf.compat.v1.Variable(tf.reshape(raw, shape), trainable=False, name=name,
                                 collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])


def teacher_tables(cache: distill_cache.TeacherCache) -> dict:
    """{"items": [N, d] float16, "queries": [Q, m, d] float16, "query_index": [num_queries]
    int32} local variables of the current graph (built once per graph)."""
    graph = tf.compat.v1.get_default_graph()
    if graph in _TABLES:
        return _TABLES[graph]
    with tf.compat.v1.name_scope(SCOPE):
        tables = {
            "items": _raw_table(cache.path(distill_cache.ITEMS_FILE), tf.float16,
                                [cache.num_items, cache.dim], "teacher_items"),
            "queries": _raw_table(cache.path(distill_cache.QUERIES_FILE), tf.float16,
                                  [cache.num_query_rows, cache.heads, cache.dim],
                                  "teacher_queries"),
            "query_index": _raw_table(cache.path(distill_cache.QUERY_INDEX_FILE), tf.int32,
                                      [cache.num_queries], "teacher_query_index")}
    _TABLES[graph] = tables
    return tables


def teacher_queries(tables: dict, query_rows: tf.Tensor):
    """(queries [B, m, d] float32: the teacher's cached vectors of layout query rows [B] int64,
    its first cached query's where it has none; valid [B] float32: 1 where the teacher embedded
    the query, the rows a loss may count)."""
    index = tf.gather(tables["query_index"], query_rows)                     # [B]
    valid = tf.cast(index >= 0, tf.float32)
    return tf.cast(tf.gather(tables["queries"], tf.maximum(index, 0)), tf.float32), valid


def teacher_scores(tables: dict, query_rows: tf.Tensor, item_rows: tf.Tensor):
    """The teacher's scores of the batch's queries against candidate items.

    Args:
      tables: teacher_tables().
      query_rows: [B] int64 layout query rows.
      item_rows: [C] int64 layout item rows.

    Returns:
      (scores [B, C] float32: max over teacher heads of the cosines, valid [B] float32: 1 where
       the teacher embedded the query).
    """
    queries, valid = teacher_queries(tables, query_rows)
    items = tf.cast(tf.gather(tables["items"], item_rows), tf.float32)       # [C, d]
    scores = tf.reduce_max(tf.einsum("bmd,cd->bcm", queries, items), axis=2)
    return scores, valid


def teacher_item_embeddings(settings: DistillSettings, rows: tf.Tensor) -> tf.Tensor:
    """[N, d] float32 the teacher's cached embeddings of item rows [N] (`--item_side=teacher`:
    the student's item side; constant, no gradient reaches the table)."""
    items = teacher_tables(settings.cache)["items"]
    return tf.cast(tf.gather(items, tf.cast(rows, tf.int64)), tf.float32)


def query_vector_loss(student_queries: tf.Tensor, teacher_queries: tf.Tensor,
                      valid: tf.Tensor) -> tf.Tensor:
    """Mean over valid rows of 1 - cos(student, teacher).

    Args:
      student_queries: [B, d] float32; teacher_queries: [B, d] float32 (any norms).
      valid: [B] float32, 1 where the row has a teacher target.

    Returns:
      scalar float32 in [0, 2] (0 when no row is valid).
    """
    cosine = tf.reduce_sum(tf.math.l2_normalize(student_queries, axis=1) *
                           tf.math.l2_normalize(teacher_queries, axis=1), axis=1)
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum((1.0 - cosine) * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


def query_vector_term(settings: DistillSettings, features, query: tf.Tensor):
    """(weighted term, {"distill_query_cosine_gap": L_query}) of one batch: the student's
    one-head query vectors [B, 1, d] against the teacher's cached ones of the same queries."""
    teacher, valid = teacher_queries(teacher_tables(settings.cache),
                                     tf.cast(features["query_row"], tf.int64))
    gap = query_vector_loss(query[:, 0, :], teacher[:, 0, :], valid)
    return settings.query_weight * gap, {"distill_query_cosine_gap": gap}


def distillation_term(settings: DistillSettings, features, batch_scores: tf.Tensor,
                      random_scores: tf.Tensor):
    """(weighted term, {"distill_kl": KL, "distill_queries": valid rows}) of one batch.

    Args:
      settings: DistillSettings.
      features: the training batch ("query_row", "item_row", "neg_item_row").
      batch_scores: [B, B] the student's scores of the batch's items; random_scores: [B, R].
    """
    tables = teacher_tables(settings.cache)
    candidates = tf.concat([tf.cast(features["item_row"], tf.int64),
                            tf.cast(features["neg_item_row"], tf.int64)], axis=0)
    teacher, valid = teacher_scores(tables, tf.cast(features["query_row"], tf.int64),
                                    candidates)
    student = tf.concat([batch_scores, random_scores], axis=1)
    kl = kl_distillation_loss(student, teacher, valid, settings.temperature)
    return settings.weight * kl, {"distill_kl": kl, "distill_queries": tf.reduce_sum(valid)}


def settings_for(teacher_dir: str, layout_dir: str, weight: float, temperature: float,
                 max_queries: int = 0, query_weight: float = 0.0) -> DistillSettings:
    """The DistillSettings of a run whose cache is already computed (ValueError if not, or if
    query_weight is asked of a teacher with several query heads)."""
    directory = distill_cache.cache_dir(distill_cache.cache_key(
        teacher_dir, layout_lib.load_layout_spec(layout_dir), max_queries))
    cache = distill_cache.read_cache(directory)
    if cache is None:
        raise ValueError(f"{distill_cache.FLAG}={teacher_dir}: no teacher embeddings in "
                         f"{directory}; `dpsr train` computes them before training (from code: "
                         "dpsr_tf.model.distill_cache.ensure_teacher_cache)")
    if query_weight and cache.heads != 1:
        raise ValueError(f"--distill_query_weight={query_weight:g}: {teacher_dir} has "
                         f"{cache.heads} query heads and the term matches one query vector; "
                         "distill from a one-head teacher or leave the weight at 0")
    return DistillSettings(cache, float(weight), float(temperature), float(query_weight))
