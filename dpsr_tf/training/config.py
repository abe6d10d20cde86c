"""TrainConfig: where the data and the model live, and how long and how often to train/evaluate."""
import dataclasses
import os
from typing import Optional, Tuple

from dpsr_tf import config_json
from dpsr_tf.data.pipeline import PseudoQueryMix


# train_steps = 0 (early stopping): the cap is about this many examples per catalog item, at
# least AUTO_MIN_STEPS steps (docs/results.md, "The sweep behind the defaults").
AUTO_EXAMPLES_PER_ITEM = 300
AUTO_MIN_STEPS = 16000
# Full-corpus metrics: not the Estimator's own; the driver's caller supplies them
# (dpsr_tf/evaluation/checkpoint_recall.py).
FULL_CORPUS_METRICS = ("recall@10", "recall@100", "recall@1000")
EARLY_STOPPING_METRICS = ("top10", "top1", "auc_labeled", "loss") + FULL_CORPUS_METRICS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one `dpsr train` job (the same on every task of a cluster).

    Attributes:
      layout_dir: output of `dpsr prepare`.
      model_dir: checkpoints, TensorBoard events, dpsr_config.json.
      batch_size: examples per step per replica (paper: 64; 256 suits the in-batch softmax
        better: docs/results.md, "The sweep behind the defaults").
      train_steps: train exactly this many global steps (no early stopping); 0 = the default
        length rule, early stopping (dpsr_tf/training/early_stopping.py): evaluate on
        eval_split every eval_every_steps, stop once early_stopping_metric has not improved
        on its best by more than early_stopping_min_delta for early_stopping_patience
        evaluations in a row, or at max_train_steps; the checkpoint state then names the best
        evaluation's checkpoint.
      max_train_steps: the early-stopping cap; 0 = auto from the catalog size
        (`auto_train_steps`, resolved by the driver before training and saved resolved).
      eval_every_steps: early stopping: global steps between two evaluations.
      early_stopping_patience: early stopping: evaluations without improvement before stopping.
      early_stopping_metric: one of EARLY_STOPPING_METRICS ("loss" is minimized, the others
        maximized; top10 = the positive ranks in the top 10 among eval_random_negatives
        random items, the paper's Top-10; recall@K = full-corpus Recall@K of the eval split's
        requests as `dpsr evaluate` computes it, supplied by the caller of the training
        driver: dpsr_tf/evaluation/checkpoint_recall.py).
      early_stopping_min_delta: early stopping: an evaluation improves only when it beats the
        best so far by more than this.
      early_stopping_min_steps: early stopping: evaluations before this global step neither
        stop the run nor count as its best (the large-catalog defaults set it to the end of the
        falling pseudo-query share, catalog_scale.py); 0 = from the first evaluation.
      shuffle_buffer: interactions in the shuffle buffer of the training input.
      seed: graph-level seed and input seed (each replica adds its index).
      eval_split: layout split evaluated during training (early stopping's split): the
        validation split carved from the training queries; a layout without one falls back to
        "eval" with a warning (data/eval_set.choice_split).
      eval_batch_size: examples per evaluation batch.
      eval_random_negatives: random items per eval batch for the paper's Top-k (1,024).
      eval_steps: batches per evaluation; None = the whole eval split.
      throttle_secs: at least this long between two evaluations.
      save_checkpoints_steps: checkpoint every this many global steps.
      keep_checkpoint_max: checkpoints kept.
      save_summary_steps: TensorBoard summaries every this many steps.
      log_step_count_steps: progress line (loss, steps/s, examples/s) every this many steps.
      intra_op_threads, inter_op_threads: session thread pools (0 = TensorFlow decides).
      worker_delay_secs: delay before a non-chief worker starts (TensorFlow's default staggers
        workers by 5 s each; 0 starts them at once).
      ready_poll_secs: how often a worker checks whether the chief has initialized the model
        (TensorFlow's default is 30 s, which idles every worker for 30 s at start-up).
      pseudo_query_ratio: share of training examples drawn from the layout's catalog
        pseudo-queries (dpsr_tf/data/pseudo_queries.py) at step 0; 0 = logged interactions
        only; < 0 = auto (`auto_pseudo_query_ratio`: the logged interactions are shown about
        max_log_epochs times over the run, the rest of the budget goes to the catalog). A layout
        without train interactions trains on pseudo-queries alone.
      max_log_epochs: the auto ratio's target number of passes over the logged interactions.
      pseudo_query_final_ratio: the share reached at pseudo_query_decay_steps (linear
        schedule, then constant); < 0 = pseudo_query_ratio throughout.
      pseudo_query_decay_steps: length of the linear schedule in local steps.
      pseudo_query_plateau_ratio: with early stopping, when validation stops improving while
        pseudo-queries make more than this share of the examples, training goes on from the
        last checkpoint with this share (constant) until validation stops improving again; the
        best checkpoint of both phases is kept (docs/training.md). < 0 = stop at the first
        plateau.
      catalog_scaling: on a catalog of catalog_scale.LARGE_CATALOG_ITEMS items or more, the
        driver doubles the tower widths left at their defaults and lets an automatic
        pseudo-query share fall to 0.5 over a quarter of the step budget
        (dpsr_tf/training/catalog_scale.py); False keeps the small-catalog defaults.
      warm_start_from: a checkpoint prefix or model directory whose trainable variables
        initialize the model before step 0 (tf.estimator.WarmStartSettings; the joint PQ
        variables are not taken from it); "" = none. Ignored once model_dir has a checkpoint.
      hard_negatives_from: a trained model directory (on this layout) whose own ranking
        supplies hard negatives (Facebook EBR): before training, `dpsr train` ranks the whole
        catalog for every query of hard_negative_splits with it, draws
        hard_negatives_per_query items from the ranks hard_negative_ranks of each query's
        ranking without its positives, and writes the table into model_dir
        (dpsr_tf/indexing/hard_negatives.py); training joins up to
        ModelConfig.max_hard_negatives of them to every example of the query. "" = off.
      hard_negative_ranks: (first, last) 1-based inclusive rank window of the mining.
      hard_negatives_per_query: items drawn from each query's window.
      hard_negative_splits: comma-separated record splits whose queries are mined ("train",
        "pseudo" or both; never "eval").
      hard_negative_warm_start: with hard_negatives_from and no warm_start_from, initialize the
        towers from hard_negatives_from's checkpoint (False = train from scratch).
      teacher_dir: distillation (dpsr_tf/model/distill.py): a trained model directory on this
        layout or a pretrained encoder directory whose scores the towers also learn to match;
        its embeddings of the catalog and the training queries are computed once and cached
        beside the layout (dpsr_tf/model/distill_cache.py). "" = off.
      teacher_max_queries: training query rows the teacher embeds at most (every logged one
        first, then a seeded draw of pseudo-queries; 0 = all): a pretrained teacher embeds
        about 100 short queries per second on 2 cores.
      distill_weight: weight of the distillation term (KL of the softened score
        distributions over each example's candidates); 0.3 was the best of 0.3, 1 and 3 on the
        synthetic catalog's validation split (docs/results.md, "Distillation").
      distill_temperature: tau of both softened distributions.
      distill_query_weight: `item_side="teacher"` only: weight of 1 - cos(the model's query
        vector, the teacher's) on the queries the teacher embedded (0 = off).
    """

    layout_dir: str
    model_dir: str
    batch_size: int = 256
    train_steps: int = 0
    max_train_steps: int = 0
    eval_every_steps: int = 1000
    early_stopping_patience: int = 2
    early_stopping_metric: str = "top10"
    early_stopping_min_delta: float = 0.001
    early_stopping_min_steps: int = 0
    shuffle_buffer: int = 10000
    seed: int = 0
    eval_split: str = "validation"
    eval_batch_size: int = 256
    eval_random_negatives: int = 1024
    eval_steps: Optional[int] = None
    throttle_secs: int = 60
    save_checkpoints_steps: int = 1000
    keep_checkpoint_max: int = 5
    save_summary_steps: int = 100
    log_step_count_steps: int = 100
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    worker_delay_secs: int = 0
    ready_poll_secs: float = 1.0
    pseudo_query_ratio: float = -1.0
    max_log_epochs: float = 30.0
    pseudo_query_final_ratio: float = -1.0
    pseudo_query_decay_steps: int = 0
    pseudo_query_plateau_ratio: float = -1.0
    warm_start_from: str = ""
    hard_negatives_from: str = ""
    hard_negative_ranks: Tuple[int, ...] = (101, 500)
    hard_negatives_per_query: int = 16
    hard_negative_splits: str = "train,pseudo"
    hard_negative_warm_start: bool = True
    catalog_scaling: bool = True
    teacher_dir: str = ""
    teacher_max_queries: int = 20000
    distill_weight: float = 0.3
    distill_temperature: float = 0.05
    distill_query_weight: float = 0.0

    def __post_init__(self):
        def need(ok, field, what):
            if not ok:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r}: {what}")
        need(bool(self.layout_dir), "layout_dir", "is required (the output of dpsr prepare)")
        need(bool(self.model_dir), "model_dir", "is required")
        need(self.train_steps >= 0, "train_steps", "must be >= 1, or 0 = early stopping")
        need(self.max_train_steps >= 0, "max_train_steps", "must be >= 1, or 0 = auto")
        need(self.eval_every_steps >= 1, "eval_every_steps", "must be >= 1")
        need(self.early_stopping_patience >= 1, "early_stopping_patience", "must be >= 1")
        need(self.early_stopping_metric in EARLY_STOPPING_METRICS, "early_stopping_metric",
             f"choose one of {EARLY_STOPPING_METRICS}")
        need(self.early_stopping_min_delta >= 0, "early_stopping_min_delta", "must be >= 0")
        need(self.early_stopping_min_steps >= 0, "early_stopping_min_steps", "must be >= 0")
        for field in ("batch_size", "eval_batch_size", "save_checkpoints_steps",
                      "keep_checkpoint_max", "save_summary_steps", "log_step_count_steps",
                      "shuffle_buffer"):
            need(getattr(self, field) >= 1, field, "must be >= 1")
        need(self.eval_random_negatives >= 0, "eval_random_negatives", "must be >= 0")
        need(self.eval_steps is None or self.eval_steps >= 1, "eval_steps",
             "must be >= 1 or None (whole split)")
        need(self.ready_poll_secs > 0, "ready_poll_secs", "must be > 0")
        need(self.pseudo_query_ratio <= 1.0, "pseudo_query_ratio",
             "must be in [0, 1] (< 0 = auto)")
        need(self.max_log_epochs > 0, "max_log_epochs", "must be > 0")
        need(self.pseudo_query_final_ratio <= 1.0, "pseudo_query_final_ratio",
             "must be <= 1 (< 0 = keep pseudo_query_ratio)")
        need(self.pseudo_query_decay_steps >= 0, "pseudo_query_decay_steps", "must be >= 0")
        need(self.pseudo_query_plateau_ratio <= 1.0, "pseudo_query_plateau_ratio",
             "must be in [0, 1] (< 0 = off)")
        for field in ("throttle_secs", "intra_op_threads", "inter_op_threads",
                      "worker_delay_secs"):
            need(getattr(self, field) >= 0, field, "must be >= 0")
        object.__setattr__(self, "hard_negative_ranks",
                           tuple(int(r) for r in self.hard_negative_ranks))
        ranks = self.hard_negative_ranks
        need(len(ranks) == 2 and 1 <= ranks[0] <= ranks[1], "hard_negative_ranks",
             "--hard_negative_ranks=FIRST,LAST with 1 <= FIRST <= LAST, e.g. 101,500")
        need(self.hard_negatives_per_query >= 1, "hard_negatives_per_query", "must be >= 1")
        splits = self.hard_negative_split_names
        need(bool(splits) and "eval" not in splits, "hard_negative_splits",
             "--hard_negative_splits: comma-separated train and/or pseudo (never eval: its "
             "queries would be trained on)")
        need(self.teacher_max_queries >= 0, "teacher_max_queries", "must be >= 0 (0 = all)")
        need(self.distill_weight >= 0, "distill_weight", "must be >= 0")
        need(self.distill_temperature > 0, "distill_temperature", "must be > 0")
        need(self.distill_query_weight >= 0, "distill_query_weight", "must be >= 0")
        need(not self.teacher_dir or
             os.path.abspath(self.teacher_dir) != os.path.abspath(self.model_dir),
             "teacher_dir", "must be another directory than --model_dir (the teacher is a "
             "finished model; the student writes its own checkpoints)")
        need(not self.hard_negatives_from or
             os.path.abspath(self.hard_negatives_from) != os.path.abspath(self.model_dir),
             "hard_negatives_from", "must be another model directory than --model_dir (the "
             "trained model to mine with; the new run writes its own checkpoints)")

    @property
    def hard_negative_split_names(self) -> Tuple[str, ...]:
        """hard_negative_splits as a tuple of split names."""
        return tuple(s.strip() for s in self.hard_negative_splits.split(",") if s.strip())

    @property
    def effective_warm_start(self) -> str:
        """The checkpoint or model directory the towers start from ("" = none):
        warm_start_from, else hard_negatives_from when hard_negative_warm_start."""
        if self.warm_start_from:
            return self.warm_start_from
        if self.hard_negatives_from and self.hard_negative_warm_start:
            return self.hard_negatives_from
        return ""

    @property
    def stops_early(self) -> bool:
        """True when the length is the early-stopping rule (train_steps = 0)."""
        return not self.train_steps

    @property
    def step_budget(self) -> int:
        """The most global steps this config trains: train_steps, or the early-stopping cap
        (call resolved(num_items) first when both are 0)."""
        budget = self.train_steps or self.max_train_steps
        if not budget:
            raise ValueError("TrainConfig.max_train_steps=0 (auto): call resolved(num_items) "
                             "first")
        return budget

    def auto_train_steps(self, num_items: int) -> int:
        """The early-stopping cap: steps that show about AUTO_EXAMPLES_PER_ITEM examples per
        catalog item (rounded to 1,000), at least AUTO_MIN_STEPS. The budget scales with the
        catalog because most examples are pseudo-queries of its items: a large catalog keeps
        gaining where a small one has stopped (docs/results.md, "Queries nobody has typed
        yet").
        """
        steps = AUTO_EXAMPLES_PER_ITEM * num_items / float(self.batch_size)
        return max(AUTO_MIN_STEPS, int(round(steps / 1000.0)) * 1000)

    def resolved(self, num_items: int) -> "TrainConfig":
        """This config with max_train_steps = 0 (auto) replaced by `auto_train_steps` when it
        stops early (train_steps = 0 stays 0: early stopping)."""
        if self.train_steps or self.max_train_steps:
            return self
        return dataclasses.replace(self, max_train_steps=self.auto_train_steps(num_items))

    def auto_pseudo_query_ratio(self, num_train_records: int) -> float:
        """The share of pseudo-queries that shows the R logged train interactions about
        max_log_epochs times in batch_size * train_steps examples, within [0.5, 0.99]:
        1 - max_log_epochs * R / (batch_size * train_steps), clipped; 1 without a log. Why: a
        small log repeated a thousand times is memorized, a large one is worth half the batch
        (docs/results.md, "The sweep behind the defaults").
        """
        if num_train_records <= 0:
            return 1.0
        examples = float(self.batch_size) * float(self.step_budget)
        share = 1.0 - self.max_log_epochs * num_train_records / examples
        return float(min(0.99, max(0.5, share)))

    def pseudo_query_mix(self, num_train_records: int = 0, has_pseudo_queries: bool = True,
                         start_step: int = 0):
        """The dpsr_tf.data.pipeline.PseudoQueryMix of these settings (the auto ratio needs the
        layout's number of train records; it is 0 for a layout without pseudo-queries, which
        an explicit ratio > 0 makes an error in the pipeline). start_step: local steps already
        trained (a resumed run continues the schedule)."""
        ratio = self.pseudo_query_ratio
        if ratio < 0:
            ratio = (self.auto_pseudo_query_ratio(num_train_records) if has_pseudo_queries
                     else 0.0)
        final = None if self.pseudo_query_final_ratio < 0 else self.pseudo_query_final_ratio
        return PseudoQueryMix(ratio, final, self.pseudo_query_decay_steps, start_step)

    def to_dict(self) -> dict:
        return config_json.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "TrainConfig":
        return config_json.from_dict(cls, data, source)

    def to_json(self) -> str:
        return config_json.to_json(self)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "TrainConfig":
        return config_json.from_json(cls, text, source)
