"""`dpsr train --item_side=teacher`: a fast query encoder for the encoder list, end to end on the
tiny catalog with all-MiniLM-L6-v2 as the teacher. Its queries search the teacher's item
embeddings (numpy brute force over TextEmbedder's titles), the servable's encoder list reads them
exactly as evaluation does, it ranks the items more like the teacher than the same tower
trained on its own items does, and every mismatch is refused with the fix."""
import dataclasses
import json
import os
import re
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.data import item_text
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import hybrid
from dpsr_tf.export.saved_model_export import export_servable
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.indexing import catalog_index, encoder_index
from dpsr_tf.indexing.encoder_manifest import QueryModelInfo
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.model import distill_cache, query_student
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.pretrained import files
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig, fuse_np
from dpsr_tf.training import driver
from dpsr_tf.training.config import TrainConfig
from tests.support.fresh_python import serving_default_answers
from tests.support.teacher_kl import mean_kl_to_teacher
from tests.support.tiny_model import prepare_tiny_layout

STEPS = 60
QUERIES = ["cat3 brand5", "w17 w203", "brand1 w99 cat0", "ЖЖ 中文 nothing known"]
QUIET = lambda _: None   # noqa: E731


def _config(**kw):
    return ModelConfig(**{**dict(embedding_dim=384, token_embedding_dim=16,
                                 item_hidden_units=(32,), query_hidden_units=(32,),
                                 query_projection_dim=16), **kw})


def _train(spec, model_dir, cfg, **kw):
    os.environ.pop("TF_CONFIG", None)
    driver.train_and_evaluate(cfg, TrainConfig(**{**dict(
        layout_dir=spec.layout_dir, model_dir=model_dir, batch_size=16, train_steps=STEPS,
        save_checkpoints_steps=STEPS, save_summary_steps=5, eval_random_negatives=20,
        eval_steps=1, seed=0), **kw}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("query_student"))
    spec = prepare_tiny_layout(work, num_items=60, num_queries=120)
    teacher = files.default_pretrained_dir()
    student, plain = os.path.join(work, "student"), os.path.join(work, "plain")
    # Two partitions of the token table: the servable restores the slices under its scope.
    _train(spec, student, _config(item_side="teacher", embedding_partitions=2),
           teacher_dir=teacher, distill_weight=2.0)
    _train(spec, plain, _config(embedding_dim=16))   # its own items, for the dense build
    index_dir = os.path.join(work, "index")
    catalog_index.index_catalog(plain, index_dir, IndexBuildConfig(factory="Flat"))
    manifest = encoder_index.add_encoder_index(index_dir, spec.layout_dir, log=QUIET,
                                               query_model_dir=student)
    return types.SimpleNamespace(work=work, spec=spec, teacher=teacher, student=student,
                                 plain=plain, index_dir=index_dir, manifest=manifest)


def _teacher_items(spec):
    documents = item_text.item_documents(spec, item_text.parse_fields("title"))
    with TextEmbedder() as embedder:
        return embedder.embed(documents)


def test_the_students_queries_search_the_teachers_items(run):
    encoder = run.manifest.encoder
    assert encoder.query_model_dir == os.path.abspath(run.student)
    assert encoder.query_checkpoint == tf.train.latest_checkpoint(run.student)
    queries = query_student.embed_texts(query_student.read(run.student), QUERIES)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    with TextEmbedder() as embedder:   # not the encoder's own query vectors
        assert np.abs(queries - embedder.embed(QUERIES)).max() > 0.1
    cosine = queries @ _teacher_items(run.spec).T
    k = 9
    scores, rows = hybrid.search_encoder_lists(
        run.index_dir, layout_lib.load_item_ids(run.spec), QUERIES, k)
    np.testing.assert_allclose(scores, -np.sort(-cosine, axis=1)[:, :k], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(cosine, rows, 1), scores, atol=1e-5)


def _teacher_queries(run):
    """(the teacher's cache of run's layout, the training query rows it embedded, their token
    ids and splits as the layout tokenizes them)."""
    cache = distill_cache.read_cache(distill_cache.cache_dir(distill_cache.cache_key(
        run.teacher, run.spec, TrainConfig.teacher_max_queries)))
    rows = distill_cache.training_query_rows(run.spec, TrainConfig.teacher_max_queries)
    ids, splits = distill_cache._query_tokens(run.spec, rows)   # pylint: disable=protected-access
    return cache, rows, ids, splits


def test_the_student_ranks_the_items_like_the_teacher(run):
    cache, rows, ids, splits = _teacher_queries(run)
    assert (cache.heads, cache.dim) == (1, 384)
    with CheckpointEmbedder(run.student) as embedder:
        student = embedder.embed_queries(ids, splits)[:, 0, :]
        with pytest.raises(ValueError, match="embeds queries only"):
            embedder.embed_items(ids, splits, {})
    with CheckpointEmbedder(run.plain) as embedder:
        table = layout_lib.load_item_table(run.spec)
        plain_items = embedder.embed_items(np.asarray(table.token_ids), table.token_splits,
                                           {n: table.feature(n) for n in run.spec.item_features})
        plain = embedder.embed_queries(ids, splits)[:, 0, :]
    teacher_items = distill_cache.load_arrays(cache)["items"].astype(np.float32)
    np.testing.assert_allclose(teacher_items, _teacher_items(run.spec), atol=2e-3)
    # Same data, steps and seed: the one trained against the teacher's items and scores ranks
    # them far more like it than the towers trained on their own items.
    ours = mean_kl_to_teacher(cache, rows, student @ teacher_items.T)
    theirs = mean_kl_to_teacher(cache, rows, plain @ plain_items.T)
    assert ours < 0.5 * theirs, (ours, theirs)
    names = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(run.student))]
    assert not any("item_tower" in n or "teacher" in n or "distill" in n for n in names), names


