"""The spelled view of a layout: the queries corrected and re-tokenized, everything else the
layout's own files; gone after the evaluation."""
import os

import numpy as np

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation.spelled_layout import spelled_layout
from dpsr_tf.tokenization.speller import Speller, word_counts
from dpsr_tf.tokenization.tokenizer import Tokenizer
from tests.support.tiny_model import prepare_tiny_layout


def test_the_view_holds_corrected_queries_and_links_everything_else(tmp_path):
    spec = prepare_tiny_layout(str(tmp_path))
    texts = layout_lib.load_queries(spec)
    # The tiny queries' words are "w<number>": with "w" and the numbers as words, the speller
    # splits each at its digits ("w23" -> "w 23"), a correction of every query.
    speller = Speller({"w": 1, **{str(n): 1 for n in range(1000)}})
    want = speller.correct(texts)
    assert want[0] == " ".join(f"w {w[1:]}" for w in texts[0].split())
    assert any(a == b for a, b in zip(texts, want))   # "cat3 brand5": "cat", "brand" unknown
    logged = []
    with spelled_layout(spec.layout_dir, speller=speller, log=logged.append) as view:
        assert view is not None and view != spec.layout_dir
        seen = layout_lib.load_layout_spec(view)
        assert layout_lib.load_queries(seen) == want
        ids, splits = layout_lib.load_query_tokens(seen)
        want_ids, want_splits = Tokenizer(spec.tokenizer_config).tokenize(want)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(splits, want_splits)
        # Records, items and the query's other tables are the layout's own files.
        for rel in (layout_lib.LAYOUT_JSON, layout_lib.ITEM_TITLES, layout_lib.QUERY_HUMAN_NEGATIVE_ITEMS):
            path = os.path.join(view, rel)
            assert os.path.islink(path) or os.path.islink(os.path.dirname(path)), rel
            assert os.path.realpath(path) == os.path.realpath(os.path.join(spec.layout_dir, rel))
        for rel in (layout_lib.QUERY_TEXTS, layout_lib.QUERY_TOKEN_IDS):
            assert not os.path.islink(os.path.join(view, rel))
        a = eval_set_lib.load_eval_set(spec)
        b = eval_set_lib.load_eval_set(seen)
        np.testing.assert_array_equal(a.query_rows, b.query_rows)
        np.testing.assert_array_equal(a.relevant_rows, b.relevant_rows)
    assert not os.path.exists(view)
    assert logged and "corrected by the catalog speller" in logged[0]
    # The layout itself is untouched.
    assert layout_lib.load_queries(spec) == texts


def test_no_speller_no_view(tmp_path):
    spec = prepare_tiny_layout(str(tmp_path))
    with spelled_layout(spec.layout_dir) as view:
        assert view is None


def test_word_counts_of_the_tiny_catalog_are_document_counts(tmp_path):
    spec = prepare_tiny_layout(str(tmp_path))
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    counts = word_counts(titles)
    for word in ("cat0", "brand1"):
        assert counts[word] == sum(word in t.lower().split() for t in titles)
