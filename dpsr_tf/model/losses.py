"""Losses of DPSR: the attention hinge loss with mixed negatives and human supervision, and the
in-batch sampled softmax with logQ correction (for comparison).

Notation (per batch): B examples; example i has query q_i, item g_i and label y_i (1 = click or
human positive, 0 = human negative). S[i, j] = score(q_i, g_j) (soft dot product, [B, B]);
R[i, r] = score(q_i, n_r) for the R random negatives shared by the batch ([B, R]).

Hinge loss (paper §4.4-4.5), averaged over the positives of the batch, with h(s) =
max(0, delta - S[i, i] + s):
  L_i = (1 - alpha) * mean_{j in V_i} h(S[i, j]) + alpha * mean_{r in R_i} h(R[i, r])
        + w_h * mean_{k in H_i} h(s(q_i, k))
  V_i: ALL the batch negatives of example i: the other positives j of the batch with
       g_j != g_i and q_j != q_i; R_i: ALL the shared random negatives other than g_i
       (§4.4.3: the two sets are weighted by 1 - alpha and alpha, not subsampled);
  H_i: the human negatives of q_i (§4.5): those joined from the layout's per-query table,
       plus any label-0 example of the batch with the same query text (eval splits).
  With mined hard negatives (`dpsr train --hard_negatives_from`), a further term
        + w_x * mean_{k in X_i} h(s(q_i, k)),
  X_i: the hard negatives of q_i joined from the mined per-query table (items the trained
       model ranked in a window such as 101-500 for q_i, not its positives).
  An empty set contributes 0.

In the sampled softmax, human and hard negatives join the example's candidates with logit
s / T + log(w_h) and s / T + log(w_x) (no logQ correction: they are not drawn by frequency).
"""
import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

