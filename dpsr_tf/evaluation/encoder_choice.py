"""Choosing a servable's encoder list weight on the validation split (`dpsr export
--encoder_weight=-1`, the default on a build with an encoder list).

The served list the choice fuses is the one the servable will serve: the dense list with the
chosen dense feedback, fused with BM25 by the chosen fusion, from the queries as the chosen
speller setting reads them. Every candidate of CANDIDATES fuses the encoder list with it
(search/encoder_fusion.py fuse_np = the graph's fuse) and is scored on the split; "no encoder
list" is the first candidate, so a tie keeps the servable without the encoder's cost. The split
is data/eval_set.choice_split's: carved from the training queries, never the reported ones.
"""
import dataclasses
from typing import Callable, List, Optional, Sequence

import numpy as np

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_scores
from dpsr_tf.evaluation import hybrid as hybrid_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation.spelled_layout import layout_of, spelled_layout
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig, fuse_np
from dpsr_tf.search.fusion import FusionConfig

# "No encoder list" first: on a tie the earlier candidate is kept.
CANDIDATES = (EncoderFusionConfig(),) + tuple(
    EncoderFusionConfig(weight=w, rrf_k=k)
    for k in (10.0, 30.0, 60.0) for w in (0.25, 0.5, 0.75, 1.0))


@dataclasses.dataclass(frozen=True)
class EncoderChoice:
    """The chosen encoder fusion, and every candidate's {"encoder_fusion": JSON, "score",
    metric: value} in grid order."""

    config: EncoderFusionConfig
    score: float
    objective: tuple
    requests: int
    split: str
    candidates: List[dict]

    def to_json(self) -> dict:
        return {"encoder_fusion": self.config.to_json(), "score": self.score,
                "objective": list(self.objective), "requests": self.requests,
                "split": self.split, "candidates": self.candidates}

    def table(self) -> str:
        lines = [f"{'encoder list':44s} {'score':>7s} "
                 + " ".join(f"{m:>11s}" for m in self.objective)]
        for row in self.candidates:
            cfg = EncoderFusionConfig.from_json(row["encoder_fusion"])
            mark = " <- chosen" if cfg == self.config else ""
            lines.append(f"{cfg.describe():44s} {row['score']:7.4f} "
                         + " ".join(f"{row[m]:11.4f}" for m in self.objective) + mark)
        return "\n".join(lines)


def choose_encoder_fusion(served_rows: np.ndarray, encoder_rows: np.ndarray, eval_set, k: int,
                          objective: Sequence[str],
                          candidates: Sequence[EncoderFusionConfig] = CANDIDATES,
                          split: str = "") -> EncoderChoice:
    """The candidate whose fused lists score best on the split (module docstring).

    Args:
      served_rows: [Q, k] the served list of every request (item rows, -1 pads).
      encoder_rows: [Q, *] the encoder list of every request.
      eval_set: the split's EvalSet; k: the fused list's length.
      objective: metrics of metrics.retrieval_metrics whose mean is the score.

    Raises:
      ValueError: no candidate, or a bad one.
    """
    if not candidates:
        raise ValueError("choose_encoder_fusion needs at least one candidate")
    relevant = (eval_set.relevant_splits, eval_set.relevant_rows, eval_set.relevant_gains)
    recall_ks = sorted({int(m.split("@")[1]) for m in objective if m.startswith("recall@")})
    best, rows_out = None, []
    for cfg in candidates:
        cfg.validate()
        rows = (fuse_np(served_rows, encoder_rows, k, cfg)[1] if cfg.enabled
                else served_rows)
        got = metrics_lib.retrieval_metrics(rows, *relevant, recall_ks=recall_ks or (10,))
        missing = [m for m in objective if m not in got]
        if missing:
            raise ValueError(f"objective metrics {missing} are not among {sorted(got)}")
        score = float(np.mean([got[m] for m in objective]))
        rows_out.append({"encoder_fusion": cfg.to_json(), "score": score,
                         **{m: float(got[m]) for m in objective}})
        if best is None or score > best[1]:
            best = (cfg, score)
    return EncoderChoice(config=best[0], score=best[1], objective=tuple(objective),
                         requests=len(served_rows), split=split, candidates=rows_out)


def choose_for_index(model_dir: str, index_dir: str, fusion: FusionConfig,
                     feedback: FeedbackConfig, spelling: bool, objective: Sequence[str],
                     layout_dir: Optional[str] = None, checkpoint: Optional[str] = None,
                     nprobe: Optional[int] = None, hybrid: bool = True,
                     candidates: Sequence[EncoderFusionConfig] = CANDIDATES,
                     log: Callable[[str], None] = print) -> EncoderChoice:
    """choose_encoder_fusion on the validation split with the lists of a model's index build,
    served as `fusion`, `feedback` and `spelling` (hybrid False: the dense list alone) serve.

    Raises:
      FileNotFoundError, ValueError: as hybrid.open_hybrid; a build without an encoder list.
    """
    layout = layout_of(model_dir, layout_dir)
    split = eval_set_lib.choice_split(layout, log)
    cfg = evaluate_lib.EvalConfig(split=split, num_random=0)
    with spelled_layout(layout, index_dir if spelling else None, log=log) as view:
        run = hybrid_lib.open_hybrid(model_dir, index_dir, view or layout_dir, cfg, checkpoint,
                                     nprobe, log, feedback)
        served_rows = run.dense_rows
        if hybrid:
            lex_scores, lex_rows = run.lexical_lists(fusion)
            _, served_rows, _ = fusion_scores.fused_with_source(
                run.dense_scores, run.dense_rows, lex_scores, lex_rows, run.k, fusion)
        _, encoder_rows = hybrid_lib.encoder_lists(run, index_dir)
    log(f"choosing the encoder list's weight on {len(run.eval_set)} requests of split {split} "
        f"({len(candidates)} candidates, objective mean of {', '.join(objective)})")
    return choose_encoder_fusion(served_rows, encoder_rows, run.eval_set, run.k, objective,
                                 candidates, split)
