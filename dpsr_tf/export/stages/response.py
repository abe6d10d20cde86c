"""Stage `response`: the served list's FAISS labels mapped to the shard's item ids, the outputs
named, and the searching signatures: serving_default {query, k?} (a user-less request is an
unknown user: the user inputs at their defaults) and, for personalized models, personalized
{query, k?, user_<f>.., user_history} with every user input required, so batching servers can
stack requests along dim 0 (send "" for an unknown value)."""
import tensorflow as tf

from dpsr_tf.export.stages.base import Stage, asset


class ResponseStage(Stage):
    """ranked labels -> item_ids [B, K] string ("" pads); outputs named by their alias."""

    NAME = "response"

    def __init__(self, ids_file: str):
        self._ids_file = ids_file

    @classmethod
    def prepare(cls, source):
        _, ids_file = source.manifest.shard_paths(source.index_dir, source.shard)
        return cls(source.stage_file(ids_file, "shard_item_ids.txt"))

    def item_ids(self, ctx, labels: tf.Tensor) -> tf.Tensor:
        """Item ids of shard labels ("" for -1)."""
        def build():
            init = tf.lookup.TextFileInitializer(
                asset(self._ids_file), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE)
            return tf.lookup.StaticHashTable(init, default_value="", name="item_ids_of_labels")
        return ctx.once("id_table", build).lookup(labels)

    def rank(self, ctx, ranked, direction):
        del direction
        outputs = dict(ranked)
        outputs["item_ids"] = self.item_ids(ctx, outputs.pop("labels"))
        return {alias: tf.identity(t, name=alias) for alias, t in outputs.items()}

    def build(self, ctx) -> None:
        outputs = ctx.rank()
        anonymous = {k: v for k, v in ctx.request_inputs.items() if k in ("query", "k")}
        ctx.signatures["serving_default"] = (anonymous, outputs)
        ctx.defaults["serving_default"] = ctx.k_default()
        if len(ctx.request_inputs) > len(anonymous):
            ctx.signatures["personalized"] = (dict(ctx.request_inputs), outputs)
            ctx.defaults["personalized"] = ctx.k_default()
