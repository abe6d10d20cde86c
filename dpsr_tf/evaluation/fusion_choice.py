"""Choosing a hybrid servable's fusion on the data it is built for.

One fixed fusion cannot suit every catalog: where BM25 is strong (Home Depot) it should weigh
in, where it is weak (the synthetic catalog) it drags the dense list down. `choose_fusion`
scores every candidate of a small grid on the layout's validation split, with the servable's
own lists (the served dense top K through the FAISS shards, the lexical top K through the BM25
shards, fused by fuse_np = the graph's fuse; every candidate is scored on the same two lists
grouped once, evaluation/fusion_scores.py), and keeps the best by OBJECTIVE. The grid holds
"dense only" (lexical weight 0) and "lexical only" (dense weight 0), so on that split the
chosen fusion is never below the better of the two lists by the objective.

The choice (with the dense feedback variant and the speller on or off) is made on the split
data/eval_set.choice_split names: the validation split carved from the training queries, never
the eval split that `dpsr evaluate` reports. Only a layout without a validation split (prepared
before it existed) falls back to the eval split, with a warning.
"""
import contextlib
import dataclasses
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_objective
from dpsr_tf.evaluation import fusion_scores
from dpsr_tf.evaluation import hybrid as hybrid_lib
from dpsr_tf.evaluation import rewrites as rewrites_lib
from dpsr_tf.evaluation import spelled_layout as spelled_layout_lib
from dpsr_tf.evaluation.spelled_layout import layout_of, spelled_layout
from dpsr_tf.rewriting import table as table_lib
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.search.rewrite_merge import RewriteConfig

# The objective's default and its parser live apart, light enough for flag definitions.
OBJECTIVE = fusion_objective.OBJECTIVE
parse_objective = fusion_objective.parse_objective


# The grid, the default first: on a tie the earlier candidate is kept.
CANDIDATES = (FusionConfig(),) + tuple(
    FusionConfig(rrf_k=rrf_k, lexical_weight=w)
    for rrf_k in (5.0, 20.0, 60.0) for w in (0.25, 0.5, 1.0)
    if (rrf_k, w) != (FusionConfig().rrf_k, FusionConfig().lexical_weight)) + tuple(
    # The min-max score blend: where the scores carry more than the ranks (Home Depot's
    # chosen fusion, docs/results.md "Hybrid recall: DPSR and BM25 in one servable").
    FusionConfig(rule="blend", lexical_weight=w) for w in (0.5, 1.0)) + (
    FusionConfig(lexical_weight=0.0),                    # dense only
    FusionConfig(dense_weight=0.0, lexical_weight=1.0))  # lexical only


@dataclasses.dataclass(frozen=True)
class FusionChoice:
    """The chosen fusion and what every candidate scored.

    Attributes:
      config: the chosen FusionConfig.
      objective: the metrics averaged into a candidate's score.
      score: the chosen candidate's score.
      requests: requests of the split it was chosen on.
      split: the layout split it was chosen on ("" where choose_fusion was given the lists).
      candidates: per candidate {"fusion": JSON, "score": float, metric: value, ...}, in grid
        order; with dense feedback variants, each row also has "dense_feedback": JSON, the
        variants in turn.
      feedback: the chosen dense feedback (search/dense_feedback.py; off unless a variant with
        feedback won).
    """

    config: FusionConfig
    objective: tuple
    score: float
    requests: int
    candidates: List[dict]
    feedback: FeedbackConfig = FeedbackConfig()
    split: str = ""

    def to_json(self) -> dict:
        return {"fusion": self.config.to_json(), "objective": list(self.objective),
                "score": self.score, "requests": self.requests, "split": self.split,
                "dense_feedback": self.feedback.to_json(), "candidates": self.candidates}

    def _is_chosen(self, row: dict) -> bool:
        return row["fusion"] == self.config.to_json() and row.get(
            "dense_feedback", FeedbackConfig().to_json()) == self.feedback.to_json()

    def table(self) -> str:
        lines = [f"{'fusion':44s} {'score':>7s} " + " ".join(f"{m:>11s}"
                                                             for m in self.objective)]
        for c in self.candidates:
            mark = " <- chosen" if self._is_chosen(c) else ""
            name = describe(FusionConfig.from_json(c["fusion"]))
            if "dense_feedback" in c:
                name += ", " + FeedbackConfig.from_json(c["dense_feedback"]).describe()
            lines.append(f"{name:44s} "
                         f"{c['score']:7.4f} " + " ".join(f"{c[m]:11.4f}"
                                                          for m in self.objective) + mark)
        return "\n".join(lines)


