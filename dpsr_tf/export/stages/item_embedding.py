"""Stage `item_embedding`: the `item_embedding` signature, the item tower on an item's title and
categorical features (what `dpsr index` computes for the catalog), for embedding new items."""
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.export.stages.base import Stage
from dpsr_tf.export.stages.user_inputs import categorical_input
from dpsr_tf.model.towers import item_tower


class ItemEmbeddingStage(Stage):
    """item_title [B] string (+ item_<feature> [B]) -> embedding [B, d]."""

    NAME = "item_embedding"

    def __init__(self, item_vocabs):
        self._item_vocabs = item_vocabs

    @classmethod
    def prepare(cls, source):
        spec = source.layout_spec
        return cls({n: source.stage_file(spec.path(f"{layout_lib.ITEM_VOCAB_DIR}/{n}.txt"),
                                         f"item_vocab_{n}.txt") for n in spec.item_features})

    def build(self, ctx) -> None:
        title = tf.compat.v1.placeholder(tf.string, [None], name="item_title")
        inputs = {"item_title": title}
        features = {"item_tokens": ctx.tokenize(title), "item_text": title}
        for name in sorted(ctx.layout_spec.item_features):
            key = f"item_{name}"
            inputs[key], features[key] = categorical_input(key, title, self._item_vocabs[name])
        with tf.name_scope("item_tower"):
            embedding = item_tower(features, ctx.model_config, ctx.layout_spec,
                                   tf.estimator.ModeKeys.PREDICT)
        ctx.signatures["item_embedding"] = (inputs, {"embedding": embedding})