def test_the_query_vector_term_brings_the_queries_to_the_teachers(run, tmp_path):
    """Same data, steps and seed as run.student, plus 1 - cos(query, teacher's query): its
    query vectors are nearer the teacher's own on the queries the teacher embedded."""
    matched = str(tmp_path / "matched")
    _train(run.spec, matched, _config(item_side="teacher", embedding_partitions=2),
           teacher_dir=run.teacher, distill_weight=2.0, distill_query_weight=1.0)
    cache, rows, ids, splits = _teacher_queries(run)
    arrays = distill_cache.load_arrays(cache)
    teacher = arrays["queries"][arrays["query_index"][rows], 0, :].astype(np.float32)
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)

    def mean_cosine(model_dir):
        with CheckpointEmbedder(model_dir) as embedder:
            queries = embedder.embed_queries(ids, splits)[:, 0, :]
        return float(np.mean(np.sum(queries * teacher, axis=1) /
                             np.linalg.norm(queries, axis=1)))
    before, after = mean_cosine(run.student), mean_cosine(matched)
    assert after > before + 0.05, (before, after)


def _answers(path, k, outputs):
    return serving_default_answers(path, QUERIES, k, outputs)


def _check_servable_fuses_the_list(run, index_dir, name):
    """Exports run.plain over index_dir with its encoder list and without it: the servable's
    answers are the list as evaluation reads it, fused with the dense answers by fuse_np.
    Returns the servable's dpsr_servable.json."""
    cfg = EncoderFusionConfig(weight=2.0, rrf_k=1.0)
    common = dict(default_k=5, max_k=50, spelling=False, hybrid=False)
    with_list = export_servable(run.plain, index_dir, os.path.join(run.work, name),
                                servable=ServableConfig(**common, encoder_fusion=cfg))
    without = export_servable(run.plain, index_dir, os.path.join(run.work, name + "_dense"),
                              servable=ServableConfig(**common))
    with open(os.path.join(with_list, "assets.extra", "dpsr_servable.json")) as f:
        info = json.load(f)
    k = 7
    got = _answers(with_list, k, ["item_ids", "scores", "encoder_scores"])
    served = _answers(without, k, ["item_ids"])
    ids = layout_lib.load_item_ids(run.spec)
    row_of = {item_id: r for r, item_id in enumerate(ids)}
    served_rows = np.array([[row_of.get(i, -1) for i in row] for row in served["item_ids"]])
    enc_scores, enc_rows = hybrid.search_encoder_lists(index_dir, ids, QUERIES, k)
    want_scores, want_rows, _ = fuse_np(served_rows, enc_rows, k, cfg)
    assert got["item_ids"] == [[ids[r] if r >= 0 else "" for r in row] for row in want_rows]
    np.testing.assert_allclose(got["scores"], want_scores, rtol=1e-6)
    for q in range(len(QUERIES)):
        enc_of = dict(zip(enc_rows[q].tolist(), enc_scores[q].tolist()))
        np.testing.assert_allclose(got["encoder_scores"][q],
                                   [enc_of.get(r, -np.inf) for r in want_rows[q]], atol=1e-5)
    return info


