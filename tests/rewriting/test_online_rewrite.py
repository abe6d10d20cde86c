"""The rewriter's greedy cycle as graph ops (dpsr_tf/rewriting/online.py): unit encoding equal to
UnitVocab.encode, unit ids to text equal to units_to_text, and the decoded rewrites equal to
`dpsr rewrite --strategy=greedy --title_beam=1` (generate.Rewriter) on a trained tiny rewriter."""
import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf.rewriting import generate, online, units as units_lib

KEYS = list(units_lib.RESERVED) + ["w:drill", "c:手", "c:机", "w:apple", "w:18v", "c:米"]


def _run(build, feeds=None):
    graph = tf.Graph()
    with graph.as_default():
        out = build()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.tables_initializer())
            return session.run(out, feeds)


def test_in_graph_units_equal_unit_vocab_encode(tmp_path):
    vocab = units_lib.UnitVocab(KEYS)
    path = str(tmp_path / "units.txt")
    vocab.save(path)
    queries = ["Drill 手机", "apple zzz 米 drill 18V apple", "", "手机手机手机手机", "?? ..",
               "unknown words only"]
    got = _run(lambda: online.encode_units(tf.constant(queries), tf.constant(path), len(vocab),
                                           5))
    np.testing.assert_array_equal(got, vocab.encode(queries, 5))
    # Hand-worked: "apple zzz 米 drill 18V apple" -> apple, UNK, 米, drill (4 = max_len - 1), EOS.
    np.testing.assert_array_equal(got[1], [7, 3, 9, 4, 2])


def test_units_to_text_in_graph_equals_python(tmp_path):
    path = str(tmp_path / "units.txt")
    units_lib.UnitVocab(KEYS).save(path)
    rows = np.array([[4, 5, 6, 7, 2, 0],      # drill 手机 apple
                     [5, 9, 8, 6, 2, 0],      # 手米 18v 机: CJK glued only to CJK neighbours
                     [2, 0, 0, 0, 0, 0],      # empty
                     [3, 7, 3, 8, 4, 5]],     # UNK dropped, no EOS (length bound)
                    np.int32)

    def build():
        init = tf.lookup.TextFileInitializer(path, tf.int64,
                                             tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                                             tf.lookup.TextFileIndex.WHOLE_LINE)
        return online.units_text(tf.constant(rows), tf.lookup.StaticHashTable(init, ""))

    got = [t.decode() for t in _run(build)]
    vocab = units_lib.UnitVocab(KEYS)
    assert got == [vocab.decode(r) for r in rows]
    assert got == ["drill 手机 apple", "手米 18v 机", "", "apple 18v drill 手"]


@pytest.fixture(scope="module")
def rewriter_dir(tiny_rewriter):
    """The shared tiny rewriter's model dir (tests/rewriting/conftest.py)."""
    return tiny_rewriter["model_dir"]


def test_online_rewrites_equal_the_greedy_rewrite_table(rewriter_dir):
    queries = ["w17 w203", "brand1 cat0", "cat3 brand5", "w99", "ЖЖ 中文 nothing known",
               "brand1 brand2 brand3 brand4 brand5 brand6 brand7 brand8"]
    want = generate.Rewriter(rewriter_dir).rewrite(
        queries, generate.DecodeConfig(strategy="greedy", title_beam=1), log=None)
    rewriter = online.OnlineRewriter(rewriter_dir)
    graph = tf.Graph()
    with graph.as_default():
        query = tf.compat.v1.placeholder(tf.string, [None])
        text = rewriter.rewrite(query)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.tables_initializer())
            rewriter.restore(session)
            got = [t.decode() for t in session.run(text, {query: queries})]
            single = [session.run(text, {query: [q]})[0].decode() for q in queries[:2]]
            empty = session.run(text, {query: np.array([], object)})
    assert got == [r.rewrites[0].text if r.rewrites else "" for r in want]
    assert sum(bool(t) for t in got) >= 3, got  # the tiny model writes something
    assert single == got[:2]       # a row's rewrite does not depend on its batch
    assert empty.shape == (0,)


def test_restore_before_rewrite_and_missing_checkpoint_are_clear_errors(rewriter_dir,
                                                                        tmp_path):
    with pytest.raises(RuntimeError, match="before rewrite"):
        online.OnlineRewriter(rewriter_dir).restore(None)
    with pytest.raises(FileNotFoundError, match="train-rewriter"):
        online.OnlineRewriter(str(tmp_path))
