"""The Dpsr>Tokenize TensorFlow op: the same C++ core inside training and serving graphs."""
from typing import Optional

import tensorflow as tf

from dpsr_tf import op_library
from dpsr_tf.tokenization.config import TokenizerConfig


def tokenize(texts: tf.Tensor, config: TokenizerConfig = TokenizerConfig(),
             vocab_file: Optional[tf.Tensor] = None) -> tf.RaggedTensor:
    """Tokenizes a batch of strings in-graph.

    Args:
      texts: [batch] tf.string.
      config: feature settings; must match the config used to prepare the training data.
      vocab_file: scalar tf.string path of the vocabulary (pass a tf.saved_model.Asset's
        path in a SavedModel so it moves with the directory). Defaults to config.vocab_file,
        or "" for hashing mode.

    Returns:
      tf.RaggedTensor int64 [batch, (num_features)].
    """
    if vocab_file is None:
        vocab_file = tf.constant(config.vocab_file or "", tf.string)
    ids, row_splits = op_library.load().dpsr_tokenize(
        texts=texts, vocab_file=vocab_file, config=config.to_config_string())
    return tf.RaggedTensor.from_row_splits(ids, row_splits, validate=False)
