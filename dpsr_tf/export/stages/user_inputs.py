"""Stage `user_inputs` (personalized models): the user's profile features and click history as
optional request inputs, turned into the ids the query tower was trained on."""
import tensorflow as tf

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.export.stages.base import Stage, check, value_to_id_table


def categorical_input(name: str, like: tf.Tensor, vocab_path: str):
    """An optional string input [B] beside `like` [B] and its int64 ids (0 = unknown/absent).

    Returns:
      (the placeholder, its ids after a check that it has one value per row of `like`).
    """
    value = tf.compat.v1.placeholder_with_default(tf.fill(tf.shape(like), ""), [None], name=name)
    table = value_to_id_table(vocab_path, f"{name}_ids")
    size_check = check(tf.equal(tf.size(value), tf.size(like)),
                       f"{name} must have one value per {like.op.name}; got sizes",
                       tf.size(value), tf.size(like))
    with tf.control_dependencies([size_check]):
        return value, table.lookup(value) + 1


def stage_item_ids(source) -> str:
    """The layout's item ids (line r = item id of layout row r) staged as an asset file."""
    return source.stage_file(source.layout_spec.path(layout_lib.ITEM_IDS), "all_item_ids.txt")


class UserInputsStage(Stage):
    """user_<feature> [B] string and user_history [B, W] string inputs -> ctx.features."""

    NAME = "user_inputs"

    def __init__(self, user_vocabs, all_item_ids: str):
        self._user_vocabs = user_vocabs
        self._all_item_ids = all_item_ids

    @classmethod
    def prepare(cls, source):
        if not source.personalized:
            return None
        spec = source.layout_spec
        vocabs = {n: source.stage_file(spec.path(f"{layout_lib.USER_VOCAB_DIR}/{n}.txt"),
                                       f"user_vocab_{n}.txt") for n in spec.user_features}
        return cls(vocabs, stage_item_ids(source))

    def build(self, ctx) -> None:
        query = ctx.query
        for name in sorted(ctx.layout_spec.user_features):
            # Absent: "unknown" (id 0), like a logged-out user.
            key = f"user_{name}"
            ctx.request_inputs[key], ctx.features[key] = categorical_input(
                key, query, self._user_vocabs[name])
        if ctx.model_config.personalization == "history":
            self._history(ctx)

    def _history(self, ctx) -> None:
        # user_history [B, W] item ids, oldest first, "" pads a row. Training saw at most the
        # last history_length items of a user (dpsr_tf/data/pipeline.py), so the servable keeps
        # the last history_length known items of each row; W is capped so a request cannot make
        # the lookup arbitrarily large.
        length = ctx.layout_spec.history_length
        max_width = max(1024, length)  # items a row may send
        history = tf.compat.v1.placeholder_with_default(
            tf.fill(tf.stack([tf.shape(ctx.query)[0], 0]), ""), [None, None],
            name="user_history")
        width_check = check(tf.shape(history)[1] <= max_width,
                            f"user_history must have at most {max_width} items per row (the "
                            f"model uses the last {length}); got width", tf.shape(history)[1])
        with tf.control_dependencies([width_check]):
            checked = tf.identity(history)
        table = value_to_id_table(self._all_item_ids, "history_item_rows")
        rows = table.lookup(checked)  # item row, -1 for padding "" and unknown ids
        known = tf.ragged.boolean_mask(rows, rows >= 0)
        if length > 0:
            known = known[:, -length:]
        ctx.features["user_history"] = known
        ctx.request_inputs["user_history"] = history
