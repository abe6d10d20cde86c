"""The inter-op pool a served session gets: an operator's setting wins, else the session config
file's, else TF's choice (one thread per core) unless the server runs more sessions at once
than that: then one thread per run or batch thread, so a light request's ops never queue
behind heavy runs' blocking ops (servable.inter_op_threads; docs/benchmarks.md)."""
import pytest

from dpsr_tf.serving.model_server.lifecycle.servable import inter_op_threads


@pytest.mark.parametrize("requested,config,runners,cpus,expected", [
    (3, 0, 16, 2, 3),      # --tensorflow_inter_op_parallelism wins
    (0, 5, 16, 2, 5),      # then the session config file's value
    (3, 5, 16, 2, 3),      # the flag overrides the file, as the intra-op flag does
    (0, 0, 16, 2, 16),     # 8 run + 8 batch threads on 2 cores: one thread per runner
    (0, 0, 8, 2, 8),
    (0, 0, 8, 8, 0),       # as many cores as runners: TF's choice
    (0, 0, 8, 32, 0),      # a large server: TF's choice (32)
    (0, 0, 0, 2, 0),       # runners unknown: TF's choice
])
def test_inter_op_threads(requested, config, runners, cpus, expected):
    assert inter_op_threads(requested, config, runners, cpus) == expected
