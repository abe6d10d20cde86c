"""Rewrites decoded from the DPSR model's titles (`dpsr rewrite --title_source=dense`): the
exact top items against brute force and the served FAISS path, the forward model's choice
among given titles against teacher forcing by hand, the cycle filter against a numpy BM25,
and the CLI end to end on the tiny model and its index build."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support.tiny_rewriter import lexical_index_build
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.rewriting import generate, table, title_candidates
from dpsr_tf.rewriting.title_candidates import DenseTitleSource, top_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_top_rows_hand_worked_with_ties():
    # 2 heads; item scores (max over heads): [1, 3, 3, 0, 2].
    heads = np.array([[[1, 0], [0, 1]]], np.float32)
    items = np.array([[1, 0], [3, 0], [0, 3], [0, 0], [2, 2]], np.float32)
    np.testing.assert_array_equal(top_rows(heads, items, 3), [[1, 2, 4]])  # 3, 3 by row, 2
    # One head; scores [2, 0, 2, 2, 1]: three 2s tie across the cut, lower rows first.
    heads = np.array([[[1, 0]]], np.float32)
    items = np.array([[2, 0], [0, 0], [2, 0], [2, 0], [1, 0]], np.float32)
    np.testing.assert_array_equal(top_rows(heads, items, 2), [[0, 2]])
    np.testing.assert_array_equal(top_rows(heads, items, 4), [[0, 2, 3, 4]])
    np.testing.assert_array_equal(top_rows(heads, items, 9), [[0, 2, 3, 4, 1]])


@pytest.mark.parametrize("seed", [0, 1])
def test_top_rows_equals_a_full_sort(seed):
    rng = np.random.default_rng(seed)
    # Small integers: every dot product is exact in float32, whatever the summation order,
    # so ties are exact ties in both computations (and many).
    heads = rng.integers(-3, 4, [37, 3, 8]).astype(np.float32)
    items = rng.integers(-3, 4, [500, 8]).astype(np.float32)
    items[100:110] = items[5]
    scores = np.einsum("qmd,nd->qnm", heads, items).max(axis=2)
    want = np.stack([np.lexsort((np.arange(500), -s))[:20] for s in scores])
    np.testing.assert_array_equal(top_rows(heads, items, 20, batch_size=8), want)


def test_dense_titles_are_the_served_flat_index_top_items(tiny_history_model, tiny_flat_index):
    from dpsr_tf.evaluation import served as served_lib
    spec = tiny_history_model.spec
    source = DenseTitleSource(tiny_history_model.model_dir, tiny_flat_index)
    queries = layout_lib.load_queries(spec)[:12]
    heads = source.query_heads(queries)
    index = served_lib.open_served_index(tiny_flat_index, layout_lib.load_item_ids(spec),
                                         tiny_history_model.model_config.embedding_dim)
    want_scores, want_rows = served_lib.search_served(index, heads, 5)
    rows = top_rows(heads, source.items, 5)
    scores = np.einsum("qmd,qkd->qkm", heads, source.items[rows]).max(axis=2)
    # The served FAISS search (its own tie order) and the exact ranking agree score by score.
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    distinct = [i for i in range(len(queries)) if len(set(want_scores[i].round(5))) == 5]
    assert distinct and (rows[distinct] == want_rows[distinct]).all()
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    assert source.top_titles(queries, 5) == [[titles[r] for r in row] for row in rows]
    with pytest.raises(ValueError, match="must be >= 1"):
        source.top_titles(queries, 0)


@pytest.fixture(scope="module")
def rewriter_dir(tiny_rewriter):
    """The shared tiny rewriter's model dir (tests/rewriting/conftest.py)."""
    return tiny_rewriter["model_dir"]


def _teacher_forced_score(rewriter, query, title):
    """Mean log-probability of title's units and EOS, one forward step at a time."""
    cfg, vocab = rewriter.config, rewriter.vocab
    src = vocab.encode([query], cfg.query_len)
    ids = vocab.encode([title], cfg.title_len)[0]
    units = [int(u) for u in ids if u != 0]
    step = rewriter._step_fn("forward", src)
    prefix, total = [1], 0.0
    for u in units:
        total += step(np.array([0]), np.array([prefix], np.int32))[0, u]
        prefix.append(u)
    return total / len(units)


def test_the_forward_model_keeps_its_most_probable_given_title(rewriter_dir):
    rewriter = generate.Rewriter(rewriter_dir)
    queries = ["w17 w203", "brand1 cat0", "w5"]
    candidates = [["w17 w203 brand1", "cat0 w9", "w203"], ["brand1 cat0 w1", "w17"], []]
    got = rewriter.rewrite(queries, generate.DecodeConfig(strategy="greedy"), log=None,
                           titles=candidates)
    for query, titles, row in zip(queries, candidates, got):
        if not titles:
            assert row.title == "" and row.rewrites == ()
            continue
        scores = [_teacher_forced_score(rewriter, query, t) for t in titles]
        assert row.title == titles[int(np.argmax(scores))]
        assert len(set(np.round(scores, 4))) == len(scores)    # the choice is not a tie
        # The rewrite is the backward model's greedy decoding of that title.
        alone = rewriter.rewrite([query], generate.DecodeConfig(strategy="greedy"), log=None,
                                 titles=[[row.title]])[0]
        # Same text; the score agrees to float32 rounding (a batch of 1 and of 3 multiply in
        # different blockings, so the last bits may differ).
        assert [r.text for r in alone.rewrites] == [r.text for r in row.rewrites]
        assert len(row.rewrites) == 1
        assert alone.rewrites[0].score == pytest.approx(row.rewrites[0].score, rel=1e-6)
    with pytest.raises(ValueError, match="2 title lists for 3 queries"):
        rewriter.rewrite(queries, titles=candidates[:2], log=None)


