"""Losses of DPSR: the attention hinge loss with mixed negatives and human supervision, and the
in-batch sampled softmax with logQ correction (for comparison).

Notation (per batch): B examples; example i has query q_i, item g_i and label y_i (1 = click or
human positive, 0 = human negative). S[i, j] = score(q_i, g_j) (soft dot product, [B, B]);
R[i, r] = score(q_i, n_r) for the R random negatives shared by the batch ([B, R]).

Hinge loss (paper §4.4-4.5), averaged over the positives of the batch:
  L = 1/P * sum_{i: y_i = 1} [ sum_{n in N_i} max(0, delta - S[i, i] + s(q_i, n))
                               + w_h * sum_{k in H_i} max(0, delta - S[i, i] + S[i, k]) ]
  N_i: round(alpha * num_negatives) random negatives (the first ones of the shared set) and
       num_negatives - that many batch negatives, drawn without replacement among the other
       positives j of the batch with g_j != g_i and q_j != q_i (§4.4.3);
  H_i: the human negatives of the batch labelled for the same query text as example i (§4.5).
"""
from typing import Optional, Tuple

import tensorflow as tf

NEG_INF = -1e9


def hinge_terms(positive: tf.Tensor, negatives: tf.Tensor, mask: tf.Tensor,
                margin: float) -> tf.Tensor:
    """Per-example sum of masked hinge terms.

    Args:
      positive: [B] float32 score of each example's positive.
      negatives: [B, K] float32 scores of its negatives.
      mask: [B, K] float32 (or bool), 1 where the negative counts.
      margin: delta.

    Returns:
      [B] float32: sum_k mask[b, k] * max(0, margin - positive[b] + negatives[b, k]).
    """
    mask = tf.cast(mask, negatives.dtype)
    return tf.reduce_sum(mask * tf.nn.relu(margin - positive[:, None] + negatives), axis=1)


def same_query(queries: Optional[tf.Tensor], batch_size: tf.Tensor) -> tf.Tensor:
    """[B, B] bool: queries[i] == queries[j] (all False when queries is None)."""
    if queries is None:
        return tf.zeros([batch_size, batch_size], tf.bool)
    return tf.equal(queries[:, None], queries[None, :])