def describe(cfg: FusionConfig) -> str:
    """A short name: 'dense only', 'lexical only' or 'rrf k=5 dense 1 lexical 0.5'."""
    if cfg.lexical_weight == 0:
        return "dense only"
    if cfg.dense_weight == 0:
        return "lexical only"
    knob = f"k={cfg.rrf_k:g} " if cfg.rule == "rrf" else ""
    return f"{cfg.rule} {knob}dense {cfg.dense_weight:g} lexical {cfg.lexical_weight:g}"


def choose_fusion(dense_scores: np.ndarray, dense_rows: np.ndarray,
                  lexical_lists: Callable[[FusionConfig], tuple], eval_set, k: int,
                  candidates: Sequence[FusionConfig] = CANDIDATES,
                  objective: Sequence[str] = OBJECTIVE) -> FusionChoice:
    """The candidate whose fused lists score best on the split (module docstring).

    Args:
      dense_scores, dense_rows: [Q, k] the served dense list of every request.
      lexical_lists: FusionConfig -> [Q, *] (scores, rows) of the lexical list that fusion
        uses (its lexical_k and lexical_min_score); called once per distinct setting.
      eval_set: the split's EvalSet (Q requests with relevant items).
      k: the fused list's length.
      candidates: the fusions to try (validated), the preferred first.
      objective: metrics (of metrics.retrieval_metrics, cut-offs <= k) whose mean is the score.

    Raises:
      ValueError: no candidate, or an objective metric that the evaluation does not produce.
    """
    if not candidates:
        raise ValueError("choose_fusion needs at least one candidate")
    recall_ks = sorted({int(m.split("@")[1]) for m in objective if m.startswith("recall@")})
    recall_ks = recall_ks or [10]
    produced = sorted([f"recall@{c}" for c in recall_ks]
                      + [f"ndcg@{fusion_scores.NDCG_K}", f"mrr@{fusion_scores.MRR_K}", "requests"])
    missing = [m for m in objective if m not in produced]
    if missing:
        raise ValueError(f"fusion objective metrics {missing} are not among {produced}")
    for cfg in candidates:
        cfg.validate()
    # The candidates that fuse the same lexical list are scored together on it
    # (fusion_scores.py: the lists grouped once); each setting's list is fetched once, in grid
    # order.
    settings: Dict[tuple, List[int]] = {}
    for i, cfg in enumerate(candidates):
        settings.setdefault((cfg.lexical_k, cfg.lexical_min_score), []).append(i)
    values: List[dict] = [{} for _ in candidates]
    for members in settings.values():
        lex_scores, lex_rows = lexical_lists(candidates[members[0]])
        per_request = fusion_scores.candidate_values(
            dense_scores, dense_rows, lex_scores, lex_rows, eval_set, k,
            [candidates[i] for i in members], recall_ks)
        for i, got in zip(members, per_request):
            values[i] = {name: float(v.mean()) for name, v in got.items()}
            values[i]["requests"] = len(dense_rows)
    rows_out, best = [], None
    for cfg, got in zip(candidates, values):
        score = float(np.mean([got[m] for m in objective]))
        rows_out.append({"fusion": cfg.to_json(), "score": score,
                         **{m: float(got[m]) for m in objective}})
        if best is None or score > best[1]:
            best = (cfg, score)
    return FusionChoice(config=best[0], objective=tuple(objective), score=best[1],
                        requests=len(eval_set), candidates=rows_out)


def choose_for_index(model_dir: str, index_dir: str, layout_dir: Optional[str] = None,
                     checkpoint: Optional[str] = None, nprobe: Optional[int] = None,
                     split: Optional[str] = None, log: Callable[[str], None] = print,
                     rewrite_table: Optional[str] = None,
                     rewrites: RewriteConfig = RewriteConfig(),
                     spelling: bool = True,
                     candidates: Sequence[FusionConfig] = CANDIDATES,
                     objective: Sequence[str] = OBJECTIVE,
                     feedbacks: Sequence[FeedbackConfig] = (FeedbackConfig(),)
                     ) -> FusionChoice:
    """choose_fusion with the lists of a model's index build on a layout split (as
    `dpsr evaluate --hybrid` makes them).

    split: the layout split to choose on; None = eval_set.choice_split (the validation split).
    rewrite_table: a `dpsr rewrite` table the servable will carry (with `rewrites`, its merge
      settings): the candidates then fuse the lexical list that servable serves, the query's
      BM25 list merged with its rewrites' (evaluation/rewrites.py), so the choice is made for
      the lists it will fuse. The split's queries without an entry keep their own list.
    spelling: the servable will correct queries with the build's speller: both lists are made
      from the corrected queries (the table is still looked up by the query as typed).
    candidates: the fusions to try (default the grid).
    objective: the metrics whose mean chooses (default OBJECTIVE).
    feedbacks: the dense feedback variants (search/dense_feedback.py) tried, each with every
      candidate fusion; on a tie the earlier variant is kept.

    Raises:
      FileNotFoundError, ValueError: as hybrid.open_hybrid; a bad rewrite table or settings.
    """
    if not feedbacks:
        raise ValueError("choose_for_index needs at least one dense feedback variant")
    for feedback in feedbacks:
        feedback.validate()
    table = None
    if rewrite_table:
        rewrites.validate()
        table = table_lib.read_table(rewrite_table)   # a bad table fails before the models load
    layout = layout_of(model_dir, layout_dir)
    split = split or eval_set_lib.choice_split(layout, log)
    typed = eval_set_lib.load_eval_set(layout, split).queries if table is not None else None
    with _spelled_run(model_dir, index_dir, layout, layout_dir, checkpoint, nprobe, split, log,
                      spelling) as run:
        return _choose_on_run(run, split, log, typed, table, rewrite_table, rewrites, candidates,
                              objective, feedbacks).choice


