"""The served hybrid in cross-validation (`dpsr crossval --hybrid`), its fusion chosen on each
fold's validation split.

Per fold, after its model is trained (evaluation/crossval.py), `evaluate_fold`:

  index     builds <fold>/index as `dpsr index` does with its defaults (FAISS shards of the item
            tower's catalog embeddings, INDEX_BUILD, and the BM25 lexical index, LexicalConfig()),
            through catalog_index.index_catalog, the function that command calls;
  served    opens it as `dpsr evaluate --hybrid` does (hybrid.open_hybrid) and scores the served
            dense ranking ("dpsr_served", served.served_metrics) and the build's lexical index
            ("lexical", hybrid.LexicalScorer) per request;
  lists     keeps each request's served dense and lexical top K (K = the largest recall cut-off,
            capped at the catalog: 1,000) with their scores and the split's relevance in
            <fold>/LISTS_FILE, enough to fuse them again with any candidate; and the same lists
            of the fold's validation split (carved from its training queries) in
            <fold>/VALIDATION_LISTS_FILE.

The fusion is chosen as `dpsr export` chooses it on one layout: on the validation split, never
on the queries the fold reports. `summarize` fuses each fold's lists with every
fusion_choice.CANDIDATES (fuse_np, the servable's rule) and keeps the per-request metrics
(cached in <fold>/CANDIDATES_FILE and VALIDATION_CANDIDATES_FILE), chooses fold F's fusion on
its validation requests by fusion_choice.OBJECTIVE (the mean over requests of each objective
metric, averaged; the earlier candidate on a tie: fusion_choice.choose_fusion's rule on those
lists) and scores fold F's held-out requests with it ("hybrid"). A fold without a validation
split (--validation_fraction=0, or too few training queries) chooses on its held-out requests,
with a warning: its hybrid row is then optimistic. The fusion each fold would choose on its own
held-out requests is reported beside it as "hybrid_self_chosen", labelled optimistic.

The catalog speller is chosen as `dpsr export --spelling=auto` chooses it (`spelling="auto"`,
the default): evaluate_fold keeps fold F's validation lists as typed and as its speller corrects
them, fuses each with every candidate (and feedback setting), and corrects the queries only where
the best candidate scores strictly higher with the speller (`choose_spelling`); the held-out lists
are then made with that setting only. A fold without a validation split keeps its queries as
typed (the choice would be made on the queries it reports). "on" / "off" set it for every fold.

With dense feedback (`dpsr export --dense_feedback=auto`'s rule, search/dense_feedback.py) each
fold also keeps its dense lists searched with dense_feedback.DEFAULT (FEEDBACK_LISTS_FILE,
VALIDATION_FEEDBACK_LISTS_FILE), and the choice is among every (feedback off or on, fusion)
pair, off first (a tie keeps it). `cross_fit` (a fold's choice made on the other folds'
held-out requests) is kept for bench/dense_feedback_quality.py.

`tie_aware_fold` scores the same three rankings again in expectation over the orders of their
tied scores (evaluation/tie_metrics.py): the as-served metrics credit a list whose ties the
index left in catalog order with that order (MovieLens's lexical list: docs/results.md, "Tied
scores").
"""
import dataclasses
import hashlib
import json
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_choice
from dpsr_tf.evaluation import hybrid as hybrid_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import served as served_lib
from dpsr_tf.evaluation import spelled_layout as spelled_layout_lib
from dpsr_tf.evaluation import tie_metrics
from dpsr_tf.indexing import catalog_index
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.indexing.lexical_manifest import LexicalConfig
from dpsr_tf.search.dense_feedback import DEFAULT as DEFAULT_FEEDBACK
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.search.fused_rows import FusionPlan, fused_scored_rows

