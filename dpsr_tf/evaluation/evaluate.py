"""`dpsr evaluate`: a trained model (or BM25) on a layout split, by the dashboard protocol.

Reports, for the requests of the split (distinct (query, user) with >= 1 relevant item):
  full-corpus Recall@10/100/1000, nDCG@10 (graded gains), MRR@10 against ALL items;
  the paper's Top-1/Top-10 of each clicked pair among it and 1,024 random items (seeded);
  AUC on the split's labelled pairs (positives vs human negatives).
A DPSR model scores with its own soft dot product over heads (exact brute force in NumPy); BM25
is `bm25s` over the item titles of the layout. The ranking users get (max over heads through
the FAISS index) is served.py's (`dpsr evaluate --served`).
"""
import dataclasses
import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from dpsr_tf.data import item_text
from dpsr_tf.data import eval_set as eval_set_lib
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import tie_metrics
from dpsr_tf.model.embedder import CheckpointEmbedder
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.model.scoring import soft_dot_from_dots_np, soft_dot_product_np


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation.

    Attributes:
      split: layout split ("eval" = the dashboard's TEST split for Home Depot).
      min_gain: relevant iff positive and gain >= min_gain; None = the layout's eval_min_gain.
      num_random: random items per clicked pair for Top-k (paper: 1,024).
      top_ks: Top-k cut-offs (paper: 1, 10).
      recall_ks: Recall cut-offs.
      seed: seed of the random items.
      batch_size: requests scored against the corpus at once.
      per_request: also return each ranking's per-request metric arrays (key
        metrics.PER_REQUEST) for paired comparisons; they are not JSON and the caller takes
        them out (per_query.take_per_request).
      tie_aware: also score each ranking in expectation over the orders of its tied scores
        (tie_metrics.py), under TIE_AWARE ({metric: mean}; with per_request, its arrays under
        TIE_AWARE + "_" + metrics.PER_REQUEST, the system "<name>_tie_aware"). BM25 gives
        every item a one-word query matches one score, and the catalog's order then decides
        the as-ranked metrics.
    """

    split: str = "eval"
    min_gain: Optional[float] = None
    num_random: int = 1024
    top_ks: Tuple[int, ...] = (1, 10)
    recall_ks: Tuple[int, ...] = (10, 100, 1000)
    seed: int = 0
    batch_size: int = 256
    per_request: bool = False
    tie_aware: bool = False


# The key of a result's tie-aware metrics (EvalConfig.tie_aware).
TIE_AWARE = "tie_aware"


def add_tie_aware(out: dict, per_request: Dict[str, np.ndarray], cfg: EvalConfig,
                  prefix: str = "") -> None:
    """Puts tie-aware per-request values into a result as EvalConfig.tie_aware describes
    (under prefix + TIE_AWARE: "served_" for the served ranking of a model's result)."""
    out[prefix + TIE_AWARE] = {m: float(v.mean()) if len(v) else 0.0
                               for m, v in per_request.items()}
    if cfg.per_request:
        out[prefix + TIE_AWARE + "_" + metrics_lib.PER_REQUEST] = per_request


# ---------------------------------------------------------------------------------------------
# Inputs of the query tower, from the layout's numpy tables.

def request_inputs(spec, query_rows: np.ndarray, user_rows: np.ndarray,
                   history_ends: np.ndarray):
    """Query-tower inputs of requests, as the input pipeline builds them.

    Returns:
      (token_ids [T] int64, token_splits [n + 1] int64, user_features {name: [n] int64},
       (history_items [H] int64, history_splits [n + 1] int64)).
    """
    ids, splits = layout_lib.load_query_tokens(spec)
    lengths = (splits[query_rows + 1] - splits[query_rows]).astype(np.int64)
    token_splits = np.zeros(len(query_rows) + 1, np.int64)
    np.cumsum(lengths, out=token_splits[1:])
    token_ids = np.concatenate([ids[splits[q]:splits[q + 1]] for q in query_rows]).astype(
        np.int64) if len(query_rows) else np.zeros([0], np.int64)
    user_feats = {}
    hist_values, hist_splits = np.zeros([0], np.int64), np.zeros(len(query_rows) + 1, np.int64)
    if spec.user_features or spec.history_length:
        table = layout_lib.load_user_table(spec)
        has_user = user_rows >= 0
        for name in spec.user_features:
            col = table.feature(name) if len(table.features) else np.zeros([0], np.int64)
            user_feats[name] = np.where(has_user, col[np.maximum(user_rows, 0)]
                                        if len(col) else 0, 0).astype(np.int64)
        items, hsplits = layout_lib.load_user_histories(spec)
        pieces = []
        for i, (u, end) in enumerate(zip(user_rows, history_ends)):
            if u < 0:
                pieces.append(np.zeros([0], np.int64))
            else:
                base = int(hsplits[u])
                stop = base + int(end)
                start = max(base, stop - spec.history_length)
                pieces.append(items[start:stop].astype(np.int64))
            hist_splits[i + 1] = hist_splits[i] + len(pieces[-1])
        hist_values = np.concatenate(pieces) if pieces else hist_values
    return token_ids, token_splits, user_feats, (hist_values, hist_splits)


def _unique_requests(query_rows, user_rows, history_ends):
    keys = np.stack([query_rows, user_rows, history_ends], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    return uniq[:, 0], uniq[:, 1], uniq[:, 2], inverse.reshape(-1)


# ---------------------------------------------------------------------------------------------
# Scorers: request -> scores over the corpus; labelled pair -> score.

class EmbeddingScorer:
    """Scores with a DPSR checkpoint: soft dot product of query heads and item embeddings."""

    def __init__(self, embedder, spec, eval_set, pairs=None):
        """pairs: the split's labelled pairs (for score_pairs), or None to score requests only."""
        cfg = embedder.model_config
        self.beta = cfg.beta
        items = layout_lib.load_item_table(spec)
        feats = {name: items.feature(name) for name in spec.item_features}
        # Raw texts, for models with a pretrained text encoder (None: the towers tokenize).
        texts = (layout_lib.load_queries(spec) if cfg.text_encoder == "pretrained" else None)
        self.item_emb = embedder.embed_items(
            items.token_ids, items.token_splits, feats,
            texts=items.titles if texts is not None else None)
        tok, spl, users, hist = request_inputs(spec, eval_set.query_rows, eval_set.user_rows,
                                               eval_set.history_ends)
        self.request_emb = embedder.embed_queries(
            tok, spl, users, hist, query_rows=eval_set.query_rows,
            texts=None if texts is None else [texts[r] for r in eval_set.query_rows])
        if pairs is None:
            return
        q, u, h, self.pair_request = _unique_requests(pairs["query_row"], pairs["user_row"],
                                                      pairs["history_end"])
        tok, spl, users, hist = request_inputs(spec, q, u, h)
        self.pair_query_emb = embedder.embed_queries(
            tok, spl, users, hist, query_rows=q,
            texts=None if texts is None else [texts[r] for r in q])

    def score_requests(self, idx: np.ndarray) -> np.ndarray:
        return soft_dot_product_np(self.request_emb[idx], self.item_emb, self.beta)

    def score_pairs(self, pair_idx: np.ndarray, items: np.ndarray) -> np.ndarray:
        heads = self.pair_query_emb[self.pair_request[pair_idx]]           # [b, m, d]
        dots = np.einsum("bmd,bcd->bcm", heads, self.item_emb[items])       # [b, c, m]
        return soft_dot_from_dots_np(dots, self.beta)


def with_bigrams(tokens: List[str]) -> List[str]:
    """Words plus their adjacent pairs joined by '_' (the paper's BM25-u&b terms):
    ["red", "shoe", "box"] -> ["red", "shoe", "box", "red_shoe", "shoe_box"]."""
    return list(tokens) + [f"{a}_{b}" for a, b in zip(tokens, tokens[1:])]


class BM25Scorer:
    """BM25 (bm25s, default k1/b, English stopwords, lower-cased words) over item documents:
    the titles, or the fields given (data/item_text.py: "all", "title:2,brand", ...).

    With bigrams, every document and query also has its adjacent word pairs as terms (after
    stopwords are removed): the paper's BM25-u&b baseline.
    """

    def __init__(self, spec, eval_set, pairs, bigrams: bool = False,
                 fields: str = item_text.ALL):
        import bm25s  # optional: the BM25 baseline's package (not a runtime requirement)
        # bm25s logs its index build at DEBUG through a logger that absl leaves at NOTSET.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self._bm25s = bm25s
        self._bigrams = bigrams
        documents = item_text.item_documents(spec, item_text.parse_fields(fields))
        self.num_items = len(documents)
        self.retriever = bm25s.BM25()
        self.retriever.index([self._terms(t) for t in self._words(documents)],
                             show_progress=False)
        queries = layout_lib.load_queries(spec)
        self.request_texts = eval_set.queries
        self.pair_texts = [queries[q] for q in pairs["query_row"]]
        self._cache: Dict[str, np.ndarray] = {}

    def _words(self, texts: List[str]) -> List[List[str]]:
        return self._bm25s.tokenize(texts, stopwords="en", return_ids=False,
                                    show_progress=False)

    def _terms(self, words: List[str]) -> List[str]:
        return with_bigrams(words) if self._bigrams else list(words)

    def _scores(self, text: str) -> np.ndarray:
        if text not in self._cache:
            vocab = self.retriever.vocab_dict
            tokens = [t for t in self._terms(self._words([text])[0]) if t in vocab]
            self._cache[text] = (self.retriever.get_scores(tokens).astype(np.float32) if tokens
                                 else np.zeros(self.num_items, np.float32))
        return self._cache[text]

    def score_requests(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([self._scores(self.request_texts[i]) for i in idx])

    def score_pairs(self, pair_idx: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.stack([self._scores(self.pair_texts[p])[items[j]]
                         for j, p in enumerate(pair_idx)])


# ---------------------------------------------------------------------------------------------

def load_split(spec, cfg: EvalConfig):
    """(EvalSet, labelled pairs with history_end) of a split."""
    eval_set = eval_set_lib.load_eval_set(spec, cfg.split, cfg.min_gain)
    pairs = eval_set_lib.load_labeled_pairs(spec, cfg.split)
    records = layout_lib.read_records(spec, cfg.split)
    pairs["history_end"] = records["history_end"].astype(np.int64)
    return eval_set, pairs


def evaluate_scorer(scorer, spec, eval_set, pairs, cfg: EvalConfig,
                    log: Callable[[str], None] = print) -> Dict[str, float]:
    """Every metric of one scorer (see the module docstring)."""
    start = time.time()
    k = max(cfg.recall_ks + (10,))
    retrieved = metrics_lib.retrieve(scorer.score_requests, len(eval_set), k, cfg.batch_size)
    out = metrics_lib.retrieval_metrics(retrieved, eval_set.relevant_splits,
                                        eval_set.relevant_rows, eval_set.relevant_gains,
                                        recall_ks=cfg.recall_ks,
                                        with_per_request=cfg.per_request)
    log(f"  full-corpus retrieval of {len(eval_set)} requests over {spec.num_items} items: "
        f"{time.time() - start:.1f}s")
    labels = pairs["label"]
    all_idx = np.arange(len(labels), dtype=np.int64)
    own = metrics_lib.pair_scores(scorer.score_pairs, all_idx, pairs["item_row"])
    pos = np.flatnonzero(labels > 0.5)
    if len(pos) and cfg.num_random > 0:
        rand = metrics_lib.random_items(len(pos), spec.num_items, cfg.num_random, cfg.seed)
        rand_scores = metrics_lib.pair_scores(scorer.score_pairs, pos, rand, batch_size=64)
        rand_scores[rand == pairs["item_row"][pos][:, None]] = -np.inf  # the item itself
        out.update(metrics_lib.top_k_among_random(own[pos], rand_scores, cfg.top_ks))
    out["auc"] = metrics_lib.auc(labels, own)
    if cfg.tie_aware:
        add_tie_aware(out, tie_aware_metrics(scorer, eval_set, cfg), cfg)
    out["labeled_pairs"] = int(len(labels))
    out["labeled_negatives"] = int((labels < 0.5).sum())
    out["clicked_pairs"] = int(len(pos))
    out["seconds"] = round(time.time() - start, 1)
    return out


def tie_aware_metrics(scorer, eval_set, cfg: EvalConfig) -> Dict[str, np.ndarray]:
    """Per-request Recall@k (cfg.recall_ks) and nDCG@10 of a full-corpus scorer in expectation
    over the orders of its tied scores (evaluation/tie_metrics.py). Each request's whole
    catalog is ranked, so a tie group reaching past the cut-off (BM25's zero scores, every
    item the query does not match) is judged whole, not as the catalog order cut it.

    Returns:
      {"recall@k": [Q] float64, "ndcg@10": [Q] float64}.
    """
    out: Dict[str, List[np.ndarray]] = {}
    for lo in range(0, len(eval_set), cfg.batch_size):
        idx = np.arange(lo, min(len(eval_set), lo + cfg.batch_size), dtype=np.int64)
        scores = np.asarray(scorer.score_requests(idx), np.float64)
        order = np.argsort(-scores, axis=1, kind="stable")
        splits = eval_set.relevant_splits[lo:idx[-1] + 2]
        part = tie_metrics.per_request_tie_metrics(
            order.astype(np.int64), np.take_along_axis(scores, order, axis=1),
            splits - splits[0], eval_set.relevant_rows[splits[0]:splits[-1]],
            eval_set.relevant_gains[splits[0]:splits[-1]], recall_ks=cfg.recall_ks)
        for name, values in part.items():
            out.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in out.items()}


def tie_aware_bm25(layout_dir: str, cfg: EvalConfig = EvalConfig(), bigrams: bool = False,
                   fields: str = item_text.ALL) -> Dict[str, np.ndarray]:
    """evaluate_bm25's rankings scored by tie_aware_metrics (per request)."""
    spec = layout_lib.load_layout_spec(layout_dir)
    eval_set, pairs = load_split(spec, cfg)
    return tie_aware_metrics(BM25Scorer(spec, eval_set, pairs, bigrams, fields), eval_set, cfg)


def load_model_scorer(model_dir: str, layout_dir: Optional[str] = None,
                      cfg: EvalConfig = EvalConfig(), checkpoint: Optional[str] = None,
                      log: Callable[[str], None] = print):
    """Embeds a split's requests and the whole catalog with a trained model directory.

    Returns:
      (EmbeddingScorer, LayoutSpec, EvalSet, labelled pairs, checkpoint path).
    """
    model_config, saved_spec = load_model_config(model_dir)
    spec = layout_lib.load_layout_spec(layout_dir or saved_spec.layout_dir)
    if spec.token_id_space != saved_spec.token_id_space or spec.num_items != saved_spec.num_items:
        raise ValueError(f"layout {spec.layout_dir} (token_id_space={spec.token_id_space}, "
                         f"num_items={spec.num_items}) is not the one {model_dir} was trained "
                         f"on ({saved_spec.token_id_space}, {saved_spec.num_items})")
    eval_set, pairs = load_split(spec, cfg)
    with CheckpointEmbedder(model_dir, checkpoint, model_config, spec) as embedder:
        log(f"evaluating {embedder.checkpoint} on {spec.layout_dir} split {cfg.split}")
        scorer = EmbeddingScorer(embedder, spec, eval_set, pairs)
        return scorer, spec, eval_set, pairs, embedder.checkpoint


def evaluate_model(model_dir: str, layout_dir: Optional[str] = None,
                   cfg: EvalConfig = EvalConfig(), checkpoint: Optional[str] = None,
                   log: Callable[[str], None] = print) -> Dict[str, float]:
    """Metrics of a trained model directory on a layout split (default: its training layout)."""
    scorer, spec, eval_set, pairs, checkpoint = load_model_scorer(model_dir, layout_dir, cfg,
                                                                  checkpoint, log)
    out = evaluate_scorer(scorer, spec, eval_set, pairs, cfg, log)
    out["checkpoint"] = checkpoint
    return out


def evaluate_bm25(layout_dir: str, cfg: EvalConfig = EvalConfig(),
                  log: Callable[[str], None] = print, bigrams: bool = False,
                  fields: str = item_text.ALL) -> Dict[str, float]:
    """Metrics of BM25 (bm25s over the items' `fields`, by default the title and every
    categorical column; with bigrams, BM25-u&b) on a layout split."""
    spec = layout_lib.load_layout_spec(layout_dir)
    eval_set, pairs = load_split(spec, cfg)
    log(f"evaluating BM25{'-u&b' if bigrams else ''} over {fields} on {spec.layout_dir} "
        f"split {cfg.split}")
    return evaluate_scorer(BM25Scorer(spec, eval_set, pairs, bigrams, fields), spec, eval_set,
                           pairs, cfg, log)