def test_servable_reads_the_list_with_the_students_query_tower(run):
    info = _check_servable_fuses_the_list(run, run.index_dir, "enc")
    assert info["encoder_list"]["query_model_dir"] == os.path.abspath(run.student)
    assert info["encoder_list"]["query_ensemble"] == []


def test_an_ensemble_of_students_searches_with_their_mean(run, tmp_path):
    """--encoder_query_dir=A,B: evaluation and the servable search the list with
    normalize(unit(A's vector) + unit(B's)), numpy brute force over the teacher's items."""
    second = str(tmp_path / "second")
    _train(run.spec, second, _config(item_side="teacher"), teacher_dir=run.teacher,
           distill_weight=2.0, seed=1)
    index_dir = os.path.join(run.work, "ensemble_index")
    shutil.copytree(run.index_dir, index_dir)
    manifest = encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                               query_model_dir=run.student,
                                               query_ensemble=[second])
    encoder = manifest.encoder
    assert encoder.query_model_dir == os.path.abspath(run.student)
    assert encoder.query_ensemble == (QueryModelInfo(second, tf.train.latest_checkpoint(second)),)
    assert [m.model_dir for m in encoder.query_models] == [os.path.abspath(run.student), second]
    a = query_student.embed_texts(query_student.read(run.student), QUERIES)
    b = query_student.embed_texts(query_student.read(second), QUERIES)
    assert np.abs(a - b).max() > 0.1   # another seed: other vectors
    mean = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)
    cosine = mean @ _teacher_items(run.spec).T
    k = 9
    scores, rows = hybrid.search_encoder_lists(index_dir, layout_lib.load_item_ids(run.spec),
                                               QUERIES, k)
    np.testing.assert_allclose(scores, -np.sort(-cosine, axis=1)[:, :k], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(cosine, rows, 1), scores, atol=1e-5)
    info = _check_servable_fuses_the_list(run, index_dir, "ensemble")
    assert info["encoder_list"]["query_ensemble"] == [
        {"model_dir": second, "checkpoint": tf.train.latest_checkpoint(second)}]
    with pytest.raises(ValueError, match="names .*student twice"):
        encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                        query_model_dir=run.student,
                                        query_ensemble=[run.student + "/"])
    with pytest.raises(ValueError, match="not a query encoder for a list"):
        encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                        query_model_dir=run.student, query_ensemble=[run.plain])
    with pytest.raises(ValueError, match="needs its first one"):
        encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                        query_ensemble=[second])
    with pytest.raises(ValueError, match="query_ensemble needs a query_model_dir"):
        dataclasses.replace(encoder, query_model_dir="").check("m.json", 1, encoder.num_docs)


