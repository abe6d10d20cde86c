"""The Estimator model_fn of DPSR: towers -> soft dot product -> loss -> optimizer, metrics.

Features follow the input contract of dpsr_tf.data.pipeline (docs/data_format.md, "Input
pipeline"): query side ("query", "query_tokens", "user_*", "user_history"), the example's item
("item_row", "item_tokens", "item_<name>", "label") and the R random negatives shared by the
batch ("neg_item_row", "neg_item_tokens", "neg_item_<name>").

params (dict passed to tf.estimator.Estimator):
  "model_config": ModelConfig, "layout_spec": LayoutSpec; optional "batch_size" (logQ prior,
  progress), "log_every_steps" and "task" (a progress line in the log every so many local
  steps), "distill" (a distill.DistillSettings: the teacher's score-distillation term).
  Optional training features "human_negative_rows" (ragged [B, (h)]) and
  "human_negative_item_*" (the item features of its flat rows) add each query's human
  negatives to the loss (§4.5); "hard_negative_rows" and "hard_negative_item_*" its mined hard
  negatives (`dpsr train --hard_negatives_from`), the same way.
"""
import math
from typing import Mapping

import tensorflow as tf

from dpsr_tf.model import distill, dssm, joint_pq, losses, scoring, searchgcn
from dpsr_tf.model.config import ModelConfig
from dpsr_tf.model.pretrained import encoder as pretrained_encoder
from dpsr_tf.model.progress import ProgressHook
from dpsr_tf.model.towers import item_tower, query_tower

TOP_K = (1, 10)


def _item_features(features: Mapping, prefix: str, layout_spec) -> dict:
    """The item-tower features of the items under `prefix` ("item_" or "neg_item_")."""
    out = {"item_tokens": features[prefix + "tokens"]}
    if prefix + "text" in features:   # raw titles (pretrained text encoders)
        out["item_text"] = features[prefix + "text"]
    for name in layout_spec.item_features:
        out[f"item_{name}"] = features[f"{prefix}{name}"]
    for suffix in ("graph_hop1", "graph_hop1_weight", "graph_hop2", "graph_hop2_weight"):
        if prefix + suffix in features:   # click-graph lists (layouts with a graph)
            out["item_" + suffix] = features[prefix + suffix]
    return out


def _concat_items(a: dict, b: dict) -> dict:
    return {key: tf.concat([a[key], b[key]], axis=0) for key in a}


def _annealed(cfg: ModelConfig) -> bool:
    return cfg.num_heads > 1 and cfg.head_assignment == "annealed"


def _balanced(cfg: ModelConfig) -> bool:
    return cfg.num_heads > 1 and cfg.head_assignment == "balanced"


def loss_beta(cfg: ModelConfig):
    """The attention temperature of the loss: cfg.beta, or with head_assignment "annealed" its
    schedule toward final_beta (a scalar tensor of the global step)."""
    if not _annealed(cfg):
        return cfg.beta
    return losses.annealed_beta(cfg.beta, cfg.final_beta, cfg.beta_anneal_steps,
                                tf.compat.v1.train.get_or_create_global_step())


def _items(item_features: dict, rows: tf.Tensor, cfg: ModelConfig, layout_spec, mode,
           params) -> tf.Tensor:
    """[N, d] embeddings of the items of item_features (layout rows `rows` [N]): the item
    tower's, or with item_side "teacher" the teacher's cached ones (frozen)."""
    if cfg.item_side == "teacher":
        return distill.teacher_item_embeddings(params["distill"], rows)
    return item_tower(item_features, cfg, layout_spec, mode)


