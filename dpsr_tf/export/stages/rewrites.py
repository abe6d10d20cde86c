"""Stage `rewrites` (hybrid servables with a rewrite table or an online rewriter): the query's
rewrites searched in the lexical index and merged into its BM25 list before the fusion
(dpsr_tf/search/rewrite_merge.py, docs/rewriting.md).

A query's rewrites come from the rewrite table (looked up by the query as typed, normalized as
dpsr_tf/rewriting/table.normalize_query does); with an online rewriter
(dpsr_tf/rewriting/online.py), a query without a table entry gets the rewriter's greedy rewrite,
decoded in-graph, as its first rewrite.
"""
import dataclasses
import os

import tensorflow as tf

from dpsr_tf.export.stages.base import ExportFlag, Stage, asset, run_time_path
from dpsr_tf.rewriting import table as table_lib
from dpsr_tf.rewriting.online import OnlineRewriter
from dpsr_tf.rewriting.train import UNITS_TXT
from dpsr_tf.search import lexical_ops, rewrite_merge
from dpsr_tf.search.rewrite_merge import COMBINES
from dpsr_tf.tokenization import tokenize_op


@dataclasses.dataclass(frozen=True)
class RewritesConfig:
    """Attributes:
      rewrites: how the rewrites' lexical lists merge into the query's.
    """

    rewrites: rewrite_merge.RewriteConfig = rewrite_merge.RewriteConfig()


def stage_rewrite_table(path: str, staging: str):
    """(the asset file, its number of queries): one line per query key of a rewrite table,
    key<TAB>rewrites joined by \x1f in table order (what the servable's hash table reads)."""
    rows = table_lib.read_table(path)
    out = os.path.join(staging, "rewrite_table.txt")
    with open(out, "w", encoding="utf-8") as f:
        for key, rewrites in rows.items():
            f.write(key + "\t" + "\x1f".join(r for r, _ in rewrites) + "\n")
    return out, len(rows)


