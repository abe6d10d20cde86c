"""Sessions, pairs and per-session metrics of the DPR ranker against hand-made and brute-force
references."""
import itertools
import os

import numpy as np
import pytest

from dpsr_tf.ranking import metrics, sessions


def _hand_session_table():
    # Session 0: items 10, 11, 12, 13 with labels 2, 0, 1, 0.
    # Session 1: items 20, 21 with equal labels (no pair).
    # Session 2: items 30, 31 with labels 0, 1.
    return sessions.SessionTable.from_lists([
        {"query": "red shoe", "items": [10, 11, 12, 13], "labels": [2, 0, 1, 0]},
        {"query": "blue hat", "items": [20, 21], "labels": [1, 1]},
        {"query": "drill", "items": [30, 31], "labels": [0, 1]},
    ])


def test_subset_keeps_the_masked_sessions_with_their_candidates():
    part = sessions.subset(_hand_session_table(), np.array([True, False, True]))
    assert part.queries == ["red shoe", "drill"]
    np.testing.assert_array_equal(part.splits, [0, 4, 6])
    np.testing.assert_array_equal(part.item_rows, [10, 11, 12, 13, 30, 31])
    np.testing.assert_array_equal(part.labels, [2, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(part.positions, [0, 1, 2, 3, 0, 1])


def test_pairs_of_a_hand_made_session_table():
    table = _hand_session_table()
    pairs = sessions.build_pairs(table, max_pairs_per_session=0, seed=3)
    # Session 0 candidates 0..3 labels (2, 0, 1, 0): pairs with different labels are
    # {0,1} {0,2} {0,3} {1,2} {2,3} ({1,3} both 0: left out); session 1 (4, 5) none; session 2 {6,7}.
    got = sorted((int(s), tuple(sorted((int(a), int(b))))) for s, a, b in
                 zip(pairs.session, pairs.a, pairs.b))
    assert got == [(0, (0, 1)), (0, (0, 2)), (0, (0, 3)), (0, (1, 2)), (0, (2, 3)), (2, (6, 7))]
    # label = 1 iff side a has the higher label, whatever the drawn side order.
    np.testing.assert_array_equal(pairs.label,
                                  (table.labels[pairs.a] > table.labels[pairs.b]).astype(np.float32))
    # Both orientations occur (seeded swap) and the result is reproducible.
    assert 0 < pairs.label.sum() < len(pairs)
    again = sessions.build_pairs(table, max_pairs_per_session=0, seed=3)
    np.testing.assert_array_equal(pairs.a, again.a)


@pytest.mark.parametrize("cap", [1, 2, 4])
def test_pairs_cap_per_session_is_a_seeded_subset(cap):
    table = _hand_session_table()
    full = sessions.build_pairs(table, 0, seed=0)
    capped = sessions.build_pairs(table, cap, seed=0)
    full_set = {(int(s), frozenset((int(a), int(b)))) for s, a, b in zip(full.session, full.a, full.b)}
    capped_list = [(int(s), frozenset((int(a), int(b)))) for s, a, b in
                   zip(capped.session, capped.a, capped.b)]
    assert set(capped_list) <= full_set and len(set(capped_list)) == len(capped_list)
    per = np.bincount(capped.session, minlength=3)
    assert list(per) == [min(cap, 5), 0, min(cap, 1)]


def _brute_auc(scores, labels):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(labels)), 2):
        if labels[i] > labels[j]:
            den += 1
            num += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return num / den if den else float("nan")


def test_session_auc_matches_brute_force():
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 12, size=60)
    splits = np.concatenate([[0], np.cumsum(lengths)])
    labels = rng.integers(0, 4, size=splits[-1]).astype(np.float32)
    scores = np.round(rng.normal(size=splits[-1]), 1)   # rounded: ties occur
    per = [_brute_auc(scores[a:b], labels[a:b]) for a, b in zip(splits[:-1], splits[1:])]
    want = np.nanmean(per)
    got = metrics.session_metrics(scores, labels, splits)
    assert got["session_auc"] == pytest.approx(want, abs=1e-12)
    assert got["sessions"] == int(np.sum(~np.isnan(per)))


def test_ndcg_hand_worked():
    # Scores order the items (labels) as 0, 2, 1: DCG@2 = 0/log2(2) + 2/log2(3);
    # ideal 2, 1: 2/1 + 1/log2(3).
    got = metrics.ndcg_one(np.array([3.0, 2.0, 1.0]), np.array([0.0, 2.0, 1.0]), 2)
    want = (2 / np.log2(3)) / (2 + 1 / np.log2(3))
    assert got == pytest.approx(want)
    assert metrics.ndcg_one(np.array([1.0, 2.0]), np.array([1.0, 1.0]), 5) != metrics.ndcg_one(
        np.array([1.0, 2.0]), np.array([1.0, 1.0]), 5)   # nan: one label only