def batch_negative_candidates(item_rows: tf.Tensor, labels: tf.Tensor,
                              queries: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Which items of the batch may serve as batch negatives of which example.

    Args:
      item_rows: [B] int64 item row of each example.
      labels: [B] float32, 1 = positive.
      queries: [B] tf.string raw query text, or None.

    Returns:
      [B, B] bool: valid[i, j] = labels[j] == 1 and item_rows[j] != item_rows[i] and
      queries[j] != queries[i] (so another positive of the same query is never a negative).
    """
    b = tf.shape(item_rows)[0]
    positive_cols = tf.broadcast_to(labels[None, :] > 0.5, [b, b])
    same_item = tf.equal(item_rows[:, None], item_rows[None, :])
    return positive_cols & ~same_item & ~same_query(queries, b)


def sample_without_replacement(valid: tf.Tensor, num: int,
                               seed: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Draws up to `num` distinct valid columns per row, uniformly.

    Args:
      valid: [B, C] bool.
      num: columns wanted per row (k = min(num, C) are returned).
      seed: op seed.

    Returns:
      (indices [B, k] int32, mask [B, k] float32): mask is 0 where a row had fewer than k valid
      columns (those slots hold arbitrary invalid columns).
    """
    cols = tf.shape(valid)[1]
    k = tf.minimum(num, cols)
    keys = tf.where(valid, tf.random.uniform(tf.shape(valid), 0.0, 1.0, seed=seed),
                    -tf.ones(tf.shape(valid)))
    _, idx = tf.math.top_k(keys, k=k, sorted=False)
    mask = tf.cast(tf.gather(valid, idx, batch_dims=1), tf.float32)
    return idx, mask


def mixed_negatives(batch_scores: tf.Tensor, batch_valid: tf.Tensor, random_scores: tf.Tensor,
                    random_valid: tf.Tensor, num_random: int, num_batch: int,
                    seed: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """The mixed negative set of §4.4.3.

    Args:
      batch_scores: [B, B] float32 S[i, j].
      batch_valid: [B, B] bool, from batch_negative_candidates.
      random_scores: [B, R] float32 scores against the shared random negatives.
      random_valid: [B, R] bool (False where a random negative is the example's own positive).
      num_random: random negatives per example (the first num_random of the R shared ones).
      num_batch: batch negatives per example, sampled without replacement.
      seed: op seed of the batch-negative draw.

    Returns:
      (scores [B, num_random + k], mask [B, num_random + k] float32) with k = min(num_batch, B).
    """
    parts, masks = [], []
    if num_random > 0:
        parts.append(random_scores[:, :num_random])
        masks.append(tf.cast(random_valid[:, :num_random], tf.float32))
    if num_batch > 0:
        idx, mask = sample_without_replacement(batch_valid, num_batch, seed=seed)
        parts.append(tf.gather(batch_scores, idx, batch_dims=1))
        masks.append(mask)
    if not parts:
        b = tf.shape(batch_scores)[0]
        return tf.zeros([b, 0]), tf.zeros([b, 0])
    return tf.concat(parts, axis=1), tf.concat(masks, axis=1)


def human_negative_mask(labels: tf.Tensor, queries: Optional[tf.Tensor]) -> tf.Tensor:
    """[B, B] float32: 1 where example i is a positive and k a human negative of the same query."""
    b = tf.shape(labels)[0]
    pos = labels > 0.5
    neg = labels < 0.5
    return tf.cast(pos[:, None] & neg[None, :] & same_query(queries, b), tf.float32)


def hinge_loss(batch_scores: tf.Tensor, random_scores: tf.Tensor, item_rows: tf.Tensor,
               random_rows: tf.Tensor, labels: tf.Tensor, queries: Optional[tf.Tensor], *,
               margin: float, num_random: int, num_batch: int, human_negative_weight: float,
               seed: Optional[int] = None) -> Tuple[tf.Tensor, dict]:
    """The DPSR hinge loss (see the module docstring).

    Args:
      batch_scores: [B, B] float32 S[i, j] = score(q_i, g_j).
      random_scores: [B, R] float32.
      item_rows: [B] int64; random_rows: [R] int64.
      labels: [B] float32.
      queries: [B] tf.string or None (then no same-query masking and no human negatives).
      margin, num_random, num_batch, human_negative_weight: see ModelConfig.
      seed: op seed of the batch-negative draw.

    Returns:
      (scalar loss, dict of scalar diagnostics: active negatives, human pairs, positives).
    """
    positive = tf.linalg.diag_part(batch_scores)
    is_pos = tf.cast(labels > 0.5, tf.float32)
    batch_valid = batch_negative_candidates(item_rows, labels, queries)
    random_valid = ~tf.equal(item_rows[:, None], random_rows[None, :])
    neg_scores, neg_mask = mixed_negatives(batch_scores, batch_valid, random_scores,
                                           random_valid, num_random, num_batch, seed=seed)
    neg_mask = neg_mask * is_pos[:, None]
    per_example = hinge_terms(positive, neg_scores, neg_mask, margin)
    human = human_negative_mask(labels, queries)
    if human_negative_weight > 0:
        per_example += human_negative_weight * hinge_terms(positive, batch_scores, human, margin)
    num_pos = tf.reduce_sum(is_pos)
    loss = tf.reduce_sum(per_example * is_pos) / tf.maximum(num_pos, 1.0)
    stats = {"negatives_per_positive": tf.reduce_sum(neg_mask) / tf.maximum(num_pos, 1.0),
             "human_negative_pairs": tf.reduce_sum(human),
             "positives": num_pos}
    return loss, stats


def sampled_softmax_loss(batch_scores: tf.Tensor, random_scores: Optional[tf.Tensor],
                         item_rows: tf.Tensor, random_rows: Optional[tf.Tensor],
                         labels: tf.Tensor, queries: Optional[tf.Tensor], *,
                         temperature: float, batch_log_q: Optional[tf.Tensor] = None,
                         random_log_q: Optional[float] = None) -> tf.Tensor:
    """In-batch softmax with logQ correction (Yi et al. 2019; TFRS Retrieval task).

    logits[i, j] = S[i, j] / temperature - log Q_j over the batch's positive items j (and the
    shared random negatives r, with log Q_r = random_log_q). Candidates that are accidental hits
    (same item row or same query as example i, other than j = i) and the items of human negatives
    are masked out. Cross-entropy with target j = i, averaged over the positives.

    Args:
      batch_scores: [B, B] float32.
      random_scores: [B, R] float32 or None.
      item_rows: [B] int64; random_rows: [R] int64 or None.
      labels: [B] float32.
      queries: [B] tf.string or None.
      temperature: > 0.
      batch_log_q: [B] float32 log of the expected count of item j in a batch, or None.
      random_log_q: log(R / num_items) for uniform random negatives, or None.

    Returns:
      scalar float32 loss.
    """
    b = tf.shape(batch_scores)[0]
    eye = tf.eye(b, dtype=tf.bool)
    logits = batch_scores / temperature
    if batch_log_q is not None:
        logits -= batch_log_q[None, :]
    hit = (tf.equal(item_rows[:, None], item_rows[None, :]) | same_query(queries, b)) & ~eye
    col_ok = tf.broadcast_to(labels[None, :] > 0.5, [b, b]) & ~hit
    logits = tf.where(col_ok | eye, logits, tf.fill([b, b], NEG_INF))
    if random_scores is not None:
        rand_logits = random_scores / temperature
        if random_log_q is not None:
            rand_logits -= random_log_q
        rand_hit = tf.equal(item_rows[:, None], random_rows[None, :])
        rand_logits = tf.where(rand_hit, tf.fill(tf.shape(rand_logits), NEG_INF), rand_logits)
        logits = tf.concat([logits, rand_logits], axis=1)
    targets = tf.range(b)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    is_pos = tf.cast(labels > 0.5, tf.float32)
    return tf.reduce_sum(xent * is_pos) / tf.maximum(tf.reduce_sum(is_pos), 1.0)


def streaming_log_q(item_rows: tf.Tensor, num_items: int, step: tf.Tensor, *, decay: float,
                    initial_interval: float) -> Tuple[tf.Tensor, tf.Operation]:
    """Streaming estimate of log(expected count of each item in a batch) (Yi et al. 2019, alg. 1).

    Keeps, per item row, the step it was last seen (A) and a moving average of the steps between
    sightings (B): B <- (1 - decay) B + decay (t - A); A <- t. Q = 1 / B.

    Args:
      item_rows: [B] int64 rows in [0, num_items).
      num_items: table size.
      step: scalar int64 current step (>= 1).
      decay: moving-average rate.
      initial_interval: B before an item is first seen (num_items / batch_size: uniform).

    Returns:
      (log_q [B] float32 from the estimate before this batch, the update op).
    """
    with tf.compat.v1.variable_scope("dpsr/frequency", reuse=tf.compat.v1.AUTO_REUSE):
        last = tf.compat.v1.get_variable(
            "last_step", [num_items], tf.int64, initializer=tf.compat.v1.zeros_initializer(),
            trainable=False)
        interval = tf.compat.v1.get_variable(
            "interval", [num_items], tf.float32,
            initializer=tf.compat.v1.constant_initializer(initial_interval), trainable=False)
    rows = tf.cast(item_rows, tf.int64)
    prev_last = tf.gather(last, rows)
    prev_interval = tf.gather(interval, rows)
    log_q = -tf.math.log(tf.maximum(prev_interval, 1.0))
    step = tf.cast(step, tf.int64)
    elapsed = tf.cast(step - prev_last, tf.float32)
    new_interval = tf.where(prev_last > 0, (1.0 - decay) * prev_interval + decay * elapsed,
                            prev_interval)
    # Both reads happen before either write (graph mode does not order them otherwise).
    with tf.control_dependencies([log_q, new_interval]):
        update = tf.group(
            tf.compat.v1.scatter_update(interval, rows, new_interval),
            tf.compat.v1.scatter_update(last, rows, tf.fill(tf.shape(rows), step)))
    return log_q, update
