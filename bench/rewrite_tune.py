"""Chooses how rewrites are used (filter, merge rule, weights) on held-out TRAIN queries, and
measures chosen settings on a layout split, from bench/rewrite_candidates.py dumps.

    python bench/rewrite_tune.py grid --layout_dir=L --index_dir=I --candidates=holdout_s0.jsonl
    python bench/rewrite_tune.py table --index_dir=I --candidates=eval_s0.jsonl \
        --min_shared=M --shared_k=K --max_rewrites=R --output=table_s0.tsv

grid: every list is the project's lexical index (--cycle_ks=0,100 adds the cycle filter for
dumps of --title_source=dense); the merged list of a setting follows
dpsr_tf/search/rewrite_merge's rule (combine "max" / "sum", checked equal to merge_np on the
data) or a variant not in the product (per-list normalised scores, reciprocal ranks); printed
as differences to BM25 alone on the held-out train requests (Recall@10/100 over lists cut to
200, nDCG@10, MRR@10).
table: the rewrite table `dpsr rewrite --index_dir=I --min_shared=M --shared_k=K
--max_rewrites=R` writes, from a dump's candidates (the product's filter code), so that the
decoding is not repeated.
"""
import itertools
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

_MODE = ("grid", "table")
_LAYOUT = flags.DEFINE_string("layout_dir", None, "Layout.")
_INDEX = flags.DEFINE_string("index_dir", None, "Index build with a lexical index.")
_CANDS = flags.DEFINE_list("candidates", None, "Candidate dumps (bench/rewrite_candidates.py).")
_SET = flags.DEFINE_enum("set", None, ["holdout", "eval"], "Requests (default: grid = holdout, "
                         "measure = eval).")
_HOLDOUT = flags.DEFINE_integer("holdout_percent", 10, "As the rewriter was trained with.")
_MIN_SHARED = flags.DEFINE_integer("min_shared", 0, "table: dpsr rewrite --min_shared.")
_SHARED_K = flags.DEFINE_integer("shared_k", 10, "table: dpsr rewrite --shared_k.")
_MAX_REWRITES = flags.DEFINE_integer("max_rewrites", 3, "table: dpsr rewrite --max_rewrites.")
_OUTPUT = flags.DEFINE_string("output", None, "table: the table to write.")
_K = 1000


def _same_units_mask(queries, cands):
    from dpsr_tf.rewriting.generate import same_units  # pylint: disable=import-outside-toplevel
    return [[same_units(t, q) for t, _ in row] for q, row in zip(queries, cands)]