class RewritesStage(Stage):
    """The lexical stage calls lists() to merge the rewrites' lists into the query's."""

    NAME = "rewrites"
    Config = RewritesConfig
    _DEFAULT = rewrite_merge.RewriteConfig()
    FLAGS = (
        ExportFlag("max_rewrites", "integer", _DEFAULT.max_rewrites,
                   "Rewrites of a query searched per request (the table's first ones).",
                   field=None),
        ExportFlag("rewrite_weight", "float", _DEFAULT.rewrite_weight,
                   "Factor on a rewrite's BM25 scores in the merged lexical list, in (0, 1].",
                   field=None),
        ExportFlag("rewrite_combine", "enum", _DEFAULT.combine,
                   "How an item's weighted BM25 scores over the query's and the rewrites' "
                   "lists combine (docs/rewriting.md).", enum_values=tuple(COMBINES), field=None),
    )

    def __init__(self, table_file, table_queries, rewriter_dir, units_file):
        self._table_file = table_file
        self.table_queries = table_queries
        self._rewriter_dir = rewriter_dir
        self._units_file = units_file
        self._online = None

    @classmethod
    def from_flags(cls, values) -> RewritesConfig:
        """The Config section from the flag values (name -> value)."""
        return RewritesConfig(rewrite_merge.RewriteConfig(
            values["max_rewrites"], values["rewrite_weight"], values["rewrite_combine"]))

    @classmethod
    def validate(cls, section: RewritesConfig) -> None:
        section.rewrites.validate()

    @classmethod
    def prepare(cls, source):
        if not (source.rewrite_table or source.online_rewriter):
            return None
        what = "rewrites" if source.rewrite_table else "the online rewriter's rewrites"
        if source.lexical is None:
            raise ValueError(f"{what} search the lexical index: {source.index_dir} has none (or "
                             "--nohybrid was given); build it with `dpsr index --lexical`")
        if source.servable.rewrites.combine == "capped" and source.manifest.num_shards > 1:
            # The cap divides by the query's and each rewrite's best BM25 score, which one
            # shard does not know: shards would scale the same item differently and the proxy's
            # merge by score would compare unlike values.
            raise ValueError(f"--rewrite_combine=capped needs the best scores over the whole "
                             f"catalog; {source.index_dir} has {source.manifest.num_shards} "
                             "shards: use max or sum, or a one-shard index")
        table_file, count = (stage_rewrite_table(source.rewrite_table, source.staging)
                             if source.rewrite_table else (None, None))
        units = (source.stage_file(os.path.join(source.online_rewriter, UNITS_TXT),
                                   "rewriter_units.txt") if source.online_rewriter else None)
        return cls(table_file, count, source.online_rewriter, units)

    def build(self, ctx) -> None:
        if self._rewriter_dir:
            units = asset(self._units_file)
            self._online = OnlineRewriter(self._rewriter_dir, units_init_path=units,
                                          units_path=run_time_path(units, "rewriter_units_path"))

    def owns(self, variable) -> bool:
        return self._online is not None and self._online.owns(variable)

    def restore(self, session, ctx) -> None:
        if self._online is not None:
            self._online.restore(session)

    def info(self) -> dict:
        return {
            "rewrite_queries": self.table_queries,
            "online_rewriter": ({"rewriter_dir": os.path.abspath(self._rewriter_dir),
                                 "checkpoint": self._online.checkpoint, "decoding": "greedy"}
                                if self._online is not None else None),
        }

    def lists(self, ctx, index, tokenizer_config, lexical_k, lex_scores, lex_labels):
        """The query's lexical list merged with its rewrites' lists.

        Returns:
          merged scores [B, n], labels [B, n] (-1 pads) and [B, n] int64 labels that only a
          rewrite found (-1 elsewhere), n = the lexical list's length.
        """
        cfg = ctx.servable.rewrites
        with tf.name_scope("rewrites"):
            batch = tf.shape(ctx.searched)[0]
            if self._table_file is not None:
                texts, missing = self._table_rewrites(ctx)
            else:
                texts = tf.fill([batch, cfg.max_rewrites], "")
                missing = tf.ones([batch], tf.bool)
            if self._online is not None:
                first = tf.where(missing, self._online_rewrites(ctx), texts[:, 0])
                texts = tf.concat([first[:, tf.newaxis], texts[:, 1:]], axis=1)
            tokens = tokenize_op.tokenize(tf.reshape(texts, [-1]), tokenizer_config)
            rw_scores, rw_labels = lexical_ops.search(
                index, tokens, lexical_k, ctx.servable.fusion.lexical_min_score)
            width = tf.shape(rw_labels)[1]
            rw_scores = tf.reshape(rw_scores, [batch, cfg.max_rewrites, width])
            rw_labels = tf.reshape(rw_labels, [batch, cfg.max_rewrites, width])
            scores, labels, from_query = rewrite_merge.merge(
                lex_scores, lex_labels, rw_scores, rw_labels, tf.shape(lex_labels)[1],
                cfg.rewrite_weight, cfg.combine)
            return scores, labels, tf.where(from_query, tf.constant(-1, tf.int64), labels)

    def _table_rewrites(self, ctx):
        """[B, max_rewrites] the rewrite table's texts of each query ("" pads) and [B] whether
        the query has no entry."""
        def build():
            init = tf.lookup.TextFileInitializer(
                asset(self._table_file), tf.string, 0, tf.string, 1, delimiter="\t")
            return tf.lookup.StaticHashTable(init, default_value="", name="rewrite_table")
        table = ctx.once("rewrite_table", build)
        max_rewrites = ctx.servable.rewrites.max_rewrites
        # The key of rewrite table.normalize_query, in-graph.
        key = tf.strings.strip(tf.strings.regex_replace(
            tf.strings.lower(ctx.query, encoding="utf-8"), "[\t\n\v\f\r ]+", " "))
        found = table.lookup(key)                                          # [B]
        parts = tf.strings.split(found, sep="\x1f")[:, :max_rewrites]
        parts = tf.ragged.boolean_mask(parts, tf.strings.length(parts) > 0)
        texts = parts.to_tensor(default_value="", shape=[None, max_rewrites])
        return texts, tf.equal(found, "")

    def _online_rewrites(self, ctx) -> tf.Tensor:
        """[B] the online rewriter's rewrite of each request query: decoded once per request
        (every signature reads the one query placeholder), "" for a query that has a table
        entry (only the others are decoded)."""
        def build():
            with tf.name_scope("online"):
                if self._table_file is not None:
                    _, missing = self._table_rewrites(ctx)
                else:
                    missing = tf.ones_like(ctx.query, tf.bool)
                decoded = self._online.rewrite(tf.boolean_mask(ctx.query, missing))
                at = tf.maximum(tf.cumsum(tf.cast(missing, tf.int32)) - 1, 0)
                padded = tf.concat([decoded, [""]], axis=0)  # a gather target when none decoded
                return tf.where(missing, tf.gather(padded, at), "")
        return ctx.once("online_rewrites", build)
