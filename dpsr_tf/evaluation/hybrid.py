"""`dpsr evaluate --hybrid`: dense (DPSR), lexical (BM25) and their fusion, as served.

Four rankings of the same requests, scored by the same metrics:

  dpsr      the model's exact soft dot product (evaluate.evaluate_scorer), plus the served
            dense ranking through the FAISS shards (served.served_metrics: served_*);
  lexical   BM25 through the build directory's lexical shards, scored by the same C++ core as
            the servable's Dpsr>LexicalSearch (dpsr_tf/indexing/lexical_index.py), with AUC and Top-k
            from its full score vectors;
  hybrid    the served dense top K and the lexical top K of each request fused by the
            servable's rule (dpsr_tf/search/fusion.py, fuse_np = the graph's fuse), K = the largest
            recall cut-off.

With an encoder fusion (a build with an encoder list, dpsr_tf/indexing/encoder_index.py), two more:

  encoder         the build's pretrained encoder list alone (over the whole catalog);
  hybrid_encoder  the hybrid list fused with it as the servable's encoder_list stage does
                  (dpsr_tf/search/encoder_fusion.py).

    out = evaluate_hybrid("/models/m", "/indexes/m")
    out["hybrid"]["recall@1000"], out["lexical"]["ndcg@10"], out["dpsr"]["served_recall@100"]

Fusing the global lists is what one unsharded servable returns; the proxy's merge of sharded
hybrid servables re-fuses the shards' answers by their dense and lexical scores
(dpsr_tf/serving/proxy/merge.py), which equals it whenever every item of the global lists survives its
shard's own top k.
"""
import dataclasses
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from dpsr_tf.data import layout as layout_lib
from dpsr_tf.evaluation import evaluate as evaluate_lib
from dpsr_tf.evaluation import fusion_scores
from dpsr_tf.evaluation import metrics as metrics_lib
from dpsr_tf.evaluation import served as served_lib
from dpsr_tf.evaluation import tie_metrics
from dpsr_tf.evaluation.spelled_layout import layout_of, spelled_layout
from dpsr_tf.indexing import encoder_index
from dpsr_tf.model import query_student
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.model.pretrained.text_embedder import TextEmbedder
from dpsr_tf.search import encoder_fusion
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.indexing.lexical_index import LexicalSearcher


class LexicalScorer:
    """evaluate.evaluate_scorer's interface over a LexicalSearcher (full BM25 score vectors)."""

    def __init__(self, searcher: LexicalSearcher, request_texts, pair_texts):
        self.searcher = searcher
        self.request_texts = list(request_texts)
        self.pair_texts = list(pair_texts)

    def score_requests(self, idx: np.ndarray) -> np.ndarray:
        return self.searcher.score_all([self.request_texts[i] for i in idx])

    def score_pairs(self, pair_idx: np.ndarray, items: np.ndarray) -> np.ndarray:
        scores = self.searcher.score_all([self.pair_texts[p] for p in pair_idx])
        return np.take_along_axis(scores, np.asarray(items).reshape(len(pair_idx), -1), 1)


@dataclasses.dataclass
class HybridRun:
    """A model, its index build and a layout split, opened for hybrid evaluation.

    Attributes:
      scorer: the model's EmbeddingScorer over the split's requests and the catalog.
      spec, eval_set, pairs, checkpoint: as evaluate.load_model_scorer returns them.
      index: the open ServedIndex (dense shards); searcher: the build's LexicalSearcher.
      k: the fused list's length (the largest recall cut-off, capped at the catalog).
      dense_scores, dense_rows: [Q, k] the served dense ranking of every request (after the
        dense feedback open_hybrid was given).
    """

    scorer: object
    spec: object
    eval_set: object
    pairs: dict
    checkpoint: str
    index: object
    searcher: LexicalSearcher
    k: int
    dense_scores: np.ndarray
    dense_rows: np.ndarray

    def dense_lists(self, feedback: FeedbackConfig):
        """[Q, k] served dense (scores, rows) of every request with this dense feedback."""
        return served_lib.search_with_feedback(self.index, self.scorer.request_emb,
                                               self.scorer.item_emb, self.k, feedback)

    def lexical_lists(self, fusion: FusionConfig):
        """[Q, lexical_k or k] lexical (scores, rows) of every request, as the servable's."""
        return self.searcher.search(self.eval_set.queries, fusion.lexical_k or self.k,
                                    fusion.lexical_min_score)

    @property
    def relevant(self):
        return (self.eval_set.relevant_splits, self.eval_set.relevant_rows,
                self.eval_set.relevant_gains)


