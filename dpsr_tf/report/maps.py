"""The report's item-embedding maps and category purity, for every model on the same items.

The main model's map samples the items (its marked queries' items always in) and every other
model is projected over exactly those rows with the same seed, so the panels differ only by
the embeddings. Category purity is computed on a seeded uniform sample of the catalog that
depends on no model (purity.py), so each model's number is over the same items whichever
model is the main one.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from dpsr_tf.report import heads, projection, purity
from dpsr_tf.report.config import ReportConfig


def main_map(cfg: ReportConfig, scorer, eval_set, table) -> Dict[str, object]:
    """The main model's map: sampled rows, t-SNE coordinates, category labels, marked queries.

    Returns:
      {"rows": [n] sorted item rows, "xy": [n, 2], "feature", "labels": [n] str, "marked":
      [{"request", "query", "heads": [m][top_k] rows}], "top_k", "titles": {row: title}}.
    """
    chosen = heads.pick_polysemous(scorer.request_emb, scorer.item_emb, eval_set.queries,
                                   cfg.map_queries, cfg.map_top_k, cfg.wanted_queries)
    marked = []
    for i in chosen:
        marked.append({"request": int(i), "query": eval_set.queries[i],
                       "heads": heads.per_head_top_items(scorer.request_emb, scorer.item_emb,
                                                         i, cfg.map_top_k)})
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
