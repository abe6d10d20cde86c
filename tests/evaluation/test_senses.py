"""The sense benchmark's metrics on tiny hand-worked inputs."""
import math

import numpy as np
import pytest

from dpsr_tf.evaluation import senses

# Two senses: items 0, 1, 2 (sense 0) and 3, 4 (sense 1); items 5.. belong to neither.
QUERY = senses.PolysemousQuery("apple", ("phone|apple|*|*", "fruit|*|*|*"),
                               (np.array([0, 1, 2]), np.array([3, 4])))


def test_query_senses_by_hand():
    merged = np.array([0, 5, 3, 1, -1])
    per_head = np.array([[0, 1, 5, 3], [3, 4, 6, 7]])
    at2 = senses.query_senses(QUERY, merged, per_head, 2)
    # top 2 = {0, 5}: sense 0 has 1 of 3, sense 1 none.
    assert at2.recall == pytest.approx((1 / 3, 0.0))
    assert not at2.covered
    # head 0's top 2 {0, 1}: both sense 0 -> purity 1; head 1's {3, 4}: sense 1 -> 1.
    assert at2.head_purity == (1.0, 1.0) and at2.head_sense == (0, 1)
    at4 = senses.query_senses(QUERY, merged, per_head, 4)
    assert at4.recall == pytest.approx((2 / 3, 1 / 2)) and at4.covered
    # head 0's top 4 {0, 1, 5, 3}: 2 of sense 0, 1 of sense 1 -> 2/3.
    assert at4.head_purity[0] == pytest.approx(2 / 3) and at4.head_sense == (0, 1)
    nothing = senses.query_senses(QUERY, merged, np.array([[5, 6], [7, 8]]), 2)
    assert all(math.isnan(p) for p in nothing.head_purity) and nothing.head_sense == (-1, -1)


def test_evaluate_senses_and_summary():
    # 2-d items: sense 0 along x, sense 1 along y, item 5 between.
    items = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9], [0.5, 0.5]],
                     np.float32)
    split = np.array([[[1, 0], [0, 1]]], np.float32)    # one head per sense
    same = np.array([[[1, 0], [1, 0]]], np.float32)     # both heads on sense 0
    got = senses.summarize(senses.evaluate_senses([QUERY], split, items, ks=(2,)))
    # Plain merge of k = 2: head 0's 0 (1.0), head 1's 3 (1.0) -> both senses, 1 of each.
    assert got == pytest.approx({"sense_recall@2": (1 / 3 + 1 / 2) / 2, "covered@2": 1.0,
                                 "purity@2": 1.0, "distinct_head_senses@2": 2.0})
    got = senses.summarize(senses.evaluate_senses([QUERY], same, items, ks=(2,)))
    assert got["covered@2"] == 0.0 and got["distinct_head_senses@2"] == 1.0
    # A quota on heads that agree changes nothing: both heads own the same items.
    got = senses.summarize(senses.evaluate_senses([QUERY], same, items, ks=(2,), quota=0.5))
    assert got["covered@2"] == 0.0


def test_load_polysemous_queries(tmp_path):
    polysemy = {"apple": [{"intent": "smartphone|apple|*|*"}, {"intent": "apple_fruit|*|*|*"}]}
    (tmp_path / "items.tsv").write_text(
        "item_id\ttitle\tbrand\tcategory\tshop\tproduct_type\tcolor\tprice_tier\tgender\n"
        "a\tt\tapple\tphones\ts\tsmartphone\t\tmid\t\n"
        "b\tt\tsamsung\tphones\ts\tsmartphone\t\tmid\t\n"
        "c\tt\tfarm\tfruit\ts\tapple_fruit\t\tmid\t\n"
        "d\tt\tapple\tphones\ts\tsmartphone\t\tmid\t\n")
    (q,) = senses.load_polysemous_queries(str(tmp_path), ["d", "c", "b", "a"], polysemy)
    assert q.text == "apple"
    assert [r.tolist() for r in q.items] == [[0, 3], [1]]
    with pytest.raises(ValueError, match="missing"):
        senses.load_polysemous_queries(str(tmp_path), ["a", "zz"], polysemy)
    with pytest.raises(ValueError, match="type|brand"):
        senses.sense_items("smartphone|apple", ["smartphone"], ["apple"])


def test_split_by_training_keeps_order():
    queries = [senses.PolysemousQuery(t, ("a|*|*|*",), (np.array([0]),))
               for t in ("apple", "velor", "mouse", "zonix")]
    unseen, seen = senses.split_by_training(queries, ["zonix", "other", "velor", "velor"])
    assert [q.text for q in unseen] == ["velor", "zonix"]
    assert [q.text for q in seen] == ["apple", "mouse"]


@pytest.mark.parametrize("q,m,n,k", [(300, 2, 400, 10), (5, 3, 20, 20), (7, 1, 50, 49)])
def test_head_lists_match_a_full_sort_with_ties(q, m, n, k):
    rng = np.random.default_rng(q + m + n + k)
    heads = rng.normal(size=(q, m, 4)).astype(np.float32)
    items = rng.normal(size=(n, 4)).astype(np.float32)
    items[5] = items[9] = items[7]          # exact ties: the lower row first
    dots = np.einsum("qmd,nd->qmn", heads, items)
    order = np.argsort(-dots, axis=2, kind="stable")[:, :, :k]
    scores, rows = senses.head_lists(heads, items, k)
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(scores, np.take_along_axis(dots, order, axis=2))


@pytest.mark.parametrize("title,want", [
    ("Simpson Strong-Tie 12-Gauge Angle", "angle"),
    ("Toro Personal Pace Recycler 22 in. Variable Speed Self-Propelled Gas Lawn Mower with "
     "Briggs &amp; Stratton Engine", "mower"),
    ("Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome (Valve Not Included)", "kit"),
    ("Valley View Industries Metal Stakes (4-Pack)", "stake"),
    ("Hampton Bay Caramel Simple Weave Bamboo Rollup Shade - 96 in. W x 72 in. L", "shade"),
    ("Marshalltown Masonry Brush", "brush"),
    ("Pro Glass", "glass"),
    ("12 in. x 24 in.", ""),
])
def test_title_type(title, want):
    assert senses.title_type(title) == want


def test_multi_type_queries_by_hand():
    types = ["mower", "mower", "blade", "", "saw", "blade"]
    texts = ["mower", "saw blade", "mower", "saw", "blade"]
    splits = np.array([0, 3, 6, 9, 9, 10])
    rows = np.array([0, 1, 2,     # mower: types mower, mower, blade -> two types
                     4, 5, 3,     # saw blade: saw, blade (row 3 has no type)
                     0, 2, 3,     # "mower" again: a repeated text counts once
                     # "saw": no relevant item
                     2])          # blade: one type
    got = senses.multi_type_queries(texts, splits, rows, types)
    assert [q.text for q in got] == ["mower", "saw blade"]
    assert got[0].intents == ("blade", "mower")
    assert [r.tolist() for r in got[0].items] == [[2], [0, 1]]
    assert got[1].intents == ("blade", "saw")
    assert [r.tolist() for r in got[1].items] == [[5], [4]]
    assert [q.text for q in senses.multi_type_queries(texts, splits, rows, types,
                                                      min_types=3)] == []
