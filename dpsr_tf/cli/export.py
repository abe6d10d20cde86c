"""dpsr export: model + index -> versioned SavedModel servable(s) (dpsr_tf/export/saved_model_export.py).

One servable per index shard: <export_base>/<version>/ for a one-shard index, else
<export_base>_shard<i>/<version>/ (the proxy merges the shards' answers). When the index build
has a lexical index, each servable is hybrid: dense and BM25 results fused (--nohybrid for
dense only). The fusion is chosen on the layout's evaluation split among a small grid that
includes dense only and lexical only (dpsr_tf/evaluation/fusion_choice.py), unless a fusion flag
(--fusion, --rrf_k, ...) is given or --nochoose_fusion; with --rewrites the candidates fuse the
lexical list merged with the table's rewrites, as the servable will. The choice and every
candidate's score are written to the servable's assets.extra/dpsr_servable.json.
"""
import json
import os

from absl import flags

from dpsr_tf.cli import feedback_flags, fusion_flags
from dpsr_tf.evaluation import fusion_objective
from dpsr_tf.indexing import index_layout, joint_pq_index
from dpsr_tf.export.saved_model_export import export_all_shards
from dpsr_tf.search.rewrite_merge import COMBINES, RewriteConfig
from dpsr_tf.export.servable_graph import ServableConfig

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Trained model directory (dpsr train).")
_INDEX_DIR = flags.DEFINE_string("index_dir", None,
                                  "Index build directory (dpsr index). A --joint_pq model needs "
                                  "none: its learned index is written to "
                                  "<model_dir>/joint_pq_index-<step> and exported.")
_BASE = flags.DEFINE_string("export_base", None,
                            "Servable base path, e.g. /models/dpsr (versions go inside).")
_VERSION = flags.DEFINE_integer("version", None,
                                "Version number; default one more than the newest.")
_LAYOUT = flags.DEFINE_string("layout_dir", None,
                              "Training layout; default the one the model was trained on.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default the newest.")
_K = flags.DEFINE_integer("default_k", 100, "Results per query when a request has no k.")
_MAX_K = flags.DEFINE_integer("max_k", 1000, "Largest k a request may ask for.")
_MAX_QUERY = flags.DEFINE_integer("max_query_bytes", 4096, "Longer queries are rejected.")
_NPROBE = flags.DEFINE_integer("nprobe", 0, "IVF nprobe per search; 0 = the index's.")
_EF = flags.DEFINE_integer("ef_search", 0, "HNSW efSearch per search; 0 = the index's.")
_MMAP = flags.DEFINE_bool("mmap_index", False,
                          "Memory-map the FAISS index's IVF lists instead of reading them: "
                          "processes serving this version on one machine share one copy.")
_HYBRID = flags.DEFINE_bool("hybrid", True,
                            "Fuse the build's lexical (BM25) index with the dense one (when it "
                            "has one; see --fusion and the other fusion flags).")
_RANKER = flags.DEFINE_string("ranker_dir", None,
                              "A DPR ranker (dpsr train-ranker): adds the rerank and "
                              "retrieve_rerank signatures (docs/ranking.md).")
_RERANK_N = flags.DEFINE_integer("rerank_n", 100, "retrieve_rerank re-ranks this many of the "
                                 "top retrieved items.")
_CHOOSE_FUSION = flags.DEFINE_bool(
    "choose_fusion", True, "Choose a hybrid servable's fusion on the layout's eval split (the "
    "best of a grid that includes dense only and lexical only); off when any fusion flag is "
    "given.")
_FUSION_OBJECTIVE = flags.DEFINE_list(
    "fusion_objective", list(fusion_objective.OBJECTIVE), "The metrics whose mean "
    "chooses the fusion (and --spelling=auto) on the eval split: recall@N, ndcg@10, mrr@10. "
    "A servable that feeds a re-ranker may be chosen for its recall alone, e.g. "
    "recall@100,recall@1000 (docs/export.md).")
_REWRITES = flags.DEFINE_string(
    "rewrites", None, "A rewrite table (dpsr rewrite): the servable also searches the lexical "
    "index with each query's rewrites (docs/rewriting.md). Hybrid servables only.")