LISTS_FILE = "hybrid_lists.npz"
CANDIDATES_FILE = "fusion_candidates.npz"
# The same with the dense list searched with dense feedback (DEFAULT_FEEDBACK).
FEEDBACK_LISTS_FILE = "hybrid_lists_feedback.npz"
FEEDBACK_CANDIDATES_FILE = "fusion_candidates_feedback.npz"
# The same four of the fold's validation split: what its fusion and feedback are chosen on.
VALIDATION_LISTS_FILE = "hybrid_lists_validation.npz"
VALIDATION_CANDIDATES_FILE = "fusion_candidates_validation.npz"
VALIDATION_FEEDBACK_LISTS_FILE = "hybrid_lists_validation_feedback.npz"
VALIDATION_FEEDBACK_CANDIDATES_FILE = "fusion_candidates_validation_feedback.npz"
# With spelling="auto", the validation lists of the setting not chosen keep this suffix (the
# chosen setting's take the names above), so the choice can be checked afterwards.
TYPED_SUFFIX, SPELLED_SUFFIX = "_typed", "_spelled"
SPELLING_MODES = ("auto", "on", "off")
# bm25s's per-request tie-aware metrics, kept: they are slow to recompute.
TIE_AWARE_BM25_FILE = "bm25_tie_aware.npz"
INDEX_DIR = "index"
# `dpsr index`'s flag defaults (dpsr_tf/cli/index.py: --index_factory=auto, --num_shards=1,
# --train_size=0, --seed=0, --nprobe=64, --ef_search=128, --refine_k_factor); its lexical flags'
# defaults are LexicalConfig()'s.
INDEX_BUILD = dict(factory="auto", num_shards=1, train_size=0, seed=0, nprobe=64,
                   ef_search=128)
# The systems of the hybrid stage (besides crossval's "dpsr" and "bm25").
SERVED, LEXICAL, HYBRID, SELF_CHOSEN = "dpsr_served", "lexical", "hybrid", "hybrid_self_chosen"
_SERVED_METRIC_PREFIXES = ("recall@", "ndcg@", "mrr@")


