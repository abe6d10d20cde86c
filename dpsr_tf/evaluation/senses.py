"""The sense benchmark: do a multi-head model's heads split an ambiguous query's senses?

On the synthetic catalog the generator's ground truth names every polysemous term ("apple",
"mouse", ...) and its senses (an intent "product_type|brand|*|*": apple phones, apple laptops,
apple the fruit). A sense's relevant items are the catalog items of that product type (and
brand, when the sense names one). For each polysemous query and cut-off K this module reports:

  recall[s]@K     share of sense s's items in the served (merged) top K;
  covered@K       1 when every sense has at least one item in the served top K;
  head purity@K   of each head's own top K (its search before the merge), the share of its
                  sense items that belong to its most frequent sense (NaN when none is a sense
                  item), and which sense that is.

The logic works on item rows and is independent of TensorFlow; bench/sense_bench.py embeds the
queries with a trained model and prints the table.
"""
import csv
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.search import head_merge


@dataclasses.dataclass(frozen=True)
class PolysemousQuery:
    """One polysemous query: its text, its senses' intents and their relevant item rows."""

    text: str
    intents: Tuple[str, ...]
    items: Tuple[np.ndarray, ...]   # per sense: sorted int64 item rows


def sense_items(intent: str, product_types: Sequence[str], brands: Sequence[str]) -> np.ndarray:
    """Rows of the items an intent "type|brand|color|gender" ('*' = any) names by type and
    brand (the senses of the generator name no colour or gender).

    Raises:
      ValueError: an intent that is not four '|'-separated fields.
    """
    parts = intent.split("|")
    if len(parts) != 4:
        raise ValueError(f"sense intent {intent!r}: expected 'type|brand|color|gender'")
    types = np.asarray(product_types)
    match = types == parts[0]
    if parts[1] != "*":
        match &= np.asarray(brands) == parts[1]
    return np.flatnonzero(match).astype(np.int64)


def load_polysemous_queries(catalog_dir: str, item_ids: Sequence[str],
                            polysemy: Dict[str, list]) -> List[PolysemousQuery]:
    """The generator's polysemous terms with their senses' item rows.

    Args:
      catalog_dir: a synthetic catalog (its items.tsv).
      item_ids: the layout's item ids in row order (rows index this list).
      polysemy: term -> its senses ({"intent": ...} each), the "polysemy" of the catalog's
        ground truth (dpsr_tf.demo.synthetic_truth.load_ground_truth); given by the caller so
        the evaluation layer does not depend on the generator.

    Raises:
      ValueError: an item of the layout missing from items.tsv, or a sense without items.
    """
    columns = {}
    path = os.path.join(catalog_dir, "items.tsv")
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            columns[row["item_id"]] = (row["product_type"], row["brand"])
    missing = [i for i in item_ids if i not in columns]
    if missing:
        raise ValueError(f"{path}: {len(missing)} layout items are missing (e.g. {missing[0]!r});"
                         " pass the catalog the layout was prepared from")
    types = [columns[i][0] for i in item_ids]
    brands = [columns[i][1] for i in item_ids]
    out = []
    for term, senses in polysemy.items():
        intents = tuple(s["intent"] for s in senses)
        items = tuple(sense_items(i, types, brands) for i in intents)
        empty = [i for i, rows in zip(intents, items) if not len(rows)]
        if empty:
            raise ValueError(f"{catalog_dir}: sense {empty[0]!r} of {term!r} has no item in the "
                             "layout's catalog")
        out.append(PolysemousQuery(term, intents, items))
    return out


# Words after which a Home Depot style title stops naming the product ("... Faucet in Chrome",
# "... Microwave with Sensor Cooking", "... Bracket for Shelves").
_TYPE_STOP = (" with ", " in ", " for ", " - ", ",", "(")


def title_type(title: str) -> str:
    """A product type read off a title without a category field: the last word (3+ letters,
    lower case, a plural's "s" dropped) of the title's head, the part before the first " with ",
    " in ", " for ", " - ", "," or "(" ("Toro 22 in. Gas Lawn Mower with Engine" -> "mower").
    "" when the head has no such word. A heuristic for catalogs without product types."""
    head = title
    for stop in _TYPE_STOP:
        cut = head.find(stop)
        if cut > 0:
            head = head[:cut]
    words = [w.lower() for w in head.replace("/", " ").split()
             if len(w) >= 3 and w.isalpha()]
    if not words:
        return ""
    word = words[-1]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def multi_type_queries(texts: Sequence[str], relevant_splits: np.ndarray,
                       relevant_rows: np.ndarray, item_types: Sequence[str],
                       min_types: int = 2) -> List[PolysemousQuery]:
    """Queries whose relevant items fall in at least min_types product types, as
    PolysemousQuery (one "sense" per type, its relevant items of that type): the real-data
    analogue of the polysemous queries. Items of an empty type are left out; a text asked by
    several requests counts once (its first request).

    Args:
      texts: [Q] the requests' query texts.
      relevant_splits, relevant_rows: request q's relevant item rows are
        relevant_rows[relevant_splits[q]:relevant_splits[q + 1]].
      item_types: [N] each item row's type.
    """
    types = np.asarray(item_types)
    out, seen = [], set()
    for q, text in enumerate(texts):
        if text in seen:
            continue
        seen.add(text)
        rows = np.asarray(relevant_rows[relevant_splits[q]:relevant_splits[q + 1]], np.int64)
        groups = {}
        for row in rows:
            if types[row]:
                groups.setdefault(str(types[row]), []).append(int(row))
        if len(groups) >= min_types:
            names = tuple(sorted(groups))
            out.append(PolysemousQuery(text, names, tuple(
                np.array(sorted(groups[n]), np.int64) for n in names)))
    return out


