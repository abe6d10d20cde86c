"""Stage `spelling`: Dpsr>SpellCorrect corrects the query words no catalog item uses
("ceilikng fan" -> "ceiling fan"; dpsr_tf/tokenization/speller.py, docs/spelling.md) before the
query tower and BM25 see the query. Rewrite tables and SearchGCN's query graph still look the
query up as typed. Needs the index build's speller vocabulary."""
import dataclasses
import os

import tensorflow as tf

from dpsr_tf.export.stages.base import Stage, asset, run_time_path
from dpsr_tf.tokenization import spell_op


@dataclasses.dataclass(frozen=True)
class SpellingConfig:
    """Attributes:
      spelling: correct each query with the catalog speller when the index build has a speller
        vocabulary.
    """

    spelling: bool = True


class SpellingStage(Stage):
    """ctx.searched -> the same queries with unknown words corrected."""

    NAME = "spelling"
    Config = SpellingConfig
    # --spelling (auto/on/off) is chosen by `dpsr export` itself (cli/export.py).

    def __init__(self, vocab_file: str):
        self._vocab_file = vocab_file

    @classmethod
    def prepare(cls, source):
        lexical = source.manifest.lexical
        if not (source.servable.spelling and lexical is not None and lexical.speller_file):
            return None
        return cls(source.stage_file(os.path.join(source.index_dir, lexical.speller_file),
                                     "speller_vocab.txt"))

    def build(self, ctx) -> None:
        vocab = run_time_path(asset(self._vocab_file), "speller_vocab_path")
        with tf.name_scope("spelling"):
            ctx.searched, _ = spell_op.spell_correct(ctx.searched, vocab)
