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


def _expand(splits: np.ndarray, owner: np.ndarray):
    """(which [N], position [N]) int64: for each i, the positions splits[owner[i]] ..
    splits[owner[i] + 1] - 1, i repeated once per position (i in increasing order)."""
    lo, hi = splits[owner], splits[owner + 1]
    counts = hi - lo
    which = np.repeat(np.arange(len(owner), dtype=np.int64), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return which, np.repeat(lo, counts) + (np.arange(len(which), dtype=np.int64)
                                           - np.repeat(starts, counts))


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
    numeric = np.asarray(numeric)
    c, f = numeric.shape
    item_rows = np.asarray(table.item_rows, np.int64)
    if len(item_rows) != c:
        raise ValueError(f"numeric has {c} rows but the table {len(item_rows)} candidates")
    tok = Tokenizer(tokenizer_config)
    q_vals, q_splits = tok.tokenize(list(table.queries))
    rows_used = np.unique(item_rows)
    t_vals, t_splits = tok.tokenize([titles[r] for r in rows_used])
    q_vals, q_splits = np.asarray(q_vals, np.int64), np.asarray(q_splits, np.int64)
    t_vals, t_splits = np.asarray(t_vals, np.int64), np.asarray(t_splits, np.int64)
    vocab = np.asarray(vocab_sizes, np.int64)
    profile_offsets = np.concatenate([[0], np.cumsum(vocab)]).astype(np.int64)
    base_q, base_t, base_o = f, f + buckets, f + 2 * buckets
    base_p = f + 3 * buckets
    base_h = base_p + int(profile_offsets[-1])
    base_x = base_h + buckets
    session = np.asarray(table.session_of_candidate(), np.int64)
    title_of = np.searchsorted(rows_used, item_rows)           # candidate -> title index
    rows, cols, vals = [], [], []                              # COO entries, 1.0 unless set

    def add(r, col, v=None):
        rows.append(np.asarray(r, np.int64))
        cols.append(np.asarray(col, np.int64))
        vals.append(np.ones(len(r), np.float32) if v is None else np.asarray(v, np.float32))

    # numeric: dense, a 0 is a value
    add(np.repeat(np.arange(c, dtype=np.int64), f), np.tile(np.arange(f, dtype=np.int64), c),
        numeric.reshape(-1))
    q_cand, q_pos = _expand(q_splits, session)
    t_cand, t_pos = _expand(t_splits, title_of)
    add(q_cand, base_q + q_vals[q_pos] % buckets)
    add(t_cand, base_t + t_vals[t_pos] % buckets)
    # overlap: the ids (before the bucket modulo) the candidate's query and title share
    uniq, inv = np.unique(np.concatenate([q_vals[q_pos], t_vals[t_pos]]), return_inverse=True)
    n_u = max(len(uniq), 1)
    q_keys = np.unique(q_cand * n_u + inv[:len(q_pos)])
    t_keys = np.unique(t_cand * n_u + inv[len(q_pos):])
    common = np.intersect1d(q_keys, t_keys, assume_unique=True)
    add(common // n_u, base_o + uniq[common % n_u] % buckets)
    if users is not None:
        profile = np.asarray(users.profile, np.int64)
        u = min(profile.shape[1] if profile.ndim == 2 else 0, len(vocab))
        if u:
            v = profile[:, :u][session]                        # [C, u]
            ok = (v >= 0) & (v < vocab[:u])
            r, j = np.nonzero(ok)
            add(r, base_p + profile_offsets[j] + v[r, j])
        history = np.asarray(users.history, np.int64).reshape(len(users.history), -1)
        h = history[session]                                   # [C, H]
        r, j = np.nonzero(h >= 0)
        add(r, base_h + h[r, j] % buckets)
        in_history = ((h == item_rows[:, None]) & (h >= 0)).any(axis=1)
        r = np.flatnonzero(in_history)
        add(r, np.full(len(r), base_x, np.int64))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.ones(len(rows), bool)                           # one entry per (row, column)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    rows, cols, vals = rows[first], cols[first], vals[first]
    indptr = np.zeros(c + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=c), out=indptr[1:])
    shape = (c, num_columns(f, buckets, vocab_sizes))
    return sparse.csr_matrix((vals, cols, indptr), shape=shape)