class Lists:
    """The lexical lists of a request set's queries, of their candidates and titles."""

    def __init__(self, searcher, eval_set, dump_path, max_cands=8):
        dump = {}
        with open(dump_path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                dump[d["query"]] = d
        self.queries = list(eval_set.queries)
        q = len(self.queries)
        self.cands = [[tuple(c) for c in dump[t]["candidates"][:max_cands]] for t in self.queries]
        self.titles = [dump[t]["title"] for t in self.queries]
        self.own_s, self.own_r = searcher.search(self.queries, _K)
        c = max_cands
        flat = [(row + [("", 0.0)] * c)[:c] for row in self.cands]
        texts = [t for row in flat for t, _ in row]
        s, r = searcher.search([t if t else "\x00" for t in texts], _K)
        self.cand_s, self.cand_r = s.reshape(q, c, _K), r.reshape(q, c, _K)
        empty = np.array([[t == "" for t, _ in row] for row in flat])
        self.cand_r[empty], self.cand_s[empty] = -1, -np.inf
        self.same = np.array([(m + [True] * c)[:c] for m in _same_units_mask(self.queries, self.cands)])
        self.title_s, self.title_r = searcher.search([t or "\x00" for t in self.titles], _K)
        self.empty = empty

    def finds_title(self, k, rows_of_title):
        """[Q, C] bool: the candidate's top k holds an item whose title is the dump's title
        (the cycle filter, dpsr rewrite --cycle_k; rows_of_title: title -> item rows)."""
        out = np.zeros(self.cand_r.shape[:2], bool)
        for i, title in enumerate(self.titles):
            own = rows_of_title.get(title, set())
            for j in range(self.cand_r.shape[1]):
                out[i, j] = bool(own & set(self.cand_r[i, j, :k].tolist()))
        return out

    def shared(self, k):
        """[Q, C] items shared by each candidate's top k and the query's top k."""
        out = np.zeros(self.cand_r.shape[:2], np.int64)
        for i in range(len(self.queries)):
            own = set(self.own_r[i, :k].tolist()) - {-1}
            for j in range(self.cand_r.shape[1]):
                out[i, j] = len(own & set(self.cand_r[i, j, :k].tolist()))
        return out

    def select(self, max_rewrites, shared_k, min_shared):
        """[Q, R] candidate index of each kept rewrite (-1 none): the first candidates (best
        score first) that differ from the query, have a lexical hit and (min_shared > 0) share
        >= min_shared items of their top shared_k with the query's."""
        ok = ~self.same & ~self.empty & (self.cand_s[:, :, 0] > 0)
        if min_shared > 0:
            ok &= self.shared(shared_k) >= min_shared
        out = np.full([len(self.queries), max_rewrites], -1, np.int64)
        for i in range(len(self.queries)):
            idx = np.flatnonzero(ok[i])[:max_rewrites]
            out[i, :len(idx)] = idx
        return out


def merge_fast(lists, n, combine="max"):
    """Vectorized merge over [(scores [Q,K], rows [Q,K], factor)], the first list the query's:
    merged(item) = max (or sum) over the lists holding it of factor * score; ties by first
    position. combine="max" equals merge_np (checked in grid on the data)."""
    s = np.concatenate([np.where(r >= 0, sc.astype(np.float32) * np.float32(f), -np.inf)
                        for sc, r, f in lists], axis=1).astype(np.float32)
    r = np.concatenate([x[1] for x in lists], axis=1)
    q, w = r.shape
    pos = np.broadcast_to(np.arange(w), (q, w))
    qi = np.broadcast_to(np.arange(q)[:, None], (q, w))
    valid = (r >= 0) & np.isfinite(s)
    fs, fr, fp, fq = s[valid], r[valid], pos[valid], qi[valid]
    o = np.lexsort((-fs, fr, fq))
    fs, fr, fp, fq = fs[o], fr[o], fp[o], fq[o]
    head = np.r_[True, (fr[1:] != fr[:-1]) | (fq[1:] != fq[:-1])]
    starts = np.flatnonzero(head)
    first_pos = np.minimum.reduceat(fp, starts)
    bs = fs[head] if combine == "max" else np.add.reduceat(fs.astype(np.float64), starts).astype(np.float32)
    br, bq = fr[head], fq[head]
    o2 = np.lexsort((first_pos, -bs, bq))
    bs, br, bq = bs[o2], br[o2], bq[o2]
    qstart = np.searchsorted(bq, np.arange(q))
    rank = np.arange(len(bq)) - qstart[bq]
    keep = rank < n
    out_s = np.full([q, n], -np.inf, np.float32)
    out_r = np.full([q, n], -1, np.int64)
    out_s[bq[keep], rank[keep]] = bs[keep]
    out_r[bq[keep], rank[keep]] = br[keep]
    return out_s, out_r


def transform(sc, kind, rrf_k=60.0):
    """Per-list scores: raw BM25, BM25 / the list's top score, or 1 / (rrf_k + rank)."""
    if kind == "raw":
        return sc
    if kind == "norm":
        top = sc[:, :1]
        return np.where(np.isfinite(sc) & (top > 0), sc / np.where(top > 0, top, 1), -np.inf)
    if kind == "rrf":
        rank = np.arange(1, sc.shape[1] + 1, dtype=np.float32)[None, :]
        return np.where(np.isfinite(sc), 1.0 / (rrf_k + rank), -np.inf).astype(np.float32)
    raise ValueError(kind)


def build_lists(L, sel, weight, kind="raw", title_weight=0.0, k=None):
    """The [(scores, rows, factor)] of a setting (lists cut to k)."""
    k = k or L.own_r.shape[1]
    out = [(transform(L.own_s[:, :k], kind), L.own_r[:, :k], 1.0)]
    q = np.arange(len(L.queries))
    for j in range(sel.shape[1]):
        idx = sel[:, j]
        sc = L.cand_s[q, np.maximum(idx, 0), :k].copy()
        rw = L.cand_r[q, np.maximum(idx, 0), :k].copy()
        sc[idx < 0], rw[idx < 0] = -np.inf, -1
        out.append((transform(sc, kind), rw, weight))
    if title_weight > 0:
        out.append((transform(L.title_s[:, :k], kind), L.title_r[:, :k], title_weight))
    return out


def fast_metrics(rows, eval_set, num_items):
    """Recall@10/100 (of rows' depth), nDCG@10, MRR@10 means, vectorized (equal to
    metrics.retrieval_metrics, checked in grid)."""
    sp = eval_set.relevant_splits
    q = len(sp) - 1
    counts = sp[1:] - sp[:-1]
    req = np.repeat(np.arange(q), counts)
    keys = req * num_items + eval_set.relevant_rows
    gain_of = dict(zip(keys.tolist(), eval_set.relevant_gains.tolist()))
    rk = np.where(rows >= 0, np.arange(q)[:, None] * num_items + rows, -1)
    hit = np.isin(rk, keys)
    out = {}
    for k in (10, 100):
        out[f"recall@{k}"] = float((hit[:, :k].sum(1) / counts).mean())
    gains = np.zeros(rows[:, :10].shape)
    for i, j in zip(*np.nonzero(hit[:, :10])):
        gains[i, j] = gain_of[int(rk[i, j])]
    disc = 1.0 / np.log2(np.arange(2, 12))
    ideal = np.zeros(q)
    for i in range(q):
        g = np.sort(eval_set.relevant_gains[sp[i]:sp[i + 1]])[::-1][:10]
        ideal[i] = (g * disc[:len(g)]).sum()
    out["ndcg@10"] = float(((gains * disc).sum(1) / ideal).mean())
    first = np.where(hit[:, :10].any(1), hit[:, :10].argmax(1) + 1, np.inf)
    out["mrr@10"] = float((1.0 / first).mean())
    return out


def metrics(rows, eval_set, per_request=False):
    from dpsr_tf.evaluation import metrics as m  # pylint: disable=import-outside-toplevel
    return m.retrieval_metrics(rows, eval_set.relevant_splits, eval_set.relevant_rows,
                               eval_set.relevant_gains, with_per_request=per_request)


def drift(L, sel, eval_set):
    """Share of kept rewrites whose own top 10 holds none of the request's relevant items."""
    n = d = 0
    for i in range(len(L.queries)):
        rel = set(eval_set.relevant_rows[eval_set.relevant_splits[i]:
                                         eval_set.relevant_splits[i + 1]].tolist())
        for j in sel[i]:
            if j >= 0:
                n += 1
                d += not (rel & set(L.cand_r[i, j, :10].tolist()))
    return (d / n if n else 0.0), n


def _setup(split_kind):
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.data import eval_set as eval_set_lib
    from dpsr_tf.data import layout as layout_lib
    from dpsr_tf.evaluation import rewrites as rewrites_lib
    from dpsr_tf.indexing.lexical_index import LexicalSearcher
    spec = layout_lib.load_layout_spec(_LAYOUT.value)
    if split_kind == "holdout":
        eval_set = rewrites_lib.holdout_eval_set(spec, _HOLDOUT.value)
    else:
        eval_set = eval_set_lib.load_eval_set(spec, "eval")
    searcher = LexicalSearcher(_INDEX.value, layout_lib.load_item_ids(spec))
    return spec, eval_set, searcher


def _short(m):
    return {k: round(v, 4) for k, v in m.items() if k.startswith(("recall", "ndcg", "mrr"))}


_TITLE_WEIGHTS = flags.DEFINE_list("title_weights", ["0", "0.3", "1.0"], "grid: weights of the "
                                   "dump's title as an extra lexical query (0 = none).")
_SMALL = flags.DEFINE_bool("small", False, "grid: fewer filters and merges.")
_CYCLE_KS = flags.DEFINE_list("cycle_ks", ["0"], "grid: cycle filters to try (dpsr rewrite "
                              "--cycle_k; 0 = off); table: the first is applied. Needs dumps "
                              "with --title_source=dense (a generated title is no item).")
GRID_FILTERS = [(0, 0)] + [(10, 1), (10, 3), (10, 5), (100, 5), (100, 20)]
GRID_MERGES = ([("max", "raw", w) for w in (0.3, 0.5, 0.8, 1.0)]
               + [("max", "norm", w) for w in (0.5, 0.8, 1.0)]
               + [("sum", "raw", w) for w in (0.03, 0.05, 0.1, 0.3, 0.5, 1.0)]
               + [("sum", "rrf", w) for w in (0.3, 0.5, 1.0)])


def grid(argv):
    from dpsr_tf.data import layout as layout_lib  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.rewrite_merge import merge_np  # pylint: disable=import-outside-toplevel
    spec, eval_set, searcher = _setup(_SET.value or "holdout")
    kk = 200      # tuning depth: the merged top 100 of "max" needs each list's top 100 only
    for path in _CANDS.value:
        t0 = time.time()
        L = Lists(searcher, eval_set, path)
        base = metrics(L.own_r, eval_set)
        fb = fast_metrics(L.own_r[:, :kk], eval_set, spec.num_items)
        for key, v in fb.items():
            assert abs(v - base[key]) < 1e-9, (key, v, base[key])
        base = fb
        print(json.dumps({"table": path, "system": "lexical", **_short(base)}), flush=True)
        sel = L.select(3, 10, 0)
        lists = build_lists(L, sel, 0.3, "raw")
        fs, fr = merge_fast(lists, _K)
        rs = np.stack([x[0] for x in lists[1:]], 1)
        rr = np.stack([x[1] for x in lists[1:]], 1)
        ns, nr, _ = merge_np(L.own_s, L.own_r, rs, rr, _K, 0.3)
        assert (fr == nr).all() and np.allclose(fs, ns), "merge_fast != merge_np"
        shared = {k: L.shared(k) for k in (10, 100)}
        filters, merges = GRID_FILTERS, GRID_MERGES
        if _SMALL.value:
            filters = [(0, 0), (10, 1), (10, 3), (100, 5)]
            merges = [m for m in GRID_MERGES if m[1] != "norm" and m[2] != 0.5]
        tws = [float(x) for x in _TITLE_WEIGHTS.value]
        cycle_ks = [int(x) for x in _CYCLE_KS.value]
        if any(cycle_ks):
            from dpsr_tf.rewriting.title_candidates import items_of_title  # pylint: disable=import-outside-toplevel
            titles = layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))
            rows_of_title = items_of_title(range(len(titles)), titles)
            finds = {k: L.finds_title(k, rows_of_title) for k in cycle_ks if k}
        for mr, (sk, ms), ck in itertools.product((1, 3, 5), filters, cycle_ks):
            ok = ~L.same & ~L.empty & (L.cand_s[:, :, 0] > 0)
            if ms:
                ok &= shared[sk] >= ms
            if ck:
                ok &= finds[ck]
            sel = np.full([len(L.queries), mr], -1, np.int64)
            for i in range(len(L.queries)):
                idx = np.flatnonzero(ok[i])[:mr]
                sel[i, :len(idx)] = idx
            dr, n = drift(L, sel, eval_set)
            for (combine, kind, w), tw in itertools.product(merges, tws):
                _, fr = merge_fast(build_lists(L, sel, w, kind, tw, kk), 100, combine)
                m = fast_metrics(fr, eval_set, spec.num_items)
                print(json.dumps({"max_rewrites": mr, "shared_k": sk, "min_shared": ms,
                                  "cycle_k": ck,
                                  "combine": combine, "scores": kind, "weight": w,
                                  "title_weight": tw, "rewrites": n, "drift": round(dr, 4),
                                  **{k: round(v - base[k], 4) for k, v in m.items()}}),
                      flush=True)
        none = np.full([len(L.queries), 0], -1, np.int64)
        for (combine, kind, w) in (merges if any(tws) else []):
            _, fr = merge_fast(build_lists(L, none, 1.0, kind, w, kk), 100, combine)
            m = fast_metrics(fr, eval_set, spec.num_items)
            print(json.dumps({"title_only": True, "combine": combine, "scores": kind,
                              "title_weight": w,
                              **{k: round(v - base[k], 4) for k, v in m.items()}}), flush=True)
        print(f"# {path}: {time.time() - t0:.0f}s", file=sys.stderr)


