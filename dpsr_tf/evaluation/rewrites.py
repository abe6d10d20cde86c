"""Quality of a rewrite table: lexical and hybrid retrieval with and without rewrites.

For each request of a layout split, the lexical list with rewrites is what a servable with
the table returns (dpsr_tf/search/rewrite_merge.py, merge_np = the graph's merge); the hybrid
lists fuse the served dense list with either lexical list (fusion.fuse_np's rows, computed
by search/fused_rows.py). Also:

  coverage    share of requests whose query has at least one rewrite in the table;
  drift       share of the searched rewrites whose own lexical top 10 holds none of the
              request's relevant items (the rewrite left the query's topic);
  examples    rewrites whose list brings relevant items the query's own top 100 lacked
              (good), and drifting ones (bad).
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np

from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.search.fused_rows import fused_rows
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.indexing.lexical_index import LexicalSearcher
from dpsr_tf.search.rewrite_merge import RewriteConfig, merge_np
from dpsr_tf.rewriting import table as table_lib
from dpsr_tf.rewriting.data import in_holdout


def _first_requests(eval_set, n: int):
    """The EvalSet of the first n requests."""
    return subset_requests(eval_set, np.arange(len(eval_set.queries)) < n)


def subset_requests(eval_set, keep: np.ndarray):
    """The EvalSet of the requests where keep [Q] bool is True (order kept)."""
    keep = np.asarray(keep, bool)
    splits = eval_set.relevant_splits
    counts = (splits[1:] - splits[:-1])[keep]
    new_splits = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=new_splits[1:])
    take = np.concatenate([np.arange(splits[i], splits[i + 1]) for i in np.flatnonzero(keep)]
                          or [np.zeros(0, np.int64)]).astype(np.int64)
    return dataclasses.replace(
        eval_set, queries=[q for q, k in zip(eval_set.queries, keep) if k],
        query_rows=eval_set.query_rows[keep], user_rows=eval_set.user_rows[keep],
        history_ends=eval_set.history_ends[keep], relevant_splits=new_splits,
        relevant_rows=eval_set.relevant_rows[take], relevant_gains=eval_set.relevant_gains[take])


def holdout_eval_set(layout, percent: int):
    """The train split's requests whose query is held out of rewriter training
    (dpsr_tf/rewriting/data.in_holdout(query, percent)), with the eval split's relevance
    semantics (eval_set.load_eval_set: positives with gain >= the layout's eval_min_gain): a
    tuning set for rewriting that is neither the eval queries nor anything the rewriter saw."""
    full = eval_set_lib.load_eval_set(layout, "train")
    return subset_requests(full, np.array([in_holdout(q, percent) for q in full.queries],
                                          bool))


def rewrite_texts(queries: List[str], table: Dict[str, list], max_rewrites: int) -> List[list]:
    """[Q][<= max_rewrites] the table's first rewrites of each query (by normalized key)."""
    return [[r for r, _ in table.get(table_lib.normalize_query(q), [])][:max_rewrites]
            for q in queries]


def merged_lexical_lists(searcher: LexicalSearcher, queries: List[str], rewrites: List[list],
                         k: int, cfg: RewriteConfig, min_score: float = 0.0):
    """(own scores, own rows, merged scores, merged rows, from_query, rewrite rows [Q, R, k])."""
    own_s, own_r = searcher.search(queries, k, min_score)
    r = cfg.max_rewrites
    flat = [(row + [""] * r)[:r] for row in rewrites]
    texts = [t for row in flat for t in row]
    rw_s, rw_r = searcher.search(texts, k, min_score)
    rw_s, rw_r = rw_s.reshape(len(queries), r, k), rw_r.reshape(len(queries), r, k)
    empty = np.array([[t == "" for t in row] for row in flat])
    rw_r[empty] = -1
    rw_s[empty] = -np.inf
    m_s, m_r, m_q = merge_np(own_s, own_r, rw_s, rw_r, k, cfg.rewrite_weight, cfg.combine)
    return own_s, own_r, m_s, m_r, m_q, rw_r


def lexical_lists_with_rewrites(searcher: LexicalSearcher, queries: List[str],
                                texts: List[list], cfg: RewriteConfig, default_k: int):
    """FusionConfig -> ([Q, n] scores, [Q, n] rows) of the lexical list that a servable with
    a rewrite table fuses (the query's BM25 list merged with its rewrites', each lexical_k
    deep, or default_k when the fusion's lexical_k is 0): HybridRun.lexical_lists for a
    servable exported with --rewrites. texts: rewrite_texts(queries, table, max_rewrites);
    queries without rewrites get their own list."""
    cfg.validate()

    def lists(fusion: FusionConfig):
        _, _, scores, rows, _, _ = merged_lexical_lists(
            searcher, list(queries), texts, fusion.lexical_k or default_k, cfg,
            fusion.lexical_min_score)
        return scores, rows
    return lists


def evaluate_rewrites(layout_dir: str, index_dir: str, table_path: str,
                      cfg: RewriteConfig = RewriteConfig(), split: str = "eval",
                      dense: Optional[tuple] = None, fusion: FusionConfig = FusionConfig(),
                      k: int = 1000, recall_ks=(10, 100, 1000), num_examples: int = 8,
                      max_requests: int = 0, per_request: bool = False) -> dict:
    """Metrics of "lexical", "lexical+rewrites" (and "hybrid", "hybrid+rewrites" given dense
    = ([Q, k] scores, [Q, k] rows) of the served dense list of the split's requests), plus
    coverage, drift and examples (module docstring). max_requests > 0 keeps the split's
    first requests only (and the first rows of dense). per_request: each system's entry also
    holds metrics.PER_REQUEST arrays (for per_query.write_jsonl and paired tests), and the
    result holds "eval_set"."""
    cfg.validate()
    spec = layout_lib.load_layout_spec(layout_dir)
    eval_set = eval_set_lib.load_eval_set(spec, split)
    if max_requests and max_requests < len(eval_set.queries):
        eval_set = _first_requests(eval_set, max_requests)
        if dense is not None:
            dense = (dense[0][:max_requests], dense[1][:max_requests])
    item_ids = layout_lib.load_item_ids(spec)
    titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
    searcher = LexicalSearcher(index_dir, item_ids)
    table = table_lib.read_table(table_path)
    queries = list(eval_set.queries)
    rewrites = rewrite_texts(queries, table, cfg.max_rewrites)
    own_s, own_r, m_s, m_r, _, rw_r = merged_lexical_lists(
        searcher, queries, rewrites, k, cfg, fusion.lexical_min_score)
    rel = (eval_set.relevant_splits, eval_set.relevant_rows, eval_set.relevant_gains)
    out = {"lexical": metrics_lib.retrieval_metrics(own_r, *rel, recall_ks=recall_ks,
                                                    with_per_request=per_request),
           "lexical+rewrites": metrics_lib.retrieval_metrics(m_r, *rel, recall_ks=recall_ks,
                                                             with_per_request=per_request)}
    if dense is not None:
        for name, (ls, lr) in (("hybrid", (own_s, own_r)), ("hybrid+rewrites", (m_s, m_r))):
            fused = fused_rows(dense[0], dense[1], ls, lr, k, fusion)
            out[name] = metrics_lib.retrieval_metrics(fused, *rel, recall_ks=recall_ks,
                                                      with_per_request=per_request)
    if per_request:
        out["eval_set"] = eval_set
    searched, drifted, good, bad = 0, 0, [], []
    for i, row in enumerate(rewrites):
        relevant = set(eval_set.relevant_rows[rel[0][i]:rel[0][i + 1]].tolist())
        own100 = set(own_r[i, :100].tolist())
        for j, text in enumerate(row):
            searched += 1
            top10 = rw_r[i, j, :10]
            hit10 = relevant & set(top10.tolist())
            if not hit10:
                drifted += 1
                if len(bad) < num_examples:
                    bad.append({"query": queries[i], "rewrite": text,
                                "rewrite_top1": titles[top10[0]] if top10[0] >= 0 else ""})
            new = relevant & (set(rw_r[i, j, :100].tolist()) - own100)
            if new and len(good) < num_examples:
                item = sorted(new)[0]
                good.append({"query": queries[i], "rewrite": text, "new_relevant": len(new),
                             "example_title": titles[item]})
    out["coverage"] = float(np.mean([bool(r) for r in rewrites])) if rewrites else 0.0
    out["rewrites_searched"] = searched
    out["drift_share"] = drifted / searched if searched else 0.0
    out["good_examples"], out["bad_examples"] = good, bad
    out["requests"] = len(queries)
    return out
