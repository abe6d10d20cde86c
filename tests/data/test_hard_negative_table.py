"""The mined hard-negative table (dpsr_tf/data/hard_negative_table.py): its files written and
read back through tf.io.gfile (a local directory and TensorFlow's ram:// filesystem, standing in
for gs:// or hdfs://), a cluster task's wait that passes over a table of another mining, and
the splits a --hard_negative_splits value mines."""
import numpy as np
import pytest

from dpsr_tf.data import hard_negative_table as table

KEY = {"source_model_dir": "/m/base", "checkpoint": "/m/base/model.ckpt-10", "layout_dir": "/l",
       "num_items": 9, "num_queries": 3, "ranks": [2, 5], "per_query": 2, "splits": ["train"],
       "seed": 0}


@pytest.mark.parametrize("where", ["local", "ram"])
def test_round_trip(tmp_path, where):
    model_dir = str(tmp_path / "m") if where == "local" else f"ram://{tmp_path.name}/m"
    assert table.read_provenance(model_dir) is None
    table.write_table(model_dir, [4, 1, 8], [0, 2, 2, 3], dict(KEY, negatives=3))
    items, splits = table.load_table(model_dir, num_queries=3)
    assert items.dtype == np.int32 and items.tolist() == [4, 1, 8]
    assert splits.dtype == np.int64 and splits.tolist() == [0, 2, 2, 3]
    assert table.read_provenance(model_dir)["negatives"] == 3
    with pytest.raises(ValueError, match=r"a table of 3 queries, the layout has 4; delete"):
        table.load_table(model_dir, num_queries=4)


def test_absolute_keeps_filesystem_urls():
    assert table.absolute("gs://bucket/m") == "gs://bucket/m"
    assert table.absolute("m").startswith("/") and table.absolute("m").endswith("/m")


def test_a_waiting_task_passes_over_another_minings_table(tmp_path):
    model_dir = str(tmp_path / "m")
    table.write_table(model_dir, [1], [0, 1, 1, 1], dict(KEY, seed=7))  # an earlier run's
    sleeps = []

    def sleep(seconds):  # the chief replaces the table while the task waits
        sleeps.append(seconds)
        if len(sleeps) == 3:
            table.write_table(model_dir, [2, 3], [0, 1, 2, 2], dict(KEY, negatives=2))

    got = table.wait_for_table(model_dir, KEY, timeout_s=60, poll_s=5, sleep=sleep,
                               clock=lambda: 0.0)
    assert got["negatives"] == 2 and sleeps == [5, 5, 5]
    assert table.load_table(model_dir, 3)[0].tolist() == [2, 3]


def test_waiting_gives_up_at_the_deadline(tmp_path):
    model_dir = str(tmp_path / "m")
    table.write_table(model_dir, [1], [0, 1, 1, 1], dict(KEY, seed=7))
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    assert table.wait_for_table(model_dir, KEY, timeout_s=20, poll_s=5, sleep=sleep,
                                clock=lambda: now[0]) is None
    assert now[0] == 25.0  # polled at 0, 5, ..., 25: the first check past the deadline


def test_pseudo_is_mined_only_where_the_layout_has_it():
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
    with_pseudo = SimpleNamespace(layout_dir="/l", record_files={"train": [], "eval": [],
                                                                 "pseudo": []})
    without = SimpleNamespace(layout_dir="/l", record_files={"train": [], "eval": []})
    assert table.mined_splits(("train", "pseudo"), with_pseudo) == ("train", "pseudo")
    assert table.mined_splits(("train", "pseudo"), without) == ("train",)  # the default's case
    with pytest.raises(ValueError, match=r"--hard_negative_splits=pseudo: the layout /l has "
                                         r"the splits \['train', 'eval'\]"):
        table.mined_splits(("pseudo",), without)
    with pytest.raises(ValueError, match=r"mining the eval split"):
        table.mined_splits(("train", "eval"), with_pseudo)