def test_impressions_round_trip_and_errors(tmp_path):
    path = tmp_path / "impressions.tsv"
    path.write_text("session_id\tquery\titem_id\tlabel\tposition\n"
                    "s1\tred shoe\tB\t0\t1\n"
                    "s1\tred shoe\tA\t1\t0\n"
                    "s2\tdrill\tC\t2\t0\n"
                    "s1\tred shoe\tZ\t1\t2\n"      # unknown item: dropped
                    "s2\tdrill\tA\t0\t1\n", encoding="utf-8")
    table, counts = sessions.read_impressions(str(path), {"A": 0, "B": 1, "C": 2}, log=lambda *_: None)
    assert counts["unknown_items"] == 1
    assert table.queries == ["red shoe", "drill"]
    np.testing.assert_array_equal(table.item_rows, [0, 1, 2, 0])     # by position
    np.testing.assert_array_equal(table.labels, [1, 0, 2, 0])
    bad = tmp_path / "bad.tsv"
    bad.write_text("session_id\tquery\titem_id\tlabel\ns1\tq\tA\tx\n", encoding="utf-8")
    with pytest.raises(sessions.SessionsError, match=r"bad.tsv:2: column 'label' must be a number"):
        sessions.read_impressions(str(bad), {"A": 0}, log=lambda *_: None)
    two = tmp_path / "two.tsv"
    two.write_text("session_id\tquery\titem_id\tlabel\ns1\tq\tA\t1\ns1\tother\tA\t0\n",
                   encoding="utf-8")
    with pytest.raises(sessions.SessionsError, match=r"two.tsv:3: session 's1' has query 'other'"):
        sessions.read_impressions(str(two), {"A": 0}, log=lambda *_: None)
    nohdr = tmp_path / "nohdr.tsv"
    nohdr.write_text("session_id\tquery\titem_id\n", encoding="utf-8")
    with pytest.raises(sessions.SessionsError, match="lacks required column"):
        sessions.read_impressions(str(nohdr), {}, log=lambda *_: None)


def test_session_table_save_load(tmp_path):
    table = _hand_session_table()
    table.save(os.path.join(tmp_path, "t.npz"))
    back = sessions.SessionTable.load(os.path.join(tmp_path, "t.npz"))
    assert back.queries == table.queries
    np.testing.assert_array_equal(back.splits, table.splits)
    np.testing.assert_array_equal(back.labels, table.labels)


def test_per_session_values_average_to_session_metrics_and_paired_difference():
    rng = np.random.default_rng(1)
    splits = np.array([0, 3, 3 + 4, 7 + 2, 9 + 5])
    labels = rng.integers(0, 3, size=14).astype(np.float32)
    a, b = rng.normal(size=14), rng.normal(size=14)
    pa, pb = metrics.per_session(a, labels, splits), metrics.per_session(b, labels, splits)
    avg = metrics.session_metrics(a, labels, splits)
    assert pa["session_auc"].mean() == pytest.approx(avg["session_auc"])
    assert pa["ndcg@5"].mean() == pytest.approx(avg["ndcg@5"])
    diff = metrics.paired_difference(pa, pb)
    d = pa["session_auc"] - pb["session_auc"]
    assert diff["session_auc"][0] == pytest.approx(d.mean())
    assert diff["session_auc"][1] == pytest.approx(np.std(d, ddof=1) / np.sqrt(len(d)))


def test_retrieved_negatives_are_unshown_items_below_every_label():
    table = _hand_session_table()
    # Retrieval lists per session (-1 pads); shown items must not be added again.
    retrieved = np.array([[10, 99, 98, 11, 97], [20, 21, -1, -1, -1], [96, 30, 95, 94, -1]])
    out = sessions.add_retrieved_negatives(table, retrieved, per_session=2, label=-1.0, seed=0)
    items0, labels0 = out.candidates(0)
    assert list(items0[:4]) == [10, 11, 12, 13] and list(labels0[:4]) == [2, 0, 1, 0]
    assert set(items0[4:]) <= {99, 98, 97} and len(items0) == 6 and list(labels0[4:]) == [-1, -1]
    assert list(out.candidates(1)[0]) == [20, 21]                     # nothing unshown
    items2, labels2 = out.candidates(2)
    assert set(items2[2:]) <= {96, 95, 94} and len(items2) == 4 and labels2.min() == -1