def open_hybrid(model_dir: str, index_dir: str, layout_dir: Optional[str] = None,
                cfg: evaluate_lib.EvalConfig = evaluate_lib.EvalConfig(),
                checkpoint: Optional[str] = None, nprobe: Optional[int] = None,
                log: Callable[[str], None] = print,
                feedback: FeedbackConfig = FeedbackConfig()) -> HybridRun:
    """Embeds the split's requests and the catalog, opens both indexes, searches the dense one
    (with `feedback`, search/dense_feedback.py, as a feedback servable does).

    Raises:
      FileNotFoundError, ValueError: a missing or mismatched index, or an index without a
        lexical section.
    """
    model_config, saved_spec = load_model_config(model_dir)
    spec = layout_lib.load_layout_spec(layout_dir or saved_spec.layout_dir)
    manifest = served_lib.read_index_manifest(index_dir, model_config.embedding_dim,
                                              spec.num_items, model_dir)
    if manifest.lexical is None:
        raise ValueError(f"index {index_dir} has no lexical index; add one with `dpsr index "
                         f"--lexical_only --output_dir={index_dir} --layout_dir=LAYOUT`")
    scorer, spec, eval_set, pairs, checkpoint = evaluate_lib.load_model_scorer(
        model_dir, layout_dir, cfg, checkpoint, log)
    item_ids = layout_lib.load_item_ids(spec)
    served_lib.check_index_embeddings(index_dir, scorer.item_emb, item_ids, model_dir)
    index = served_lib.open_served_index(index_dir, item_ids, model_config.embedding_dim,
                                         nprobe, model_dir)
    k = min(max(cfg.recall_ks + (10,)), spec.num_items)
    feedback.validate()
    dense_scores, dense_rows = served_lib.search_with_feedback(
        index, scorer.request_emb, scorer.item_emb, k, feedback, cfg.batch_size)
    return HybridRun(scorer, spec, eval_set, pairs, checkpoint, index,
                     LexicalSearcher(index_dir, item_ids), k, dense_scores, dense_rows)


def evaluate_hybrid(model_dir: str, index_dir: str, layout_dir: Optional[str] = None,
                    cfg: evaluate_lib.EvalConfig = evaluate_lib.EvalConfig(),
                    checkpoint: Optional[str] = None, nprobe: Optional[int] = None,
                    fusion: FusionConfig = FusionConfig(),
                    log: Callable[[str], None] = print,
                    spelling: bool = True,
                    feedback: FeedbackConfig = FeedbackConfig(),
                    encoder: EncoderFusionConfig = EncoderFusionConfig()
                    ) -> Dict[str, Dict[str, float]]:
    """{"dpsr": exact + served dense metrics, "lexical": BM25 metrics, "hybrid": fused
    retrieval metrics} on one split (module docstring); with an enabled `encoder` fusion also
    "encoder" and "hybrid_encoder".

    spelling: when the index build has a speller, every system sees the queries it corrects,
      as a spelling servable's towers do (spelled_layout.py); False: the queries as typed.
    feedback: the served dense list with this dense feedback (search/dense_feedback.py).

    Raises:
      FileNotFoundError, ValueError: a missing or mismatched index, an index without a
        lexical section, or a bad fusion configuration.
    """
    fusion.validate()
    layout = layout_of(model_dir, layout_dir)
    with spelled_layout(layout, index_dir if spelling else None, log=log) as view:
        out = _evaluate_hybrid(model_dir, index_dir, view or layout_dir, cfg, checkpoint,
                               nprobe, fusion, log, feedback, encoder)
    out["hybrid"]["spelling"] = view is not None
    out["hybrid"]["dense_feedback"] = feedback.to_json()
    return out


def _evaluate_hybrid(model_dir, index_dir, layout_dir, cfg, checkpoint, nprobe, fusion, log,
                     feedback, encoder):
    run = open_hybrid(model_dir, index_dir, layout_dir, cfg, checkpoint, nprobe, log, feedback)
    return evaluate_run(run, index_dir, cfg, fusion, log, feedback, encoder=encoder)


