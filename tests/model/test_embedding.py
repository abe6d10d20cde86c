"""Embedding bag: plain lookup vs numpy, and PS-side aggregation == plain lookup (values and
gradients), over partition counts and partitioners."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import embedding

VOCAB, DIM = 23, 5
ROWS = [[3, 7, 7, 22], [], [0], [11, 12, 13, 14, 15, 16, 2], [22]]


def _reference(table, rows, combiner):
    if combiner == "weighted":   # last column: weight logit; softplus-weighted mean of the rest
        out = np.zeros((len(rows), table.shape[1] - 1), np.float64)
        for i, ids in enumerate(rows):
            if ids:
                w = np.log1p(np.exp(table[ids, -1].astype(np.float64)))
                out[i] = (w[:, None] * table[ids, :-1]).sum(axis=0) / w.sum()
        return out
    out = np.zeros((len(rows), table.shape[1]), np.float64)
    for i, ids in enumerate(rows):
        if ids:
            s = table[ids].sum(axis=0)
            out[i] = {"sum": s, "mean": s / len(ids), "sqrtn": s / np.sqrt(len(ids))}[combiner]
    return out


def _bag(partitions, partitioner, aggregate, combiner, table_value):
    """(bag [B, D], d(sum of bag * weights)/d(table) as a dense [V, D]) in a fresh graph."""
    with tf.Graph().as_default():
        table = embedding.embedding_table("t", VOCAB, DIM, partitions=partitions,
                                          partitioner=partitioner, min_slice_size_bytes=4 * DIM * 4)
        parts = embedding.table_parts(table)
        ids = tf.ragged.constant(ROWS, dtype=tf.int64)
        bag = embedding.embedding_bag(table, ids, combiner=combiner, aggregate_on_ps=aggregate)
        width = DIM - (combiner == "weighted")
        weights = tf.constant(np.arange(len(ROWS) * width, dtype=np.float32).reshape(-1, width))
        grads = tf.gradients(tf.reduce_sum(bag * weights), parts)
        dense = [tf.convert_to_tensor(g) for g in grads]
        with tf.compat.v1.Session() as sess:
            offset = 0
            for p in parts:
                n = int(p.shape[0])
                p.load(table_value[offset:offset + n], sess)
                offset += n
            out, g = sess.run([bag, dense])
    return out, np.concatenate(g), len(parts)


@pytest.mark.parametrize("combiner", ["mean", "sum", "sqrtn", "weighted"])
@pytest.mark.parametrize("partitions, partitioner", [(1, "fixed"), (3, "fixed"), (4, "fixed"),
                                                      (5, "min_max")])
def test_ps_aggregation_equals_plain_lookup(combiner, partitions, partitioner):
    rng = np.random.RandomState(partitions)
    table = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
    plain, g_plain, n_parts = _bag(partitions, partitioner, False, combiner, table)
    on_ps, g_ps, _ = _bag(partitions, partitioner, True, combiner, table)
    assert n_parts == partitions
    np.testing.assert_allclose(plain, _reference(table, ROWS, combiner), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_ps, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_ps, g_plain, rtol=1e-6, atol=1e-6)
    assert not on_ps[1].any()                       # the empty row combines to zeros


def test_aggregation_ops_are_colocated_with_their_partition():
    with tf.Graph().as_default():
        with tf.compat.v1.device(tf.compat.v1.train.replica_device_setter(ps_tasks=3)):
            table = embedding.embedding_table("t", VOCAB, DIM, partitions=3)
            embedding.embedding_bag(table, tf.ragged.constant(ROWS, dtype=tf.int64),
                                    aggregate_on_ps=True, name="bag")
        graph = tf.compat.v1.get_default_graph()
        sums = [op for op in graph.get_operations()
                if op.type == "UnsortedSegmentSum" and op.name.startswith("bag/")]
        assert len(sums) == 3
        devices = sorted(op.device for op in sums)
        parts = sorted(p.device for p in embedding.table_parts(table))
        assert devices == parts and all("/job:ps" in d for d in devices)


def test_categorical_lookup_maps_unknown_ids_to_row_zero():
    table = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3))
    got = embedding.categorical_lookup(table, tf.constant([2, -1, 4, 0], tf.int64), "f")
    np.testing.assert_array_equal(got.numpy(), [[6, 7, 8], [0, 1, 2], [0, 1, 2], [0, 1, 2]])


def test_sparse_ids_are_accepted():
    with tf.Graph().as_default():
        table = embedding.embedding_table("t", VOCAB, DIM)
        sparse = tf.ragged.constant(ROWS, dtype=tf.int64).to_sparse()
        bag = embedding.embedding_bag(table, sparse, combiner="sum")
        ragged_bag = embedding.embedding_bag(table, tf.ragged.constant(ROWS, dtype=tf.int64),
                                             combiner="sum")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            a, b = sess.run([bag, ragged_bag])
    np.testing.assert_array_equal(a, b)


def test_dense_ids_are_rejected_with_a_clear_error():
    with tf.Graph().as_default():
        table = embedding.embedding_table("t", VOCAB, DIM)
        with pytest.raises(TypeError, match="RaggedTensor or tf.SparseTensor"):
            embedding.embedding_bag(table, tf.constant([[1, 2]], tf.int64), name="query_tokens")


def test_weighted_bag_hand_worked():
    # Two rows [e = (1, 0), logit 0] and [e = (0, 2), logit log(e^3 - 1)]: weights softplus =
    # log 2 and 3; bag = (log 2 * (1, 0) + 3 * (0, 2)) / (log 2 + 3).
    table = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, np.log(np.exp(3.0) - 1.0)]], np.float32)
    with tf.Graph().as_default():
        t = tf.compat.v1.get_variable("t", initializer=table)
        bag = embedding.embedding_bag(t, tf.ragged.constant([[0, 1], []], dtype=tf.int64),
                                      combiner="weighted")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            got = sess.run(bag)
    l2 = np.log(2.0)
    np.testing.assert_allclose(got, [[l2 / (l2 + 3), 6 / (l2 + 3)], [0, 0]], rtol=1e-5)