def test_mismatches_are_refused_with_the_fix(run, tmp_path):
    with pytest.raises(ValueError, match="item_side.*needs num_heads=1"):
        _config(item_side="teacher", num_heads=2)
    with pytest.raises(ValueError, match="item_side.*needs personalization='none'"):
        _config(item_side="teacher", personalization="profile")
    with pytest.raises(ValueError, match="name the teacher with --teacher_dir"):
        _train(run.spec, str(tmp_path / "a"), _config(item_side="teacher"))
    with pytest.raises(ValueError, match="--distill_query_weight=1 matches the teacher's query "
                                         "vectors.*add --item_side=teacher"):
        _train(run.spec, str(tmp_path / "q"), _config(embedding_dim=384), teacher_dir=run.teacher,
               distill_query_weight=1.0)
    with pytest.raises(ValueError, match="distill_query_weight=-1.0: must be >= 0"):
        TrainConfig(layout_dir="l", model_dir="m", distill_query_weight=-1.0)
    with pytest.raises(ValueError, match="early_stopping_metric=recall@10 embeds the catalog"):
        _train(run.spec, str(tmp_path / "r"), _config(item_side="teacher"),
               teacher_dir=run.teacher, early_stopping_metric="recall@10", train_steps=0)
    with pytest.raises(ValueError, match=r"--embedding_dim=32 must equal the teacher's width "
                                         r"384 .*train with --embedding_dim=384"):
        _train(run.spec, str(tmp_path / "b"), _config(item_side="teacher", embedding_dim=32),
               teacher_dir=run.teacher)
    assert not os.path.exists(tmp_path / "b" / "dpsr_config.json")   # refused before writing
    index_dir = str(tmp_path / "index")
    shutil.copytree(run.index_dir, index_dir)
    with pytest.raises(ValueError, match="not a query encoder for a list"):
        encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                        query_model_dir=run.plain)
    other = str(tmp_path / "other_encoder")
    shutil.copytree(run.teacher, other)
    with pytest.raises(ValueError, match=re.escape(f"trained against the items of {run.teacher}"
                                                   f", but the list's items are embedded by "
                                                   f"{other}")):
        encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, other, log=QUIET,
                                        query_model_dir=run.student)
    other_layout = prepare_tiny_layout(str(tmp_path / "l2"), num_items=60, num_queries=120,
                                       num_buckets=2048)
    with pytest.raises(ValueError, match="tokenizes queries otherwise"):
        query_student.load(run.student, run.teacher, other_layout, 384)
    with pytest.raises(ValueError, match="tokenizes queries otherwise"):   # export's check
        query_student.check_tokenizer(run.student, other_layout)
    with pytest.raises(ValueError, match="build its list with --encoder_fields=title, not all"):
        encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, fields="all",
                                        log=QUIET, query_model_dir=run.student)


def test_a_relative_student_dir_is_recorded_absolute(run, tmp_path, monkeypatch):
    """A model trained with a relative --model_dir records relative checkpoint paths; the
    manifest must not (export and evaluation run from anywhere)."""
    index_dir = str(tmp_path / "index")
    shutil.copytree(run.index_dir, index_dir)
    student = tmp_path / "s"
    shutil.copytree(run.student, student)
    name = os.path.basename(tf.train.latest_checkpoint(run.student))
    (student / "checkpoint").write_text(f'model_checkpoint_path: "{name}"\n'
                                        f'all_model_checkpoint_paths: "{name}"\n')
    monkeypatch.chdir(tmp_path)
    manifest = encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                               query_model_dir="s")
    assert manifest.encoder.query_model_dir == str(student)
    assert manifest.encoder.query_checkpoint == str(student / name)


@pytest.mark.parametrize("factory, largest_shard, want", [
    ("auto", 60, "Flat"), ("auto", 19_999, "Flat"), ("auto", 20_000, "SQfp16"),
    ("auto", 10 ** 7, "SQfp16"), ("AUTO", 20_000, "SQfp16"), ("Flat", 10 ** 7, "Flat"),
    ("IVF256,SQfp16", 60, "IVF256,SQfp16")])