def test_cycle_filter_against_numpy_bm25(tmp_path):
    """A rewrite is kept when its BM25 top k holds an item with the title's text."""
    from tests.indexing.test_lexical_index import corpus, numpy_bm25
    from dpsr_tf.indexing.lexical_manifest import LexicalConfig
    from dpsr_tf.rewriting.lexical_filter import lexical_cycle_fn
    from dpsr_tf.tokenization.tokenizer import Tokenizer
    titles = corpus(150, seed=5)
    ids = [f"item{i}" for i in range(len(titles))]
    directory = lexical_index_build(str(tmp_path / "index"), ids, titles)
    items_of_title = {}
    for item_id, title in zip(ids, titles):      # by hand: the reference
        items_of_title.setdefault(title, set()).add(item_id)
    assert title_candidates.items_of_title(ids, titles) == items_of_title
    title = titles[7]
    rewrites = [" ".join(title.split()[:2]), "w30 w31", title, "w1", "w39 w2"]
    tok = Tokenizer(LexicalConfig().tokenizer_config())
    values, splits = tok.tokenize(titles + rewrites)
    streams = [values[splits[i]:splits[i + 1]].tolist() for i in range(len(splits) - 1)]
    scores = numpy_bm25(streams[:len(titles)], streams[len(titles):])
    seen = set()
    for k in (1, 5, 40):
        want = []
        for row in scores:
            order = np.lexsort((np.arange(len(row)), -row))
            top = [int(r) for r in order[:k] if row[r] > 0]
            want.append(any(ids[r] in items_of_title[title] for r in top))
        got = lexical_cycle_fn(directory, k, items_of_title)(title, rewrites)
        np.testing.assert_array_equal(got, want)
        seen.update(want)
    assert seen == {True, False}                     # the filter tells rewrites apart
    # A title of no catalog item (a generated one) keeps nothing.
    assert not lexical_cycle_fn(directory, 40, items_of_title)("no such title", rewrites).any()


def test_filter_applies_the_cycle_to_the_row_title():
    row = generate.QueryRewrites("drill", "the title", tuple(
        generate.Rewrite(t, -0.1 * i) for i, t in enumerate(["saw", "driver", "bit"])))
    seen = []

    def finds(title, texts):
        seen.append((title, list(texts)))
        return np.array([t != "driver" for t in texts])
    got = generate.filter_rewrites([row], finds_title=finds)
    assert [r.text for r in got[0].rewrites] == ["saw", "bit"]
    assert seen == [("the title", ["saw", "driver", "bit"])]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "dpsr_tf.cli", "rewrite", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_rewrite_cli_with_dense_titles(rewriter_dir, tiny_history_model, tiny_flat_index,
                                       tmp_path):
    from dpsr_tf.rewriting.lexical_filter import lexical_cycle_fn
    spec = tiny_history_model.spec
    queries = layout_lib.load_queries(spec)[:10]
    qfile = tmp_path / "q.txt"
    qfile.write_text("\n".join(queries) + "\n")
    out = str(tmp_path / "t.tsv")
    common = [f"--rewriter_dir={rewriter_dir}", f"--queries={qfile}", f"--output={out}",
              f"--index_dir={tiny_flat_index}", "--strategy=beam", "--num_rewrites=4"]
    # --model_dir alone selects dense titles and the default cycle filter (top 100).
    dense = [f"--model_dir={tiny_history_model.model_dir}", "--num_titles=3"]
    proc = _cli(*common, *dense, "--max_rewrites=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("top 3 titles of 10 queries" in proc.stdout
            and "(--title_source=auto); cycle filter: lexical top 100" in proc.stdout)
    got = table.read_table(out)
    # The same rows through the API: titles from the source, the forward model's pick, the
    # filters; the table holds exactly the rewrites that find their title.
    source = DenseTitleSource(tiny_history_model.model_dir, tiny_flat_index)
    rows = generate.Rewriter(rewriter_dir).rewrite(
        queries, generate.DecodeConfig(strategy="beam", num_rewrites=4), log=None,
        titles=source.top_titles(queries, 3))
    finds = lexical_cycle_fn(tiny_flat_index, 100, source.items_of_title())
    decoded = 0
    for row in rows:
        want = [r.text for r in row.rewrites if not generate.same_units(r.text, row.query)]
        decoded += len(want)
        want = [t for t, ok in zip(want, finds(row.title, want)) if ok] if want else []
        assert [t for t, _ in got.get(table.normalize_query(row.query), [])] == want
    # Rewrites reached the filter (which ones it keeps depends on the tiny models' training;
    # test_cycle_filter_against_numpy_bm25 checks the filter itself).
    assert decoded > 0
    bad = [
        ((*common, "--title_source=dense", "--num_titles=3"), "needs --model_dir"),
        ((*common, "--cycle_k=5"), "--cycle_k is for --title_source=dense"),
        ((*common, dense[0], "--num_titles=0"), "--num_titles must be >= 1"),
        ((*common, "--title_source=generated", dense[0]),
         "--model_dir is for --title_source=dense"),
    ]
    for args, message in bad:
        proc = _cli(*args)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-1500:]
