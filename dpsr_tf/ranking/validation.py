"""A validation carve of the TRAIN sessions: what the ranker's choices (widths, steps, feature
groups) are made on, so the eval sessions only ever report.

    fit, held = carve(data)          # RankerData over TRAIN only: train = fit, eval = held

A session is held out iff int(md5(query), 16) % modulus == 0 (whole queries move, as the
layout's own split does). The held sessions keep their TRAIN numeric features: ordered item
statistics (target_stats.py), so no held row sees its own label, but they count earlier held
sessions and come with in-sample DPSR scores; carve_like_eval rebuilds them as eval's are made.
"""
import dataclasses
import hashlib

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.ranking import features as features_lib
from dpsr_tf.ranking import sessions as sessions_lib
from dpsr_tf.ranking import train as train_lib
from dpsr_tf.ranking import user_features as user_lib


def held_mask(queries, modulus: int = 7) -> np.ndarray:
    """[S] bool: the sessions the carve holds out (md5 of the query modulo `modulus` is 0)."""
    if modulus < 2:
        raise ValueError(f"modulus must be >= 2, got {modulus}")
    return np.array([int(hashlib.md5(q.encode("utf-8")).hexdigest(), 16) % modulus == 0
                     for q in queries], bool)


def _users(users, mask):
    if users is None:
        return None
    return user_lib.SessionUsers(users.profile[mask], users.history[mask])


def _check_sides(held: np.ndarray, rule: str, hint: str = "") -> None:
    """Raises ValueError unless the carve by `rule` holds out some but not all sessions."""
    if held.all() or not held.any():
        raise ValueError(f"{rule} holds out {int(held.sum())} of {len(held)} TRAIN sessions: "
                         f"both sides need sessions{hint}")


def carve(data, modulus: int = 7):
    """A train_lib.RankerData whose train/eval sessions are the kept/held TRAIN sessions.

    Raises:
      ValueError: the carve leaves either side empty.
    """
    table = data.train_sessions
    held = held_mask(table.queries, modulus)
    _check_sides(held, f"the validation carve (md5(query) % {modulus} == 0)",
                 "; use more sessions or another modulus")
    per_candidate = np.repeat(held, np.diff(table.splits))
    out = {}
    for name, mask, cand in (("train", ~held, ~per_candidate), ("eval", held, per_candidate)):
        out[f"{name}_sessions"] = sessions_lib.subset(table, mask)
        out[f"{name}_features"] = data.train_features[cand]
        out[f"{name}_users"] = _users(data.train_users, mask)
    return dataclasses.replace(data, **out)


def layout_validation_mask(spec, queries) -> np.ndarray:
    """[S] bool: the sessions whose query is one of the layout's validation queries (those the
    retrieval model held out for its own early stopping, so its score features are out of
    sample there, as on the eval sessions)."""
    if layout_lib.VALIDATION_SPLIT not in spec.record_files:
        raise ValueError(f"{spec.layout_dir} has no validation split; re-run `dpsr prepare` "
                         f"(it carves one from the training queries)")
    texts = layout_lib.load_queries(spec)
    rows = np.unique(layout_lib.read_records(spec, layout_lib.VALIDATION_SPLIT)["query_row"])
    held = {texts[r] for r in rows}
    return np.array([q in held for q in queries], bool)


def carve_like_eval(data, dpsr_model_dir: str, log=print):
    """A RankerData whose eval side is the TRAIN sessions of the layout's validation queries,
    with features made as the eval split's are: item statistics of the kept TRAIN sessions
    only, full for the held rows and ordered for the kept ones (target_stats.py), and DPSR
    scores of queries the retrieval model did not train on. `data` must come without
    retrieved negatives (prepare_ranker_data's default): every TRAIN candidate counts as shown.

    Raises:
      ValueError: the layout has no validation split, or the carve leaves a side empty.
    """
    table = data.train_sessions
    held = layout_validation_mask(data.layout_spec, table.queries)
    _check_sides(held, "the layout's validation split")
    fit = sessions_lib.subset(table, ~held)
    out_table = sessions_lib.subset(table, held)
    t = data.tables
    tables = features_lib.build_feature_tables(data.titles, fit.item_rows, fit.labels,
                                               t.item_embeddings, t.lexical_config,
                                               t.prior_weight)
    extractor = features_lib.FeatureExtractor(tables, data.num_heads)
    try:
        feats = {}
        for name, part, own in (("train", fit, train_lib.train_own_stats(fit)),
                                ("eval", out_table, None)):
            heads = train_lib.query_heads(dpsr_model_dir, data.layout_spec, part.queries)
            feats[name] = extractor.run(part, heads, leave_own_out=False, log=log,
                                        own_stats=own)
    finally:
        extractor.close()
    return dataclasses.replace(data, tables=tables, train_sessions=fit, eval_sessions=out_table,
                               train_features=feats["train"], eval_features=feats["eval"],
                               train_users=_users(data.train_users, ~held),
                               eval_users=_users(data.train_users, held))