def main(argv):
    if len(argv) < 2 or argv[1] not in _MODE:
        raise SystemExit(f"usage: rewrite_tune.py {{{'|'.join(_MODE)}}} --flags")
    if argv[1] == "grid":
        return grid(argv)
    return table(argv)


def table(argv):
    """Writes the filtered rewrite table of a candidate dump (dpsr rewrite's filters)."""
    del argv
    # pylint: disable=import-outside-toplevel
    from dpsr_tf.rewriting import generate, table as table_lib
    from dpsr_tf.rewriting.lexical_filter import lexical_hit_fn, lexical_shared_fn
    rows = []
    with open(_CANDS.value[0], encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            rows.append(generate.QueryRewrites(d["query"], d["title"], tuple(
                generate.Rewrite(t, float(sc)) for t, sc in d["candidates"])))
    shared = lexical_shared_fn(_INDEX.value, _SHARED_K.value) if _MIN_SHARED.value else None
    finds = None
    cycle_k = int(_CYCLE_KS.value[0])
    if cycle_k:
        from dpsr_tf.data import layout as layout_lib
        from dpsr_tf.rewriting.lexical_filter import lexical_cycle_fn
        spec = layout_lib.load_layout_spec(_LAYOUT.value)
        from dpsr_tf.rewriting.title_candidates import items_of_title
        finds = lexical_cycle_fn(_INDEX.value, cycle_k, items_of_title(
            layout_lib.load_item_ids(spec),
            layout_lib.read_lines(spec.path(layout_lib.ITEM_TITLES))))
    rows = generate.filter_rewrites(rows, lexical_hit_fn(_INDEX.value), _MAX_REWRITES.value,
                                    shared, _MIN_SHARED.value, finds)
    lines = table_lib.write_table(_OUTPUT.value, [
        (r.query, [(w.text, w.score) for w in r.rewrites]) for r in rows])
    print(f"wrote {_OUTPUT.value}: {lines} rewrites of "
          f"{sum(1 for r in rows if r.rewrites)}/{len(rows)} queries")


if __name__ == "__main__":
    app.run(main)
