"""Everything the report shows, computed once and kept as one JSON-ready dict.

    data = gather(ReportConfig(model_dirs=("/models/m",), output="report/"))
    data["models"][0]["metrics"]["recall@10"], data["bm25"]["ndcg@10"], data["hybrid"]

The metrics are those of `dpsr evaluate` (evaluate.evaluate_scorer on the same scorer it
builds; BM25 = evaluate_bm25; the hybrid = evaluate_hybrid); the page shows them from here
and evaluation.json keeps them, with the command that prints the same numbers.
"""
import json
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import hybrid as hybrid_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import served as served_lib
from dpsr_tf.indexing import index_layout
from dpsr_tf.model.model_dir import load_model_config, read_config_file
from dpsr_tf.report import commands, events, heads, maps, searchgcn, sweep
from dpsr_tf.report.config import ReportConfig

# Eval requests searched (batched) for the index's timing; the first 100 also one by one.
SEARCH_TIMING_REQUESTS = 1000


def _model_names(model_dirs) -> List[str]:
    names, seen = [], {}
    for path in model_dirs:
        base = os.path.basename(os.path.normpath(path)) or "model"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def _index_numbers(index_dir: str, scorer, spec, batch_size: int,
                   log: Callable[[str], None]) -> Dict[str, object]:
    """The build manifest plus search timings of the eval requests through the shards."""
    d = scorer.item_emb.shape[1]
    manifest = served_lib.read_index_manifest(index_dir, d, spec.num_items)
    with open(os.path.join(index_dir, index_layout.MANIFEST_NAME), encoding="utf-8") as f:
        raw = json.load(f)
    index = served_lib.open_served_index(index_dir, layout_lib.load_item_ids(spec), d)
    heads_emb = scorer.request_emb[:SEARCH_TIMING_REQUESTS]
    k = min(100, spec.num_items)
    start = time.perf_counter()
    served_lib.search_served(index, heads_emb, k, batch_size)
    batched = time.perf_counter() - start
    single = []
    for i in range(min(100, len(heads_emb))):
        t = time.perf_counter()
        served_lib.search_served(index, heads_emb[i:i + 1], k, 1)
        single.append(time.perf_counter() - t)
    log(f"  index search timings: {len(heads_emb)} requests in {batched:.2f}s")
    return {"manifest": raw, "factory": manifest.factory, "nprobe": index.nprobe,
            "search_k": k, "search_requests": int(len(heads_emb)),
            "search_heads": int(heads_emb.shape[1]),
            "batched_ms_per_request": 1000.0 * batched / max(1, len(heads_emb)),
            "single_p50_ms": 1000.0 * float(np.median(single)) if single else None,
            "single_p99_ms": 1000.0 * float(np.percentile(single, 99)) if single else None,
            "single_requests": len(single)}


