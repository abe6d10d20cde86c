"""The rewriter's held-out train queries (hash split, pairs partition, tuning EvalSet) and the
query-consistency filter (shared items of lexical top k), against hand-worked values and
brute force."""
import hashlib

import numpy as np

from tests.support.tiny_model import prepare_tiny_layout
from dpsr_tf.data import eval_set as eval_set_lib
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
    full = eval_set_lib.load_eval_set(spec, "train")
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


def test_lexical_shared_fn_counts_against_numpy_bm25_top_k(tmp_path):
    """dpsr rewrite's consistency counts over a real index build equal the overlap of the
    query's and each rewrite's top k under a numpy BM25 (tests/indexing's reference)."""
    from tests.indexing.test_lexical_index import corpus, numpy_bm25
    from dpsr_tf.indexing.lexical_manifest import LexicalConfig
    from dpsr_tf.rewriting.lexical_filter import lexical_shared_fn
    from dpsr_tf.tokenization.tokenizer import Tokenizer
    from tests.support.tiny_rewriter import lexical_index_build
    titles = corpus(200, seed=3)
    ids = [f"item{i}" for i in range(len(titles))]
    directory = lexical_index_build(str(tmp_path / "index"), ids, titles)
    query, rewrites = "w1 w7 w12", ["w7 w12", "w30 w31", "w1 w7 w12 w2", "w39"]
    tok = Tokenizer(LexicalConfig().tokenizer_config())
    values, splits = tok.tokenize(titles + [query] + rewrites)
    streams = [values[splits[i]:splits[i + 1]].tolist() for i in range(len(splits) - 1)]
    scores = numpy_bm25(streams[:len(titles)], streams[len(titles):])
    for k in (5, 20):
        def top(row):
            order = np.lexsort((np.arange(len(row)), -row))
            return [int(r) for r in order[:k] if row[r] > 0]
        own = set(top(scores[0]))
        want = [len(own & set(top(s))) for s in scores[1:]]
        got = lexical_shared_fn(directory, k)(query, rewrites)
        np.testing.assert_array_equal(got, want)
    assert min(want) < max(want) and max(want) > 0      # the counts tell rewrites apart