NEG_INF = -1e9


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


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """[B]: sum_k mask * values / max(1, sum_k mask) over the last axis."""
    mask = tf.cast(mask, values.dtype)
    return tf.reduce_sum(mask * values, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def human_negative_mask(labels: tf.Tensor, queries: Optional[tf.Tensor]) -> tf.Tensor:
    """[B, B] float32: 1 where example i is a positive and k a human negative of the same query."""
    b = tf.shape(labels)[0]
    pos = labels > 0.5
    neg = labels < 0.5
    return tf.cast(pos[:, None] & neg[None, :] & same_query(queries, b), tf.float32)


def human_negatives(batch_scores: tf.Tensor, labels: tf.Tensor, queries: Optional[tf.Tensor],
                    table_scores: Optional[tf.Tensor] = None,
                    table_mask: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """The human negatives of each example: in-batch same-query label-0 examples + the table's.

    Args:
      batch_scores: [B, B] float32 S[i, j].
      labels: [B] float32.
      queries: [B] tf.string or None.
      table_scores: [B, H] float32 scores of the query's joined human negatives, or None.
      table_mask: [B, H] float32, 1 where a joined negative exists.

    Returns:
      (scores [B, B + H], mask [B, B + H] float32), mask 0 for non-positive examples.
    """
    scores, mask = batch_scores, human_negative_mask(labels, queries)
    if table_scores is not None:
        is_pos = tf.cast(labels > 0.5, tf.float32)
        scores = tf.concat([scores, table_scores], axis=1)
        mask = tf.concat([mask, tf.cast(table_mask, tf.float32) * is_pos[:, None]], axis=1)
    return scores, mask


def hinge_loss(batch_scores: tf.Tensor, random_scores: tf.Tensor, item_rows: tf.Tensor,
               random_rows: tf.Tensor, labels: tf.Tensor, queries: Optional[tf.Tensor], *,
               margin: float, alpha: float, human_negative_weight: float,
               human_scores: Optional[tf.Tensor] = None,
               human_mask: Optional[tf.Tensor] = None,
               hard_scores: Optional[tf.Tensor] = None,
               hard_mask: Optional[tf.Tensor] = None,
               hard_negative_weight: float = 1.0) -> Tuple[tf.Tensor, dict]:
    """The DPSR hinge loss (see the module docstring).

    Args:
      batch_scores: [B, B] float32 S[i, j] = score(q_i, g_j).
      random_scores: [B, R] float32 (R may be 0).
      item_rows: [B] int64; random_rows: [R] int64.
      labels: [B] float32.
      queries: [B] tf.string or None (then no same-query masking and no in-batch human
        negatives).
      margin, alpha, human_negative_weight: see ModelConfig.
      human_scores, human_mask: [B, H] scores of the joined human negatives of each example's
        query and their mask (or None).
      hard_scores, hard_mask: [B, X] scores of the joined mined hard negatives and their mask
        (or None); hard_negative_weight: their weight w_x.

    Returns:
      (scalar loss, dict of scalar diagnostics: batch and random negatives per positive, human
      pairs used, hard pairs used (with hard negatives), positives).
    """
    positive = tf.linalg.diag_part(batch_scores)
    is_pos = tf.cast(labels > 0.5, tf.float32)
    batch_valid = tf.cast(batch_negative_candidates(item_rows, labels, queries), tf.float32)
    random_valid = tf.cast(~tf.equal(item_rows[:, None], random_rows[None, :]), tf.float32)
    per_example = tf.zeros_like(positive)
    if alpha < 1:
        per_example += (1.0 - alpha) * _masked_mean(
            tf.nn.relu(margin - positive[:, None] + batch_scores), batch_valid)
    if alpha > 0:
        per_example += alpha * _masked_mean(
            tf.nn.relu(margin - positive[:, None] + random_scores), random_valid)
    h_scores, h_mask = human_negatives(batch_scores, labels, queries, human_scores, human_mask)
    if human_negative_weight > 0:
        per_example += human_negative_weight * _masked_mean(
            tf.nn.relu(margin - positive[:, None] + h_scores), h_mask)
    x_mask = None
    if hard_scores is not None:
        x_mask = tf.cast(hard_mask, tf.float32) * is_pos[:, None]
        if hard_negative_weight > 0:
            per_example += hard_negative_weight * _masked_mean(
                tf.nn.relu(margin - positive[:, None] + hard_scores), x_mask)
    num_pos = tf.reduce_sum(is_pos)
    denominator = tf.maximum(num_pos, 1.0)
    loss = tf.reduce_sum(per_example * is_pos) / denominator
    stats = {"batch_negatives_per_positive":
             tf.reduce_sum(batch_valid * is_pos[:, None]) / denominator,
             "random_negatives_per_positive":
             tf.reduce_sum(random_valid * is_pos[:, None]) / denominator,
             "human_negative_pairs": tf.reduce_sum(h_mask),
             "positives": num_pos}
    if x_mask is not None:
        stats["hard_negative_pairs"] = tf.reduce_sum(x_mask)
    return loss, stats


def head_win_shares(query_heads: tf.Tensor, items: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Share of the batch's positives won by each query head (a head-collapse diagnostic).

    Head h wins positive i when e_i^h . g_i is the largest of its m head scores (the first
    head on a tie), i.e. the head the servable's max-over-heads rule credits with the item.

    Args:
      query_heads: [B, m, d] float32 query heads e_i^h.
      items: [B, d] float32 the examples' own items g_i.
      labels: [B] float32, 1 = positive (label-0 examples are left out).

    Returns:
      [m] float32 shares summing to 1 (all 0 when the batch has no positive).
    """
    dots = tf.einsum("bmd,bd->bm", query_heads, items)                      # [B, m]
    winner = tf.one_hot(tf.argmax(dots, axis=1), tf.shape(query_heads)[1])  # [B, m]
    is_pos = tf.cast(labels > 0.5, tf.float32)
    wins = tf.reduce_sum(winner * is_pos[:, None], axis=0)
    return wins / tf.maximum(tf.reduce_sum(is_pos), 1.0)


# Temperature of the balance term's attention when the model's beta is 0 (the max over heads
# has no gradient to spread): the default beta.
BALANCE_BETA_WHEN_MAX = 0.1


def head_balance_loss(query_heads: tf.Tensor, items: tf.Tensor, labels: tf.Tensor,
                      beta: float) -> tf.Tensor:
    """Keeps every query head in use: m * sum_h f_h * P_h over the batch's positives.

    f_h is the share of positives head h wins (`head_win_shares`, held constant) and P_h the
    mean attention weight head h gets on them (softmax of the head scores / beta). The term is
    1 when usage is uniform and m when one head wins everything; its gradient lowers the
    attention on the heads that win most, i.e. raises the others' scores on those positives,
    so a head that lost every positive still learns (Switch Transformer's load balancing,
    applied to the heads of the soft dot product). Without it one head wins every positive
    and the rest go dead: the attention gives a losing head almost no gradient.

    Args:
      query_heads: [B, m, d] float32.
      items: [B, d] float32 the examples' own items.
      labels: [B] float32, 1 = positive.
      beta: the model's attention temperature (0 -> BALANCE_BETA_WHEN_MAX).

    Returns:
      scalar float32 (0 when the batch has no positive).
    """
    dots = tf.einsum("bmd,bd->bm", query_heads, items)                      # [B, m]
    attention = tf.nn.softmax(dots / (beta if beta > 0 else BALANCE_BETA_WHEN_MAX), axis=1)
    is_pos = tf.cast(labels > 0.5, tf.float32)
    usage = tf.reduce_sum(attention * is_pos[:, None], axis=0) / tf.maximum(
        tf.reduce_sum(is_pos), 1.0)                                         # [m]
    shares = tf.stop_gradient(head_win_shares(query_heads, items, labels))
    return tf.cast(tf.shape(query_heads)[1], tf.float32) * tf.reduce_sum(shares * usage)


def annealed_beta(beta: float, final_beta: float, anneal_steps: int,
                  step: tf.Tensor) -> tf.Tensor:
    """Scalar float32: beta * (final_beta / beta) ** min(1, step / anneal_steps), a geometric
    fall from beta at step 0 to final_beta at anneal_steps and after."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(anneal_steps), 1.0)
    return float(beta) * tf.pow(float(final_beta) / float(beta), progress)


def head_assignment_loss(query_heads: tf.Tensor, items: tf.Tensor, labels: tf.Tensor,
                         beta) -> tf.Tensor:
    """mean_i H(w_i) - H(mean_i w_i) over the batch's positives (entropies in nats).

    w_i is positive i's attention over the m heads (softmax of e_i^h . g_i / beta). The first
    term is low when every positive picks one head, the second high when the batch uses every
    head equally: minimizing both spreads the positives over the heads without asking the
    heads to be alike (the head-balance term is satisfied by heads that are copies). In
    [-log m, log m]; -log m when each positive has one head and the heads share the batch
    evenly.

    Args:
      query_heads: [B, m, d] float32.
      items: [B, d] float32 the examples' own items.
      labels: [B] float32, 1 = positive.
      beta: the attention temperature > 0 (float or scalar tensor).

    Returns:
      scalar float32 (0 when the batch has no positive).
    """
    dots = tf.einsum("bmd,bd->bm", query_heads, items)
    log_w = tf.nn.log_softmax(dots / beta, axis=1)
    w = tf.exp(log_w)
    is_pos = tf.cast(labels > 0.5, tf.float32)
    count = tf.maximum(tf.reduce_sum(is_pos), 1.0)
    per_example = -tf.reduce_sum(w * log_w, axis=1)
    usage = tf.reduce_sum(w * is_pos[:, None], axis=0) / count
    usage_entropy = -tf.reduce_sum(usage * tf.math.log(tf.maximum(usage, 1e-12)))
    has_pos = tf.cast(tf.reduce_sum(is_pos) > 0, tf.float32)
    return has_pos * (tf.reduce_sum(per_example * is_pos) / count - usage_entropy)


def head_capacity(num_positives: int, num_heads: int, slack: float) -> int:
    """Most positives one head may take in a batch: ceil(P * (1 + slack) / m), at least 1."""
    return max(1, int(math.ceil(num_positives * (1.0 + slack) / num_heads - 1e-9)))


def balanced_assignment_np(dots: np.ndarray, positive: np.ndarray, slack: float) -> np.ndarray:
    """Greedy capacity-constrained hard assignment of positives to heads (mixture-of-experts
    routing with a capacity): the positives in order of confidence (best head score minus the
    second best, ties by row), each to its best head that still has room, a head taking at
    most `head_capacity(P, m, slack)` of the batch's P positives.

    Args:
      dots: [B, m] float e_i^h . g_i.
      positive: [B] bool, the rows to assign (others get no head).

    Returns:
      [B, m] float32 one-hot rows (all zero for a non-positive row).
    """
    b, m = dots.shape
    out = np.zeros((b, m), np.float32)
    rows = np.flatnonzero(positive)
    if not len(rows):
        return out
    cap = head_capacity(len(rows), m, slack)
    ordered = -np.sort(-dots[rows], axis=1)
    margin = ordered[:, 0] - (ordered[:, 1] if m > 1 else 0.0)
    load = np.zeros(m, np.int64)
    for i in rows[np.argsort(-margin, kind="stable")]:
        for h in np.argsort(-dots[i], kind="stable"):
            if load[h] < cap:
                out[i, h] = 1.0
                load[h] += 1
                break
    return out


def balanced_positive_scores(query_heads: tf.Tensor, items: tf.Tensor, labels: tf.Tensor,
                             slack: float) -> tf.Tensor:
    """[B] float32: each positive's score on the head it is assigned to (hard EM with a
    capacity, `balanced_assignment_np`), the other rows' max over heads.

    The assignment is held constant, so a positive's gradient reaches only its own head: the
    heads cannot all move toward every click (they would stay copies), and no head can take
    the whole batch (it would leave the others dead), so each head follows the clicks it is
    nearest to, as k-means does.
    """
    dots = tf.einsum("bmd,bd->bm", query_heads, items)                      # [B, m]
    positive = labels > 0.5
    assign = tf.numpy_function(
        lambda d, p: balanced_assignment_np(d, p, float(slack)),
        [tf.stop_gradient(dots), positive], tf.float32, stateful=False)
    assign = tf.reshape(assign, tf.shape(dots))
    assigned = tf.reduce_sum(assign * dots, axis=1)
    return tf.where(positive, assigned, tf.reduce_max(dots, axis=1))


def _cross_entropy_first(logits: tf.Tensor) -> tf.Tensor:
    """[B]: softmax cross-entropy of each row with target column 0."""
    return tf.reduce_logsumexp(logits, axis=1) - logits[:, 0]


def sampled_softmax_loss(batch_scores: tf.Tensor, random_scores: Optional[tf.Tensor],
                         item_rows: tf.Tensor, random_rows: Optional[tf.Tensor],
                         labels: tf.Tensor, queries: Optional[tf.Tensor], *,
                         temperature: float, alpha: float = 0.0,
                         batch_log_q: Optional[tf.Tensor] = None,
                         random_log_q: Optional[float] = None,
                         human_scores: Optional[tf.Tensor] = None,
                         human_mask: Optional[tf.Tensor] = None,
                         human_negative_weight: float = 1.0,
                         hard_scores: Optional[tf.Tensor] = None,
                         hard_mask: Optional[tf.Tensor] = None,
                         hard_negative_weight: float = 1.0) -> Tuple[tf.Tensor, dict]:
    """In-batch softmax with logQ correction (Yi et al. 2019; TFRS Retrieval task).

    Batch term: logits[i, j] = S[i, j] / temperature - log Q_j over the batch's positive items
    j; candidates that are accidental hits (same item row or same query as example i, other
    than j = i) and the items of label-0 examples are masked out; the human negatives of q_i
    join as extra candidates with logit s / temperature + log(human_negative_weight), its mined
    hard negatives with logit s / temperature + log(hard_negative_weight).
    Cross-entropy with target j = i.
    Random term (random_scores given): the positive against the shared random negatives
    (log Q_r = random_log_q), the example's own item masked.
    Loss = (1 - alpha) * batch term + alpha * random term (batch term alone without random
    negatives), averaged over the positives.

    Args:
      batch_scores: [B, B] float32.
      random_scores: [B, R] float32 or None.
      item_rows: [B] int64; random_rows: [R] int64 or None.
      labels: [B] float32.
      queries: [B] tf.string or None.
      temperature: > 0.
      alpha: weight of the random term.
      batch_log_q: [B] float32 log of the expected count of item j in a batch, or None.
      random_log_q: log(R / num_items) for uniform random negatives, or None.
      human_scores, human_mask: [B, H] scores of the joined human negatives and their mask.
      human_negative_weight: > 0 to use them.
      hard_scores, hard_mask: [B, X] scores of the joined mined hard negatives and their mask;
      hard_negative_weight: > 0 to use them.

    Returns:
      (scalar float32 loss, dict of scalar diagnostics).
    """
    b = tf.shape(batch_scores)[0]
    eye = tf.eye(b, dtype=tf.bool)
    logits = batch_scores / temperature
    if batch_log_q is not None:
        logits -= batch_log_q[None, :]
    hit = (tf.equal(item_rows[:, None], item_rows[None, :]) | same_query(queries, b)) & ~eye
    col_ok = tf.broadcast_to(labels[None, :] > 0.5, [b, b]) & ~hit
    logits = tf.where(col_ok | eye, logits, tf.fill([b, b], NEG_INF))
    positive = tf.linalg.diag_part(logits)
    # Target first: [positive, every column (the positive's own column masked), human].
    parts = [positive[:, None], tf.where(eye, tf.fill([b, b], NEG_INF), logits)]
    is_pos = tf.cast(labels > 0.5, tf.float32)
    stats = {}
    if human_scores is not None and human_negative_weight > 0:
        h_logits = human_scores / temperature + tf.math.log(float(human_negative_weight))
        h_mask = tf.cast(human_mask, tf.float32) * is_pos[:, None]
        parts.append(tf.where(h_mask > 0, h_logits, tf.fill(tf.shape(h_logits), NEG_INF)))
        stats["human_negative_pairs"] = tf.reduce_sum(h_mask)
    if hard_scores is not None:
        x_mask = tf.cast(hard_mask, tf.float32) * is_pos[:, None]
        stats["hard_negative_pairs"] = tf.reduce_sum(x_mask)
        if hard_negative_weight > 0:
            x_logits = hard_scores / temperature + tf.math.log(float(hard_negative_weight))
            parts.append(tf.where(x_mask > 0, x_logits, tf.fill(tf.shape(x_logits), NEG_INF)))
    xent = _cross_entropy_first(tf.concat(parts, axis=1))
    if random_scores is not None and alpha > 0:
        rand_logits = random_scores / temperature
        if random_log_q is not None:
            rand_logits -= random_log_q
        rand_hit = tf.equal(item_rows[:, None], random_rows[None, :])
        rand_logits = tf.where(rand_hit, tf.fill(tf.shape(rand_logits), NEG_INF), rand_logits)
        own = tf.linalg.diag_part(batch_scores) / temperature
        if random_log_q is not None:
            own -= random_log_q
        rand_xent = _cross_entropy_first(tf.concat([own[:, None], rand_logits], axis=1))
        xent = (1.0 - alpha) * xent + alpha * rand_xent
    loss = tf.reduce_sum(xent * is_pos) / tf.maximum(tf.reduce_sum(is_pos), 1.0)
    stats["positives"] = tf.reduce_sum(is_pos)
    return loss, stats


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