@contextlib.contextmanager
def _spelled_run(model_dir, index_dir, layout, layout_dir, checkpoint, nprobe, split, log,
                 spelling) -> Iterator[hybrid_lib.HybridRun]:
    """The HybridRun the choice scores on (hybrid.open_hybrid on the split, the queries as a
    servable with or without the build's speller reads them); the spelled layout view it reads
    lives as long as the context."""
    cfg = evaluate_lib.EvalConfig(split=split, num_random=0)
    with spelled_layout(layout, index_dir if spelling else None, log=log) as view:
        yield hybrid_lib.open_hybrid(model_dir, index_dir, view or layout_dir, cfg, checkpoint,
                                     nprobe, log)


@dataclasses.dataclass
class _Chosen:
    """_choose_on_run's result: the choice, and the lists it was made on (the dense lists of
    each feedback variant in turn, the lexical lists of each (lexical_k, lexical_min_score))."""
    choice: FusionChoice
    dense: List[tuple]
    lexical: Dict[tuple, tuple]


def _choose_on_run(run, split, log, typed, table, rewrite_table, rewrites, candidates, objective,
                   feedbacks) -> _Chosen:
    """choose_for_index's choice on an open run."""
    lexical_lists, with_table = run.lexical_lists, ""
    if table is not None:
        texts = rewrites_lib.rewrite_texts(typed, table, rewrites.max_rewrites)
        lexical_lists = rewrites_lib.lexical_lists_with_rewrites(
            run.searcher, run.eval_set.queries, texts, rewrites, run.k)
        covered = sum(bool(t) for t in texts)
        with_table = (f"; lexical lists merged with the rewrites of {rewrite_table} "
                      f"({covered} of the requests' queries have an entry)")
    log(f"choosing the fusion on {len(run.eval_set)} requests of split {split} "
        f"({len(candidates) * len(feedbacks)} candidates, objective mean of "
        f"{', '.join(objective)}){with_table}")
    cache: Dict[tuple, tuple] = {}

    def cached_lexical(fusion):   # one lexical search per setting across the variants
        key = (fusion.lexical_k, fusion.lexical_min_score)
        if key not in cache:
            cache[key] = lexical_lists(fusion)
        return cache[key]

    best, rows, lists = None, [], []
    for feedback in feedbacks:
        dense = ((run.dense_scores, run.dense_rows) if not feedback.enabled
                 else run.dense_lists(feedback))
        lists.append(dense)
        choice = choose_fusion(*dense, cached_lexical, run.eval_set, run.k, candidates,
                               objective)
        if len(feedbacks) > 1 or feedback.enabled:
            rows += [dict(c, dense_feedback=feedback.to_json()) for c in choice.candidates]
        else:
            rows += choice.candidates
        if best is None or choice.score > best.score:
            best = dataclasses.replace(choice, feedback=feedback)
    return _Chosen(dataclasses.replace(best, candidates=rows, split=split), lists, cache)


