"""Tables derived from the validated rows, shared by both prepare paths (one process, Beam):
token ids of texts, user click histories, and the per-query table of human negatives."""
import concurrent.futures
from typing import Sequence, Tuple

import numpy as np

from dpsr_tf.data import schema
from dpsr_tf.data.readers import Progress
from dpsr_tf.tokenization import Tokenizer

_TOKENIZE_BATCH = 8192


def tokenize_texts(tokenizer: Tokenizer, texts: Sequence[str], label: str = "texts",
                   progress_every_s: float = 5.0, threads: int = 2
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Tokenizes texts in batches on `threads` threads (the tokenizer releases the GIL).

    Returns:
      token_ids: [T] int32; token_splits: [len(texts) + 1] int64.
    """
    if tokenizer.id_space > np.iinfo(np.int32).max:
        raise ValueError(f"token id space {tokenizer.id_space} does not fit int32")
    batches = [texts[i:i + _TOKENIZE_BATCH] for i in range(0, len(texts), _TOKENIZE_BATCH)]
    progress = Progress(f"tokenizing {label}", progress_every_s)
    ids_parts, lengths = [], [np.zeros([1], np.int64)]
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        for ids, splits in pool.map(tokenizer.tokenize, batches):
            ids_parts.append(ids.astype(np.int32))
            lengths.append(np.diff(splits))
            done += len(splits) - 1
            progress.update(done)
    token_ids = np.concatenate(ids_parts) if ids_parts else np.zeros([0], np.int32)
    return token_ids, np.cumsum(np.concatenate(lengths)).astype(np.int64)


def user_histories(user_rows: np.ndarray, item_rows: np.ndarray, label_kinds: np.ndarray,
                   order_key: np.ndarray, num_users: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user positive-item sequences and each interaction's position in its user's sequence.

    Args:
      user_rows: [n] int, -1 = no user.
      item_rows: [n] int.
      label_kinds: [n] int (schema.LabelKind); click and human positive enter the history.
      order_key: [n] float64 time of each interaction (or its file position).
      num_users: user table size.

    Returns:
      history_items: [P] int32 item rows of each user's positives ordered by (time, file line).
      history_splits: [num_users + 1] int64; user u's sequence is
        history_items[history_splits[u]:history_splits[u + 1]].
      history_end: [n] int32: the number of positives of the same user strictly earlier in
        time (ties do not count), i.e. the interaction's history is the sequence's prefix of
        that length; 0 without a user.
    """
    n = len(user_rows)
    history_end = np.zeros([n], np.int32)
    idx = np.nonzero(user_rows >= 0)[0]
    order = idx[np.lexsort((idx, order_key[idx], user_rows[idx]))]
    users = user_rows[order].astype(np.int64)
    positive = label_kinds[order] != schema.LabelKind.NEGATIVE
    history_items = item_rows[order][positive].astype(np.int32)
    counts = np.bincount(users[positive], minlength=num_users) if num_users else np.zeros([0])
    history_splits = np.zeros([num_users + 1], np.int64)
    np.cumsum(counts, out=history_splits[1:])
    if len(order):
        before = np.cumsum(positive) - positive          # positives earlier in sorted order
        times = order_key[order]
        new_group = np.ones(len(order), bool)           # first of each (user, time) tie group
        new_group[1:] = (users[1:] != users[:-1]) | (times[1:] != times[:-1])
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
        history_end[order] = (before[group_start] - history_splits[users]).astype(np.int32)
    return history_items, history_splits, history_end


def human_negative_table(query_rows: np.ndarray, item_rows: np.ndarray,
                         num_queries: int) -> Tuple[np.ndarray, np.ndarray]:
    """The human negatives of each query as a ragged table (distinct items, ascending).

    Args:
      query_rows, item_rows: [n] int, the (query, item) pairs labelled negative.
      num_queries: query table size.

    Returns:
      items [P] int32 and splits [num_queries + 1] int64: query q's negatives are
      items[splits[q]:splits[q + 1]].
    """
    pairs = np.unique(np.stack([np.asarray(query_rows, np.int64),
                                np.asarray(item_rows, np.int64)], axis=1).reshape(-1, 2), axis=0)
    splits = np.zeros([num_queries + 1], np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=num_queries), out=splits[1:])
    return pairs[:, 1].astype(np.int32), splits
