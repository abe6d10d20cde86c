"""Embedding tables (optionally partitioned for parameter servers) and the embedding bag.

The embedding bag combines the rows of a ragged batch of ids into one vector per example. With
`aggregate_on_ps=True` (paper §5.1.3) the combine runs per partition on the device that holds the
partition: the worker sends each partition its (local id, example index) pairs, the partition's
device gathers its rows and sums them per example, and only one partial sum per (example,
partition) travels back; the worker adds the partials. The backward pass mirrors it (the gradient
of a partial sum is sent once per (example, partition) and expanded into row gradients on the
parameter server) when gradients are colocated with their ops. The plain path is TensorFlow's own
`embedding_lookup`, which ships every looked-up row to the worker.
"""
from typing import List, Sequence, Union

import tensorflow as tf
from tensorflow.python.ops.variables import PartitionedVariable  # no public alias in TF 2.15

Table = Union[tf.Variable, PartitionedVariable]


def embedding_table(name: str, vocab_size: int, dim: int, *, partitions: int = 1,
                    partitioner: str = "fixed", min_slice_size_bytes: int = 64 << 20,
                    stddev: float = None) -> Table:
    """Creates (or reuses, under the current variable scope) a [vocab_size, dim] float32 table.

    Args:
      name: variable name inside the current variable scope.
      vocab_size: rows; ids must lie in [0, vocab_size).
      dim: columns.
      partitions: shards along the rows (1 = a plain variable). A partitioned table is saved in
        checkpoints under its full name, so a graph with another shard count restores it.
      partitioner: "fixed" (tf.compat.v1.fixed_size_partitioner(partitions)) or "min_max"
        (min_max_variable_partitioner: at most `partitions` shards of >= min_slice_size_bytes).
      min_slice_size_bytes: see partitioner.
      stddev: of the normal initializer; default 1/sqrt(dim).

    Returns:
      a tf.Variable or a PartitionedVariable whose parts split the rows contiguously
      (the first parts one row longer when the split is uneven).
    """
    if vocab_size < 1 or dim < 1:
        raise ValueError(f"embedding table {name!r}: vocab_size={vocab_size} and dim={dim} must "
                         "be >= 1")
    init = tf.compat.v1.truncated_normal_initializer(
        stddev=stddev if stddev is not None else dim ** -0.5)
    part_fn = None
    if partitions > 1:
        if partitioner == "fixed":
            part_fn = tf.compat.v1.fixed_size_partitioner(min(partitions, vocab_size))
        elif partitioner == "min_max":
            part_fn = tf.compat.v1.min_max_variable_partitioner(
                max_partitions=partitions, min_slice_size=min_slice_size_bytes)
        else:
            raise ValueError(f"partitioner={partitioner!r}: choose 'fixed' or 'min_max'")
    return tf.compat.v1.get_variable(name, shape=[vocab_size, dim], dtype=tf.float32,
                                     initializer=init, partitioner=part_fn)


def table_parts(table: Table) -> List[tf.Variable]:
    """The shards of a table in row order (a one-element list for a plain variable)."""
    if isinstance(table, PartitionedVariable):
        return list(table)
    return [table]


def _part_offsets(parts: Sequence[tf.Variable]) -> List[int]:
    offsets = [0]
    for part in parts:
        rows = part.shape[0]
        if rows is None:
            raise ValueError(f"embedding partition {part.name} has an unknown number of rows")
        offsets.append(offsets[-1] + int(rows))
    return offsets


def _weigh_rows(rows: tf.Tensor) -> tf.Tensor:
    """[L, D + 1] rows whose last column is a weight logit -> [L, D + 1] = [w * e, w] with
    w = softplus(logit): summed per example, they give a learned weighted mean."""
    weight = tf.nn.softplus(rows[:, -1:])
    return tf.concat([rows[:, :-1] * weight, weight], axis=1)


def _combine(sums: tf.Tensor, lengths: tf.Tensor, combiner: str) -> tf.Tensor:
    if combiner == "weighted":   # sums of [w * e, w]: divide by the total weight
        return sums[:, :-1] / tf.maximum(sums[:, -1:], 1e-6)
    lengths = tf.cast(lengths, sums.dtype)[:, None]
    if combiner == "sum":
        return sums
    if combiner == "mean":
        return sums / tf.maximum(lengths, 1.0)
    if combiner == "sqrtn":
        return sums / tf.sqrt(tf.maximum(lengths, 1.0))
    raise ValueError(f"combiner={combiner!r}: choose 'mean', 'sum', 'sqrtn' or 'weighted'")