_MAX_REWRITES = flags.DEFINE_integer("max_rewrites", 3, "Rewrites of a query searched per "
                                     "request (the table's first ones).")
_REWRITE_WEIGHT = flags.DEFINE_float("rewrite_weight", 0.05, "Factor on a rewrite's BM25 "
                                     "scores in the merged lexical list, in (0, 1].")
_REWRITE_COMBINE = flags.DEFINE_enum("rewrite_combine", "sum", list(COMBINES),
                                     "How an item's weighted BM25 scores over the query's and "
                                     "the rewrites' lists combine (docs/rewriting.md).")
_SPELLING = flags.DEFINE_enum(
    "spelling", "auto", ["auto", "on", "off"],
    "Correct each query's words that no catalog item uses with the index build's catalog "
    "speller before the query tower and BM25 see it (docs/spelling.md). auto: on when it "
    "scores higher on the layout's eval split (with the fusion chosen or given; recorded in "
    "assets.extra/dpsr_servable.json); on / off: always / never. A build without a speller "
    "vocabulary (made before it existed) exports without.")
_DENSE_FEEDBACK = flags.DEFINE_enum(
    "dense_feedback", "auto", ["auto", "on", "off"],
    "Move each query head toward its first few hits before the dense search (pseudo-relevance "
    "feedback, --dense_feedback_items and --dense_feedback_weight; docs/export.md). auto: on "
    "when it scores higher on the layout's eval split, chosen with the fusion (a build with a "
    "lexical index; otherwise off); on / off: always / never. Sharded servables move the "
    "query toward the whole catalog's first hits when `dpsr proxy` fronts them (two rounds; "
    "docs/export.md).")
_ONLINE_REWRITER = flags.DEFINE_string(
    "online_rewriter", None, "A rewriter directory (dpsr train-rewriter): queries without a "
    "rewrite table entry get its greedy rewrite, decoded in the servable's graph (a fixed cost "
    "per request, measured in docs/benchmarks.md; off by default). Hybrid servables only.")
flags.mark_flags_as_required(["model_dir", "export_base"])
FUSION_FLAGS = ("fusion", "rrf_k", "dense_weight", "lexical_weight", "lexical_k",
                "lexical_min_score")


def _rewrite_config() -> RewriteConfig:
    return RewriteConfig(_MAX_REWRITES.value, _REWRITE_WEIGHT.value, _REWRITE_COMBINE.value)


def _feedbacks(manifest, index_dir: str):
    """The dense feedback variants to choose among, or None when no choice is made.

    Raises:
      ValueError: --dense_feedback=on with an index build without saved embeddings.
    """
    from dpsr_tf.indexing.catalog_index import EMBEDDINGS_FILE  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.dense_feedback import FeedbackConfig  # pylint: disable=import-outside-toplevel
    mode = _DENSE_FEEDBACK.value
    embeddings = os.path.join(index_dir, EMBEDDINGS_FILE)
    if mode == "on" and not os.path.isfile(embeddings):
        raise ValueError(f"--dense_feedback=on needs the index build's item embeddings: "
                         f"{embeddings} is missing; rebuild the index with `dpsr index`")
    if mode != "auto":
        return None
    if manifest.lexical is None or not os.path.isfile(embeddings):
        print("dense feedback off: --dense_feedback=auto chooses on a build with a lexical "
              f"index and saved item embeddings (this one: "
              f"{'a' if manifest.lexical else 'no'} lexical index, "
              f"{'with' if os.path.isfile(embeddings) else 'without'} {EMBEDDINGS_FILE})")
        return None
    return (FeedbackConfig(), feedback_flags.feedback_config())


