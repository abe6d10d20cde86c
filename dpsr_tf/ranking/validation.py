"""A validation carve of the TRAIN sessions: what the ranker's choices (widths, steps, feature
groups) are made on, so the eval sessions only ever report.

    fit, held = carve(data)          # RankerData over TRAIN only: train = fit, eval = held

A session is held out iff int(md5(query), 16) % modulus == 0 (whole queries move, as the
layout's own split does). The held sessions keep their TRAIN numeric features: those are
leave-one-session-out, so no held row sees its own label.
"""
import dataclasses
import hashlib

import numpy as np

from dpsr_tf.ranking import sessions as sessions_lib
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


def carve(data, modulus: int = 7):
    """A train_lib.RankerData whose train/eval sessions are the kept/held TRAIN sessions.

    Raises:
      ValueError: the carve leaves either side empty.
    """
    table = data.train_sessions
    held = held_mask(table.queries, modulus)
    if held.all() or not held.any():
        raise ValueError(f"the validation carve (md5(query) % {modulus} == 0) holds "
                         f"{int(held.sum())} of {len(table)} TRAIN sessions: both sides need "
                         f"sessions; use more sessions or another modulus")
    per_candidate = np.repeat(held, np.diff(table.splits))
    out = {}
    for name, mask, cand in (("train", ~held, ~per_candidate), ("eval", held, per_candidate)):
        out[f"{name}_sessions"] = sessions_lib._subset(table, mask)  # pylint: disable=protected-access
        out[f"{name}_features"] = data.train_features[cand]
        out[f"{name}_users"] = _users(data.train_users, mask)
    return dataclasses.replace(data, **out)