@dataclasses.dataclass
class FoldLists:
    """One fold's served lists: [Q, K] dense and lexical (scores, rows), best first, -1 padded,
    and the relevance of its Q requests (EvalSet's relevant_splits / rows / gains)."""

    dense_scores: np.ndarray
    dense_rows: np.ndarray
    lexical_scores: np.ndarray
    lexical_rows: np.ndarray
    relevant_splits: np.ndarray
    relevant_rows: np.ndarray
    relevant_gains: np.ndarray
    k: int

    def __len__(self) -> int:
        return int(self.dense_rows.shape[0])

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, **{f.name: np.asarray(getattr(self, f.name))
                         for f in dataclasses.fields(self)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "FoldLists":
        with np.load(path) as data:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        values["k"] = int(values["k"])
        return cls(**values)


def _check_candidates(candidates: Sequence[FusionConfig]) -> None:
    # The lists are kept at the request's k with no score floor: what every candidate of the
    # grid fuses. A candidate with its own lexical_k / lexical_min_score would need other lists.
    for cfg in candidates:
        cfg.validate()
        if cfg.lexical_k or cfg.lexical_min_score != 0.0:
            raise ValueError(f"cross-fitted fusion keeps the lexical top k with no score floor; "
                             f"candidate {cfg.to_json()} asks for lexical_k="
                             f"{cfg.lexical_k}, lexical_min_score={cfg.lexical_min_score}")


def evaluate_fold(model_dir: str, layout_dir: str, fold_dir: str,
                  cfg: evaluate_lib.EvalConfig, soft_metrics: dict,
                  log: Callable[[str], None] = print,
                  spelling: str = "auto", feedback: bool = True,
                  objective: Sequence[str] = fusion_choice.OBJECTIVE
                  ) -> Tuple[dict, dict, dict]:
    """Builds <fold_dir>/index, chooses whether the queries are spelled (module docstring),
    evaluates the served dense and lexical rankings, keeps the lists of the evaluated split and
    of the validation split the fusion is chosen on. Spelled, both see the queries as the
    servable corrects them (spelled_layout.py); the exact `dpsr` row of the fold stays on the
    typed queries.

    Args:
      model_dir, layout_dir: the fold's trained model and layout.
      fold_dir: where index/, LISTS_FILE, VALIDATION_LISTS_FILE (a layout without a validation
        split has none) and, with `feedback`, their FEEDBACK variants go.
      cfg: the fold's EvalConfig (per_request is forced on).
      soft_metrics: the fold's "dpsr" (exact soft dot) results, for served_metrics' losses.
      spelling: "auto" (chosen on the validation split), "on" or "off" (SPELLING_MODES).
      objective: the fusion objective the spelling choice compares (as summarize's).

    Returns:
      ({"dpsr_served": {metric: value}, "served": served_metrics' full result,
        "lexical": {metric: value}}, {"dpsr_served": {metric: [Q]}, "lexical": {...}},
       {"mode": spelling, "on": the queries were spelled, "scores": choose_spelling's scores
        ({} unless chosen), "note": why, when not chosen}).
    """
    if spelling not in SPELLING_MODES:
        raise ValueError(f"spelling={spelling!r}: must be one of {list(SPELLING_MODES)}")
    cfg = dataclasses.replace(cfg, per_request=True)
    index_dir = os.path.join(fold_dir, INDEX_DIR)
    if os.path.exists(index_dir):         # an interrupted build: start over
        shutil.rmtree(index_dir)
    catalog_index.index_catalog(model_dir, index_dir, IndexBuildConfig(**INDEX_BUILD),
                                layout_dir=layout_dir, lexical=LexicalConfig())
    choice_split = eval_set_lib.choice_split(layout_dir, log)
    has_validation = choice_split != cfg.split
    validation_files = (VALIDATION_LISTS_FILE,
                        VALIDATION_FEEDBACK_LISTS_FILE if feedback else None)
    speller = spelled_layout_lib.index_speller(index_dir)
    choice = {"mode": spelling, "on": spelling == "on" and speller is not None, "scores": {}}
    if spelling == "off" or speller is None:
        choice["note"] = "--spelling=off" if spelling == "off" else "the build has no speller"
    elif spelling == "auto" and not has_validation:
        choice["note"] = ("no validation split: the queries are kept as typed rather than "
                          "chosen on the requests the fold reports")
    elif spelling == "auto":
        choice["on"], choice["scores"] = _spelling_on_validation(
            model_dir, index_dir, layout_dir, fold_dir,
            dataclasses.replace(cfg, split=choice_split, num_random=0), speller,
            validation_files, objective, log)

    with spelled_layout_lib.spelled_layout(
            layout_dir, speller=speller if choice["on"] else None, log=log) as view:
        run = hybrid_lib.open_hybrid(model_dir, index_dir, view or layout_dir, cfg, log=log)
        served = served_lib.served_metrics(run.scorer, run.eval_set, run.index, cfg,
                                           soft_metrics, log,
                                           served=(run.dense_scores, run.dense_rows))
        per_request = {SERVED: served.pop("served_" + metrics_lib.PER_REQUEST)}
        served.pop("max_" + metrics_lib.PER_REQUEST, None)
        dense = {name[len("served_"):]: value for name, value in served.items()
                 if name.startswith("served_") and name[len("served_"):].startswith(
                     _SERVED_METRIC_PREFIXES)}
        dense["requests"] = len(run.eval_set)

        queries = layout_lib.load_queries(run.spec)
        lexical_scorer = hybrid_lib.LexicalScorer(run.searcher, run.eval_set.queries,
                                                  [queries[q] for q in run.pairs["query_row"]])
        lexical = evaluate_lib.evaluate_scorer(lexical_scorer, run.spec, run.eval_set,
                                               run.pairs, cfg, log)
        per_request[LEXICAL] = lexical.pop(metrics_lib.PER_REQUEST)

        _save_lists(run, fold_dir, LISTS_FILE, FEEDBACK_LISTS_FILE if feedback else None)
        if has_validation and not choice["scores"]:     # not made by the choice above
            choice_cfg = dataclasses.replace(cfg, split=choice_split, num_random=0)
            _save_lists(hybrid_lib.open_hybrid(model_dir, index_dir, view or layout_dir,
                                               choice_cfg, log=log),
                        fold_dir, *validation_files)
    return {SERVED: dense, "served": served, LEXICAL: lexical}, per_request, choice


def _spelling_on_validation(model_dir: str, index_dir: str, layout_dir: str, fold_dir: str,
                            choice_cfg: evaluate_lib.EvalConfig, speller,
                            validation_files: Tuple[str, Optional[str]],
                            objective: Sequence[str], log: Callable[[str], None]
                            ) -> Tuple[bool, Dict[str, float]]:
    """Keeps the validation lists typed and spelled (the files with TYPED_SUFFIX /
    SPELLED_SUFFIX), chooses by choose_spelling over every candidate (and feedback setting, as
    summarize tries them) and moves the chosen setting's lists to the plain names."""
    per_setting = {}
    for spelled, suffix in ((False, TYPED_SUFFIX), (True, SPELLED_SUFFIX)):
        files = [suffixed(name, suffix) for name in validation_files]
        with spelled_layout_lib.spelled_layout(
                layout_dir, speller=speller if spelled else None, log=log) as view:
            _save_lists(hybrid_lib.open_hybrid(model_dir, index_dir, view or layout_dir,
                                               choice_cfg, log=log), fold_dir, *files)
        per_setting[spelled] = [
            values for name in files if name
            for values in candidate_metrics(FoldLists.load(os.path.join(fold_dir, name)),
                                            fusion_choice.CANDIDATES, choice_cfg.recall_ks)]
    spelled, scores = choose_spelling(per_setting[False], per_setting[True], objective)
    chosen = SPELLED_SUFFIX if spelled else TYPED_SUFFIX
    for name in validation_files:
        if name:
            os.replace(os.path.join(fold_dir, suffixed(name, chosen)),
                       os.path.join(fold_dir, name))
    return spelled, scores


def choose_spelling(typed: Sequence[Dict[str, np.ndarray]],
                    spelled: Sequence[Dict[str, np.ndarray]],
                    objective: Sequence[str] = fusion_choice.OBJECTIVE
                    ) -> Tuple[bool, Dict[str, float]]:
    """`dpsr export --spelling=auto`'s rule (fusion_choice.choose_with_spelling) on kept lists:
    spelled iff the best candidate over the spelled lists scores strictly higher than the best
    over the typed ones (a tie keeps the queries as typed).

    Args:
      typed, spelled: per candidate (the same candidates, in order), {metric: [n] values} over
        the same n validation requests, as typed and as the speller corrects them.

    Returns:
      (spelled, {"with": best spelled score, "without": best typed score}).
    """
    best_typed = max(choose(typed, objective)[1])
    best_spelled = max(choose(spelled, objective)[1])
    return best_spelled > best_typed, {"with": best_spelled, "without": best_typed}


def suffixed(name: Optional[str], suffix: str) -> Optional[str]:
    """hybrid_lists_validation.npz + _typed -> hybrid_lists_validation_typed.npz (None stays)."""
    if name is None:
        return None
    stem, ext = os.path.splitext(name)
    return stem + suffix + ext


def _save_lists(run: hybrid_lib.HybridRun, fold_dir: str, lists_file: str,
                feedback_file: Optional[str]) -> None:
    """The run's served dense and lexical lists (and, given feedback_file, the dense lists
    searched with DEFAULT_FEEDBACK: a second search, only when the choice may take it)."""
    lex_scores, lex_rows = run.lexical_lists(FusionConfig())
    FoldLists(run.dense_scores, run.dense_rows, lex_scores, lex_rows,
              *run.relevant, k=run.k).save(os.path.join(fold_dir, lists_file))
    if feedback_file:
        FoldLists(*run.dense_lists(DEFAULT_FEEDBACK), lex_scores, lex_rows,
                  *run.relevant, k=run.k).save(os.path.join(fold_dir, feedback_file))


def candidate_metrics(lists: FoldLists, candidates: Sequence[FusionConfig],
                      recall_ks: Sequence[int], chunk: int = 2048
                      ) -> List[Dict[str, np.ndarray]]:
    """Per candidate, the per-request metrics of the lists fused with it (fused_rows = fuse_np's
    rows, k = lists.k)."""
    _check_candidates(candidates)
    out = [{} for _ in candidates]
    for lo in range(0, len(lists), chunk):
        hi = min(len(lists), lo + chunk)
        plan = FusionPlan(lists.dense_scores[lo:hi], lists.dense_rows[lo:hi],
                          lists.lexical_scores[lo:hi], lists.lexical_rows[lo:hi])
        a, b = lists.relevant_splits[lo], lists.relevant_splits[hi]
        splits = lists.relevant_splits[lo:hi + 1] - a
        for values, cfg in zip(out, candidates):
            got = metrics_lib.per_request_metrics(plan.rows(lists.k, cfg), splits,
                                                  lists.relevant_rows[a:b],
                                                  lists.relevant_gains[a:b],
                                                  recall_ks=tuple(recall_ks))
            for name, v in got.items():
                values.setdefault(name, []).append(v)
    return [{name: np.concatenate(v) for name, v in values.items()} for values in out]


def cached_candidate_metrics(fold_dir: str, candidates: Sequence[FusionConfig],
                             recall_ks: Sequence[int], lists_file: str = LISTS_FILE,
                             cache_file: str = CANDIDATES_FILE) -> List[Dict[str, np.ndarray]]:
    """candidate_metrics of <fold_dir>/lists_file, kept in <fold_dir>/cache_file (redone
    when the candidates or cut-offs differ from the ones it holds)."""
    path = os.path.join(fold_dir, cache_file)
    key = json.dumps({"candidates": [c.to_json() for c in candidates],
                      "recall_ks": list(recall_ks)})
    if os.path.isfile(path):
        with np.load(path) as data:
            if str(data["key"]) == key:
                names = json.loads(str(data["metrics"]))
                return [{m: data[f"{i}/{m}"] for m in names} for i in range(len(candidates))]
    values = candidate_metrics(FoldLists.load(os.path.join(fold_dir, lists_file)), candidates,
                               recall_ks)
    names = list(values[0])
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.array(key), metrics=np.array(json.dumps(names)),
             **{f"{i}/{m}": v[m] for i, v in enumerate(values) for m in names})
    os.replace(tmp, path)
    return values


