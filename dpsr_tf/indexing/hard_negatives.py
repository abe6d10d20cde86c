"""Hard negatives mined from a trained model's own ranking (Facebook EBR, Huang et al. 2020).

    provenance = mine_hard_negatives("/m/base", "/data/layout", "/m/new",
                                     ranks=(101, 500), per_query=16, splits=("train",))

With the trained model at `source_model_dir`, every item of the layout is embedded (the
item tower, as `dpsr index` does) and every query row of the given record splits (the query
tower); each query ranks the whole catalog by the model's own score (the soft dot product over
heads, exact brute force). From that ranking with the query's own positives (every item it
has a positive record with in those splits) removed, the items at ranks ranks[0]..ranks[1]
(1-based, inclusive) form the query's window; `per_query` of them are drawn uniformly
without replacement (seeded) and written, in rank order, to the per-query table of
dpsr_tf/data/hard_negative_table.py in `model_dir`, with a provenance record.

Ties: the ranking orders by score descending, then item row ascending (a stable sort).
Queries are embedded as the query text alone (no user features or history): a personalized
model's table holds each query's negatives for the unknown user.
Why a window and not the top: the very top of a model's ranking holds many items that are
relevant but unlabelled; EBR found ranks 101-500 the best source of negatives.
"""
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from dpsr_tf.data import hard_negative_table
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.indexing import catalog_index
from dpsr_tf.model import model_dir as model_dir_lib
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.scoring import soft_dot_from_dots_np

FLAG = "--hard_negatives_from"


def positives_by_query(spec, splits: Sequence[str]) -> Tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """The query rows of the splits' records and each one's positive items.

    Returns:
      (query_rows [Q] int64 sorted distinct query rows with a record in the splits,
       pos_splits [Q + 1] int64, pos_items [P] int64): query_rows[i]'s positives (label
       click or human positive) are pos_items[pos_splits[i]:pos_splits[i + 1]], sorted.
    """
    records = [layout_lib.read_records(spec, s) for s in splits]
    rec = np.concatenate(records) if records else np.zeros([0], layout_lib.RECORD_DTYPE)
    query_rows = np.unique(rec["query_row"].astype(np.int64))
    pos = rec[rec["label_kind"] != 2]
    pairs = np.unique(np.stack([pos["query_row"].astype(np.int64),
                                pos["item_row"].astype(np.int64)], axis=1), axis=0) \
        if len(pos) else np.zeros([0, 2], np.int64)
    index = np.searchsorted(query_rows, pairs[:, 0])
    counts = np.bincount(index, minlength=len(query_rows))
    pos_splits = np.zeros(len(query_rows) + 1, np.int64)
    np.cumsum(counts, out=pos_splits[1:])
    return query_rows, pos_splits, pairs[:, 1].copy()


def _ordered(row: np.ndarray, cand: np.ndarray, excl: np.ndarray, need: int,
             ranks: Tuple[int, int]) -> np.ndarray:
    """The window of one row from candidates that hold its top `need` items."""
    n = len(cand)
    if need < n:   # every candidate at or above the need-th largest score: ties stay in
        cut = np.partition(row[cand], n - need)[n - need]
        cand = cand[row[cand] >= cut]
    cand = cand[np.lexsort((cand, -row[cand]))]
    cand = cand[~np.isin(cand, excl)]
    return cand[ranks[0] - 1:ranks[1]].astype(np.int64)


# The threshold pass looks at every _STRIDE-th item and keeps _SLACK times the share of the
# window it expects there, so it holds the top `need` items of a row almost always; a row where
# it does not falls back to the exact pass over the whole row.
_STRIDE = 8
_SLACK = 1.5


def window_items(scores: np.ndarray, excluded: Sequence[np.ndarray],
                 ranks: Tuple[int, int]) -> List[np.ndarray]:
    """Each row's items at ranks ranks[0]..ranks[1] once its excluded items are removed.

    Exact: a cheap threshold from every 8th item picks candidates; a row whose candidates
    cannot hold its top ranks[1] + len(excluded) items is ranked over the whole row instead.

    Args:
      scores: [b, N] float32 scores of b queries against the N items.
      excluded: b arrays of item rows (the query's positives) to leave out of the ranking.
      ranks: (first, last) 1-based inclusive ranks; last is clipped to what the row holds.

    Returns:
      b int64 arrays of item rows in rank order (score descending, then item row ascending),
      each of length max(0, min(last, N - excluded) - first + 1).
    """
    b, n = scores.shape
    excluded = [np.unique(np.asarray(e, np.int64)) for e in excluded]
    needs = np.array([min(n, ranks[1] + len(e)) for e in excluded], np.int64)
    everything = np.arange(n)
    sub = scores[:, ::_STRIDE]
    k = int(np.ceil(_SLACK * needs.max() / _STRIDE)) + 1 if b else 0
    if b == 0 or k >= sub.shape[1]:
        return [_ordered(scores[i], everything, excluded[i], int(needs[i]), ranks)
                for i in range(b)]
    threshold = np.partition(sub, sub.shape[1] - k, axis=1)[:, sub.shape[1] - k]
    rows, cols = np.nonzero(scores >= threshold[:, None])
    bounds = np.searchsorted(rows, np.arange(b + 1))
    out = []
    for i in range(b):
        cand = cols[bounds[i]:bounds[i + 1]]
        if len(cand) < needs[i]:
            cand = everything
        out.append(_ordered(scores[i], cand, excluded[i], int(needs[i]), ranks))
    return out