def _joined_negative_scores(features: Mapping, query: tf.Tensor, cfg: ModelConfig, layout_spec,
                            mode, params, kind: str = "human", beta=None):
    """Scores of each example's query against its joined per-query negatives: kind "human"
    (the layout's human negatives, §4.5) or "hard" (the mined hard negatives); the item tower
    embeds them (item_side "teacher": the teacher's cached vectors).

    Returns:
      (scores [B, H] float32, mask [B, H] float32) with H the most negatives of any example.
    """
    rows = features[f"{kind}_negative_rows"]                                # ragged [B, (h)]
    items = _items(_item_features(features, f"{kind}_negative_item_", layout_spec),
                   rows.flat_values, cfg, layout_spec, mode, params)       # [N, d]
    if cfg.joint_pq:
        items = joint_pq.quantize(items, joint_pq.pq_variables(
            cfg.embedding_dim, cfg.pq_nlist, cfg.pq_m),
            cfg.pq_codebook_retrieval_gradient)["quantized"]
    heads = tf.gather(query, rows.value_rowids())                           # [N, m, d]
    flat = scoring.paired_soft_dot_product(heads, items,
                                           cfg.beta if beta is None else beta)  # [N]
    scores = rows.with_flat_values(flat).to_tensor(default_value=0.0)
    # A negative that is the example's own positive item (conflicting labels) does not count.
    own = tf.gather(tf.cast(features["item_row"], tf.int64), rows.value_rowids())
    valid = tf.cast(tf.not_equal(rows.flat_values, own), tf.float32)
    mask = rows.with_flat_values(valid).to_tensor(default_value=0.0)
    return scores, mask


def make_optimizer(cfg: ModelConfig):
    if cfg.optimizer == "adagrad":
        return tf.compat.v1.train.AdagradOptimizer(
            cfg.learning_rate, initial_accumulator_value=cfg.adagrad_initial_accumulator)
    if cfg.optimizer == "adam":
        return tf.compat.v1.train.AdamOptimizer(cfg.learning_rate)
    return tf.compat.v1.train.GradientDescentOptimizer(cfg.learning_rate)


def _predict_spec(features, cfg, layout_spec, mode):
    predictions = {}
    if "query_tokens" in features:
        predictions["query_embedding"] = query_tower(features, cfg, layout_spec, mode)
    if "item_tokens" in features:
        if cfg.item_side == "teacher":
            raise ValueError("item_side=teacher: this model has no item tower (its items are "
                             "its teacher's embeddings); embed the catalog with the teacher "
                             "(`dpsr index --encoder_list --encoder_dir=TEACHER "
                             "--encoder_query_dir=THIS_MODEL`)")
        predictions["item_embedding"] = item_tower(_item_features(features, "item_", layout_spec),
                                                   cfg, layout_spec, mode)
    for key in ("item_row", "item_id", "query"):
        if key in features:
            predictions[key] = features[key]
    if not predictions:
        raise KeyError(f"PREDICT needs 'query_tokens' or 'item_tokens'; got {sorted(features)}")
    return tf.estimator.EstimatorSpec(mode, predictions=predictions)