def split_by_training(queries: Sequence[PolysemousQuery], eval_queries: Sequence[str]
                      ) -> Tuple[List[PolysemousQuery], List[PolysemousQuery]]:
    """(unseen, seen): the queries of the eval split (never trained on: a query's interactions
    all land in one split) and the others, each in the given order."""
    held_out = set(eval_queries)
    return ([q for q in queries if q.text in held_out],
            [q for q in queries if q.text not in held_out])


_BATCH = 128


def head_lists(query_heads: np.ndarray, item_emb: np.ndarray, k: int
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Each head's exact top k by inner product (as a flat index serves it).

    Args:
      query_heads: [Q, m, d] float32; item_emb: [N, d] float32; k <= N.

    Returns:
      (scores [Q, m, k] float32, rows [Q, m, k] int64), best first, ties by lower row.
    """
    heads = query_heads.astype(np.float32)
    items = item_emb.astype(np.float32)
    q, m, n = len(heads), heads.shape[1], len(items)
    scores = np.zeros([q, m, k], np.float32)
    rows = np.zeros([q, m, k], np.int64)
    for lo in range(0, q, _BATCH):   # bounded memory: [batch, m, N] scores at a time
        dots = np.einsum("qmd,nd->qmn", heads[lo:lo + _BATCH], items).reshape(-1, n)
        if k < n:   # every item scoring >= the k-th best (ties included), then an exact sort
            kth = -np.partition(-dots, k - 1, axis=1)[:, k - 1:k]
            for j, row in enumerate(dots):
                cand = np.flatnonzero(row >= kth[j])
                top = cand[np.lexsort((cand, -row[cand]))[:k]]
                scores[lo + j // m, j % m], rows[lo + j // m, j % m] = row[top], top
        else:
            order = np.argsort(-dots, axis=1, kind="stable")[:, :k]
            part = slice(lo, lo + len(dots) // m)
            scores[part] = np.take_along_axis(dots, order, 1).reshape(-1, m, k)
            rows[part] = order.reshape(-1, m, k)
    return scores, rows


@dataclasses.dataclass(frozen=True)
class QuerySenses:
    """Sense metrics of one query at one cut-off (see the module docstring)."""

    text: str
    k: int
    recall: Tuple[float, ...]          # per sense
    covered: bool
    head_purity: Tuple[float, ...]     # per head (NaN: no sense item in its top k)
    head_sense: Tuple[int, ...]        # per head: its most frequent sense (-1: none)


def query_senses(query: PolysemousQuery, merged: np.ndarray, per_head: np.ndarray,
                 k: int) -> QuerySenses:
    """Sense metrics of one query.

    Args:
      query: its senses.
      merged: [>= k] int64 the served list's item rows (-1 = padding).
      per_head: [m, >= k] int64 each head's own list.
      k: the cut-off.
    """
    top = merged[:k]
    top = top[top >= 0]
    recall = tuple(float(np.isin(rows, top).sum() / len(rows)) for rows in query.items)
    purity, dominant = [], []
    for head in per_head:
        counts = np.array([np.isin(head[:k], rows).sum() for rows in query.items])
        total = counts.sum()
        purity.append(float(counts.max() / total) if total else float("nan"))
        dominant.append(int(np.argmax(counts)) if total else -1)
    return QuerySenses(query.text, k, recall, all(r > 0 for r in recall), tuple(purity),
                       tuple(dominant))


def evaluate_senses(queries: Sequence[PolysemousQuery], query_heads: np.ndarray,
                    item_emb: np.ndarray, ks: Sequence[int] = (10, 100),
                    quota: Optional[Sequence[float]] = None) -> List[QuerySenses]:
    """Sense metrics of every query at every cut-off, on the served ranking.

    Args:
      queries: [Q] the polysemous queries.
      query_heads: [Q, m, d] their head embeddings (row i = queries[i]).
      item_emb: [N, d] the catalog's item embeddings (rows as the queries' item rows).
      ks: cut-offs.
      quota: per-head shares of the merged list (head_merge.merge_heads_quota_np), or None for
        the best-score merge serving uses by default.

    Returns:
      one QuerySenses per (cut-off, query), cut-offs in the given order.
    """
    if len(queries) != len(query_heads):
        raise ValueError(f"{len(queries)} queries but {len(query_heads)} head embeddings")
    out = []
    for k in ks:
        scores, rows = head_lists(query_heads, item_emb, k)
        if quota is None:
            _, merged, _ = head_merge.merge_heads_np(scores, rows, k)
        else:
            _, merged, _ = head_merge.merge_heads_quota_np(scores, rows, k, quota)
        out.extend(query_senses(q, merged[i], rows[i], k) for i, q in enumerate(queries))
    return out


def summarize(results: Sequence[QuerySenses]) -> Dict[str, float]:
    """Means over queries per cut-off: "sense_recall@K" (every sense of every query weighs
    the same), "covered@K" (share of queries with every sense in the top K), "purity@K" (over
    heads with a sense item), "distinct_head_senses@K" (mean number of different dominant senses
    among a query's heads: 1 = the heads agree)."""
    out = {}
    for k in sorted({r.k for r in results}):
        rows = [r for r in results if r.k == k]
        out[f"sense_recall@{k}"] = float(np.mean([x for r in rows for x in r.recall]))
        out[f"covered@{k}"] = float(np.mean([r.covered for r in rows]))
        purity = [p for r in rows for p in r.head_purity if not np.isnan(p)]
        out[f"purity@{k}"] = float(np.mean(purity)) if purity else float("nan")
        out[f"distinct_head_senses@{k}"] = float(np.mean(
            [len({s for s in r.head_sense if s >= 0}) for r in rows]))
    return out
