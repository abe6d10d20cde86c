"""BM25-u&b (the paper's BM25 over words and adjacent word pairs) against a NumPy BM25 written
from the formula (Lucene's idf and length normalisation, bm25s' defaults k1 = 1.5, b = 0.75)."""
import numpy as np
import pytest

from dpsr_tf.evaluation import evaluate as evaluate_lib


def test_with_bigrams_by_hand():
    assert evaluate_lib.with_bigrams(["red", "shoe", "box"]) == [
        "red", "shoe", "box", "red_shoe", "shoe_box"]
    assert evaluate_lib.with_bigrams(["one"]) == ["one"]
    assert evaluate_lib.with_bigrams([]) == []


def _numpy_bm25(docs, query, k1=1.5, b=0.75):
    n = len(docs)
    avg = np.mean([len(d) for d in docs])
    out = np.zeros(n)
    for term in set(query):
        df = sum(term in d for d in docs)
        if df == 0:
            continue
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avg))
    return out


@pytest.mark.parametrize("bigrams", [False, True])
def test_scores_equal_the_formula(monkeypatch, bigrams):
    titles = ["red running shoe", "shoe rack red", "blue running shoe box", "garden hose"]
    monkeypatch.setattr(evaluate_lib.layout_lib, "load_queries", lambda spec: [])
    monkeypatch.setattr(evaluate_lib.item_text, "item_documents", lambda spec, fields: titles)

    class _EvalSet:
        queries = ["red running shoe"]

    scorer = evaluate_lib.BM25Scorer(None, _EvalSet(),
                                     {"query_row": np.zeros([0], np.int64)}, bigrams=bigrams)
    words = [t.split() for t in titles]
    docs = [evaluate_lib.with_bigrams(w) if bigrams else w for w in words]
    query = "red running shoe".split()
    want = _numpy_bm25(docs, evaluate_lib.with_bigrams(query) if bigrams else query)
    got = scorer.score_requests(np.array([0]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Only the pairs tell "red running shoe" from "shoe rack red" beyond their lengths.
    ratio = got[0] / got[1]
    assert (ratio > 2.0) == bigrams
