"""Stage `tokenization`: Dpsr>Tokenize turns the query into the model's word, n-gram and
character ids, with the layout's tokenizer configuration (a vocabulary-mode tokenizer reads its
vocabulary asset at run time). With the index build's speller vocabulary, Dpsr>SpellCorrect
first corrects the query words no catalog item uses (docs/spelling.md)."""
import dataclasses
import os

import tensorflow as tf

from dpsr_tf.export.stages.base import Stage, asset, run_time_path
from dpsr_tf.tokenization import spell_op, tokenize_op


@dataclasses.dataclass(frozen=True)
class TokenizationConfig:
    """Attributes:
      spelling: correct each query with the catalog speller when the index build has a speller
        vocabulary.
    """

    spelling: bool = True


class TokenizationStage(Stage):
    """ctx.searched -> ctx.features["query_tokens"]; sets ctx.tokenize for later stages."""

    NAME = "tokenization"
    Config = TokenizationConfig

    def __init__(self, vocab_file, speller_file):
        self._vocab_file = vocab_file
        self._speller_file = speller_file

    @classmethod
    def prepare(cls, source):
        vocab = source.layout_spec.tokenizer_config.vocab_file
        lexical = source.manifest.lexical
        speller = None
        if source.servable.spelling and lexical is not None and lexical.speller_file:
            speller = source.stage_file(os.path.join(source.index_dir, lexical.speller_file),
                                        "speller_vocab.txt")
        return cls(source.stage_file(vocab, "tokenizer_vocab.txt") if vocab else None, speller)

    def build(self, ctx) -> None:
        if self._speller_file:
            speller = run_time_path(asset(self._speller_file), "speller_vocab_path")
            with tf.name_scope("spelling"):
                ctx.searched, _ = spell_op.spell_correct(ctx.searched, speller)
        config = dataclasses.replace(ctx.layout_spec.tokenizer_config, vocab_file=None)
        vocab = (run_time_path(asset(self._vocab_file), "tokenizer_vocab_path")
                 if self._vocab_file else None)
        ctx.tokenize = lambda texts: tokenize_op.tokenize(texts, config, vocab_file=vocab)
        ctx.features["query_tokens"] = ctx.tokenize(ctx.searched)