def test_the_lists_auto_factory_is_exhaustive(factory, largest_shard, want):
    assert encoder_index.resolve_factory(factory, largest_shard) == want


def test_a_16_bit_encoder_list_finds_the_exact_lists_items(run, tmp_path):
    """SQfp16 (auto's choice from 20k items) scores every item: the exact list's items and
    scores up to 16-bit rounding (2^-11 of |q| |x| = 1 per score, doubled for a pair)."""
    ids = layout_lib.load_item_ids(run.spec)
    k = 30
    exact_scores, exact_rows = hybrid.search_encoder_lists(run.index_dir, ids, QUERIES, k)
    index_dir = str(tmp_path / "fp16")
    shutil.copytree(run.index_dir, index_dir)
    manifest = encoder_index.add_encoder_index(index_dir, run.spec.layout_dir, log=QUIET,
                                               query_model_dir=run.student,
                                               index_factory="SQfp16")
    assert manifest.encoder.index_factory == "SQfp16"
    scores, rows = hybrid.search_encoder_lists(index_dir, ids, QUERIES, k)
    tolerance = 2 * 2.0 ** -11
    np.testing.assert_allclose(scores, exact_scores, atol=tolerance)
    queries = query_student.embed_texts(query_student.read(run.student), QUERIES)
    cosine = queries @ _teacher_items(run.spec).T
    np.testing.assert_allclose(np.take_along_axis(cosine, rows, 1), exact_scores,
                               atol=tolerance)


def test_an_ivf_encoder_list_searches_its_probed_lists(run, tmp_path):
    ids = layout_lib.load_item_ids(run.spec)
    k = 30
    exact = hybrid.search_encoder_lists(run.index_dir, ids, QUERIES, k)
    queries = query_student.embed_texts(query_student.read(run.student), QUERIES)
    cosine = queries @ _teacher_items(run.spec).T
    for nprobe in (4, 1):
        index_dir = str(tmp_path / f"ivf{nprobe}")
        shutil.copytree(run.index_dir, index_dir)
        manifest = encoder_index.add_encoder_index(
            index_dir, run.spec.layout_dir, log=QUIET, query_model_dir=run.student,
            index_factory="IVF4,Flat", nprobe=nprobe)
        assert manifest.encoder.index_factory == "IVF4,Flat"
        scores, rows = hybrid.search_encoder_lists(index_dir, ids, QUERIES, k)
        if nprobe == 4:    # every list probed: the exact list
            np.testing.assert_allclose(scores, exact[0], atol=1e-5)
            continue
        found = rows >= 0
        assert found.sum() < exact[1].size   # one list of 4 holds fewer than 30 of 60 items
        np.testing.assert_allclose(np.take_along_axis(cosine, np.maximum(rows, 0), 1)[found],
                                   scores[found], atol=1e-5)
    with pytest.raises(ValueError, match="128 lists need at least 128 items, the catalog has 60"):
        encoder_index.add_encoder_index(str(tmp_path / "ivf4"), run.spec.layout_dir, log=QUIET,
                                        index_factory="IVF128,Flat")