def choose(per_request: Sequence[Dict[str, np.ndarray]],
           objective: Sequence[str] = fusion_choice.OBJECTIVE) -> Tuple[int, List[float]]:
    """Index of the best candidate by the objective over the given requests, and every
    candidate's score (fusion_choice.choose_fusion's score: the mean of the objective metrics'
    means over the requests; strictly better replaces, so ties keep the earlier candidate).

    Args:
      per_request: per candidate, {metric: [n] values} over the same n requests.
    """
    scores = [float(np.mean([float(np.asarray(values[m]).mean()) for m in objective]))
              for values in per_request]
    best = 0
    for i, score in enumerate(scores):
        if score > scores[best]:
            best = i
    return best, scores


def cross_fit(per_fold: Sequence[Sequence[Dict[str, np.ndarray]]],
              objective: Sequence[str] = fusion_choice.OBJECTIVE
              ) -> List[Tuple[int, List[float]]]:
    """Per fold F, `choose` over the pooled requests of every fold but F.

    Args:
      per_fold: per fold, candidate_metrics of its lists (the same candidates in every fold).
    """
    if len(per_fold) < 2:
        raise ValueError("cross-fitting the fusion needs at least 2 folds")
    out = []
    for fold in range(len(per_fold)):
        others = [f for f in range(len(per_fold)) if f != fold]
        pooled = [{m: np.concatenate([np.asarray(per_fold[f][c][m]) for f in others])
                   for m in objective} for c in range(len(per_fold[fold]))]
        out.append(choose(pooled, objective))
    return out