def choose_with_spelling(model_dir: str, index_dir: str, layout_dir: Optional[str] = None,
                         checkpoint: Optional[str] = None, nprobe: Optional[int] = None,
                         log: Callable[[str], None] = print,
                         rewrite_table: Optional[str] = None,
                         rewrites: RewriteConfig = RewriteConfig(),
                         candidates: Sequence[FusionConfig] = CANDIDATES,
                         objective: Sequence[str] = OBJECTIVE,
                         feedbacks: Sequence[FeedbackConfig] = (FeedbackConfig(),),
                         split: Optional[str] = None
                         ) -> Tuple[FusionChoice, bool, dict]:
    """choose_for_index with and without the build's speller; the better (by the chosen
    fusion's score; a tie keeps the queries as typed) decides whether the servable corrects
    queries. A speller helps where users misspell catalog words (Home Depot) and can hurt
    where the catalog's words are few and the users' many (docs/spelling.md). split: as
    choose_for_index (None = the validation split).

    Returns:
      (the chosen FusionChoice, spelling on, {"with": score, "without": score} or {} for a
       build without a speller).
    """
    split = split or eval_set_lib.choice_split(layout_of(model_dir, layout_dir), log)
    without = choose_for_index(model_dir, index_dir, layout_dir, checkpoint, nprobe,
                               log=log, rewrite_table=rewrite_table, rewrites=rewrites,
                               spelling=False, candidates=candidates, objective=objective,
                               feedbacks=feedbacks, split=split)
    if spelled_layout_lib.index_speller(index_dir) is None:
        return without, False, {}
    spelled = choose_for_index(model_dir, index_dir, layout_dir, checkpoint, nprobe,
                               log=log, rewrite_table=rewrite_table, rewrites=rewrites,
                               spelling=True, candidates=candidates, objective=objective,
                               feedbacks=feedbacks, split=split)
    scores = {"with": spelled.score, "without": without.score}
    if spelled.score > without.score:
        return spelled, True, scores
    return without, False, scores


def choose_and_evaluate(model_dir: str, index_dir: str,
                        cfg: evaluate_lib.EvalConfig = evaluate_lib.EvalConfig(),
                        layout_dir: Optional[str] = None, checkpoint: Optional[str] = None,
                        nprobe: Optional[int] = None, log: Callable[[str], None] = print,
                        candidates: Sequence[FusionConfig] = CANDIDATES,
                        objective: Sequence[str] = OBJECTIVE,
                        feedbacks: Sequence[FeedbackConfig] = (FeedbackConfig(),)
                        ) -> Tuple[FusionChoice, bool, dict, Dict[str, Dict[str, float]]]:
    """choose_with_spelling on the validation split (eval_set.choice_split), then
    hybrid.evaluate_hybrid of the servable it chose (its speller setting, fusion and dense
    feedback) on cfg's split. Only where the two are the same split (a layout without a
    validation split) is the evaluation made on the embeddings and lists of the choice instead
    of a second opening of the model and index.

    Returns:
      (the chosen FusionChoice, spelling on, choose_with_spelling's scores, evaluate_hybrid's
       result).
    """
    layout = layout_of(model_dir, layout_dir)
    split = eval_set_lib.choice_split(layout, log)
    if (split != cfg.split or cfg.min_gain is not None
            or cfg.recall_ks != evaluate_lib.EvalConfig().recall_ks):
        # The choice is made on other requests (or other relevant items, another list
        # length) than the evaluation: open each anew.
        choice, spelling, scores = choose_with_spelling(
            model_dir, index_dir, layout_dir, checkpoint, nprobe, log=log,
            candidates=candidates, objective=objective, feedbacks=feedbacks, split=split)
        return choice, spelling, scores, hybrid_lib.evaluate_hybrid(
            model_dir, index_dir, layout_dir, cfg, checkpoint, nprobe, fusion=choice.config,
            log=log, spelling=spelling, feedback=choice.feedback)
    if not feedbacks:
        raise ValueError("choose_for_index needs at least one dense feedback variant")
    for feedback in feedbacks:
        feedback.validate()
    has_speller = spelled_layout_lib.index_speller(index_dir) is not None
    with contextlib.ExitStack() as views:
        chosen = {}
        for spelling in (False, True) if has_speller else (False,):
            run = views.enter_context(_spelled_run(model_dir, index_dir, layout, layout_dir,
                                                   checkpoint, nprobe, cfg.split, log, spelling))
            chosen[spelling] = (run, _choose_on_run(run, cfg.split, log, None, None, None,
                                                    RewriteConfig(), candidates, objective,
                                                    feedbacks))
        scores = {}
        spelling = False
        if has_speller:   # choose_with_spelling's rule: a tie keeps the queries as typed
            scores = {"with": chosen[True][1].choice.score,
                      "without": chosen[False][1].choice.score}
            spelling = scores["with"] > scores["without"]
        run, made = chosen[spelling]
        choice = made.choice
        dense = made.dense[list(feedbacks).index(choice.feedback)]
        run = dataclasses.replace(run, dense_scores=dense[0], dense_rows=dense[1])
        lexical = made.lexical[(choice.config.lexical_k, choice.config.lexical_min_score)]
        out = hybrid_lib.evaluate_run(run, index_dir, cfg, choice.config, log, choice.feedback,
                                      lexical_lists=lexical)
    out["hybrid"]["spelling"] = spelling
    out["hybrid"]["dense_feedback"] = choice.feedback.to_json()
    return choice, spelling, scores, out
