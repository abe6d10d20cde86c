"""Prepare flags shared by `dpsr prepare` and `dpsr crossval` (defined once, here): the three
input files and the layout options every fold of a cross-validation prepares with, their
defaults PrepareConfig's. Each binary keeps its own --output, seed and split flags."""
from absl import flags

from dpsr_tf.cli import pseudo_query_flags, tokenizer_flags
from dpsr_tf.data import prepare as prepare_lib
from dpsr_tf.data import split as split_lib

_DEFAULT = prepare_lib.PrepareConfig(items="", interactions="", output="")

ITEMS = flags.DEFINE_string("items", None, "Items file (.tsv/.csv[.gz]): item_id, title, ...")
USERS = flags.DEFINE_string("users", None, "Users file (optional): user_id, profile columns.")
INTERACTIONS = flags.DEFINE_string("interactions", None,
                                   "Interactions file: query, item_id, label, [user_id, ...].")
_HISTORY = flags.DEFINE_integer("history_length", _DEFAULT.history_length,
                                "Recent positive items per example in user_history (0 = none).")
_EVAL_MIN_GAIN = flags.DEFINE_float("eval_min_gain", _DEFAULT.eval_min_gain,
                                    "Relevant for evaluation iff positive and gain >= this "
                                    "(Home Depot: 1.67, i.e. relevance >= 2.67).")
_BUILD_VOCAB = flags.DEFINE_bool("build_vocab", _DEFAULT.build_vocab,
                                 "Vocabulary mode: build the layout's vocabulary from titles + "
                                 "its train queries (kept in the layout).")
_VOCAB_MIN_COUNT = flags.DEFINE_integer("vocab_min_count", _DEFAULT.vocab_min_count,
                                        "--build_vocab: minimum count.")
_MAX_REJECT = flags.DEFINE_float("max_reject_fraction", _DEFAULT.max_reject_fraction,
                                 "Fail when a file rejects more than this fraction of its rows.")

_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", _DEFAULT.validation_fraction,
    "Share of the training queries (seeded by --seed) whose interactions form the validation "
    "split instead of training: early stopping and every automatic choice (fusion, dense "
    "feedback, speller) are made on it, never on the reported eval split. 0 = none (they then "
    "fall back to the eval split, with a warning).")
_MIN_VALIDATION_QUERIES = flags.DEFINE_integer(
    "min_validation_queries", _DEFAULT.min_validation_queries,
    "A smaller validation split takes this many training queries, while that stays within a "
    "quarter of them (docs/evaluation.md, 'Validation').")

REQUIRED = ["items", "interactions"]


def config_kwargs(max_train_queries: int) -> dict:
    """The PrepareConfig fields these flags set (inputs, tokenizer, pseudo-queries, layout
    options, the validation split), plus max_train_queries, checked against the flag that
    gave it."""
    if max_train_queries < 0:
        raise flags.ValidationError(f"--max_train_queries={max_train_queries}: must be >= 0 "
                                    f"(0 keeps every training query)")
    try:
        split_lib.validation_size(0, _VALIDATION_FRACTION.value, _MIN_VALIDATION_QUERIES.value)
    except ValueError as e:
        raise flags.ValidationError(f"--validation_fraction / --min_validation_queries: {e}") \
            from None
    return dict(
        validation_fraction=_VALIDATION_FRACTION.value,
        min_validation_queries=_MIN_VALIDATION_QUERIES.value,
        items=ITEMS.value, users=USERS.value, interactions=INTERACTIONS.value,
        tokenizer=tokenizer_flags.config_from_flags(),
        pseudo_queries=pseudo_query_flags.config_from_flags(),
        build_vocab=_BUILD_VOCAB.value, vocab_min_count=_VOCAB_MIN_COUNT.value,
        history_length=_HISTORY.value, eval_min_gain=_EVAL_MIN_GAIN.value,
        max_reject_fraction=_MAX_REJECT.value, max_train_queries=max_train_queries)