def _scores(heads: np.ndarray, items: np.ndarray, beta: float) -> np.ndarray:
    """[b, N] soft dot products (soft_dot_from_dots_np) of [b, m, d] heads with [N, d]
    items, one BLAS matmul per head."""
    dots = np.stack([heads[:, h] @ items.T for h in range(heads.shape[1])], axis=-1)
    return soft_dot_from_dots_np(dots, beta)


def sample_window(window: np.ndarray, per_query: int, rng: np.random.Generator) -> np.ndarray:
    """min(per_query, len(window)) items of `window` drawn without replacement, in the
    window's order."""
    if len(window) <= per_query:
        return window
    return window[np.sort(rng.choice(len(window), per_query, replace=False))]


def check_source(source_model_dir: str, spec) -> Tuple[object, object]:
    """(ModelConfig, saved LayoutSpec) of the model to mine with, checked against `spec`.

    Raises:
      ValueError: not a model directory, no checkpoint, or trained on another layout; the
        message names the flag, the value and what to do.
    """
    if not source_model_dir or not tf.io.gfile.isdir(source_model_dir):
        raise ValueError(f"{FLAG}={source_model_dir!r}: no such directory; pass the model "
                         f"directory of a finished `dpsr train` on this layout")
    try:
        cfg, saved = model_dir_lib.load_model_config(source_model_dir)
        model_dir_lib.latest_checkpoint(source_model_dir)
    except FileNotFoundError as e:
        raise ValueError(f"{FLAG}={source_model_dir}: {e}") from None
    for key in ("num_items", "num_queries", "token_id_space", "item_features"):
        if getattr(saved, key) != getattr(spec, key):
            raise ValueError(
                f"{FLAG}={source_model_dir} was trained on the layout {saved.layout_dir} "
                f"({key}={getattr(saved, key)}), not on --layout_dir={spec.layout_dir} "
                f"({key}={getattr(spec, key)}); mine with a model trained on this layout "
                f"(train one without {FLAG} first)")
    if cfg.model == "dssm":
        raise ValueError(f"{FLAG}={source_model_dir} is a --model=dssm baseline; mine with a "
                         f"DPSR model")
    return cfg, saved


def check_ranks(ranks: Sequence[int], num_items: int) -> Tuple[int, int]:
    """(first, last) of a --hard_negative_ranks value, checked against the catalog size."""
    if len(ranks) != 2 or not 1 <= ranks[0] <= ranks[1]:
        raise ValueError(f"--hard_negative_ranks={','.join(str(r) for r in ranks)}: expected "
                         f"FIRST,LAST with 1 <= FIRST <= LAST, e.g. 101,500")
    if ranks[0] > num_items:
        raise ValueError(f"--hard_negative_ranks={ranks[0]},{ranks[1]}: the window starts "
                         f"beyond the catalog's {num_items} items; choose FIRST <= "
                         f"{num_items} (e.g. {max(1, num_items // 100)},{max(1, num_items // 20)})")
    return int(ranks[0]), int(ranks[1])