def evaluate_run(run: HybridRun, index_dir: str, cfg: evaluate_lib.EvalConfig,
                 fusion: FusionConfig, log: Callable[[str], None] = print,
                 feedback: FeedbackConfig = FeedbackConfig(),
                 lexical_lists: Optional[tuple] = None,
                 encoder: EncoderFusionConfig = EncoderFusionConfig()
                 ) -> Dict[str, Dict[str, float]]:
    """evaluate_hybrid's results on an open run (opened with cfg's split and recall
    cut-offs; its dense lists those of `feedback`, its layout still readable). lexical_lists:
    the run's lexical_lists(fusion) when the caller has them."""
    spec, eval_set, pairs = run.spec, run.eval_set, run.pairs
    dense = evaluate_lib.evaluate_scorer(run.scorer, spec, eval_set, pairs, cfg, log)
    dense["checkpoint"] = run.checkpoint
    dense.update(served_lib.served_metrics(run.scorer, eval_set, run.index, cfg, dense, log,
                                           served=(run.dense_scores, run.dense_rows)))
    if feedback.enabled:
        dense["served_feedback"] = feedback.describe()

    queries = layout_lib.load_queries(spec)
    lexical_scorer = LexicalScorer(run.searcher, eval_set.queries,
                                   [queries[q] for q in pairs["query_row"]])
    log(f"evaluating the lexical index of {index_dir}")
    lexical = evaluate_lib.evaluate_scorer(lexical_scorer, spec, eval_set, pairs, cfg, log)

    start = time.time()
    lex_scores, lex_rows = (lexical_lists if lexical_lists is not None
                            else run.lexical_lists(fusion))
    fused_scores, fused_rows, source = fusion_scores.fused_with_source(
        run.dense_scores, run.dense_rows, lex_scores, lex_rows, run.k, fusion)
    hybrid = metrics_lib.retrieval_metrics(fused_rows, *run.relevant, recall_ks=cfg.recall_ks,
                                           with_per_request=cfg.per_request)
    if cfg.tie_aware:    # the fused top k; the catalog's other items tie after it
        evaluate_lib.add_tie_aware(hybrid, tie_metrics.per_request_tie_metrics(
            fused_rows, fused_scores, *run.relevant, recall_ks=cfg.recall_ks,
            catalog_size=spec.num_items), cfg)
    for cut in (10, run.k):
        head = source[:, :cut]
        for code, name in ((1, "dense"), (2, "lexical"), (3, "both")):
            hybrid[f"share_{name}@{cut}"] = float((head == code).mean())
    hybrid.update({"fusion": fusion.to_json(), "seconds": round(time.time() - start, 1)})
    log(f"  hybrid fusion ({fusion.rule}) of {len(eval_set)} requests: {hybrid['seconds']}s")
    out = {"dpsr": dense, "lexical": lexical, "hybrid": hybrid}
    if encoder.enabled:
        out.update(_with_encoder_list(run, index_dir, cfg, fused_rows, encoder, log))
    return out


def search_encoder_lists(index_dir: str, item_ids: Sequence[str], queries: Sequence[str],
                         k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The build's encoder list of each query as a one-shard servable's encoder_list stage
    serves it: (scores [Q, k] float32, -inf pads; rows [Q, k] int64 layout rows, -1 pads). The
    queries are embedded as the servable embeds them: by the build's fast query encoder
    (`--encoder_query_dir`; several: their mean) when it names one, else by the encoder, cut
    to QUERY_MAX_TOKENS WordPiece tokens.

    Raises:
      ValueError: the build has no encoder list.
    """
    index = served_lib.open_encoder_index(index_dir, item_ids)
    encoder = index.manifest.encoder
    if encoder.query_models:   # the build's fast query encoders, as the servable reads them
        vectors = query_student.embed_ensemble(
            [query_student.read(m.model_dir, m.checkpoint) for m in encoder.query_models],
            queries)
    else:
        with TextEmbedder(encoder.pretrained_dir, encoder_index.QUERY_MAX_TOKENS) as embedder:
            vectors = embedder.embed(list(queries))
    return served_lib.search_served(index, vectors[:, None, :], k)


def encoder_lists(run: HybridRun, index_dir: str) -> tuple:
    """[Q, k] (scores, rows) of the build's encoder list for every request of the run (the
    queries as the run reads them: spelled when its layout view is)."""
    return search_encoder_lists(index_dir, layout_lib.load_item_ids(run.spec),
                                run.eval_set.queries, run.k)


def _with_encoder_list(run, index_dir, cfg, served_rows, encoder, log):
    """{"encoder": the encoder list's metrics, "hybrid_encoder": the served list fused with
    it}."""
    start = time.time()
    _, enc_rows = encoder_lists(run, index_dir)
    _, fused, _ = encoder_fusion.fuse_np(served_rows, enc_rows, run.k, encoder)
    out = {}
    for name, rows in (("encoder", enc_rows), ("hybrid_encoder", fused)):
        out[name] = metrics_lib.retrieval_metrics(rows, *run.relevant, recall_ks=cfg.recall_ks,
                                                  with_per_request=cfg.per_request)
    out["hybrid_encoder"].update({"encoder_fusion": encoder.to_json(),
                                  "seconds": round(time.time() - start, 1)})
    log(f"  encoder list ({encoder.describe()}) of {len(run.eval_set)} requests: "
        f"{out['hybrid_encoder']['seconds']}s")
    return out