def dpsr_model_fn(features, labels, mode, params):
    """tf.estimator model_fn (see the module docstring for features and params)."""
    del labels  # the contract carries "label" inside features
    cfg: ModelConfig = params["model_config"]
    layout_spec = params["layout_spec"]
    if cfg.model == "dssm":
        dssm.check_layout(layout_spec)
    if mode == tf.estimator.ModeKeys.PREDICT:
        return _predict_spec(features, cfg, layout_spec, mode)

    if mode == tf.estimator.ModeKeys.TRAIN and cfg.graph_query_dropout > 0:
        features = searchgcn.drop_query_graph(features, cfg.graph_query_dropout)
    query = query_tower(features, cfg, layout_spec, mode)                 # [B, m, d]
    pos_items = _item_features(features, "item_", layout_spec)
    neg_items = _item_features(features, "neg_item_", layout_spec)
    all_items = _items(_concat_items(pos_items, neg_items),
                       tf.concat([tf.cast(features["item_row"], tf.int64),
                                  tf.cast(features["neg_item_row"], tf.int64)], axis=0),
                       cfg, layout_spec, mode, params)
    pq_loss = pq_hook = None
    if cfg.joint_pq:
        # The loss scores the items as the exported IVF-PQ index will (straight-through).
        all_items, pq_loss, pq_hook = joint_pq.apply_to_items(
            all_items, cfg, mode, seed=int(params.get("seed", 0)),
            is_chief=bool(params.get("is_chief", True)))
    b = tf.shape(query)[0]
    batch_items, random_items = all_items[:b], all_items[b:]               # [B, d], [R, d]
    beta = loss_beta(cfg)
    batch_scores = scoring.soft_dot_product(query, batch_items, beta)      # [B, B]
    if _balanced(cfg) and mode == tf.estimator.ModeKeys.TRAIN:
        # Hard EM with a capacity: a positive is scored (and pulled) by its assigned head only.
        batch_scores = tf.linalg.set_diag(batch_scores, losses.balanced_positive_scores(
            query, batch_items, tf.cast(features["label"], tf.float32), cfg.head_capacity_slack))
    random_scores = scoring.soft_dot_product(query, random_items, beta)    # [B, R]
    human_scores = human_mask = hard_scores = hard_mask = None
    if "human_negative_rows" in features and cfg.model != "dssm":
        human_scores, human_mask = _joined_negative_scores(features, query, cfg, layout_spec,
                                                           mode, params, beta=beta)
    if "hard_negative_rows" in features and cfg.model != "dssm":
        hard_scores, hard_mask = _joined_negative_scores(features, query, cfg, layout_spec, mode,
                                                         params, kind="hard", beta=beta)
    item_rows = tf.cast(features["item_row"], tf.int64)
    random_rows = tf.cast(features["neg_item_row"], tf.int64)
    label = tf.cast(features["label"], tf.float32)
    queries = features.get("query")

    update_ops = []
    if cfg.model == "dssm":
        negatives, valid = dssm.per_example_negatives(random_scores, random_rows, item_rows,
                                                      cfg.dssm_negatives)
        loss = dssm.softmax_loss(tf.linalg.diag_part(batch_scores), negatives, valid,
                                 cfg.dssm_gamma, weights=tf.cast(label > 0.5, tf.float32))
        stats = {"dssm_softmax": loss}
    elif cfg.loss == "hinge":
        loss, stats = losses.hinge_loss(
            batch_scores, random_scores, item_rows, random_rows, label, queries,
            margin=cfg.margin, alpha=cfg.alpha if cfg.num_negatives else 0.0,
            human_negative_weight=cfg.human_negative_weight, human_scores=human_scores,
            human_mask=human_mask, hard_scores=hard_scores, hard_mask=hard_mask,
            hard_negative_weight=cfg.hard_negative_weight)
    else:
        batch_log_q = random_log_q = None
        num_items = max(1, int(layout_spec.num_items))
        if cfg.softmax_logq_correction:
            step = tf.compat.v1.train.get_or_create_global_step() + 1
            batch_log_q, update = losses.streaming_log_q(
                item_rows, num_items, step, decay=cfg.frequency_decay,
                initial_interval=num_items / float(params.get("batch_size", 64)))
            if mode == tf.estimator.ModeKeys.TRAIN:
                update_ops.append(update)
            if cfg.softmax_random_negatives:
                random_log_q = math.log(cfg.softmax_random_negatives / num_items)
        use_random = cfg.softmax_random_negatives > 0
        loss, stats = losses.sampled_softmax_loss(
            batch_scores, random_scores[:, :cfg.softmax_random_negatives] if use_random else None,
            item_rows, random_rows[:cfg.softmax_random_negatives] if use_random else None,
            label, queries, temperature=cfg.softmax_temperature, alpha=cfg.alpha,
            batch_log_q=batch_log_q, random_log_q=random_log_q, human_scores=human_scores,
            human_mask=human_mask, human_negative_weight=cfg.human_negative_weight,
            hard_scores=hard_scores, hard_mask=hard_mask,
            hard_negative_weight=cfg.hard_negative_weight)

    if pq_loss is not None:
        stats = {**stats, "pq_weighted_distortion": pq_loss}
        loss = loss + pq_loss

    # Paper's Top-k: rank of the positive among the shared random negatives (1,024 in eval);
    # a tie counts against the positive, a random negative that is the positive item not at all.
    positive = tf.linalg.diag_part(batch_scores)
    beaten = tf.reduce_sum(tf.cast(
        (random_scores >= positive[:, None]) & ~tf.equal(item_rows[:, None], random_rows[None, :]),
        tf.float32), axis=1)
    is_pos = tf.cast(label > 0.5, tf.float32)
    hits = {k: tf.cast(beaten < k, tf.float32) for k in TOP_K}

    if mode == tf.estimator.ModeKeys.EVAL:
        metrics = {f"top{k}": tf.compat.v1.metrics.mean(hits[k], weights=is_pos) for k in TOP_K}
        # AUC on the labelled pairs of the split (meaningful when it holds human negatives).
        metrics["auc_labeled"] = tf.compat.v1.metrics.auc(
            label, tf.clip_by_value((positive + 1.0) / 2.0, 0.0, 1.0), num_thresholds=2000,
            summation_method="careful_interpolation")
        return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics)

    # TRAIN
    if params.get("distill") is not None:
        # Teacher embeddings are cached training inputs, not part of the model (distill.py).
        term, distill_stats = distill.distillation_term(params["distill"], features,
                                                        batch_scores, random_scores)
        stats = {**stats, **distill_stats}
        loss = loss + term
        if params["distill"].query_weight > 0:   # item_side "teacher": one space, one head
            term, distill_stats = distill.query_vector_term(params["distill"], features, query)
            stats = {**stats, **distill_stats}
            loss = loss + term
    denominator = tf.maximum(tf.reduce_sum(is_pos), 1.0)
    for k in TOP_K:
        tf.compat.v1.summary.scalar(f"train/top{k}_among_random",
                                    tf.reduce_sum(hits[k] * is_pos) / denominator)
    for name, value in stats.items():
        tf.compat.v1.summary.scalar(f"train/{name}", value)
    if cfg.num_heads > 1:
        # Head collapse shows here while training: one head winning ~every positive.
        shares = losses.head_win_shares(query, batch_items, label)
        for h in range(cfg.num_heads):
            tf.compat.v1.summary.scalar(f"train/head_{h}_share_of_positives", shares[h])
        if _annealed(cfg):
            tf.compat.v1.summary.scalar("train/beta", beta)
            assignment = losses.head_assignment_loss(query, batch_items, label, beta)
            tf.compat.v1.summary.scalar("train/head_assignment", assignment)
            loss = loss + cfg.head_assignment_weight * assignment
        elif cfg.head_balance_weight > 0 and not _balanced(cfg):
            balance = losses.head_balance_loss(query, batch_items, label, cfg.beta)
            tf.compat.v1.summary.scalar("train/balance_of_heads", balance)
            loss = loss + cfg.head_balance_weight * balance
    global_step = tf.compat.v1.train.get_or_create_global_step()
    train_op = _train_op(cfg, loss, global_step)
    if update_ops:
        train_op = tf.group(train_op, *update_ops)
    hooks = [pq_hook] if pq_hook is not None else []
    if params.get("log_every_steps"):
        hooks.append(ProgressHook(loss, int(params.get("batch_size", 0)),
                                  int(params["log_every_steps"]), str(params.get("task", ""))))
    # A pretrained encoder's variables start from its weights when the run starts fresh (a
    # restored checkpoint already holds them).
    init_fn = pretrained_encoder.init_fn_of_graph()
    scaffold = tf.compat.v1.train.Scaffold(init_fn=init_fn) if init_fn is not None else None
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, training_hooks=hooks,
                                      scaffold=scaffold)


