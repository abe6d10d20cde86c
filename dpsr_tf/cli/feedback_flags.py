"""Flags of dense feedback (search/dense_feedback.py), shared by `dpsr export` and `dpsr evaluate`.

Whether feedback is used is each command's own flag (`dpsr export --dense_feedback=auto|on|off`,
`dpsr evaluate --dense_feedback`); these say how much.
"""
from absl import flags

from dpsr_tf.search.dense_feedback import MAX_ITEMS, FeedbackConfig

# Measured on Home Depot and Best Buy (docs/results.md "Dense feedback"): of 3 or 10 hits at
# 0.1 or 0.25 of the head's norm, 10 at 0.25 was best or within 0.001 of the best on 6 of 7
# splits (Home Depot seeds 0-1, Best Buy's 5 folds).
DEFAULT = FeedbackConfig(items=10, weight=0.25)
ITEMS = flags.DEFINE_integer(
    "dense_feedback_items", DEFAULT.items, f"Dense feedback: first hits averaged (1 to "
    f"{MAX_ITEMS}); each query head moves toward their mean before the search.")
WEIGHT = flags.DEFINE_float(
    "dense_feedback_weight", DEFAULT.weight, "Dense feedback: the step toward the first hits' "
    "mean, as a share of the head's norm (0 to 10].")


def feedback_config() -> FeedbackConfig:
    """The FeedbackConfig the flags give, for when feedback is on (validated).

    Raises:
      ValueError: items outside [1, MAX_ITEMS] or a weight outside (0, 10].
    """
    if ITEMS.value < 1:
        raise ValueError(f"--dense_feedback_items must be >= 1 (turn feedback off with "
                         f"--dense_feedback=off), got {ITEMS.value}")
    cfg = FeedbackConfig(items=ITEMS.value, weight=WEIGHT.value)
    cfg.validate()
    return cfg
