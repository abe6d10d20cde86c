"""The validation carve of TRAIN sessions (dpsr_tf/ranking/validation.py): whole queries move by
the md5 rule, and each side keeps its own candidates' features and user rows in order; the
carve like eval rebuilds the item statistics from the kept sessions only (worked by hand)."""
import hashlib

import numpy as np
import pytest

from dpsr_tf.ranking import sessions, train, user_features, validation


def _data(num_sessions=70):
    rng = np.random.default_rng(0)
    lists = [{"query": f"query {s % 20}", "user_row": s, "items": [s, s + 1, s + 2],
              "labels": [1.0, 0.0, 0.0]} for s in range(num_sessions)]
    table = sessions.SessionTable.from_lists(lists)
    feats = np.arange(table.num_candidates, dtype=np.float32)[:, None] * np.ones([1, 8])
    users = user_features.SessionUsers(np.arange(num_sessions)[:, None],
                                       rng.integers(0, 50, size=(num_sessions, 3)))
    return train.RankerData(None, [], None, table, None, feats, None, 1, users, None)


def test_carve_moves_whole_queries_and_keeps_rows_aligned():
    data = _data()
    out = validation.carve(data, modulus=7)
    want_held = {f"query {q}" for q in range(20)
                 if int(hashlib.md5(f"query {q}".encode()).hexdigest(), 16) % 7 == 0}
    assert want_held and set(out.eval_sessions.queries) == want_held
    assert not want_held & set(out.train_sessions.queries)
    assert len(out.train_sessions) + len(out.eval_sessions) == 70
    for table, feats, users in ((out.train_sessions, out.train_features, out.train_users),
                                (out.eval_sessions, out.eval_features, out.eval_users)):
        s_of = table.session_of_candidate()
        # Each candidate's feature row is its original candidate index; users follow sessions.
        original = users.profile[:, 0]                      # = the original session index
        np.testing.assert_array_equal(feats[:, 0], original[s_of] * 3 + np.tile([0, 1, 2],
                                                                                 len(table)))
        np.testing.assert_array_equal(users.history, data.train_users.history[original])
        np.testing.assert_array_equal(table.item_rows, original[s_of] + np.tile([0, 1, 2],
                                                                                len(table)))


def test_carve_needs_both_sides():
    with pytest.raises(ValueError, match="both sides need sessions"):
        validation.carve(_data(3), modulus=1000)


def test_layout_validation_mask_marks_the_sessions_of_validation_queries(tmp_path):
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.data import prepare as prepare_lib
    from dpsr_tf.demo import synthetic_catalog as synthetic
    out = synthetic.generate(synthetic.SyntheticConfig(num_items=300, num_users=50,
                                                       num_interactions=3000, seed=4),
                             str(tmp_path / "syn"), log=lambda *_: None)
    prepare_lib.prepare(prepare_lib.PrepareConfig(
        items=out.items_path, users=out.users_path, interactions=out.interactions_path,
        output=str(tmp_path / "layout")), log=lambda *_: None)
    spec = layout_lib.load_layout_spec(str(tmp_path / "layout"))
    texts = layout_lib.load_queries(spec)
    by_split = {split: {texts[r] for r in layout_lib.read_records(spec, split)["query_row"]}
                for split in ("train", "validation")}
    assert by_split["validation"] and not by_split["validation"] & by_split["train"]
    queries = sorted(by_split["train"])[:30] + sorted(by_split["validation"])[:10] + ["unseen"]
    mask = validation.layout_validation_mask(spec, queries)
    np.testing.assert_array_equal(mask, [False] * 30 + [True] * 10 + [False])