def _train_op(cfg: ModelConfig, loss: tf.Tensor, global_step: tf.Tensor):
    """The optimizer's step; a pretrained encoder's variables take their own Adam step at
    pretrained_learning_rate (the towers' learning rate would wreck pretrained weights)."""
    if cfg.text_encoder != "pretrained":
        return make_optimizer(cfg).minimize(loss, global_step=global_step,
                                            colocate_gradients_with_ops=True)
    variables = tf.compat.v1.trainable_variables()
    encoder = [v for v in variables if pretrained_encoder.SCOPE_PART in v.op.name]
    towers = [v for v in variables if pretrained_encoder.SCOPE_PART not in v.op.name]
    if not towers and not encoder:
        raise ValueError("nothing to train: the pretrained encoder is frozen "
                         "(--pretrained_trainable_layers=0) and the towers have no adapters "
                         "(one head, no item or user features); train some encoder layers")
    grads = tf.compat.v1.gradients(loss, towers + encoder, colocate_gradients_with_ops=True)
    steps = []
    if towers:
        steps.append(make_optimizer(cfg).apply_gradients(
            list(zip(grads[:len(towers)], towers)), global_step=global_step))
    if encoder:
        steps.append(tf.compat.v1.train.AdamOptimizer(cfg.pretrained_learning_rate)
                     .apply_gradients(list(zip(grads[len(towers):], encoder)),
                                      global_step=None if towers else global_step))
    return tf.group(*steps)
