"""The tokenizer's options and their defaults are the same in the three places that state them:
the Python TokenizerConfig (what every caller passes), the C++ core's TokenizerConfig (read through
the pybind11 module) and the Dpsr>Tokenize op's attrs (what a stripped SavedModel falls back to)."""
import dataclasses

from tensorflow.python.framework import op_def_registry

from dpsr_tf import _tokenizer, op_library
from dpsr_tf.tokenization.config import TokenizerConfig


def _python_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(TokenizerConfig)
            if f.name != "vocab_file"}


def test_core_defaults_equal_the_python_config():
    assert _tokenizer.default_config() == _python_defaults()


def test_op_attr_defaults_equal_the_python_config():
    op_library.load()
    op_def = op_def_registry.get("Dpsr>Tokenize")
    attrs = {a.name: (a.default_value.b if a.type == "bool" else a.default_value.i)
             for a in op_def.attr}
    assert attrs == _python_defaults()
    # Every option reaches the op (vocab_file is its second input, not an attr).
    assert set(TokenizerConfig().op_attrs()) == set(attrs)
    assert [a.name for a in op_def.input_arg] == ["texts", "vocab_file"]


def test_the_pybind_constructor_takes_every_option_by_name():
    doc = _tokenizer.Tokenizer.__init__.__doc__
    for name in [f.name for f in dataclasses.fields(TokenizerConfig)]:
        assert f"{name}: " in doc, (name, doc)