def _query_tokens(spec, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(token_ids [T] int64, token_splits [len(rows) + 1] int64) of query rows."""
    ids, splits = layout_lib.load_query_tokens(spec)
    starts, ends = splits[rows], splits[rows + 1]
    out_splits = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(ends - starts, out=out_splits[1:])
    positions = np.repeat(starts - out_splits[:-1], ends - starts) + np.arange(out_splits[-1])
    return ids[positions].astype(np.int64), out_splits


def table_key(source_model_dir: str, spec, *, ranks: Sequence[int], per_query: int,
              splits: Sequence[str], seed: int, checkpoint: Optional[str] = None) -> dict:
    """The provenance key (hard_negative_table.KEY_FIELDS) of a mining with these settings:
    what a resumed run compares to reuse a table, and what a cluster's non-chief tasks wait
    for the chief to write (a table left by an earlier run is not theirs).

    Raises:
      ValueError: bad ranks, per_query or splits (naming the flag and value).
    """
    first, last = check_ranks(ranks, spec.num_items)
    if per_query < 1:
        raise ValueError(f"--hard_negatives_per_query={per_query}: must be >= 1")
    return {"source_model_dir": hard_negative_table.absolute(source_model_dir),
            "checkpoint": model_dir_lib.latest_checkpoint(source_model_dir, checkpoint),
            "layout_dir": spec.layout_dir, "num_items": spec.num_items,
            "num_queries": spec.num_queries, "ranks": [first, last], "per_query": int(per_query),
            "splits": list(hard_negative_table.mined_splits(splits, spec)), "seed": int(seed)}


def mine_hard_negatives(source_model_dir: str, layout_dir: str, model_dir: str, *,
                        ranks: Sequence[int] = (101, 500), per_query: int = 16,
                        splits: Sequence[str] = ("train",), seed: int = 0,
                        checkpoint: Optional[str] = None, chunk: int = 512,
                        progress_every_s: float = 15.0,
                        log: Callable[[str], None] = lambda m: logging.info("%s", m)) -> dict:
    """Mines the table into model_dir (see the module docstring); returns its provenance.

    A table already in model_dir with the same provenance key is kept (a resumed run).

    Args:
      source_model_dir: the trained model whose ranking supplies the negatives.
      layout_dir: the layout being trained on (the source must have been trained on it).
      model_dir: where the table goes (the new run's model directory).
      ranks: (first, last) 1-based inclusive window of the positives-removed ranking.
      per_query: items drawn from each query's window.
      splits: record splits whose query rows are mined (e.g. ("train", "pseudo"); pseudo is
        skipped on a layout without it, see hard_negative_table.mined_splits).
      seed: seed of the draw.
      checkpoint: a checkpoint prefix of source_model_dir (default its latest).
      chunk: queries scored against the catalog at once.

    Raises:
      ValueError: bad source, ranks, splits or per_query (naming the flag and value).
    """
    spec = layout_lib.load_layout_spec(layout_dir)
    cfg, _ = check_source(source_model_dir, spec)
    key = table_key(source_model_dir, spec, ranks=ranks, per_query=per_query, splits=splits,
                    seed=seed, checkpoint=checkpoint)
    (first, last), splits, ckpt = key["ranks"], key["splits"], key["checkpoint"]
    old = hard_negative_table.read_provenance(model_dir)
    if old is not None and hard_negative_table.same_key(old, key):
        log(f"hard negatives: reusing the table in {hard_negative_table.table_dir(model_dir)} "
            f"({old.get('negatives', '?')} negatives of {old.get('queries', '?')} queries)")
        return old
    start = time.monotonic()
    log(f"hard negatives: embedding the {spec.num_items:,} items with {ckpt}")
    items, _ = catalog_index.embed_catalog(source_model_dir, layout_dir=layout_dir,
                                           checkpoint=ckpt)
    query_rows, pos_splits, pos_items = positives_by_query(spec, splits)
    log(f"hard negatives: {len(query_rows):,} queries of {'+'.join(splits)}; ranking the "
        f"catalog for each, window {first}-{last}, {per_query} per query")
    tokens, token_splits = _query_tokens(spec, query_rows)
    per_row: List[np.ndarray] = []
    last_log = time.monotonic()
    with CheckpointEmbedder(source_model_dir, ckpt, cfg, spec) as embedder:
        for lo in range(0, len(query_rows), chunk):
            hi = min(len(query_rows), lo + chunk)
            t0, t1 = token_splits[lo], token_splits[hi]
            heads = embedder.embed_queries(tokens[t0:t1], token_splits[lo:hi + 1] - t0,
                                           query_rows=query_rows[lo:hi])
            scores = _scores(heads, np.ascontiguousarray(items), cfg.beta)
            excluded = [pos_items[pos_splits[i]:pos_splits[i + 1]] for i in range(lo, hi)]
            rng = np.random.default_rng([int(seed), lo])
            per_row.extend(sample_window(w, per_query, rng)
                           for w in window_items(scores, excluded, (first, last)))
            now = time.monotonic()
            if now - last_log >= progress_every_s or hi == len(query_rows):
                log(f"hard negatives: {hi:,}/{len(query_rows):,} queries mined "
                    f"({hi / max(now - start, 1e-9):.0f} queries/s)")
                last_log = now
    counts = np.zeros(spec.num_queries, np.int64)
    counts[query_rows] = [len(w) for w in per_row]
    table_splits = np.zeros(spec.num_queries + 1, np.int64)
    np.cumsum(counts, out=table_splits[1:])
    # query_rows is sorted (positives_by_query), so per_row is already in table order.
    flat = np.concatenate(per_row) if per_row else np.zeros([0], np.int64)
    provenance = dict(key, queries=int(len(query_rows)), negatives=int(len(flat)),
                      queries_with_a_short_window=int((counts[query_rows] < per_query).sum()),
                      seconds=round(time.monotonic() - start, 1), written=time.time(),
                      rule="ranks counted after removing the query's positives; ties by "
                           "item row ascending; uniform draw without replacement")
    hard_negative_table.write_table(model_dir, flat, table_splits, provenance)
    log(f"hard negatives: {len(flat):,} negatives of {len(query_rows):,} queries written to "
        f"{hard_negative_table.table_dir(model_dir)} in {provenance['seconds']}s")
    return provenance
