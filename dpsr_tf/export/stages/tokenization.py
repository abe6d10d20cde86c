"""Stage `tokenization`: Dpsr>Tokenize turns the (corrected) query into the model's word,
n-gram and character ids, with the layout's tokenizer configuration (a vocabulary-mode
tokenizer reads its vocabulary asset at run time)."""
import dataclasses

from dpsr_tf.export.stages.base import Stage, asset, run_time_path
from dpsr_tf.tokenization import tokenize_op


class TokenizationStage(Stage):
    """ctx.searched -> ctx.features["query_tokens"]; sets ctx.tokenize for later stages."""

    NAME = "tokenization"

    def __init__(self, vocab_file):
        self._vocab_file = vocab_file

    @classmethod
    def prepare(cls, source):
        vocab = source.layout_spec.tokenizer_config.vocab_file
        return cls(source.stage_file(vocab, "tokenizer_vocab.txt") if vocab else None)

    def build(self, ctx) -> None:
        config = dataclasses.replace(ctx.layout_spec.tokenizer_config, vocab_file=None)
        vocab = (run_time_path(asset(self._vocab_file), "tokenizer_vocab_path")
                 if self._vocab_file else None)
        ctx.tokenize = lambda texts: tokenize_op.tokenize(texts, config, vocab_file=vocab)
        ctx.features["query_tokens"] = ctx.tokenize(ctx.searched)
        ctx.features["query"] = ctx.searched   # towers with a pretrained encoder read the text
