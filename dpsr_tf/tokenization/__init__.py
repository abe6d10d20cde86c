"""The DPSR tokenizer from Python: one C++ core, used through pybind11 and as a TF op."""
from dpsr_tf.tokenization.config import TokenizerConfig
from dpsr_tf.tokenization.tokenizer import Tokenizer
from dpsr_tf.tokenization.vocab import build_vocabulary, count_features

__all__ = ["TokenizerConfig", "Tokenizer", "build_vocabulary", "count_features"]