def summarize(fold_dirs: Sequence[str], recall_ks: Sequence[int],
              candidates: Sequence[FusionConfig] = fusion_choice.CANDIDATES,
              objective: Sequence[str] = fusion_choice.OBJECTIVE,
              log: Callable[[str], None] = print, feedback: bool = False) -> List[dict]:
    """Chooses each fold's fusion on its validation lists and scores its held-out requests with
    it. A fold with no VALIDATION_LISTS_FILE (no validation split) chooses on its held-out
    requests, with a warning through `log`.

    feedback: also try every candidate on the folds' dense lists searched with dense feedback
      (the FEEDBACK lists), after the candidates without it.

    Returns:
      per fold {"fusion", "dense_feedback" (JSON), "fusion_name", "chosen_on" (the split),
      "choice_requests", "candidate_scores" (objective on those requests), "hybrid": {metric:
      mean}, "per_query": {"hybrid": {metric: [Q]}, "hybrid_self_chosen": {...}},
      "self_chosen": {"fusion", "dense_feedback", "fusion_name", "hybrid_self_chosen":
      {metric: mean}}}.
    """
    variants = [(FeedbackConfig(), (LISTS_FILE, CANDIDATES_FILE),
                 (VALIDATION_LISTS_FILE, VALIDATION_CANDIDATES_FILE))]
    if feedback:
        variants.append((DEFAULT_FEEDBACK, (FEEDBACK_LISTS_FILE, FEEDBACK_CANDIDATES_FILE),
                         (VALIDATION_FEEDBACK_LISTS_FILE, VALIDATION_FEEDBACK_CANDIDATES_FILE)))
    pairs_tried = [(v, c) for v, _, _ in variants for c in candidates]

    def described(i: int) -> dict:
        v, c = pairs_tried[i]
        name = fusion_choice.describe(c) + (f", {v.describe()}" if v.enabled else "")
        return {"fusion": c.to_json(), "dense_feedback": v.to_json(), "fusion_name": name}

    def fused(fold_dir: str, which: int) -> List[Dict[str, np.ndarray]]:
        return [values for variant in variants
                for values in cached_candidate_metrics(fold_dir, candidates, recall_ks,
                                                       *variant[which])]

    out = []
    for fold, fold_dir in enumerate(fold_dirs):
        log(f"crossval --hybrid: fusing fold {fold}'s lists with {len(pairs_tried)} candidate "
            f"fusions")
        held_out = fused(fold_dir, 1)
        on_validation = os.path.isfile(os.path.join(fold_dir, VALIDATION_LISTS_FILE))
        if on_validation:
            validation = fused(fold_dir, 2)
        else:
            log(f"warning: fold {fold} has no {layout_lib.VALIDATION_SPLIT!r} split: its fusion "
                f"is chosen on its held-out requests, so its hybrid row is optimistic (prepare "
                f"with --validation_fraction > 0 and enough training queries)")
            validation = held_out
        chosen, scores = choose(validation, objective)
        self_chosen, self_scores = choose(held_out, objective)
        hybrid = held_out[chosen]
        self_hybrid = held_out[self_chosen]
        means = {m: float(v.mean()) for m, v in hybrid.items()}
        means["requests"] = int(len(next(iter(hybrid.values()))))
        out.append({
            **described(chosen),
            "chosen_on": (layout_lib.VALIDATION_SPLIT if on_validation
                          else f"{layout_lib.EVAL_SPLIT} (no validation split: optimistic)"),
            "choice_requests": int(len(next(iter(validation[0].values())))),
            "objective": list(objective),
            "candidate_scores": [{"fusion": c.to_json(), "dense_feedback": v.to_json(),
                                  "score": s} for (v, c), s in zip(pairs_tried, scores)],
            HYBRID: means,
            "self_chosen": {**described(self_chosen),
                            "note": "chosen on this fold's own held-out requests: optimistic",
                            "candidate_scores": self_scores,
                            SELF_CHOSEN: {m: float(v.mean()) for m, v in self_hybrid.items()}},
            "per_query": {HYBRID: {m: v.tolist() for m, v in hybrid.items()},
                          SELF_CHOSEN: {m: v.tolist() for m, v in self_hybrid.items()}},
        })
    return out


