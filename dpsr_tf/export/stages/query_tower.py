"""Stage `query_tower`: the model's query tower on the query features -> m head embeddings, and
the `query_embedding` signature that returns them."""
import tensorflow as tf

from dpsr_tf.export.stages.base import Stage
from dpsr_tf.model.towers import query_tower


class QueryTowerStage(Stage):
    """ctx.features -> ctx.embeddings [B, m, d] float32."""

    NAME = "query_tower"

    def build(self, ctx) -> None:
        with tf.name_scope("query_tower"):
            ctx.embeddings = query_tower(ctx.features, ctx.model_config, ctx.layout_spec,
                                         tf.estimator.ModeKeys.PREDICT)
        ctx.signatures["query_embedding"] = (
            {k: v for k, v in ctx.request_inputs.items() if k != "k"},
            {"embedding": ctx.embeddings})
