"""The in-graph numeric features against independent references: BM25 against the project's
C++ lexical index (dpsr_tf._lexical, the scorer of `dpsr evaluate` and the servable), DPSR score
and rank against numpy brute force, item statistics against hand-worked leave-one-out counts."""
import numpy as np
import pytest

from dpsr_tf.ranking import features as F
from dpsr_tf.ranking import sessions
from dpsr_tf.tokenization.tokenizer import Tokenizer

TITLES = ["red running shoe", "blue running shoe size 10", "cordless drill 18v",
          "drill bit set", "red paint gallon", "shoe rack red red"]
QUERIES = ["red shoe", "drill", "red red paint"]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(TITLES), 4)).astype(np.float32)
    heads = rng.normal(size=(len(QUERIES), 2, 4)).astype(np.float32)
    table = sessions.SessionTable.from_lists([
        {"query": QUERIES[0], "items": [0, 1, 5], "labels": [2, 1, 0]},
        {"query": QUERIES[1], "items": [2, 3], "labels": [1, 0]},
        {"query": QUERIES[2], "items": [4, 0, 5, 1], "labels": [2, 0, 0, 1]},
    ])
    tables = F.build_feature_tables(TITLES, table.item_rows, table.labels, emb, prior_weight=2.0)
    extractor = F.FeatureExtractor(tables, num_heads=2)
    yield table, tables, emb, heads, extractor
    extractor.close()


def _col(name):
    return F.FEATURE_NAMES.index(name)


def test_bm25_and_overlap_match_the_cpp_lexical_index(setup, tmp_path):
    from dpsr_tf import _lexical
    table, tables, _, heads, extractor = setup
    feats = extractor.run(table, heads, leave_own_out=False, log=None)
    tok = Tokenizer(tables.lexical_config.tokenizer_config())
    d_values, d_splits = tok.tokenize(TITLES)
    stats = _lexical.CorpusStats.compute(d_values, d_splits)
    path = str(tmp_path / "lexical.idx")
    _lexical.write_index(path, d_values, d_splits, stats, tables.k1, tables.b)
    q_values, q_splits = tok.tokenize(table.queries)
    want_all = _lexical.LexicalIndex(path).score_all(q_values, q_splits)   # [S, N]
    want = want_all[table.session_of_candidate(), table.item_rows]
    np.testing.assert_allclose(feats[:, _col("bm25")], want, rtol=1e-5, atol=1e-6)
    assert (want > 0).sum() >= 5          # the check covers real matches
    # Overlap: the fraction of the query's terms (occurrences) found in the title.
    for c, (s, row) in enumerate(zip(table.session_of_candidate(), table.item_rows)):
        q = list(q_values[q_splits[s]:q_splits[s + 1]])
        d = set(d_values[d_splits[row]:d_splits[row + 1]])
        assert feats[c, _col("lexical_overlap")] == pytest.approx(sum(t in d for t in q) / len(q))
        assert feats[c, _col("query_terms")] == len(q)
        assert feats[c, _col("title_terms")] == d_splits[row + 1] - d_splits[row]


def test_dpsr_score_and_rank_match_numpy(setup):
    table, _, emb, heads, extractor = setup
    feats = extractor.run(table, heads, leave_own_out=False, log=None)
    all_scores = np.einsum("smd,nd->snm", heads, emb).max(axis=2)          # [S, N]
    s_of = table.session_of_candidate()
    score = all_scores[s_of, table.item_rows]
    rank = 1 + (all_scores[s_of] > score[:, None]).sum(axis=1)
    np.testing.assert_allclose(feats[:, _col("dpsr_score")], score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[:, _col("dpsr_log_rank")], np.log(rank), atol=1e-6)


def test_item_statistics_leave_one_session_out(setup):
    table, tables, _, heads, extractor = setup
    # Train impressions: item 0 twice (labels 2, 0), item 1 twice (1, 1), item 5 twice (0, 0),
    # items 2, 3, 4 once (1, 0, 2). Global mean label = (2+1+0+1+0+2+0+0+1) / 9 = 7/9.
    g = 7 / 9
    np.testing.assert_array_equal(tables.item_impressions, [2, 2, 1, 1, 1, 2])
    assert tables.global_mean_label == pytest.approx(g)
    full = extractor.run(table, heads, leave_own_out=False, log=None)
    loo = extractor.run(table, heads, leave_own_out=True, log=None)
    # Candidate 0 = item 0 in session 0 with label 2: full mean (2 + 0 + 2g) / (2 + 2);
    # leaving its own impression out: (0 + 2g) / (1 + 2), impressions log(1 + 1).
    assert full[0, _col("item_mean_label")] == pytest.approx((2 + 0 + 2 * g) / 4)
    assert loo[0, _col("item_mean_label")] == pytest.approx((0 + 2 * g) / 3)
    assert full[0, _col("item_log_impressions")] == pytest.approx(np.log(3))
    assert loo[0, _col("item_log_impressions")] == pytest.approx(np.log(2))
    # Candidate 3 = item 2 (seen once, label 1): leave-one-out leaves only the prior.
    assert loo[3, _col("item_mean_label")] == pytest.approx(g)
    assert loo[3, _col("item_log_impressions")] == 0.0
