"""The validation carve of TRAIN sessions (dpsr_tf/ranking/validation.py): whole queries move by
the md5 rule, and each side keeps its own candidates' features and user rows in order."""
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
