"""The rewriter's held-out train queries (hash split, pairs partition, tuning EvalSet) and the
query-consistency filter (shared items of lexical top k), against hand-worked values and
brute force."""
import hashlib

import numpy as np

from tests.support.tiny_model import prepare_tiny_layout
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import rewrites as rewrites_lib
from dpsr_tf.rewriting import data as data_lib
from dpsr_tf.rewriting import generate
from dpsr_tf.rewriting.lexical_filter import shared_counts


def test_in_holdout_is_the_salted_md5_of_the_normalized_query():
    for query in ["cordless drill", "Cordless  DRILL ", "手机 case", "x"]:
        key = " ".join(query.lower().split())
        value = int(hashlib.md5(("dpsr-rewriter-holdout:" + key).encode()).hexdigest(), 16) % 100
        for percent in (1, 10, 50, 100):
            assert data_lib.in_holdout(query, percent) == (value < percent)
        assert not data_lib.in_holdout(query, 0)
    assert data_lib.in_holdout("Cordless  DRILL ", 10) == data_lib.in_holdout("cordless drill", 10)
    share = np.mean([data_lib.in_holdout(f"query {i}", 10) for i in range(5000)])
    assert 0.085 < share < 0.115


def test_holdout_partitions_pairs_and_builds_the_tuning_eval_set(tmp_path):
    spec = prepare_tiny_layout(str(tmp_path))
    every = data_lib.load_pairs(spec.layout_dir, "train")
    train = data_lib.load_pairs(spec.layout_dir, "train", holdout_percent=30)
    held = data_lib.load_pairs(spec.layout_dir, "train", holdout_percent=30, holdout=True)
    pairs = lambda p: list(zip(p.queries, p.titles))
    assert sorted(pairs(train) + pairs(held)) == sorted(pairs(every))
    assert train.queries and held.queries
    assert all(not data_lib.in_holdout(q, 30) for q in train.queries)
    assert all(data_lib.in_holdout(q, 30) for q in held.queries)
    # The tuning set: the train split's EvalSet restricted to held-out queries, request by
    # request equal to the full one.
    full = layout_lib.load_eval_set(spec, "train")
    sub = rewrites_lib.holdout_eval_set(spec, 30)
    want = [i for i, q in enumerate(full.queries) if data_lib.in_holdout(q, 30)]
    assert 0 < len(sub) == len(want) < len(full)
    assert sub.queries == [full.queries[i] for i in want]
    np.testing.assert_array_equal(sub.query_rows, full.query_rows[want])
    for j, i in enumerate(want):
        for a, b in zip(sub.relevant(j), full.relevant(i)):
            np.testing.assert_array_equal(a, b)


def test_shared_counts_hand_worked():
    own = np.array([5, 9, 2, -1])
    rewrites = np.array([[9, 5, 7, 1], [1, 2, 3, 4], [-1, -1, -1, -1], [2, 5, 9, -1]])
    np.testing.assert_array_equal(shared_counts(own, rewrites, 3), [2, 1, 0, 3])
    np.testing.assert_array_equal(shared_counts(own, rewrites, 2), [2, 0, 0, 1])


def test_filter_keeps_only_consistent_rewrites_in_order():
    row = generate.QueryRewrites("drill", "t", tuple(
        generate.Rewrite(t, s) for t, s in [("Drill", -0.1), ("saw", -0.2), ("driver", -0.3),
                                            ("bit", -0.4), ("nail", -0.5)]))
    counts = {"saw": 0, "driver": 3, "bit": 1, "nail": 2}
    calls = []

    def shared(query, texts):
        calls.append((query, list(texts)))
        return np.array([counts[t] for t in texts])
    out = generate.filter_rewrites([row], None, 0, shared, 2)
    assert [r.text for r in out[0].rewrites] == ["driver", "nail"]
    assert calls == [("drill", ["saw", "driver", "bit", "nail"])]   # "Drill": same units
    out = generate.filter_rewrites([row], None, 1, shared, 1)
    assert [r.text for r in out[0].rewrites] == ["driver"]
    out = generate.filter_rewrites([row], None, 0, shared, 0)        # off
    assert [r.text for r in out[0].rewrites] == ["saw", "driver", "bit", "nail"]
