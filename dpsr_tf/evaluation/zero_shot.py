"""The baselines a user would try first, as systems of `dpsr evaluate --zero_shot`:

  zero_shot         a pretrained sentence encoder used as it ships (all-MiniLM-L6-v2 unless
                    --pretrained_dir): cosine of the query's and each item document's
                    embedding, never trained on the catalog;
  zero_shot_hybrid  BM25 over every field (evaluate.BM25Scorer) and zero_shot fused by
                    reciprocal rank: score = 1 / (k + rank_bm25) + 1 / (k + rank_encoder) over
                    the whole catalog, k = 60 (Cormack et al.), ranks 1-based, ties in a list
                    ranked by item row.

Both are scorers of evaluate.evaluate_scorer, so they are scored by the same metrics, on the
same requests, as DPSR and BM25. The catalog's embeddings are cached beside the layout
(model/pretrained/document_cache.py: key = the encoder and the documents), so a second
evaluation, or a teacher cache of the same encoder (`dpsr train --teacher_dir`), does not
embed the titles again.
"""
from typing import Callable, Dict, List

import numpy as np

from dpsr_tf.data import item_text
from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.model.pretrained import document_cache
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder

RRF_K = 60.0
CACHE_DIR = document_cache.CACHE_DIR


class EncoderScorer:
    """Cosine of the encoder's query and item-document embeddings (full-corpus scorer)."""

    def __init__(self, item_embeddings: np.ndarray, request_embeddings: np.ndarray,
                 pair_embeddings: np.ndarray):
        self.item_emb = item_embeddings                # [N, H]
        self.request_emb = request_embeddings          # [Q, H]
        self.pair_emb = pair_embeddings                # [P, H]

    def score_requests(self, idx: np.ndarray) -> np.ndarray:
        return self.request_emb[idx] @ self.item_emb.T

    def score_pairs(self, pair_idx: np.ndarray, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items).reshape(len(pair_idx), -1)
        return np.einsum("ph,pjh->pj", self.pair_emb[pair_idx], self.item_emb[items])


def reciprocal_ranks(scores: np.ndarray, k: float = RRF_K) -> np.ndarray:
    """[b, N] 1 / (k + rank) of every item in each row's ranking by descending score (rank 1 =
    best; equal scores ranked by item row, as a stable sort does)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
    return 1.0 / (k + ranks.astype(np.float64))


class RRFScorer:
    """Reciprocal-rank fusion of two full-corpus scorers (module docstring)."""

    def __init__(self, first, second, k: float = RRF_K):
        self._scorers = (first, second)
        self.k = k

    def score_requests(self, idx: np.ndarray) -> np.ndarray:
        return sum(reciprocal_ranks(s.score_requests(idx), self.k)
                   for s in self._scorers).astype(np.float32)

    def score_pairs(self, pair_idx: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Each pair's items scored by the fused rank of its query's whole ranking."""
        items = np.asarray(items).reshape(len(pair_idx), -1)
        out = np.zeros(items.shape, np.float32)
        for scorer in self._scorers:
            full = np.stack([_full_row(scorer, p) for p in pair_idx])       # [P, N]
            out += np.take_along_axis(reciprocal_ranks(full, self.k), items, axis=1).astype(
                np.float32)
        return out


def _full_row(scorer, pair: int) -> np.ndarray:
    """[N] a scorer's scores of every item for one labelled pair's query."""
    if isinstance(scorer, EncoderScorer):
        return scorer.item_emb @ scorer.pair_emb[pair]
    return scorer.score_pairs(np.array([pair]), np.arange(scorer.num_items)[None, :])[0]


def evaluate_zero_shot(layout_dir: str, cfg, pretrained_dir: str = "",
                       fields: str = item_text.TITLE, bm25_fields: str = item_text.ALL,
                       log: Callable[[str], None] = print) -> Dict[str, Dict[str, float]]:
    """{"zero_shot": metrics, "zero_shot_hybrid": metrics} on a layout split (EvalConfig cfg),
    BM25 of the hybrid over `bm25_fields`."""
    spec = layout_lib.load_layout_spec(layout_dir)
    eval_set, pairs = evaluate_lib.load_split(spec, cfg)
    bm25 = evaluate_lib.BM25Scorer(spec, eval_set, pairs, fields=bm25_fields)
    scorers = zero_shot_scorers(spec, eval_set, pairs, bm25, pretrained_dir, fields, log)
    out = {}
    for name, scorer in scorers.items():
        log(f"evaluating {name} on {spec.layout_dir} split {cfg.split}")
        out[name] = evaluate_lib.evaluate_scorer(scorer, spec, eval_set, pairs, cfg, log)
    return out


def zero_shot_scorers(spec, eval_set, pairs, bm25_scorer, pretrained_dir: str = "",
                      fields: str = item_text.TITLE,
                      log: Callable[[str], None] = print) -> Dict[str, object]:
    """{"zero_shot": EncoderScorer, "zero_shot_hybrid": RRFScorer(bm25, zero_shot)}.

    Args:
      bm25_scorer: the BM25 scorer of the same split (evaluate.BM25Scorer over every field).
      fields: the item fields the encoder reads (item_text.parse_fields; default the title).
    """
    documents = item_text.item_documents(spec, item_text.parse_fields(fields))
    queries = layout_lib.load_queries(spec)
    with TextEmbedder(pretrained_dir) as embedder:
        log(f"zero-shot encoder {embedder.model.directory} over the items' {fields}")
        items = document_cache.document_embeddings(spec, embedder, documents, log)
        # Each distinct query once: many requests (users) share a query, and the pairs' queries
        # are the requests' own.
        pair_queries = [queries[q] for q in pairs["query_row"]]
        texts = sorted(set(eval_set.queries) | set(pair_queries))
        by_text = dict(zip(texts, embedder.embed(texts))) if texts else {}

    def rows(of_texts) -> np.ndarray:
        return (np.stack([by_text[t] for t in of_texts]) if len(of_texts)
                else np.zeros([0, items.shape[1]], np.float32))
    requests, pair_emb = rows(list(eval_set.queries)), rows(pair_queries)
    encoder = EncoderScorer(items, requests, pair_emb)
    return {"zero_shot": encoder, "zero_shot_hybrid": RRFScorer(bm25_scorer, encoder)}
