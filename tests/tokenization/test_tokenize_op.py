"""The Dpsr>Tokenize TF op: same ids as the pybind11 path, real shape function, clear errors."""
import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from dpsr_tf import op_library
from dpsr_tf.tokenization import Tokenizer, TokenizerConfig, build_vocabulary, tokenize_op

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Code point ranges the random strings draw from: every character class of the tokenizer.
_RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F),
           (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xFF00, 0xFFEF),
           (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0xE000, 0xF8FF)]


def random_texts(n, seed):
    """n random texts: mostly valid Unicode of every class, some raw random bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(0, 40))
        if rng.random() < 0.15:
            out.append(rng.integers(0, 256, size=length, dtype=np.uint8).tobytes())
            continue
        chars = []
        for _ in range(length):
            lo, hi = _RANGES[rng.integers(len(_RANGES))]
            chars.append(chr(int(rng.integers(lo, hi + 1))))
        out.append("".join(chars).encode("utf-8"))
    return out


@pytest.mark.parametrize("config", [
    TokenizerConfig(),
    TokenizerConfig(num_buckets=97, letter_trigrams=False, max_tokens=7),
    TokenizerConfig(word_unigrams=False, cjk_bigrams=False, max_word_chars=3,
                    max_input_bytes=20),
], ids=["default", "small", "odd"])
def test_op_equals_pybind_on_random_unicode(config):
    texts = random_texts(3000, seed=1234)
    ids, splits = Tokenizer(config).tokenize(texts)
    ragged = tokenize_op.tokenize(tf.constant(texts), config)
    np.testing.assert_array_equal(ragged.values.numpy(), ids)
    np.testing.assert_array_equal(ragged.row_splits.numpy(), splits)
    assert ids.size > 10_000  # the strings really produce features


def test_op_vocabulary_mode_equals_pybind(tmp_path):
    corpus = ["red apple", "red apple pie", "green apple", "苹果手机", "苹果"] * 3
    config = build_vocabulary(corpus, TokenizerConfig(), str(tmp_path / "v.txt"), min_count=2)
    texts = ["red apple tart", "苹果", "unknown words only", ""]
    ids, splits = Tokenizer(config).tokenize(texts)
    ragged = tokenize_op.tokenize(tf.constant(texts), config)
    np.testing.assert_array_equal(ragged.values.numpy(), ids)
    np.testing.assert_array_equal(ragged.row_splits.numpy(), splits)


def test_shape_function():
    def fn(x):
        return tokenize_op.tokenize(x)

    fixed = tf.function(fn).get_concrete_function(tf.TensorSpec([5], tf.string))
    assert fixed.structured_outputs.row_splits.shape.as_list() == [6]
    assert fixed.structured_outputs.values.shape.as_list() == [None]
    unknown = tf.function(fn).get_concrete_function(tf.TensorSpec([None], tf.string))
    assert unknown.structured_outputs.row_splits.shape.as_list() == [None]
    with pytest.raises(ValueError, match="must be rank 1"):
        tf.function(fn).get_concrete_function(tf.TensorSpec([2, 3], tf.string))
    with pytest.raises(ValueError, match="must be rank 0"):
        tf.function(lambda x: tokenize_op.tokenize(x, vocab_file=tf.constant(["a"]))
                    ).get_concrete_function(tf.TensorSpec([2], tf.string))


def test_the_kernel_names_an_input_of_the_wrong_rank():
    """Eager calls skip the shape function: the kernel itself refuses, naming the input."""
    raw = op_library.load().dpsr_tokenize
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Dpsr>Tokenize: texts must be a vector \[batch\], got shape \[1,1\]"):
        raw(texts=tf.constant([["a"]]), vocab_file=tf.constant(""))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Dpsr>Tokenize: vocab_file must be a scalar, got shape \[1\]"):
        raw(texts=tf.constant(["a"]), vocab_file=tf.constant([""]))


def test_missing_vocab_file_is_invalid_argument_naming_file():
    with pytest.raises(tf.errors.InvalidArgumentError, match="/no/such/vocab.txt"):
        tokenize_op.tokenize(tf.constant(["a"]), TokenizerConfig(vocab_file="/no/such/vocab.txt"))


@pytest.mark.parametrize("config,message", [
    (TokenizerConfig(num_buckets=0), "num_buckets must be >= 1, got 0"),
    (TokenizerConfig(max_tokens=0), "max_tokens must be >= 1, got 0"),
    (TokenizerConfig(max_word_chars=1 << 31), "max_word_chars must be a decimal int32"),
])
def test_bad_config_is_invalid_argument_naming_the_option(config, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Dpsr>Tokenize: .*" + message):
        tokenize_op.tokenize(tf.constant(["a"]), config)


def test_a_malformed_config_attr_is_invalid_argument():
    raw = op_library.load().dpsr_tokenize
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="Dpsr>Tokenize: tokenizer config: unknown option 'max_token'"):
        raw(texts=tf.constant(["a"]), vocab_file=tf.constant(""), config="max_token=3")


# Graphs exported before the `config` attr give the options as attrs (those at their defaults
# left out of a saved graph); they must tokenize as they did.
LEGACY_CASES = [
    ({}, TokenizerConfig()),
    ({"num_buckets": 97, "letter_trigrams": False, "max_tokens": 7},
     TokenizerConfig(num_buckets=97, letter_trigrams=False, max_tokens=7)),
    ({"word_unigrams": False, "cjk_bigrams": False, "max_word_chars": 3, "max_input_bytes": 20},
     TokenizerConfig(word_unigrams=False, cjk_bigrams=False, max_word_chars=3,
                     max_input_bytes=20)),
]


@pytest.mark.parametrize("attrs,config", LEGACY_CASES, ids=["defaults", "small", "odd"])
def test_the_legacy_attrs_still_tokenize_as_the_config(attrs, config):
    texts = random_texts(500, seed=99)
    ids, splits = Tokenizer(config).tokenize(texts)
    got_ids, got_splits = op_library.load().dpsr_tokenize(
        texts=tf.constant(texts), vocab_file=tf.constant(""), **attrs)
    np.testing.assert_array_equal(got_ids.numpy(), ids)
    np.testing.assert_array_equal(got_splits.numpy(), splits)


@pytest.mark.parametrize("attrs,config", LEGACY_CASES, ids=["defaults", "small", "odd"])
def test_an_imported_legacy_graph_def_tokenizes_as_the_config(attrs, config):
    """A GraphDef written by hand as an old export holds it: no `config` attr at all."""
    graph_def = tf.compat.v1.GraphDef()
    texts_node = graph_def.node.add(name="texts", op="Placeholder")
    texts_node.attr["dtype"].type = tf.string.as_datatype_enum
    vocab = graph_def.node.add(name="vocab", op="Const")
    vocab.attr["dtype"].type = tf.string.as_datatype_enum
    vocab.attr["value"].tensor.CopyFrom(tf.make_tensor_proto("", tf.string))
    node = graph_def.node.add(name="tokenize", op="Dpsr>Tokenize", input=["texts", "vocab"])
    for name, value in attrs.items():
        if isinstance(value, bool):
            node.attr[name].b = value
        else:
            node.attr[name].i = value
    op_library.load()
    texts = random_texts(300, seed=5)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            got_ids, got_splits = sess.run(["tokenize:0", "tokenize:1"], {"texts:0": texts})
    ids, splits = Tokenizer(config).tokenize(texts)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_splits, splits)


def test_config_and_a_non_default_legacy_attr_together_are_invalid_argument():
    raw = op_library.load().dpsr_tokenize
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Dpsr>Tokenize: options are given both in `config` .*num_buckets=97"):
        raw(texts=tf.constant(["a"]), vocab_file=tf.constant(""), config="max_tokens=3",
            num_buckets=97)
    # Legacy attrs left at their defaults are no conflict.
    ids, _ = raw(texts=tf.constant(["a b"]), vocab_file=tf.constant(""),
                 config="max_tokens=1", num_buckets=1 << 20)
    assert ids.numpy().size == 1


def test_concurrent_calls_agree():
    texts = random_texts(500, seed=7)
    fn = tf.function(lambda x: tokenize_op.tokenize(x).values)
    want = fn(tf.constant(texts)).numpy()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fn(tf.constant(texts)).numpy(), range(32)))
    for got in results:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("legacy_attrs", [False, True], ids=["config", "legacy_attrs"])
def test_saved_model_with_vocab_asset_moves_and_reloads_in_fresh_process(tmp_path, legacy_attrs):
    corpus = ["red apple", "red apple pie", "green apple"] * 2
    config = build_vocabulary(corpus, TokenizerConfig(letter_trigrams=False, max_tokens=5),
                              str(tmp_path / "v.txt"), min_count=2)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.vocab = tf.saved_model.Asset(config.vocab_file)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            if legacy_attrs:  # as servables exported before the `config` attr
                ids, splits = op_library.load().dpsr_tokenize(
                    texts=texts, vocab_file=self.vocab.asset_path, letter_trigrams=False,
                    max_tokens=5)
                return {"ids": ids, "row_splits": splits}
            r = tokenize_op.tokenize(texts, config, vocab_file=self.vocab.asset_path)
            return {"ids": r.values, "row_splits": r.row_splits}

    tf.saved_model.save(Model(), str(tmp_path / "a" / "model"))
    # A saved graph leaves out attrs at their defaults: the new form holds only `config`.
    assert _saved_tokenize_attrs(str(tmp_path / "a" / "model")) == (
        {"letter_trigrams", "max_tokens"} if legacy_attrs else {"config"})
    os.remove(config.vocab_file)  # the SavedModel must carry its own copy
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    texts = ["red apple tart", "green"]
    want = Tokenizer(dataclasses.replace(
        config, vocab_file=str(tmp_path / "b" / "model" / "assets" / "v.txt"))).tokenize(texts)
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        from dpsr_tf import op_library
        op_library.load()
        m = tf.saved_model.load({str(tmp_path / "b" / "model")!r})
        out = m({texts!r})
        print(json.dumps([out["ids"].numpy().tolist(), out["row_splits"].numpy().tolist()]))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, check=True)
    got_ids, got_splits = json.loads(result.stdout.strip().splitlines()[-1])
    assert got_ids == want[0].tolist() and got_splits == want[1].tolist()


def _saved_tokenize_attrs(export_dir: str) -> set:
    """The attrs (leading-underscore ones aside) of the one Dpsr>Tokenize node of a SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    nodes = [n for fn in graph.library.function for n in fn.node_def if n.op == "Dpsr>Tokenize"]
    assert len(nodes) == 1, nodes
    return {name for name in nodes[0].attr if not name.startswith("_")}