def as_ragged(ids, name: str = "ids") -> tf.RaggedTensor:
    """Accepts a RaggedTensor or SparseTensor [B, (L)] of ids and returns a RaggedTensor int64."""
    if isinstance(ids, tf.SparseTensor):
        ids = tf.RaggedTensor.from_sparse(ids)
    if not isinstance(ids, tf.RaggedTensor):
        raise TypeError(f"feature {name!r} must be a tf.RaggedTensor or tf.SparseTensor [B, (L)] "
                        f"of int64 ids, got {type(ids).__name__}")
    if ids.ragged_rank != 1:
        raise ValueError(f"feature {name!r} must have ragged rank 1 ([B, (L)]), got "
                         f"ragged_rank={ids.ragged_rank}")
    return tf.cast(ids, tf.int64) if ids.dtype != tf.int64 else ids


def embedding_bag(table: Table, ids, *, combiner: str = "mean",
                  aggregate_on_ps: bool = False, name: str = "embedding_bag") -> tf.Tensor:
    """Combines the table rows of each example's ids.

    Args:
      table: [V, D] float32 variable or partitioned variable (see `embedding_table`).
      ids: tf.RaggedTensor (or tf.SparseTensor) int64 [B, (L)], every id in [0, V).
      combiner: "mean" (an empty row gives zeros), "sum", "sqrtn" or "weighted" (the table
        has D + 1 columns, the last a per-token weight logit: the bag is
        sum_t softplus(l_t) e_t / sum_t softplus(l_t), a learned IDF-like pooling; [B, D]).
      aggregate_on_ps: per partition, gather + segment-sum colocated with the partition
        (paper §5.1.3); same numbers as the plain path up to float summation order.
      name: name scope.

    Returns:
      [B, D] float32.
    """
    ids = as_ragged(ids, name)
    with tf.name_scope(name):
        flat_ids = ids.values
        segments = ids.value_rowids()
        num_rows = ids.nrows()
        parts = table_parts(table)
        if not aggregate_on_ps:
            rows = tf.compat.v1.nn.embedding_lookup(
                parts if len(parts) > 1 else parts[0], flat_ids, partition_strategy="div")
            if combiner == "weighted":
                rows = _weigh_rows(rows)
            sums = tf.math.unsorted_segment_sum(rows, segments, num_rows)
        else:
            sums = _aggregate_per_partition(parts, flat_ids, segments, num_rows,
                                            weighted=combiner == "weighted")
        return _combine(sums, ids.row_lengths(), combiner)


def _aggregate_per_partition(parts, flat_ids, segments, num_rows, weighted=False):
    """Sum over partitions of (gather + unsorted_segment_sum on the partition's device)."""
    offsets = _part_offsets(parts)
    num_parts = len(parts)
    if num_parts == 1:
        part_ids = [flat_ids]
        part_segments = [segments]
    else:
        bounds = tf.constant(offsets[1:-1], dtype=tf.int64)
        assignment = tf.reduce_sum(
            tf.cast(flat_ids[:, None] >= bounds[None, :], tf.int32), axis=1)
        local = flat_ids - tf.gather(tf.constant(offsets[:-1], dtype=tf.int64), assignment)
        part_ids = tf.dynamic_partition(local, assignment, num_parts)
        part_segments = tf.dynamic_partition(segments, assignment, num_parts)
    partials = []
    for part, local_ids, segs in zip(parts, part_ids, part_segments):
        # What the partition's device receives: int32 local ids and example indices.
        if int(part.shape[0]) < 2 ** 31:
            local_ids = tf.cast(local_ids, tf.int32)
        segs = tf.cast(segs, tf.int32)
        with tf.compat.v1.colocate_with(part):
            rows = tf.gather(part, local_ids)
            if weighted:
                rows = _weigh_rows(rows)
            partials.append(tf.math.unsorted_segment_sum(rows, segs, num_rows))
    return partials[0] if num_parts == 1 else tf.add_n(partials)


def categorical_lookup(table: Table, ids: tf.Tensor, name: str) -> tf.Tensor:
    """Looks up int64 ids [B] in a [V, D] table; ids outside [0, V) map to row 0 (unknown).

    Returns:
      [B, D] float32.
    """
    vocab = sum(int(p.shape[0]) for p in table_parts(table))
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank not in (None, 1):
        raise ValueError(f"feature {name!r} must be a [B] int64 tensor, got shape {ids.shape}")
    ids = tf.cast(ids, tf.int64)
    ids = tf.where((ids >= 0) & (ids < vocab), ids, tf.zeros_like(ids))
    parts = table_parts(table)
    return tf.compat.v1.nn.embedding_lookup(parts if len(parts) > 1 else parts[0], ids,
                                            partition_strategy="div", name=name)
