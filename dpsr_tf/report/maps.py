"""The report's item-embedding maps and category purity, for every model on the same items.

The main model's map samples the items (its marked queries' items always in) and every other
model is projected over exactly those rows with the same seed, so the panels differ only by
the embeddings. Category purity is computed on a seeded uniform sample of the catalog that
depends on no model (purity.py), so each model's number is over the same items whichever
model is the main one.
"""
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import senses
from dpsr_tf.report import heads, projection, purity
from dpsr_tf.report.config import ReportConfig


def _sense_queries(cfg: ReportConfig, spec, eval_set) -> Dict[str, senses.PolysemousQuery]:
    """text -> PolysemousQuery of the sense catalog's polysemous queries that are requests of
    the split, wanted_queries first, then in the ground truth's order, up to map_queries."""
    path = os.path.join(cfg.sense_catalog, "ground_truth.json")
    try:
        with open(path, encoding="utf-8") as f:
            polysemy = json.load(f)["polysemy"]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"--sense_catalog: {path} has no synthetic ground truth with "
                         f"'polysemy' ({e}); pass the `dpsr generate-synthetic` output the "
                         "layout was prepared from") from None
    queries = senses.load_polysemous_queries(cfg.sense_catalog, layout_lib.load_item_ids(spec),
                                             polysemy)
    present = set(eval_set.queries)
    by_text = {q.text: q for q in queries if q.text in present}
    order = [t for t in cfg.wanted_queries if t in by_text] + [
        t for t in by_text if t not in cfg.wanted_queries]
    return {t: by_text[t] for t in order[:max(cfg.map_queries, len(cfg.wanted_queries))]}


def main_map(cfg: ReportConfig, scorer, eval_set, table, spec=None) -> Dict[str, object]:
    """The main model's map: sampled rows, t-SNE coordinates, category labels, marked queries.

    With cfg.sense_catalog (spec then required) the marked queries are the catalog's
    polysemous queries and each carries "senses" ([m][top_k] sense index, -1 = none) and
    "intents" (the senses' names).

    Returns:
      {"rows": [n] sorted item rows, "xy": [n, 2], "feature", "labels": [n] str, "marked":
      [{"request", "query", "heads": [m][top_k] rows[, "senses", "intents"]}], "top_k",
      "titles": {row: title}}.
    """
    polysemous = _sense_queries(cfg, spec, eval_set) if cfg.sense_catalog else {}
    chosen = heads.pick_polysemous(scorer.request_emb, scorer.item_emb, eval_set.queries,
                                   cfg.map_queries, cfg.map_top_k,
                                   tuple(polysemous) or cfg.wanted_queries)
    marked = []
    for i in chosen:
        query = polysemous.get(eval_set.queries[i])
        if query is None:
            entry = {"heads": heads.per_head_top_items(scorer.request_emb, scorer.item_emb,
                                                       i, cfg.map_top_k)}
        else:
            entry = dict(heads.sense_panel(scorer.request_emb, scorer.item_emb, i,
                                           cfg.map_top_k, query.items),
                         intents=list(query.intents))
        marked.append({"request": int(i), "query": eval_set.queries[i], **entry})
    must = [row for q in marked for rows in q["heads"] for row in rows]
    rows = projection.sample_items(len(scorer.item_emb), cfg.map_items, must, cfg.seed)
    xy = projection.tsne_2d(scorer.item_emb[rows], cfg.seed)
    cats = projection.category_labels(table, rows)
    return {"rows": rows.astype(int).tolist(), "xy": np.round(xy, 4).tolist(),
            "feature": cats["feature"], "labels": cats["labels"], "marked": marked,
            "top_k": cfg.map_top_k,
            "titles": {str(r): table.titles[r] for r in sorted(set(must))}}


def model_maps(item_embs: Sequence[Tuple[str, np.ndarray]], rows: Sequence[int],
               seed: int, main_xy=None) -> List[Dict[str, object]]:
    """[{"name", "xy": [n, 2]}] per model: t-SNE of each model's embeddings of `rows`.

    Args:
      item_embs: (model name, [N, d] float32 item embeddings) per model, main model first.
      rows: the main map's item rows (the same for every model).
      seed: t-SNE seed (the same for every model).
      main_xy: the main model's coordinates when already computed (reused, not recomputed).
    """
    rows = np.asarray(rows, np.int64)
    out = []
    for n, (name, emb) in enumerate(item_embs):
        if n == 0 and main_xy is not None:
            xy = main_xy
        else:
            xy = np.round(projection.tsne_2d(emb[rows], seed), 4).tolist()
        out.append({"name": name, "xy": xy})
    return out


def purity_rows(num_items: int, size: int, seed: int) -> np.ndarray:
    """[min(size, num_items)] sorted item rows: the seeded uniform sample purity is over."""
    return projection.sample_items(num_items, size, (), seed)


def model_purity(item_emb: np.ndarray, table, rows: np.ndarray, k: int) -> Dict[str, object]:
    """Category purity@k of one model over `rows` (purity.category_purity) plus the feature
    name and the sample size; {"purity": None, "reason": ...} when it cannot be computed."""
    cats = projection.category_ids(table)
    base = {"k": int(k), "feature": cats["feature"], "sampled": int(len(rows))}
    if cats["feature"] is None:
        return {**base, "items": 0, "purity": None, "chance": None,
                "reason": "the layout has no item feature to use as the category"}
    if len(item_emb) <= k:
        return {**base, "items": 0, "purity": None, "chance": None,
                "reason": f"the catalog has {len(item_emb)} items, not more than k={k}"}
    out = {**base, **purity.category_purity(item_emb, cats["ids"], cats["known"], rows, k)}
    if out["purity"] is None:
        out["reason"] = f"no sampled item has a known {cats['feature']}"
    return out
