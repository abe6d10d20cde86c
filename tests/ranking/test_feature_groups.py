"""DPR's feature groups: the text ids against the documented hash worked in pure Python, the
user group's sum pooling against numpy, history truncation to the last N, the choice of
groups, and the hashed sparse features of the tree baseline against hand-set columns and against
a per-candidate Python reference."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.ranking import model as M
from dpsr_tf.ranking import sessions as sessions_lib
from dpsr_tf.ranking import sparse_features as sparse_lib
from dpsr_tf.ranking import user_features as user_lib
from dpsr_tf.ranking.features import NUM_FEATURES
from dpsr_tf.tokenization import tokenize_op
from dpsr_tf.tokenization.tokenizer import Tokenizer
from tests.tokenization.test_ids import reference_hash

BUCKETS = M.default_tokenizer().num_buckets            # 2^18


@pytest.mark.parametrize("text,keys", [
    ("red shoe", ["w:red", "w:shoe", "ww:red shoe"]),
    ("Cordless  DRILL kit", ["w:cordless", "w:drill", "ww:cordless drill", "w:kit",
                             "ww:drill kit"]),
])
def test_text_ids_are_hashed_unigrams_and_bigrams(text, keys):
    # The ranker's tokenizer in-graph: word unigrams then the bigram with the previous word,
    # each FNV-1a 64 + splitmix64 mod 2^18 (docs/tokenizer.md), no letter trigrams.
    want = [reference_hash(k) % BUCKETS for k in keys]
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        ids = sess.run(tokenize_op.tokenize(tf.constant([text]), M.default_tokenizer()))
    assert ids.to_list() == [want]


# Pinned bucket ids of "red shoe" (w:red, w:shoe, ww:red shoe) in 2^18 buckets.
GOLDEN_RED_SHOE = [12, 55628, 30324]


def test_golden_bucket_ids():
    # The reference hash and the tokenizer op give the pinned ids: a change of the feature
    # keys, the hash or the ranker's bucket count shows here.
    assert [reference_hash(k) % BUCKETS for k in ("w:red", "w:shoe", "ww:red shoe")] == \
        GOLDEN_RED_SHOE
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        ids = sess.run(tokenize_op.tokenize(tf.constant(["red shoe"]), M.default_tokenizer()))
    assert ids.to_list() == [GOLDEN_RED_SHOE]


def test_padded_bag_sum_mean_against_numpy():
    rng = np.random.default_rng(0)
    table = rng.normal(size=[7, 3]).astype(np.float32)
    rows = np.array([[4, 1, -1], [-1, -1, -1], [6, 6, 0]], np.int64)
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        got_sum, got_mean = sess.run([M.padded_bag(tf.constant(table), rows, "sum"),
                                      M.padded_bag(tf.constant(table), rows, "mean")])
    want = np.stack([table[4] + table[1], np.zeros(3), 2 * table[6] + table[0]])
    np.testing.assert_allclose(got_sum, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_mean, want / np.array([[2.0], [1.0], [3.0]]), rtol=1e-6,
                               atol=1e-6)


USER_CONFIG = dataclasses.replace(
    M.RankerConfig(), feature_groups=("user",), hidden_units=(1,), user_features=("gender",),
    user_vocab_sizes=(3,), item_features=("tier",), item_vocab_sizes=(4,), history_length=3, num_items=5, user_embedding_dim=2,
    history_embedding_dim=2)


def test_user_group_tower_against_numpy():
    """With layer 0 summing its inputs (kernel of ones, bias 100 keeps the ReLU linear) and
    the logit layer the identity, logit = 100 + sum([p, i, h, c, h * c]) computed by numpy."""
    rng = np.random.default_rng(1)
    user_table = rng.normal(size=[3, 2]).astype(np.float32)
    item_table = rng.normal(size=[5, 2]).astype(np.float32)
    tier_table = rng.normal(size=[4, 2]).astype(np.float32)
    tiers = np.array([[3], [1]], np.int64)
    profile = np.array([[2], [0]], np.int64)
    history = np.array([[3, 1, 1], [-1, -1, -1]], np.int64)
    item_row = np.array([1, 4], np.int64)
    graph = tf.Graph()
    with graph.as_default():
        logit = M.tower(tf.constant(["q", "q"]), tf.constant(["t", "t"]),
                        tf.zeros([2, NUM_FEATURES]), USER_CONFIG, tf.constant(profile),
                        tf.constant(history), tf.constant(item_row), tf.constant(tiers))
        v = {x.op.name: x for x in tf.compat.v1.global_variables()}
    assert sorted(v) == ["dpr/embeddings/history_items", "dpr/embeddings/item_tier",
                         "dpr/embeddings/user_gender",
                         "dpr/tower/layer_0/bias", "dpr/tower/layer_0/kernel",
                         "dpr/tower/layer_1/bias", "dpr/tower/layer_1/kernel"]
    assert v["dpr/tower/layer_0/kernel"].shape == (2 + 2 + 3 * 2, 1)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run([v["dpr/embeddings/user_gender"].assign(user_table),
                  v["dpr/embeddings/history_items"].assign(item_table),
                  v["dpr/embeddings/item_tier"].assign(tier_table),
                  v["dpr/tower/layer_0/kernel"].assign(np.ones([10, 1], np.float32)),
                  v["dpr/tower/layer_0/bias"].assign([100.0]),
                  v["dpr/tower/layer_1/kernel"].assign([[1.0]]),
                  v["dpr/tower/layer_1/bias"].assign([0.0])])
        got = sess.run(logit)
    h = np.stack([item_table[3] + 2 * item_table[1], np.zeros(2)])         # sum-pooled
    c = item_table[item_row]
    want = 100.0 + np.concatenate([user_table[profile[:, 0]], tier_table[tiers[:, 0]], h, c,
                                   h * c], axis=1).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_crossed_id_embeddings_against_numpy():
    """cross_embedding_dim: one table per (profile column, item column) pair, row u * V + v
    for profile id u and item id v (ids clipped to each vocabulary); with layer 0 summing and
    no history, logit = 100 + sum([p, i, k])."""
    cfg = dataclasses.replace(USER_CONFIG, history_length=0, cross_embedding_dim=2)
    rng = np.random.default_rng(2)
    user_table = rng.normal(size=[3, 2]).astype(np.float32)
    tier_table = rng.normal(size=[4, 2]).astype(np.float32)
    cross_table = rng.normal(size=[3 * 4, 2]).astype(np.float32)
    profile = np.array([[2], [0], [9]], np.int64)        # 9 is clipped to 2
    tiers = np.array([[3], [1], [0]], np.int64)
    graph = tf.Graph()
    with graph.as_default():
        logit = M.tower(tf.constant(["q"] * 3), tf.constant(["t"] * 3),
                        tf.zeros([3, NUM_FEATURES]), cfg, tf.constant(profile), None, None,
                        tf.constant(tiers))
        v = {x.op.name: x for x in tf.compat.v1.global_variables()}
    assert v["dpr/embeddings/cross_gender_tier"].shape == (12, 2)
    assert v["dpr/tower/layer_0/kernel"].shape == (2 + 2 + 2, 1)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run([v["dpr/embeddings/user_gender"].assign(user_table),
                  v["dpr/embeddings/item_tier"].assign(tier_table),
                  v["dpr/embeddings/cross_gender_tier"].assign(cross_table),
                  v["dpr/tower/layer_0/kernel"].assign(np.ones([6, 1], np.float32)),
                  v["dpr/tower/layer_0/bias"].assign([100.0]),
                  v["dpr/tower/layer_1/kernel"].assign([[1.0]]),
                  v["dpr/tower/layer_1/bias"].assign([0.0])])
        got = sess.run(logit)
    u = np.minimum(profile[:, 0], 2)
    want = 100.0 + np.concatenate([user_table[u], tier_table[tiers[:, 0]],
                                   cross_table[u * 4 + tiers[:, 0]]], axis=1).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_history_keeps_the_last_n_before_the_session():
    items = np.array([10, 11, 12, 13, 20, 21], np.int32)     # user 0: 10..13, user 1: 20, 21
    splits = np.array([0, 4, 6], np.int64)
    ends = np.array([3, 4, 1, 0, 2])
    rows = np.array([0, 0, 1, 1, -1])
    got = user_lib.last_n(items, splits, ends, rows, history_length=2)
    np.testing.assert_array_equal(got, [[11, 12], [12, 13], [20, -1], [-1, -1], [-1, -1]])
    assert user_lib.last_n(items, splits, ends, rows, 0).shape == (5, 0)


@pytest.mark.parametrize("groups,error", [
    (("numeric", "bogus"), "feature_groups must be"),
    ((), "feature_groups must be"),
    (("user",), "needs user profile features or a history"),
])
def test_feature_group_validation(groups, error):
    with pytest.raises(ValueError, match=error):
        dataclasses.replace(M.RankerConfig(), feature_groups=groups).validate()


def test_numeric_only_tower_reads_no_text():
    cfg = dataclasses.replace(M.RankerConfig(), feature_groups=("numeric",), hidden_units=(2,))
    graph = tf.Graph()
    with graph.as_default():
        M.tower(tf.constant(["a"]), tf.constant(["b"]), tf.zeros([1, NUM_FEATURES]), cfg)
        names = sorted(x.op.name for x in tf.compat.v1.global_variables())
        ops = {op.type for op in graph.get_operations()}
    assert names == ["dpr/tower/layer_0/bias", "dpr/tower/layer_0/kernel",
                     "dpr/tower/layer_1/bias", "dpr/tower/layer_1/kernel"]
    assert not any("Tokenize" in t for t in ops)
    assert M.RankerConfig.from_json(cfg.to_json()) == cfg


def test_sparse_features_columns_by_hand():
    table = sessions_lib.SessionTable.from_lists([
        {"query": "red shoe", "items": [0, 1], "labels": [1, 0], "user_row": 0}])
    titles = ["red shoe", "blue hat"]
    numeric = np.arange(2 * NUM_FEATURES, dtype=np.float32).reshape(2, NUM_FEATURES)
    users = user_lib.SessionUsers(profile=np.array([[2, 1]]), history=np.array([[1, -1]]))
    b = 16
    x = sparse_lib.sparse_features(numeric, table, titles, M.default_tokenizer(), users,
                                   vocab_sizes=(3, 4), buckets=b).toarray()
    assert x.shape == (2, NUM_FEATURES + 4 * b + 7 + 1)
    red_shoe = sorted({h % b for h in GOLDEN_RED_SHOE})
    blue_hat = sorted({reference_hash(k) % BUCKETS % b
                       for k in ("w:blue", "w:hat", "ww:blue hat")})
    f = NUM_FEATURES
    for row, title_cols, overlap in ((0, red_shoe, red_shoe), (1, blue_hat, [])):
        np.testing.assert_array_equal(x[row, :f], numeric[row])
        assert np.flatnonzero(x[row, f:f + b]).tolist() == red_shoe         # query
        assert np.flatnonzero(x[row, f + b:f + 2 * b]).tolist() == title_cols
        assert np.flatnonzero(x[row, f + 2 * b:f + 3 * b]).tolist() == overlap
        assert np.flatnonzero(x[row, f + 3 * b:f + 3 * b + 7]).tolist() == [2, 3 + 1]
        assert np.flatnonzero(x[row, f + 3 * b + 7:f + 4 * b + 7]).tolist() == [1 % b]
    # "in history": item 1 was clicked before, item 0 was not.
    assert x[:, -1].tolist() == [0.0, 1.0]


def _sparse_reference(numeric, table, titles, users, vocab_sizes, buckets):
    """The sparse features one candidate at a time with Python sets (the module docstring
    read literally): (indptr, indices, data)."""
    tok = Tokenizer(M.default_tokenizer())
    f = numeric.shape[1]
    offsets = np.concatenate([[0], np.cumsum(vocab_sizes)]).astype(int)
    base_p = f + 3 * buckets
    base_h = base_p + int(offsets[-1])
    indptr, indices, data = [0], [], []
    for i, s in enumerate(table.session_of_candidate()):
        row = int(table.item_rows[i])
        q = set(tok.tokenize_one(table.queries[s]).tolist())
        t = set(tok.tokenize_one(titles[row]).tolist())
        cols = {j: float(numeric[i, j]) for j in range(f)}
        for base, ids in ((f, q), (f + buckets, t), (f + 2 * buckets, q & t)):
            cols.update({base + x % buckets: 1.0 for x in ids})
        if users is not None:
            for j, v in enumerate(users.profile[s][:len(vocab_sizes)]):
                if 0 <= v < vocab_sizes[j]:
                    cols[base_p + offsets[j] + int(v)] = 1.0
            history = [int(h) for h in users.history[s] if h >= 0]
            cols.update({base_h + h % buckets: 1.0 for h in history})
            if row in history:
                cols[base_h + buckets] = 1.0
        for j in sorted(cols):
            indices.append(j)
            data.append(cols[j])
        indptr.append(len(indices))
    return indptr, indices, data


@pytest.mark.parametrize("with_users", [True, False])
@pytest.mark.parametrize("buckets", [3, 16, 1 << 12])
def test_sparse_features_equal_a_per_candidate_reference(with_users, buckets):
    # Sessions sharing queries and items, a repeated title token, zeros among the numeric
    # values (kept as entries), profile ids out of range (-1, = vocab size), histories with
    # pads, repeats and the candidate itself; 3 buckets fold ids onto each other.
    table = sessions_lib.SessionTable.from_lists([
        {"query": "red shoe", "items": [0, 1, 3], "labels": [1, 0, 0]},
        {"query": "blue hat red", "items": [1, 2], "labels": [0, 1]},
        {"query": "", "items": [4], "labels": [1]},
        {"query": "red shoe", "items": [3, 0, 2, 4], "labels": [0, 0, 1, 0]}])
    titles = ["red shoe red", "blue hat", "hat of red shoe", "green shoe box", "box"]
    rng = np.random.default_rng(0)
    numeric = rng.normal(size=[10, NUM_FEATURES]).astype(np.float32)
    numeric[rng.random(numeric.shape) < 0.3] = 0.0
    users = user_lib.SessionUsers(
        profile=np.array([[2, 1], [-1, 4], [0, 0], [1, 3]]),
        history=np.array([[1, 3, -1], [-1, -1, -1], [4, 4, 9], [2, 0, 7]])) if with_users \
        else None
    vocab = (3, 4)
    got = sparse_lib.sparse_features(numeric, table, titles, M.default_tokenizer(), users,
                                     vocab_sizes=vocab, buckets=buckets)
    indptr, indices, data = _sparse_reference(numeric, table, titles, users, vocab, buckets)
    assert got.shape == (10, sparse_lib.num_columns(NUM_FEATURES, buckets, vocab))
    assert got.indptr.tolist() == indptr
    assert got.indices.tolist() == indices
    np.testing.assert_array_equal(got.data, np.asarray(data, np.float32))
    assert got.has_sorted_indices