def gather(cfg: ReportConfig, log: Callable[[str], None] = print,
           evaluations: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Evaluates every model, BM25 (and the hybrid), reads curves, index and head numbers.

    Args:
      cfg: the report's settings.
      log: progress lines.
      evaluations: results a caller already computed with the same EvalConfig, reused instead
        of evaluating again: {"models": [evaluate_model result per model dir], "bm25":
        evaluate_bm25 result, "hybrid": evaluate_hybrid result, "source": how they were made
        (shown on the page)}; any key may be left out. (`dpsr demo` passes its own.)

    Raises:
      FileNotFoundError, ValueError: a missing model or index directory, a model trained on
        another catalog than the main one, a bad query text; the message names the fix.
    """
    cfg.validate()
    evaluations = evaluations or {}
    eval_cfg = evaluate_lib.EvalConfig(split=cfg.split, num_random=cfg.num_random, seed=cfg.seed)
    saved = [read_config_file(m) for m in cfg.model_dirs]
    layout_dir = saved[0]["layout"]["layout_dir"]
    spec = layout_lib.load_layout_spec(layout_dir)
    timings: Dict[str, float] = {}
    data: Dict[str, object] = {
        "command": cfg.command, "split": cfg.split, "layout_dir": layout_dir,
        "num_items": int(spec.num_items),
        "eval_config": {"split": cfg.split, "num_random": cfg.num_random, "seed": cfg.seed},
        "models": [], "timings": timings, "evaluations_source": evaluations.get("source")}
    names = _model_names(cfg.model_dirs)
    main_scorer = main_eval_set = None
    item_embs = []    # (name, [N, d]) per model: the maps and purity after the loop
    for n, (model_dir, name) in enumerate(zip(cfg.model_dirs, names)):
        start = time.time()
        log(f"[{n + 1}/{len(cfg.model_dirs)}] evaluating {model_dir} on {layout_dir} "
            f"split {cfg.split}")
        scorer, spec, eval_set, pairs, checkpoint = evaluate_lib.load_model_scorer(
            model_dir, layout_dir, eval_cfg, log=lambda _: None)
        given = (evaluations.get("models") or [])[n:n + 1]
        if given:
            metrics = dict(given[0])
        else:
            metrics = evaluate_lib.evaluate_scorer(scorer, spec, eval_set, pairs, eval_cfg,
                                                   log=lambda _: None)
            metrics["checkpoint"] = checkpoint
        retrieved = metrics_lib.retrieve(scorer.score_requests, len(eval_set),
                                         min(100, spec.num_items), eval_cfg.batch_size)
        usage = heads.head_usage(scorer.request_emb, scorer.item_emb, retrieved,
                                 eval_set.relevant_splits, eval_set.relevant_rows)
        data["models"].append({
            "name": name, "model_dir": model_dir, "metrics": metrics,
            "config": saved[n]["model"], "train": saved[n].get("train", {}),
            "curves": events.read_curves(model_dir), "head_usage": usage,
            "searchgcn": searchgcn.gather(saved[n]["model"], spec),
            "train_command": commands.train_command(saved[n]),
            "evaluate_command": commands.evaluate_command(
                model_dir, layout_dir, cfg.split, cfg.num_random, cfg.seed,
                bm25=(n == 0))})
        if n == 0:
            main_scorer, main_eval_set = scorer, eval_set
        item_embs.append((name, scorer.item_emb))
        timings[f"evaluate {name}"] = round(time.time() - start, 1)

    start = time.time()
    log("evaluating BM25 (bm25s over the item titles) on the same split")
    data["bm25"] = evaluations.get("bm25") or evaluate_lib.evaluate_bm25(
        layout_dir, eval_cfg, log=lambda _: None)
    timings["evaluate BM25"] = round(time.time() - start, 1)

    data["hybrid"] = data["index"] = None
    if cfg.index_dir:
        start = time.time()
        data["index"] = _index_numbers(cfg.index_dir, main_scorer, spec, eval_cfg.batch_size,
                                       log)
        data["index"]["index_dir"] = cfg.index_dir
        timings["index search timings"] = round(time.time() - start, 1)
        if data["index"]["manifest"].get("lexical"):
            start = time.time()
            log(f"evaluating dense, BM25 and hybrid as served through {cfg.index_dir}")
            data["hybrid"] = dict(evaluations.get("hybrid") or hybrid_lib.evaluate_hybrid(
                cfg.model_dirs[0], cfg.index_dir, layout_dir, eval_cfg, log=lambda _: None))
            data["hybrid"]["command"] = commands.evaluate_command(
                cfg.model_dirs[0], layout_dir, cfg.split, cfg.num_random, cfg.seed,
                index_dir=cfg.index_dir)
            timings["evaluate hybrid"] = round(time.time() - start, 1)
        else:
            log(f"  {cfg.index_dir} has no lexical index: no hybrid row (add one with `dpsr "
                f"index --lexical_only --output_dir={cfg.index_dir} --layout_dir=LAYOUT`)")

    start = time.time()
    table = layout_lib.load_item_table(spec)
    log(f"t-SNE map of {min(cfg.map_items, spec.num_items)} item embeddings"
        + (f", one per model ({len(item_embs)})" if len(item_embs) > 1 else ""))
    data["map"] = maps.main_map(cfg, main_scorer, main_eval_set, table, spec)
    data["map"]["models"] = maps.model_maps(item_embs, data["map"]["rows"], cfg.seed,
                                            main_xy=data["map"]["xy"])
    timings["t-SNE map"] = round(time.time() - start, 1)
    start = time.time()
    rows = maps.purity_rows(spec.num_items, cfg.map_items, cfg.seed)
    for model, (_, emb) in zip(data["models"], item_embs):
        model["category_purity"] = maps.model_purity(emb, table, rows, cfg.purity_k)
    timings["category purity"] = round(time.time() - start, 1)

    data["alpha_sweep"] = None
    if cfg.alpha_sweep:
        start = time.time()
        sweep_dir = os.path.join(cfg.output, "alpha_sweep")
        data["alpha_sweep"] = sweep.run_alpha_sweep(
            cfg.model_dirs[0], cfg.alpha_sweep, cfg.sweep_steps, sweep_dir, eval_cfg,
            keep_checkpoints=cfg.keep_sweep_checkpoints, log=log)
        data["alpha_sweep"]["train_commands"] = [
            commands.train_command(saved[0], dict(
                _sweep_overrides(cfg.model_dirs[0], a), model_dir=run["model_dir"],
                train_steps=cfg.sweep_steps, save_checkpoints_steps=cfg.sweep_steps,
                save_summary_steps=max(1, cfg.sweep_steps // 10), eval_steps=1))
            for a, run in zip(cfg.alpha_sweep, data["alpha_sweep"]["runs"])]
        timings["alpha sweep"] = round(time.time() - start, 1)
    return data


def _sweep_overrides(model_dir: str, alpha: float) -> Dict[str, object]:
    base, _ = load_model_config(model_dir)
    changed = sweep.sweep_model_config(base, alpha)
    return {"alpha": alpha, "softmax_random_negatives": changed.softmax_random_negatives}


def jsonable(value):
    """value with NumPy scalars and arrays as plain Python (for json.dump)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