def tie_aware_fold(fold_dir: str, fusion: FusionConfig, feedback: FeedbackConfig,
                   recall_ks: Sequence[int], num_items: int) -> Dict[str, Dict[str, np.ndarray]]:
    """Per-request Recall@k and nDCG@10 of the fold's served dense, lexical and hybrid lists in
    expectation over the orders of their tied scores (evaluation/tie_metrics.py): BM25 ties
    every item that matches a one-word query alike, and the index keeps tied items in catalog
    order, which the as-served metrics score as if the system had chosen it.

    Args:
      fold_dir: holds LISTS_FILE (and FEEDBACK_LISTS_FILE when `feedback` is on).
      fusion, feedback: the fold's chosen fusion and dense feedback (its hybrid.json).
      num_items: the catalog's size: items a list lacks tie after it (the lexical list holds
        the items a query matches; the rest score 0, as the as-served lexical row ranks them).

    Returns:
      {SERVED: {metric: [Q]}, LEXICAL: {...}, HYBRID: {...}}.
    """
    lists = FoldLists.load(os.path.join(fold_dir, LISTS_FILE))
    fused_from = (FoldLists.load(os.path.join(fold_dir, FEEDBACK_LISTS_FILE))
                  if feedback.enabled else lists)
    ranked = {SERVED: (lists.dense_scores, lists.dense_rows),
              LEXICAL: (lists.lexical_scores, lists.lexical_rows),
              HYBRID: fused_scored_rows(fused_from.dense_scores, fused_from.dense_rows,
                                        fused_from.lexical_scores, fused_from.lexical_rows,
                                        lists.k, fusion)}
    return {system: tie_metrics.per_request_tie_metrics(
        rows, scores, lists.relevant_splits, lists.relevant_rows, lists.relevant_gains,
        recall_ks=tuple(recall_ks), catalog_size=num_items)
        for system, (scores, rows) in ranked.items()}


