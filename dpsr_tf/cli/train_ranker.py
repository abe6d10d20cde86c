"""dpsr train-ranker: DPR, the pairwise Siamese re-ranker, trained on the TRAIN sessions
(dpsr_tf/ranking/; docs/ranking.md). TF_CONFIG clusters work as for `dpsr train`."""
import dataclasses

from absl import flags, logging

from dpsr_tf.cli import ranker_flags as rf
from dpsr_tf.ranking import model as model_lib
from dpsr_tf.ranking import train as train_lib

_STEPS = flags.DEFINE_integer("train_steps", 4000, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Pairs per step.")
_LR = flags.DEFINE_float("learning_rate", 0.05, "Learning rate.")
_OPT = flags.DEFINE_enum("optimizer", "adagrad", ["adagrad", "adam"], "Optimizer.")
_HIDDEN = flags.DEFINE_list("hidden_units", ["128", "64", "32"], "The tower's ReLU layers.")
_EMB = flags.DEFINE_integer("token_embedding_dim", 32, "Token embedding width.")
_COMBINER = flags.DEFINE_enum("combiner", "sum", ["sum", "mean", "sqrtn"], "Token pooling.")
_BUCKETS = flags.DEFINE_integer("num_buckets", 1 << 18, "Token hash buckets (table rows).")
_PAIRS = flags.DEFINE_integer("max_pairs_per_session", 32, "Pairs a session contributes.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of pairs, shuffling and initialization.")
_RETRIEVED = flags.DEFINE_integer(
    "retrieved_negatives", 0, "TRAIN sessions gain this many unshown items of the DPSR top "
    "--retrieval_depth of their query, labelled below every shown label (what re-ranking the "
    "retrieval list needs; docs/ranking.md).")
_DEPTH = flags.DEFINE_integer(
    "retrieval_depth", 100, "--retrieved_negatives are drawn from this many of the query's "
    "DPSR top items: the depth the servable re-ranks (dpsr export --rerank_n).")
_GROUPS = flags.DEFINE_list(
    "feature_groups", ["auto"], "The tower's feature groups (docs/ranking.md): numeric, text, "
    "user (profile ids and click-stream history); auto = numeric,text plus user where the "
    "layout has user features or histories.")
_HISTORY = flags.DEFINE_integer("history_length", -1, "Clicks in the history bag of the user "
                                "group; -1 = the layout's history_length.")
_USER_EMB = flags.DEFINE_integer("user_embedding_dim", 4, "Width of each user profile and item "
                                 "category table (user group).")
_HIST_EMB = flags.DEFINE_integer("history_embedding_dim", 4, "Width of the history item table.")
_CROSS = flags.DEFINE_bool("profile_cross", True, "User group: also the inner product of each "
                           "profile embedding with each item category embedding (docs/ranking.md).")
flags.mark_flags_as_required(["sessions_dir", "dpsr_model_dir", "dpsr_index_dir", "model_dir"])


def _groups(spec, history_length) -> tuple:
    wanted = [g.strip() for g in _GROUPS.value if g.strip()]
    if wanted != ["auto"]:
        return tuple(wanted)
    has_users = bool(spec.user_features) or (history_length != 0 and spec.history_length > 0)
    return ("numeric", "text") + (("user",) if has_users and spec.num_users else ())


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    history = None if _HISTORY.value < 0 else _HISTORY.value
    base = model_lib.RankerConfig()
    config = model_lib.RankerConfig(
        tokenizer=dataclasses.replace(base.tokenizer, num_buckets=_BUCKETS.value),
        token_embedding_dim=_EMB.value, combiner=_COMBINER.value,
        hidden_units=tuple(int(x) for x in _HIDDEN.value), learning_rate=_LR.value,
        optimizer=_OPT.value, batch_size=_BATCH.value,
        max_pairs_per_session=_PAIRS.value, seed=_SEED.value,
        dpsr_model_dir=rf.DPSR_MODEL.value, dpsr_index_dir=rf.DPSR_INDEX.value,
        retrieved_negatives=_RETRIEVED.value, retrieval_depth=_DEPTH.value)
    try:
        config.validate()
        data = train_lib.prepare_ranker_data(rf.SESSIONS.value, rf.DPSR_MODEL.value,
                                             rf.DPSR_INDEX.value, rf.MODEL_DIR.value,
                                             layout_dir=rf.LAYOUT.value,
                                             retrieved_negatives=_RETRIEVED.value,
                                             retrieval_depth=_DEPTH.value,
                                             history_length=history)
        config = dataclasses.replace(
            config, feature_groups=_groups(data.layout_spec, history),
            user_embedding_dim=_USER_EMB.value, history_embedding_dim=_HIST_EMB.value,
            profile_cross=_CROSS.value, **train_lib.user_config(data.layout_spec, history))
        logging.info("feature groups: %s", ",".join(config.feature_groups))
        train_lib.train_ranker(data, rf.MODEL_DIR.value, config, _STEPS.value)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dpsr train-ranker: {e}") from None
