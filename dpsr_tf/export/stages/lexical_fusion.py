"""Stage `lexical_fusion` (hybrid servables: the index build has a lexical section and
LexicalFusionConfig.hybrid): the query, tokenized with the lexical index's tokenizer
configuration, searched in the shard's BM25 index (Dpsr>LexicalSearch, the same labels as FAISS;
with the rewrites stage, merged with its rewrites' lists), and that list fused with the dense
one by label (dpsr_tf/search/fusion.py).

The served list gains source [B, K] ("dense", "lexical", "both", or "rewrite" for an item only a
rewrite's list found), dense_scores and lexical_scores [B, K] (-inf where a list lacks the item)
and fusion_rule [B] (the rule as JSON), so that the proxy can re-fuse the answers of several
shards. The `lexical` signature returns the lexical list alone, to see what the lexical side
recalls whatever weight the fusion gives it.
"""
import dataclasses
import os
from typing import Dict

import tensorflow as tf

from dpsr_tf.export.stages.base import ExportFlag, Stage
from dpsr_tf.search import fusion as fusion_lib
from dpsr_tf.search import lexical_ops
from dpsr_tf.tokenization import tokenize_op


@dataclasses.dataclass(frozen=True)
class LexicalFusionConfig:
    """Attributes:
      hybrid: fuse the lexical index with the dense one when the index build has one.
      fusion: how a hybrid servable fuses the two lists.
    """

    hybrid: bool = True
    fusion: fusion_lib.FusionConfig = fusion_lib.FusionConfig()


class LexicalFusionStage(Stage):
    """ranked dense list -> the fused list (module docstring)."""

    NAME = "lexical_fusion"
    Config = LexicalFusionConfig
    FLAGS = (
        ExportFlag("hybrid", "bool", True, "Fuse the build's lexical (BM25) index with the dense "
                   "one (when it has one; see --fusion and the other fusion flags)."),
    )

    def __init__(self, index_file: str, lexical_config):
        self._index_file = index_file
        self._config = lexical_config   # the build's LexicalConfig: tokenizer and BM25 settings

    @classmethod
    def validate(cls, section: LexicalFusionConfig) -> None:
        section.fusion.validate()
        if section.fusion.lexical_k > lexical_ops.MAX_K:
            raise ValueError(f"lexical_k must be <= {lexical_ops.MAX_K}, got "
                             f"{section.fusion.lexical_k}")

    @classmethod
    def prepare(cls, source):
        lexical = source.lexical
        if lexical is None:
            return None
        return cls(source.stage_file(os.path.join(source.index_dir,
                                                  lexical.shards[source.shard].file),
                                     "lexical.idx"), lexical.config)

    def build(self, ctx) -> None:
        ctx.defaults["lexical"] = ctx.k_default()

    def finish(self, ctx) -> None:
        ctx.signatures["lexical"] = (
            {k: v for k, v in ctx.request_inputs.items() if k in ("query", "k")},
            self._lexical_signature(ctx))

    def _list(self, ctx, query, lexical_k):
        """The shard's BM25 list of each query, merged with its rewrites' lists when the
        servable has the rewrites stage.

        Returns:
          scores [B, n] float32 (-inf pads), labels [B, n] int64 (-1 pads) and, with rewrites,
          [B, n] labels that only a rewrite found (-1 elsewhere), else None.
        """
        index = ctx.once("lexical_index", lambda: lexical_ops.LexicalIndex(
            self._index_file, name="lexical_index"))
        tokenizer_config = self._config.tokenizer_config()
        tokens = tokenize_op.tokenize(query, tokenizer_config)
        scores, labels = lexical_ops.search(index, tokens, lexical_k,
                                            ctx.servable.fusion.lexical_min_score)
        rewrites = ctx.stage("rewrites")
        if rewrites is None:
            return scores, labels, None
        return rewrites.lists(ctx, index, tokenizer_config, lexical_k, scores, labels)

    def rank(self, ctx, ranked, direction):
        """The dense list fused with the lexical one."""
        del direction
        rule = ctx.servable.fusion
        query, k = ctx.searched, ctx.k
        with tf.name_scope("lexical"):
            lexical_k = k if rule.lexical_k == 0 else tf.constant(rule.lexical_k, tf.int32)
            lex_scores, lex_labels, rewrite_only = self._list(ctx, query, lexical_k)
        with tf.name_scope("fusion"):
            fused = fusion_lib.fuse(ranked["scores"], ranked["labels"], lex_scores, lex_labels,
                                    k, rule, dense_heads=ranked["heads"])
            names = tf.constant(["", "dense", "lexical", "both", "rewrite"])
            source = fused["source"]
            if rewrite_only is not None:
                # Lexical-only items (2) that only a rewrite's list held become "rewrite" (4).
                sorted_only = tf.sort(rewrite_only, axis=1)
                at = tf.minimum(tf.searchsorted(sorted_only, fused["labels"], side="left"),
                                tf.shape(sorted_only)[1] - 1)
                via = tf.logical_and(
                    tf.equal(tf.gather(sorted_only, at, batch_dims=1), fused["labels"]),
                    fused["labels"] >= 0)
                source = tf.where(tf.logical_and(via, tf.equal(source, 2)), 4, source)
            return {
                "scores": fused["scores"],
                "labels": fused["labels"],
                "heads": fused["heads"],
                "source": tf.gather(names, source),
                "dense_scores": fused["dense_scores"],
                "lexical_scores": fused["lexical_scores"],
                # One copy per row, so the signature stays batch-major (server-side batching).
                "fusion_rule": tf.fill(tf.shape(query)[:1], rule.to_json()),
            }

    def _lexical_signature(self, ctx) -> Dict[str, tf.Tensor]:
        """The `lexical` signature: the lexical list built as the fusion builds its own (the
        query's BM25 list merged with its rewrites' by the same rule), but with each list k deep
        and the merged top k returned, where the fusion reads lists lexical_k deep; without the
        dense list. source: "lexical" for an item of the query's own list, "rewrite" for one
        only a rewrite found, "" pads."""
        response = ctx.stage("response")
        with tf.name_scope("lexical_signature"):
            with tf.control_dependencies(ctx.input_checks):
                query, k = tf.identity(ctx.searched), tf.identity(ctx.k)
            scores, labels, rewrite_only = self._list(ctx, query, k)
            code = tf.where(labels >= 0, 1, 0)
            if rewrite_only is not None:
                code = tf.where(rewrite_only >= 0, 2, code)
            outputs = {"item_ids": response.item_ids(ctx, labels), "scores": scores,
                       "source": tf.gather(tf.constant(["", "lexical", "rewrite"]), code)}
        return {alias: tf.identity(t, name=f"lexical_{alias}") for alias, t in outputs.items()}
