"""TF_CONFIG parsing, loopback clusters, per-task session/device settings, CLI flag errors."""
import json
import subprocess

import pytest
import tensorflow as tf

from dpsr_tf.training import run_config, tf_config
from dpsr_tf.training.config import TrainConfig
from dpsr_tf.training.launcher import LocalCluster
from tests.support import waiting

CLUSTER = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"], "ps": ["h3:1", "h4:1"]}


@pytest.mark.parametrize("task, index, replica", [("chief", 0, 0), ("worker", 1, 2),
                                                  ("ps", 1, 0), ("evaluator", 0, 0)])
def test_parse_round_trip(task, index, replica):
    info = tf_config.parse(tf_config.make(CLUSTER, task, index))
    assert (info.task_type, info.task_index, info.num_ps, info.num_workers) == (task, index, 2, 3)
    assert info.replica_index == replica and info.num_replicas == 3
    assert info.is_chief == (task == "chief")


def test_no_tf_config_is_a_local_chief():
    info = tf_config.parse(None)
    assert (info.task_type, info.distributed, info.num_ps) == ("chief", False, 0)
    assert info.num_replicas == 1


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "master", "index": 0}}), "task.type"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}),
     "is not in cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}),
     "exactly one chief"),
    (json.dumps({"cluster": dict(CLUSTER, evaluator=["e:1"]), "task": {"type": "chief"}}),
     "unknown jobs"),
])
def test_bad_tf_config_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        tf_config.parse(text)


def test_loopback_cluster_uses_distinct_free_ports():
    cluster = tf_config.loopback_cluster(num_workers=2, num_ps=3)
    addresses = cluster["chief"] + cluster["worker"] + cluster["ps"]
    assert len(set(addresses)) == 6 and all(a.startswith("localhost:") for a in addresses)


def test_launcher_needs_a_ps_for_workers(tmp_path):
    with pytest.raises(ValueError, match="at least one parameter server"):
        LocalCluster(["true"], num_workers=1, num_ps=0, evaluator=False, log_dir=str(tmp_path))


@pytest.mark.parametrize("task, index, filters", [
    ("chief", 0, ["/job:ps", "/job:chief"]),
    ("worker", 1, ["/job:ps", "/job:worker/task:1"]),
])
def test_session_config_device_filters(task, index, filters):
    info = tf_config.parse(tf_config.make(CLUSTER, task, index))
    cfg = run_config.session_config(TrainConfig(layout_dir="l", model_dir="m",
                                                intra_op_threads=2), info)
    assert list(cfg.device_filters) == filters
    assert cfg.intra_op_parallelism_threads == 2


def test_partitions_spread_over_parameter_servers():
    info = tf_config.parse(tf_config.make(CLUSTER, "worker", 0))
    with tf.Graph().as_default():
        with tf.compat.v1.device(run_config.device_fn(info)):
            small = tf.compat.v1.get_variable("small", [10, 4])
            big = tf.compat.v1.get_variable(
                "big", [1000, 64], partitioner=tf.compat.v1.fixed_size_partitioner(2))
            out = tf.matmul(small, tf.ones([4, 1]))
    parts = sorted(p.device for p in big)
    assert parts == ["/job:ps/task:0", "/job:ps/task:1"]     # one shard on each ps
    assert small.device.startswith("/job:ps/task:0")
    assert out.device == "/job:worker/task:0"
    assert run_config.device_fn(tf_config.parse(None)) is None


def test_train_without_layout_dir_is_a_clear_error(task_env, dpsr_command):
    proc = subprocess.run(dpsr_command("train", "--model_dir=/tmp/x"), env=task_env,
                          capture_output=True, text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)
    assert proc.returncode != 0
    assert "--layout_dir is required" in proc.stderr


def test_train_with_bad_model_flag_is_a_clear_error(task_env, dpsr_command, tmp_path):
    proc = subprocess.run(dpsr_command("train", "--layout_dir=/x", f"--model_dir={tmp_path}",
                                       "--alpha=2"), env=task_env, capture_output=True,
                          text=True, timeout=waiting.SUBPROCESS_TIMEOUT_S, check=False)
    assert proc.returncode != 0
    assert "ModelConfig.alpha=2.0" in proc.stderr
