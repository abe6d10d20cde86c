"""tf.estimator.RunConfig for one task: session config, device placement, checkpoint cadence.

On a parameter-server cluster the variables are placed by a replica_device_setter with greedy
byte-size load balancing, so the shards of a partitioned embedding table spread over the
parameter servers (round robin by op count, TensorFlow's default, can stack them on one task).
"""
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from dpsr_tf.training.config import TrainConfig
from dpsr_tf.training.tf_config import ClusterInfo


def session_config(train: TrainConfig, cluster: ClusterInfo) -> tf.compat.v1.ConfigProto:
    """ConfigProto with thread pools and, on a cluster, the device filters Estimator would set.

    A task only talks to the parameter servers and itself, so a worker neither waits for nor
    breaks with the other workers (which is what lets one be killed and restarted).
    """
    filters = None
    if cluster.distributed:
        if cluster.task_type == "chief":
            filters = ["/job:ps", "/job:chief"]
        elif cluster.task_type == "worker":
            filters = ["/job:ps", f"/job:worker/task:{cluster.task_index}"]
        elif cluster.task_type == "ps":
            filters = ["/job:ps", "/job:worker", "/job:chief"]
    rewrite = rewriter_config_pb2.RewriterConfig(
        meta_optimizer_iterations=rewriter_config_pb2.RewriterConfig.ONE)
    return tf.compat.v1.ConfigProto(
        allow_soft_placement=True,
        intra_op_parallelism_threads=train.intra_op_threads,
        inter_op_parallelism_threads=train.inter_op_threads,
        device_filters=filters,
        graph_options=tf.compat.v1.GraphOptions(rewrite_options=rewrite))


class GreedyByteSizeStrategy:
    """ps_strategy for replica_device_setter: each variable goes to the least-loaded ps task.

    Load = bytes of the variables already placed there (from the op's shape and dtype attrs),
    so the shards of a big partitioned table land on different parameter servers.
    """

    def __init__(self, num_tasks: int):
        self._loads = [0] * num_tasks

    @staticmethod
    def _bytes(op) -> int:
        try:
            shape = tf.TensorShape(op.get_attr("shape"))
            dtype = tf.as_dtype(op.get_attr("dtype"))
        except ValueError:
            return 1
        if not shape.is_fully_defined():
            return 1
        return max(1, shape.num_elements() * dtype.size)

    def __call__(self, op) -> int:
        task = min(range(len(self._loads)), key=lambda i: (self._loads[i], i))
        self._loads[task] += self._bytes(op)
        return task


def device_fn(cluster: ClusterInfo):
    """The replica device setter of a training task, or None on one machine."""
    if cluster.num_ps == 0 or cluster.task_type not in ("chief", "worker"):
        return None
    strategy = GreedyByteSizeStrategy(cluster.num_ps)
    return tf.compat.v1.train.replica_device_setter(
        ps_tasks=cluster.num_ps,
        worker_device=f"/job:{cluster.task_type}/task:{cluster.task_index}",
        merge_devices=True, cluster=cluster.cluster, ps_strategy=strategy)


def make_run_config(train: TrainConfig, cluster: ClusterInfo) -> tf.estimator.RunConfig:
    """The RunConfig of this task (TF_CONFIG is read by RunConfig itself from the environment)."""
    config = tf.estimator.RunConfig(
        model_dir=train.model_dir,
        tf_random_seed=train.seed,
        save_summary_steps=train.save_summary_steps,
        save_checkpoints_steps=train.save_checkpoints_steps,
        keep_checkpoint_max=train.keep_checkpoint_max,
        log_step_count_steps=train.log_step_count_steps,
        session_config=session_config(train, cluster),
        experimental_max_worker_delay_secs=train.worker_delay_secs)
    fn = device_fn(cluster)
    if fn is not None:
        config = config.replace(device_fn=fn)
    return config
