"""Flags of dense feedback (search/dense_feedback.py), shared by `dpsr export` and `dpsr evaluate`.

Whether feedback is used is each command's own flag (`dpsr export --dense_feedback=auto|on|off`,
`dpsr evaluate --dense_feedback`); these say how much.
"""
from absl import flags

from dpsr_tf.search.dense_feedback import DEFAULT, MAX_ITEMS, FeedbackConfig

ITEMS = flags.DEFINE_integer(
    "dense_feedback_items", DEFAULT.items, f"Dense feedback: first hits averaged (1 to "
    f"{MAX_ITEMS}); each query head moves toward their mean before the search.")
WEIGHT = flags.DEFINE_float(
    "dense_feedback_weight", DEFAULT.weight, "Dense feedback: the step toward the first hits' "
    "mean, as a share of the head's norm (0 to 10].")


def feedback_config() -> FeedbackConfig:
    """The FeedbackConfig the flags give, for when feedback is on (validated).

    Raises:
      ValueError: items outside [1, MAX_ITEMS] or a weight outside (0, 10], naming the flag.
    """
    if not 1 <= ITEMS.value <= MAX_ITEMS:
        raise ValueError(f"--dense_feedback_items must be in [1, {MAX_ITEMS}] (turn feedback "
                         f"off with --dense_feedback=off), got {ITEMS.value}")
    cfg = FeedbackConfig(items=ITEMS.value, weight=WEIGHT.value)
    try:
        cfg.validate()
    except ValueError:
        raise ValueError(f"--dense_feedback_weight must be in (0, 10], got {WEIGHT.value}"
                         ) from None
    return cfg