def test_principal_projection_is_the_items_top_singular_directions():
    """Rows = the top right singular vectors of the (uncentered) items, orthonormal; items in a
    3-dimensional subspace are kept whole by 3 of them. A centered PCA would keep another
    subspace here: the items' mean is their largest direction."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(8, 3)))[0].T          # [3, 8] orthonormal
    items = (rng.normal(size=(500, 3)) * [0.2, 1.0, 3.0] + [5.0, 0.0, 0.0]) @ basis
    projection = encoder_index.principal_projection(items.astype(np.float32), 3)
    assert projection.shape == (3, 8) and projection.dtype == np.float32
    np.testing.assert_allclose(projection @ projection.T, np.eye(3), atol=1e-5)
    _, _, vt = np.linalg.svd(items, full_matrices=False)
    np.testing.assert_allclose(np.abs(projection @ vt[:3].T), np.eye(3), atol=1e-4)
    np.testing.assert_allclose(items @ projection.T @ projection, items, atol=1e-4)
    top = encoder_index.principal_projection(items.astype(np.float32), 1)
    np.testing.assert_allclose(np.abs(top @ basis[0]), [1.0], atol=1e-3)   # the mean's axis
    for bad in (0, 8, 9):
        with pytest.raises(ValueError, match=r"must be in \[1, 7\] for 8-dimensional"):
            encoder_index.principal_projection(items.astype(np.float32), bad)


def test_a_projected_encoder_list_searches_the_projected_vectors(run, tmp_path):
    """--encoder_projected_dimension: evaluation and the servable rank by (P q).(P x), P the
    items' top principal directions, with the student's 384-wide queries going in."""
    ids = layout_lib.load_item_ids(run.spec)
    k, dimension = 10, 8
    items = _teacher_items(run.spec)
    projection = encoder_index.principal_projection(items, dimension)
    queries = query_student.embed_texts(query_student.read(run.student), QUERIES)
    want = (queries @ projection.T) @ (items @ projection.T).T
    want_rows = np.argsort(-want, axis=1, kind="stable")[:, :k]
    for factory, tolerance in (("Flat", 1e-5), ("IVF4,SQfp16", 2 * 2.0 ** -11)):
        index_dir = str(tmp_path / factory.replace(",", "_"))
        shutil.copytree(run.index_dir, index_dir)
        manifest = encoder_index.add_encoder_index(
            index_dir, run.spec.layout_dir, log=QUIET, query_model_dir=run.student,
            index_factory=factory, nprobe=4, projected_dimension=dimension)
        assert manifest.encoder.projected_dimension == dimension
        assert manifest.encoder.dimension == 384
        scores, rows = hybrid.search_encoder_lists(index_dir, ids, QUERIES, k)
        np.testing.assert_allclose(scores, np.take_along_axis(want, want_rows, 1),
                                   atol=tolerance)
        np.testing.assert_allclose(np.take_along_axis(want, rows, 1), scores, atol=tolerance)
    cfg = EncoderFusionConfig(weight=2.0, rrf_k=1.0)
    servable = export_servable(run.plain, str(tmp_path / "Flat"), str(tmp_path / "servable"),
                               servable=ServableConfig(default_k=5, max_k=50, spelling=False,
                                                       hybrid=False, encoder_fusion=cfg))
    got = _answers(servable, k, ["item_ids", "encoder_scores"])
    scores, rows = hybrid.search_encoder_lists(str(tmp_path / "Flat"), ids, QUERIES, k)
    row_of = {item_id: r for r, item_id in enumerate(ids)}
    for q in range(len(QUERIES)):
        enc_of = dict(zip(rows[q].tolist(), scores[q].tolist()))
        served = [row_of[i] for i in got["item_ids"][q] if i]
        assert set(served) & set(enc_of)     # the fused list holds the encoder list's items
        np.testing.assert_allclose(got["encoder_scores"][q][:len(served)],
                                   [enc_of.get(r, -np.inf) for r in served], atol=1e-5)
    with pytest.raises(ValueError, match=r"--encoder_projected_dimension=384: must be 0"):
        encoder_index.add_encoder_index(str(tmp_path / "Flat"), run.spec.layout_dir,
                                        log=QUIET, projected_dimension=384)


def test_a_projected_section_is_checked_against_its_dimension():
    from dpsr_tf.indexing.encoder_manifest import EncoderManifest, EncoderShardInfo
    section = EncoderManifest(pretrained_dir="/e", fields="title", dimension=384, num_docs=3,
                              shards=(EncoderShardInfo(0, "shard_0/encoder.faiss", 1),),
                              projected_dimension=384)
    with pytest.raises(ValueError, match="projected_dimension must be 0 or under its "
                                         "dimension 384, got 384"):
        section.check("manifest.json", num_shards=1, num_items=3)
