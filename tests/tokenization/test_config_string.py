"""The tokenizer's options travel as one string, written by Python's TokenizerConfig and read by
the C++ core: Python -> string -> C++ -> string is the identity, pinned to hand-written strings.
The op's attrs from before `config` keep defaults that mean the default config, so a graph
exported with them (attrs at their defaults are left out of a saved graph) tokenizes as before."""
import dataclasses

import pytest
from tensorflow.python.framework import op_def_registry

from dpsr_tf import _tokenizer, op_library
from dpsr_tf.tokenization import Tokenizer, TokenizerConfig

DEFAULT = ("cjk_bigrams=true,cjk_unigrams=true,letter_trigrams=true,max_input_bytes=16384,"
           "max_tokens=256,max_word_chars=32,num_buckets=1048576,num_oov_buckets=16384,"
           "word_bigrams=true,word_unigrams=true")


@pytest.mark.parametrize("config,want", [
    (TokenizerConfig(), DEFAULT),
    (TokenizerConfig(num_buckets=97, letter_trigrams=False, max_tokens=7),
     "cjk_bigrams=true,cjk_unigrams=true,letter_trigrams=false,max_input_bytes=16384,"
     "max_tokens=7,max_word_chars=32,num_buckets=97,num_oov_buckets=16384,"
     "word_bigrams=true,word_unigrams=true"),
    (TokenizerConfig(word_unigrams=False, word_bigrams=False, cjk_bigrams=False,
                     num_oov_buckets=3, max_input_bytes=20, max_word_chars=3,
                     num_buckets=1 << 33, vocab_file="/not/part/of/it.txt"),
     "cjk_bigrams=false,cjk_unigrams=true,letter_trigrams=true,max_input_bytes=20,"
     "max_tokens=256,max_word_chars=3,num_buckets=8589934592,num_oov_buckets=3,"
     "word_bigrams=false,word_unigrams=false"),
], ids=["default", "small", "odd"])
def test_python_string_core_string_round_trip(config, want):
    assert config.to_config_string() == want
    assert _tokenizer.canonical_config(want) == want


def test_every_option_is_in_the_string_once():
    """A field added to the dataclass and not to the core is an unknown option there."""
    names = [item.split("=")[0] for item in DEFAULT.split(",")]
    fields = sorted(f.name for f in dataclasses.fields(TokenizerConfig) if f.name != "vocab_file")
    assert names == fields


def test_the_core_defaults_are_the_python_defaults():
    assert _tokenizer.canonical_config("") == TokenizerConfig().to_config_string() == DEFAULT
    # Order-free, and an option left out keeps its default.
    assert _tokenizer.canonical_config("max_tokens=7,letter_trigrams=false,num_buckets=97") == \
        TokenizerConfig(num_buckets=97, letter_trigrams=False, max_tokens=7).to_config_string()


def test_the_legacy_op_attr_defaults_are_the_default_config():
    op_library.load()
    op_def = op_def_registry.get("Dpsr>Tokenize")
    attrs = {a.name: a for a in op_def.attr}
    assert attrs.pop("config").default_value.s == b""
    legacy = ",".join(
        f"{name}={str(a.default_value.b).lower() if a.type == 'bool' else a.default_value.i}"
        for name, a in sorted(attrs.items()))
    assert legacy == DEFAULT
    assert [a.name for a in op_def.input_arg] == ["texts", "vocab_file"]


@pytest.mark.parametrize("config,message", [
    (TokenizerConfig(num_buckets=0), "num_buckets must be >= 1, got 0"),
    (TokenizerConfig(max_tokens=1 << 31), "max_tokens must be a decimal int32, got '2147483648'"),
    (TokenizerConfig(max_tokens=2.5), "max_tokens must be a decimal int32, got '2.5'"),
    (TokenizerConfig(word_bigrams=1), "word_bigrams must be true or false, got '1'"),
    (TokenizerConfig(word_unigrams=False, word_bigrams=False, letter_trigrams=False,
                     cjk_unigrams=False, cjk_bigrams=False), "every feature kind is disabled"),
], ids=["zero", "int32", "float", "bool", "nothing"])
def test_a_bad_value_is_a_value_error_naming_it(config, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer(config)


@pytest.mark.parametrize("text,message", [
    ("num_bucket=5", "unknown option 'num_bucket'; the options are word_unigrams, "),
    ("max_tokens=5,max_tokens=6", "max_tokens is given twice"),
    ("max_tokens=5,", "expected name=value, got ''"),
    ("max_tokens", "expected name=value, got 'max_tokens'"),
    ("max_tokens = 5", "unknown option 'max_tokens '"),
])
def test_a_malformed_string_is_a_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        _tokenizer.canonical_config(text)
    with pytest.raises(ValueError, match=message):
        _tokenizer.Tokenizer(text, "")
