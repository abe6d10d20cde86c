"""Bytes between worker and parameter servers per step (the §5.1.3 measurement), checked on a
real in-process cluster against hand-counted payloads."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import embedding
from dpsr_tf.training import tf_config, traffic

ROWS = [[1, 2, 3, 90, 91], [4, 95, 96, 97], [5]]        # 10 ids; ids < 50 on part 0
VOCAB, DIM, PARTS = 100, 8, 2


@pytest.fixture(scope="module")
def cluster():
    spec = tf_config.loopback_cluster(num_workers=0, num_ps=PARTS)
    spec = {"worker": spec["chief"], "ps": spec["ps"]}
    servers = [tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=job, task_index=i)
               for job in ("worker", "ps") for i in range(len(spec[job]))]
    return spec, servers


@pytest.mark.parametrize("aggregate", [False, True])
def test_bytes_per_step_match_hand_count(cluster, aggregate):
    spec, servers = cluster
    graph = tf.Graph()
    with graph.as_default():
        with tf.compat.v1.device(tf.compat.v1.train.replica_device_setter(
                ps_tasks=PARTS, worker_device="/job:worker/task:0", cluster=spec)):
            table = embedding.embedding_table("t", VOCAB, DIM, partitions=PARTS)
            ids = tf.ragged.constant(ROWS, dtype=tf.int64)
            bag = embedding.embedding_bag(table, ids, combiner="sum",
                                          aggregate_on_ps=aggregate, name="bag")
            loss = tf.reduce_sum(bag)
            train = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
                loss, colocate_gradients_with_ops=True)
        crossing = traffic.crossing_tensors([train, loss], graph)
        sizes = traffic.traffic_ops(crossing)
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(servers[0].target, graph=graph) as sess:
        sess.run(init)
        _, _, got = sess.run([train, loss, sizes])
    row = DIM * 4
    if aggregate:
        # ps -> worker: one partial sum per (example, partition): 2 x 3 rows.
        # worker -> ps: int32 local ids + int32 example indices of the 10 ids, the gradient of
        # each partial sum (2 x 3 rows), and to each ps the int64 number of examples (the
        # segment count) and the float32 learning rate.
        assert got["ps->worker"] == PARTS * 3 * row
        assert got["worker->ps"] == 10 * (4 + 4) + PARTS * 3 * row + PARTS * (8 + 4)
    else:
        # ps -> worker: every looked-up row (10). worker -> ps: the int64 ids sent to each
        # partition (10), one gradient row per looked-up id (10), the learning rate.
        assert got["ps->worker"] == 10 * row
        assert got["worker->ps"] == 10 * 8 + 10 * row + PARTS * 4
    assert set(got) == {"ps->worker", "worker->ps"}


def test_resource_reads_are_placed_with_their_variable():
    with tf.Graph().as_default() as graph:
        with tf.compat.v1.device(tf.compat.v1.train.replica_device_setter(ps_tasks=1)):
            w = tf.compat.v1.get_variable("w", [4, 3])
            y = tf.matmul(tf.ones([2, 4]), w)
        crossing = traffic.crossing_tensors([y], graph)
    # The value of w is read on the ps and shipped to the worker that multiplies.
    assert [(t.dtype, src[0], dst[0]) for t, src, dst in crossing] == [
        (tf.float32, "ps", "worker")]
    np.testing.assert_array_equal(crossing[0][0].shape.as_list(), [4, 3])
