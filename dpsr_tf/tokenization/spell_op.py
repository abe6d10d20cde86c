"""The Dpsr>SpellCorrect TensorFlow op: the catalog speller (speller.py) inside a servable."""
import tensorflow as tf

from dpsr_tf import op_library
from dpsr_tf.tokenization.speller import SpellerConfig


def spell_correct(queries: tf.Tensor, vocabulary_file: tf.Tensor,
                  config: SpellerConfig = SpellerConfig()):
    """([batch] corrected queries, [batch] bool whether each changed) in-graph.

    Args:
      queries: [batch] tf.string.
      vocabulary_file: scalar tf.string path of the speller vocabulary (a SavedModel asset's
        path, so it moves with the directory); loaded once per path by the kernel.
    """
    return op_library.load().dpsr_spell_correct(queries=queries,
                                                vocabulary_file=vocabulary_file,
                                                **config.op_attrs())
