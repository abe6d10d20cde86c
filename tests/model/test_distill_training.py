"""`dpsr train --teacher_dir`: a tiny student trained with a teacher model's scores, end to end
with the real driver; its checkpoint and its exported servable are exactly those of a student
trained without the teacher (nothing of the teacher in them)."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.model import distill_cache
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig
from tests.support.teacher_kl import mean_kl_to_teacher
from tests.support.tiny_model import prepare_tiny_layout

STEPS = 30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**kw):
    return ModelConfig(embedding_dim=16, token_embedding_dim=16, feature_embedding_dim=4,
                       item_hidden_units=(32,), query_hidden_units=(32,),
                       query_projection_dim=16, **kw)


def _train(spec, model_dir, cfg, **kw):
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(cfg, TrainConfig(
        layout_dir=spec.layout_dir, model_dir=model_dir, batch_size=16, train_steps=STEPS,
        save_checkpoints_steps=STEPS, save_summary_steps=5, eval_random_negatives=20,
        eval_steps=1, seed=0, **kw))


def _export(model_dir, work):
    index_dir = os.path.join(work, "index")
    catalog_index.index_catalog(model_dir, index_dir, IndexBuildConfig(factory="Flat"))
    path = export_servable(model_dir, index_dir, os.path.join(work, "export"),
                           servable=ServableConfig(default_k=10, max_k=20, hybrid=False))
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    nodes = [n for n in graph.node] + [n for fn in graph.library.function for n in fn.node_def]
    strings = [s for n in nodes if n.op == "Const" and "value" in n.attr
               for s in n.attr["value"].tensor.string_val]
    return {n.name for n in graph.node}, sorted(n.op for n in nodes), strings


def _scalars(model_dir, tag):
    values = []
    for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            values += [v.simple_value for v in event.summary.value if v.tag == tag]
    return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("distill_run"))
    spec = prepare_tiny_layout(work, num_items=60, num_queries=120)
    teacher = os.path.join(work, "teacher")
    # The teacher: a wider model of another text encoder, so its embeddings are not the
    # student's shape (the cache is the teacher's, not a copy of the student).
    _train(spec, teacher, ModelConfig(embedding_dim=24, token_embedding_dim=16,
                                      feature_embedding_dim=4, item_hidden_units=(32,),
                                      text_encoder="separate", num_heads=2))
    plain, student = os.path.join(work, "plain"), os.path.join(work, "student")
    _train(spec, plain, _config())
    _train(spec, student, _config(), teacher_dir=teacher, distill_weight=2.0)
    return {"work": work, "spec": spec, "teacher": teacher, "plain": plain,
            "student": student}


def test_the_student_trained_on_the_teachers_scores(runs):
    kl = _scalars(runs["student"], "train/distill_kl")
    queries = _scalars(runs["student"], "train/distill_queries")
    assert kl and all(np.isfinite(kl)) and max(kl) > 0
    # Every example of a batch is a train or pseudo query, which the teacher embedded.
    assert queries and min(queries) == 16
    assert not _scalars(runs["plain"], "train/distill_kl")
    cache = distill_cache.read_cache(distill_cache.cache_dir(distill_cache.cache_key(
        runs["teacher"], runs["spec"], TrainConfig.teacher_max_queries)))
    assert (cache.heads, cache.dim) == (2, 24)
    assert tf.train.latest_checkpoint(runs["student"]).endswith(f"model.ckpt-{STEPS}")


def _kl_to_teacher(model_dir, spec, cache, rows, tau=0.05):
    """Mean over query rows of KL(teacher || model) of the softened scores over every item."""
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.model.embedder import CheckpointEmbedder
    from dpsr_tf.model.scoring import soft_dot_product_np
    table = layout_lib.load_item_table(spec)
    ids, splits = distill_cache._query_tokens(spec, rows)
    with CheckpointEmbedder(model_dir) as embedder:
        items = embedder.embed_items(np.asarray(table.token_ids), table.token_splits,
                                     {n: table.feature(n) for n in spec.item_features})
        queries = embedder.embed_queries(ids, splits)
    return mean_kl_to_teacher(cache, rows, soft_dot_product_np(queries, items, 0.0), tau)


def test_the_distilled_student_ranks_more_like_the_teacher(runs):
    spec = runs["spec"]
    cache = distill_cache.read_cache(distill_cache.cache_dir(distill_cache.cache_key(
        runs["teacher"], spec, TrainConfig.teacher_max_queries)))
    rows = distill_cache.training_query_rows(spec, TrainConfig.teacher_max_queries)[::7]
    plain = _kl_to_teacher(runs["plain"], spec, cache, rows)
    student = _kl_to_teacher(runs["student"], spec, cache, rows)
    # Same seed, data and steps: only the distillation term differs.
    assert student < 0.8 * plain, (student, plain)


def test_a_second_student_reuses_the_teachers_embeddings(runs, monkeypatch):
    calls = []
    monkeypatch.setattr(distill_cache, "_embed_with_model",
                        lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(
                            AssertionError("recomputed")))
    _train(runs["spec"], os.path.join(runs["work"], "student2"), _config(),
           teacher_dir=runs["teacher"], distill_weight=0.5)
    assert not calls


def test_the_student_checkpoint_and_servable_hold_nothing_of_the_teacher(runs):
    def variables(model_dir):
        return sorted(tf.train.list_variables(tf.train.latest_checkpoint(model_dir)))
    assert variables(runs["student"]) == variables(runs["plain"])
    assert not any("distill" in name or "teacher" in name
                   for name, _ in variables(runs["student"]))
    plain_nodes, plain_ops, _ = _export(runs["plain"], os.path.join(runs["work"], "ep"))
    nodes, ops, strings = _export(runs["student"], os.path.join(runs["work"], "es"))
    assert nodes == plain_nodes and ops == plain_ops
    assert not any("distill" in n or "teacher" in n for n in nodes)
    assert not any(distill_cache.CACHE_DIR.encode() in s for s in strings)


def test_dpsr_train_with_a_bad_teacher_dir_exits_with_the_fix(tmp_path):
    spec = prepare_tiny_layout(str(tmp_path), num_items=20, num_queries=30)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "dpsr_tf.cli", "train", f"--layout_dir={spec.layout_dir}",
         f"--model_dir={tmp_path / 'm'}", f"--teacher_dir={tmp_path / 'nowhere'}",
         "--train_steps=1"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"dpsr train: --teacher_dir='{tmp_path / 'nowhere'}': no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "m")   # nothing was built