def _rebuild(monkeypatch, rng):
    """carve_like_eval on five hand-made TRAIN sessions; the "saw" sessions are the layout's
    validation queries. Query heads are fixed vectors per query (no DPSR model)."""
    from dpsr_tf.ranking import features
    lists = [  # query, items, labels, timestamp; order by time = s0, s1, s2, s3, s4
        {"query": "drill", "items": [0, 1], "labels": [1.0, 0.0], "timestamp": 1.0},
        {"query": "saw", "items": [1, 2], "labels": [1.0, 0.0], "timestamp": 2.0},
        {"query": "drill", "items": [0, 2], "labels": [0.0, 1.0], "timestamp": 3.0},
        {"query": "saw", "items": [0, 1], "labels": [0.0, 1.0], "timestamp": 4.0},
        {"query": "hammer", "items": [2, 0], "labels": [1.0, 0.0], "timestamp": 5.0}]
    table = sessions.SessionTable.from_lists(lists)
    titles = ["red drill", "blue saw", "claw hammer"]
    emb = rng.normal(size=(3, 4)).astype(np.float32)
    full = features.build_feature_tables(titles, table.item_rows, table.labels, emb)
    heads = {q: rng.normal(size=(2, 4)).astype(np.float32) for q in ("drill", "saw", "hammer")}
    monkeypatch.setattr(validation, "layout_validation_mask",
                        lambda spec, queries: np.array([q == "saw" for q in queries]))
    monkeypatch.setattr(train, "query_heads",
                        lambda model_dir, spec, queries: np.stack([heads[q] for q in queries]))
    data = train.RankerData(None, titles, full, table, None, None, None, 2)
    return validation.carve_like_eval(data, "unused", log=None), emb, heads


def test_carve_like_eval_rebuilds_item_statistics_from_the_kept_sessions(monkeypatch):
    from dpsr_tf.ranking import features
    out, emb, heads = _rebuild(monkeypatch, np.random.default_rng(0))
    assert out.eval_sessions.queries == ["saw", "saw"]
    assert out.train_sessions.queries == ["drill", "drill", "hammer"]
    n = features.FEATURE_NAMES.index("item_log_impressions")
    m = features.FEATURE_NAMES.index("item_mean_label")
    # Kept sessions s0, s2, s4 (labels 1 0 | 0 1 | 1 0, global mean g = 0.5, prior weight 5):
    # item 0 shown 3 times, label sum 1; item 1 once, 0; item 2 twice, 2. All five TRAIN
    # sessions would give item 1 three impressions and item 0 four.
    assert out.tables.global_mean_label == 0.5
    np.testing.assert_array_equal(out.tables.item_impressions, [3, 1, 2])
    np.testing.assert_array_equal(out.tables.item_label_sum, [1, 0, 2])
    # Held rows (s1: items 1 2; s3: items 0 1) see the kept sessions' full statistics:
    # mean = (label sum + 5 * 0.5) / (impressions + 5).
    full = {0: (3, 3.5 / 8), 1: (1, 2.5 / 6), 2: (2, 4.5 / 7)}
    want = np.array([full[i] for i in (1, 2, 0, 1)])
    np.testing.assert_allclose(out.eval_features[:, n], np.log1p(want[:, 0]), rtol=1e-6)
    np.testing.assert_allclose(out.eval_features[:, m], want[:, 1], rtol=1e-6)
    # Kept rows see only the kept sessions before their own (ordered by time):
    # s0: items 0, 1 unseen (mean = the prior 0.5); s2: item 0 after s0 (1 impression, label 1),
    # item 2 unseen; s4: item 2 after s2 (1, label 1), item 0 after s0 and s2 (2, label 1).
    ordered = np.array([(0, 0.5), (0, 0.5), (1, 3.5 / 6), (0, 0.5), (1, 3.5 / 6), (2, 3.5 / 7)])
    np.testing.assert_allclose(out.train_features[:, n], np.log1p(ordered[:, 0]), rtol=1e-6)
    np.testing.assert_allclose(out.train_features[:, m], ordered[:, 1], rtol=1e-6)
    # Each side's DPSR score is its own query's: max over heads of head . item embedding.
    s = features.FEATURE_NAMES.index("dpsr_score")
    for part, feats in ((out.train_sessions, out.train_features),
                        (out.eval_sessions, out.eval_features)):
        q = np.stack([heads[part.queries[k]] for k in part.session_of_candidate()])
        want_s = np.einsum("chd,cd->ch", q, emb[part.item_rows]).max(axis=1)
        np.testing.assert_allclose(feats[:, s], want_s, rtol=1e-5, atol=1e-6)
