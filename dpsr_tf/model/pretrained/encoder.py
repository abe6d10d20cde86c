"""A pretrained sentence encoder in the graph: text [B] -> WordPiece -> BERT -> mean pooling
over the real tokens -> L2 normalisation, as sentence-transformers computes it.

    model = files.read_pretrained(files.default_pretrained_dir())
    encoder = SentenceEncoder(model)
    embeddings = encoder(texts)                 # [B, H] float32, unit rows
    encoder.initialize(session)                 # the checkpoint's weights into the variables
"""
import functools
import weakref
from typing import Optional

import tensorflow as tf

from dpsr_tf.model.pretrained import files
from dpsr_tf.model.pretrained.bert import SCOPE as BERT_SCOPE, BertEncoder, mean_pool
from dpsr_tf.model.pretrained.files import PretrainedModel
from dpsr_tf.tokenization.wordpiece import WordPieceTokenizer

# Part of every pretrained encoder variable's name (the optimizer gives them their own step).
SCOPE_PART = "pretrained_encoder/"
# graph -> the encoder its towers share (built once per graph; gone with the graph).
_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class SentenceEncoder:
    """The module docstring's pipeline; call it on a [B] string tensor.

    Args:
      model: a read pretrained directory (files.read_pretrained).
      trainable_layers: top encoder layers trained (-1 all, 0 frozen; BertEncoder).
      vocab_path: the vocabulary path to build the tokenizer from (default the model's own;
        a servable passes its asset copy).
      scope: the variables' scope (a servable's encoder list has its own beside a pretrained
        tower's).
      max_seq_length: tokens per text at most, below the model's own (None: the model's).
    """

    def __init__(self, model: PretrainedModel, trainable_layers: int = -1,
                 vocab_path: str = None, scope: str = BERT_SCOPE,
                 max_seq_length: Optional[int] = None):
        self.model = model
        self.tokenizer = WordPieceTokenizer(
            vocab_path or model.vocab_file, model.lower_case,
            min(model.max_seq_length, max_seq_length or model.max_seq_length))
        self.bert = BertEncoder(model.config, trainable_layers, scope)

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        # Each distinct text is encoded once (a batch repeats its queries, and an evaluation
        # batch's items and random negatives overlap on a small catalog); gather's gradient
        # sums the repeats' gradients, as encoding each copy would.
        distinct, index = tf.unique(texts)
        ids, mask = self.tokenizer(distinct)
        pooled = mean_pool(self.bert(ids, mask), mask)
        return tf.gather(tf.math.l2_normalize(pooled, axis=-1, epsilon=1e-12), index)

    def initialize(self, session) -> None:
        self.bert.initialize(session, self.model.loaded_weights())


@functools.lru_cache(maxsize=4)
def _read(directory: str) -> PretrainedModel:
    # Without the weights: towers whose variables a checkpoint restores need only the shapes;
    # a fresh training run's init_fn reads them (SentenceEncoder.initialize).
    return files.read_pretrained(directory or files.default_pretrained_dir(),
                                 with_weights=False)


def graph_encoder(pretrained_dir: str, trainable_layers: int) -> SentenceEncoder:
    """The SentenceEncoder of the current graph, built on first use: the query and the item
    tower (and every call of them) share its variables and its tokenizer."""
    graph = tf.compat.v1.get_default_graph()
    if graph not in _ENCODERS:
        _ENCODERS[graph] = SentenceEncoder(_read(pretrained_dir), trainable_layers)
    return _ENCODERS[graph]


def init_fn_of_graph() -> Optional[callable]:
    """A tf.compat.v1.train.Scaffold init_fn that fills the current graph's encoder with the
    pretrained weights (a training run's first session), or None without an encoder."""
    encoder = _ENCODERS.get(tf.compat.v1.get_default_graph())
    if encoder is None:
        return None
    encoder.bert.build_initializer()   # the Scaffold runs it after the graph is finalized
    return lambda scaffold, session: encoder.initialize(session)
