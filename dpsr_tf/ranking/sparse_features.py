"""Hashed sparse features for the tree baseline: what XGBoost gets beside the numeric features
when it is given the same sparse inputs as DPR (the paper's point is that trees cannot use
them well).

Columns of one candidate row (a scipy CSR matrix, binary except the numeric block):

  [0, F)                       the numeric features (features.FEATURE_NAMES)
  query tokens                 one-hot hashed ids (id % buckets) of the query's unigrams and
                               bigrams (the ranker's tokenizer)
  title tokens                 the same for the item title
  query-title overlap          hashed ids of the tokens the query and the title share
  user profile                 one-hot per profile column (offset by the earlier vocabularies)
  history items                hashed item rows (row % buckets) of the session's click stream
  in history                   one column: 1 when the candidate is in that click stream
"""
from typing import Sequence

import numpy as np

from dpsr_tf.tokenization.tokenizer import Tokenizer


def _scipy_sparse():
    try:
        from scipy import sparse  # the tree baseline's sparse matrices
    except ImportError as e:
        raise ImportError("the sparse XGBoost baseline needs scipy: pip install scipy") from e
    return sparse


def num_columns(num_numeric: int, buckets: int, vocab_sizes: Sequence[int]) -> int:
    return num_numeric + 4 * buckets + int(sum(vocab_sizes)) + 1


def sparse_features(numeric: np.ndarray, table, titles: Sequence[str], tokenizer_config,
                    users=None, vocab_sizes: Sequence[int] = (), buckets: int = 1 << 12):
    """[C, num_columns] scipy.sparse.csr_matrix float32 (module docstring).

    Args:
      numeric: [C, F] float32 numeric features of the table's candidates.
      table: SessionTable; titles: [num_items] item titles (layout rows).
      tokenizer_config: TokenizerConfig of the hashed text ids (the ranker's).
      users: the table's user_features.SessionUsers (None: no user columns filled).
      vocab_sizes: [U] vocabulary sizes of the profile columns.
      buckets: hash buckets of each hashed block.
    """
    sparse = _scipy_sparse()
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    c, f = numeric.shape
    tok = Tokenizer(tokenizer_config)
    q_vals, q_splits = tok.tokenize(list(table.queries))
    rows_used = np.unique(table.item_rows)
    t_vals, t_splits = tok.tokenize([titles[r] for r in rows_used])
    t_index = {int(r): i for i, r in enumerate(rows_used)}
    profile_offsets = np.concatenate([[0], np.cumsum(vocab_sizes)]).astype(np.int64)
    base_q, base_t, base_o = f, f + buckets, f + 2 * buckets
    base_p = f + 3 * buckets
    base_h = base_p + int(profile_offsets[-1])
    base_x = base_h + buckets
    session = table.session_of_candidate()
    indptr, indices, data = [0], [], []
    for i in range(c):
        s, row = int(session[i]), int(table.item_rows[i])
        q = set(int(x) for x in q_vals[q_splits[s]:q_splits[s + 1]])
        k = t_index[row]
        t = set(int(x) for x in t_vals[t_splits[k]:t_splits[k + 1]])
        cols = {j: float(numeric[i, j]) for j in range(f)}   # dense: a 0 is a value
        for base, ids in ((base_q, q), (base_t, t), (base_o, q & t)):
            for x in ids:
                cols[base + x % buckets] = 1.0
        if users is not None:
            for j, v in enumerate(users.profile[s][:len(vocab_sizes)]):
                if 0 <= v < vocab_sizes[j]:
                    cols[base_p + int(profile_offsets[j]) + int(v)] = 1.0
            history = users.history[s]
            history = history[history >= 0]
            for h in history:
                cols[base_h + int(h) % buckets] = 1.0
            if row in set(history.tolist()):
                cols[base_x] = 1.0
        keys = sorted(cols)
        indices.extend(keys)
        data.extend(cols[j] for j in keys)
        indptr.append(len(indices))
    shape = (c, num_columns(f, buckets, vocab_sizes))
    return sparse.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64),
                              np.asarray(indptr, np.int64)), shape=shape)