def cached_tie_aware_bm25(fold_dir: str, layout_dir: str, cfg: evaluate_lib.EvalConfig
                          ) -> Dict[str, np.ndarray]:
    """evaluate.tie_aware_bm25 of the fold's layout, kept in <fold_dir>/TIE_AWARE_BM25_FILE
    (redone when the layout's layout.json or the split, relevance threshold or cut-offs
    differ from the ones it holds)."""
    with open(os.path.join(layout_dir, layout_lib.LAYOUT_JSON), "rb") as f:
        layout_hash = hashlib.sha256(f.read()).hexdigest()
    key = json.dumps({"layout": layout_hash, "split": cfg.split, "min_gain": cfg.min_gain,
                      "recall_ks": list(cfg.recall_ks)})
    path = os.path.join(fold_dir, TIE_AWARE_BM25_FILE)
    if os.path.isfile(path):
        with np.load(path) as data:
            if str(data["key"]) == key:
                return {name: data[name] for name in data.files if name != "key"}
    values = evaluate_lib.tie_aware_bm25(layout_dir, cfg)
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.array(key), **values)
    os.replace(tmp, path)
    return values


TIE_AWARE_PAIRS = ((HYBRID, SERVED), (HYBRID, LEXICAL), (SERVED, LEXICAL), (HYBRID, "bm25"),
                   (SERVED, "bm25"))


def pairs(with_bm25: bool) -> List[Tuple[str, str]]:
    """The paired comparisons of a --hybrid summary (a, b): a - b is reported."""
    out = [(HYBRID, SERVED), (HYBRID, "dpsr"), (HYBRID, LEXICAL), (SERVED, LEXICAL),
           ("dpsr", LEXICAL)]
    if with_bm25:
        out += [(HYBRID, "bm25"), (SERVED, "bm25"), ("dpsr", "bm25")]
    return out