def _fusion(index_dir: str):
    """(FusionConfig, spelling on, FeedbackConfig, the choice's JSON or None): the flags'
    fusion, or one chosen on the layout's eval split when the export is hybrid and no fusion
    flag was given; with --spelling=auto, spelling on or off by the same split; with
    --dense_feedback=auto, dense feedback on or off with the fusion."""
    from dpsr_tf.search.dense_feedback import FeedbackConfig  # pylint: disable=import-outside-toplevel
    given = [name for name in FUSION_FLAGS if flags.FLAGS[name].present]
    manifest = index_layout.read_manifest(index_dir, check_files=False)
    has_lexical = manifest.lexical is not None
    choose = not given and _CHOOSE_FUSION.value and _HYBRID.value and has_lexical
    auto = _SPELLING.value == "auto" and has_lexical and bool(manifest.lexical.speller_file)
    feedbacks = _feedbacks(manifest, index_dir)
    fixed_feedback = (feedback_flags.feedback_config() if _DENSE_FEEDBACK.value == "on"
                      else FeedbackConfig())
    if not (choose or auto or feedbacks):
        return fusion_flags.fusion_config(), _SPELLING.value == "on", fixed_feedback, None
    from dpsr_tf.evaluation import fusion_choice  # pylint: disable=import-outside-toplevel
    from dpsr_tf.search.fusion import FusionConfig  # pylint: disable=import-outside-toplevel
    candidates = (fusion_choice.CANDIDATES if choose else
                  (fusion_flags.fusion_config() if _HYBRID.value
                   else FusionConfig(lexical_weight=0.0),))
    kwargs = dict(rewrite_table=_REWRITES.value, rewrites=_rewrite_config(),
                  candidates=candidates,
                  objective=fusion_choice.parse_objective(_FUSION_OBJECTIVE.value),
                  feedbacks=feedbacks or (fixed_feedback,))
    args = (_MODEL_DIR.value, index_dir, _LAYOUT.value, _CHECKPOINT.value, _NPROBE.value or None)
    if auto:
        choice, spelling, scores = fusion_choice.choose_with_spelling(*args, **kwargs)
        print(f"spelling {'on' if spelling else 'off'}: objective {scores['with']:.4f} with the "
              f"catalog speller, {scores['without']:.4f} without (--spelling=on/off to set it)")
    else:
        spelling = _SPELLING.value == "on"
        choice = fusion_choice.choose_for_index(*args, spelling=spelling, **kwargs)
        scores = {}
    print(choice.table())
    record = dict(choice.to_json(), spelling={"mode": _SPELLING.value, "on": spelling,
                                              "scores": scores},
                  dense_feedback_mode=_DENSE_FEEDBACK.value)
    if feedbacks:
        print(f"dense feedback {'on' if choice.feedback.enabled else 'off'}: chosen on the eval "
              "split with the fusion (--dense_feedback=on/off to set it)")
    if not choose:
        return fusion_flags.fusion_config(), spelling, choice.feedback, record
    print(f"fusion chosen on the eval split: {fusion_choice.describe(choice.config)} "
          "(give a fusion flag or --nochoose_fusion to set it yourself)")
    return choice.config, spelling, choice.feedback, record


def main(argv):
    del argv
    try:
        fusion_flags.fusion_config()          # bad fusion flags fail before any work
        if _DENSE_FEEDBACK.value != "off":
            feedback_flags.feedback_config()
        index_dir = _INDEX_DIR.value or joint_pq_index.index_for_export(
            _MODEL_DIR.value, checkpoint=_CHECKPOINT.value, layout_dir=_LAYOUT.value)
        fusion, spelling, feedback, choice = _fusion(index_dir)
        servable = ServableConfig(default_k=_K.value, max_k=_MAX_K.value,
                                  max_query_bytes=_MAX_QUERY.value, nprobe=_NPROBE.value,
                                  ef_search=_EF.value, hybrid=_HYBRID.value,
                                  mmap_index=_MMAP.value, fusion=fusion,
                                  rewrites=_rewrite_config(), spelling=spelling,
                                  dense_feedback=feedback)
        servable.validate()
        paths = export_all_shards(_MODEL_DIR.value, index_dir, _BASE.value,
                                  version=_VERSION.value, servable=servable,
                                  checkpoint=_CHECKPOINT.value, layout_dir=_LAYOUT.value,
                                  ranker_dir=_RANKER.value, rerank_n=_RERANK_N.value,
                                  fusion_choice=choice, rewrite_table=_REWRITES.value,
                                  online_rewriter=_ONLINE_REWRITER.value)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"dpsr export: {e}") from None
    print(json.dumps({"servables": paths}))
