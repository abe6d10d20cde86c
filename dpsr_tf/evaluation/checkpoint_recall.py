"""Full-corpus recall of a checkpoint on the layout's validation split, for early stopping.

    recall_of = checkpoint_recall.evaluator(model_dir, split="validation", ks=(100,))
    recall_of("/m/model.ckpt-3000")   # -> {"recall@100": float}

`dpsr train --early_stopping_metric=recall@100` watches this instead of the in-batch Top-10, which
can stop improving while full-corpus recall still rises (docs/training.md, "Training length: early
stopping"). It is `dpsr evaluate`'s recall (the model's own soft dot product over heads, exact brute
force over every item; the same relevant items), without the labelled pairs' Top-k and AUC. It lives
here, above training, and reaches the early-stopping rule as a callable that `dpsr train` passes in
(training does not import evaluation).
"""
import time
from typing import Callable, Dict, Sequence

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation.evaluate import EmbeddingScorer
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.training.config import FULL_CORPUS_METRICS

PREFIX = "recall@"


def for_training(train, log: Callable[[str], None] = lambda _: None):
    """The checkpoint_metrics a TrainConfig's early stopping needs (training.driver
    .train_and_evaluate): an evaluator of its "recall@K" metric, or None for the others."""
    metric = train.early_stopping_metric
    if metric not in FULL_CORPUS_METRICS:
        return None
    return evaluator(train.model_dir, train.eval_split, (int(metric[len(PREFIX):]),), log)


def evaluator(model_dir: str, split: str = "validation", ks: Sequence[int] = (100,),
              log: Callable[[str], None] = lambda _: None) -> Callable[[str], Dict[str, float]]:
    """A function checkpoint path -> {"recall@K": value} for each K of ks, on `split` of the
    layout model_dir's model was trained on (read when the function is first called: the
    model directory's config is written when training starts). The split is resolved as the
    training driver resolves TrainConfig.eval_split (eval_set.watched_split: "validation"
    reads "eval" on a layout without a validation split)."""
    state = {}

    def recall_of(checkpoint: str) -> Dict[str, float]:
        start = time.monotonic()
        if not state:
            model_config, saved = load_model_config(model_dir)
            spec = layout_lib.load_layout_spec(saved.layout_dir)
            watched = eval_set_lib.watched_split(split, spec, log=lambda _: None)
            state.update(config=model_config, spec=spec, split=watched,
                         eval_set=eval_set_lib.load_eval_set(spec, watched))
        spec, eval_set = state["spec"], state["eval_set"]
        with CheckpointEmbedder(model_dir, checkpoint, state["config"], spec) as embedder:
            scorer = EmbeddingScorer(embedder, spec, eval_set)
        retrieved = metrics_lib.retrieve(scorer.score_requests, len(eval_set), max(ks))
        found = metrics_lib.retrieval_metrics(retrieved, eval_set.relevant_splits,
                                              eval_set.relevant_rows, eval_set.relevant_gains,
                                              recall_ks=tuple(ks))
        out = {f"{PREFIX}{k}": float(found[f"{PREFIX}{k}"]) for k in ks}
        log(f"full-corpus {', '.join(f'{k} {v:.4f}' for k, v in out.items())} on "
            f"{state['split']!r} ({len(eval_set)} requests x {spec.num_items} items, "
            f"{time.monotonic() - start:.1f} s)")
        return out

    return recall_of
