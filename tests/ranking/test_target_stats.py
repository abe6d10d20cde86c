"""Ordered item statistics of the TRAIN rows (dpsr_tf/ranking/target_stats.py): the counts
and label sums a row sees are those of the sessions before its own (brute force over the
sessions), and, unlike leave-one-out statistics, they do not give a row's own label away to a
model that knows the item."""
import numpy as np

from dpsr_tf.ranking import features as F
from dpsr_tf.ranking import metrics
from dpsr_tf.ranking import sessions
from dpsr_tf.ranking import target_stats
from dpsr_tf.ranking import train as ranker_train


def _table(rng, num_sessions, num_items, with_times):
    out = []
    for s in range(num_sessions):
        items = rng.choice(num_items, size=int(rng.integers(2, 5)), replace=False)
        out.append({"query": f"q{s % 7}", "items": items.tolist(),
                    "labels": rng.integers(0, 3, size=len(items)).astype(float).tolist(),
                    "timestamp": float(rng.integers(0, 5)) if with_times else 0.0})
    return sessions.SessionTable.from_lists(out)


def test_session_order_sorts_by_time_and_shuffles_ties():
    table = _table(np.random.default_rng(0), 60, 9, with_times=True)
    pos = target_stats.session_order(table, seed=3)
    assert sorted(pos.tolist()) == list(range(60))
    t = table.timestamps
    for a in range(60):
        for b in range(60):
            if t[a] < t[b]:
                assert pos[a] < pos[b]
    ties = np.flatnonzero(t == t[0])
    assert (np.diff(pos[ties]) < 0).any()           # shuffled, not file order
    assert np.array_equal(pos, target_stats.session_order(table, seed=3))


def test_later_contributions_match_brute_force():
    rng = np.random.default_rng(1)
    table = _table(rng, 80, 12, with_times=True)
    counted = rng.random(table.num_candidates) < 0.8
    own_n, own_l = target_stats.later_contributions(table, counted, seed=5)
    pos = target_stats.session_order(table, seed=5)
    sess = table.session_of_candidate()
    for c in range(table.num_candidates):
        same = (table.item_rows == table.item_rows[c]) & counted & (pos[sess] >= pos[sess[c]])
        assert own_n[c] == same.sum()
        assert own_l[c] == table.labels[same].sum()


def test_train_rows_do_not_see_their_own_label():
    # One item shown in 60 sessions with random labels: whatever its full statistics are, a
    # leave-one-out mean is lower exactly when the row's own label is higher (a model that
    # knows the item reads the label back, session AUC 1); the ordered mean of the rows before
    # it carries no trace of the row's label. Worked by hand for the first rows: the first
    # session in the order sees no impression (log 1 = 0, mean = the prior, the global mean).
    rng = np.random.default_rng(2)
    num = 60
    table = sessions.SessionTable.from_lists([
        {"query": "drill", "items": [0, 1 + s % 3], "labels": [float(rng.integers(0, 3)), 0.0]}
        for s in range(num)])
    titles = ["cordless drill", "drill bit", "hammer", "saw"]
    emb = rng.normal(size=(4, 4)).astype(np.float32)
    tables = F.build_feature_tables(titles, table.item_rows, table.labels, emb)
    heads = rng.normal(size=(num, 1, 4)).astype(np.float32)
    extractor = F.FeatureExtractor(tables, num_heads=1)
    try:
        ordered = extractor.run(table, heads, leave_own_out=False, log=None,
                                own_stats=ranker_train.train_own_stats(table))
        loo = extractor.run(table, heads, leave_own_out=True, log=None)
    finally:
        extractor.close()
    mean = F.FEATURE_NAMES.index("item_mean_label")
    count = F.FEATURE_NAMES.index("item_log_impressions")
    rows = np.flatnonzero(table.item_rows == 0)
    labels = table.labels[rows]
    one = np.array([0, len(rows)])
    leak = metrics.session_metrics(-loo[rows, mean], labels, one)["session_auc"]
    assert leak == 1.0                                         # the label, read back
    auc = metrics.session_metrics(-ordered[rows, mean], labels, one)["session_auc"]
    assert 0.3 < auc < 0.7, auc
    # Against the prefix of the order, by hand: mean = (sum of earlier labels + 5 g) /
    # (earlier impressions + 5), g the global mean label.
    pos = target_stats.session_order(table, seed=0)
    g, p = tables.global_mean_label, tables.prior_weight
    for k, c in enumerate(rows):
        earlier = [rows[j] for j in range(len(rows)) if pos[j] < pos[k]]
        want = (table.labels[earlier].sum() + p * g) / (len(earlier) + p)
        assert abs(ordered[c, mean] - want) < 1e-5
        assert abs(ordered[c, count] - np.log1p(len(earlier))) < 1e-5
