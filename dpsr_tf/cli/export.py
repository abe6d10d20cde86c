"""dpsr export: model + index -> versioned SavedModel servable(s) (dpsr_tf/export/saved_model_export.py).

One servable per index shard: <export_base>/<version>/ for a one-shard index, else
<export_base>_shard<i>/<version>/ (the proxy merges the shards' answers). When the index build
has a lexical index, each servable is hybrid: dense and BM25 results fused (--nohybrid for
dense only). The fusion is chosen on the layout's evaluation split among a small grid that
includes dense only and lexical only (dpsr_tf/evaluation/fusion_choice.py), unless a fusion flag
(--fusion, --rrf_k, ...) is given or --nochoose_fusion; with --rewrites the candidates fuse the
lexical list merged with the table's rewrites, as the servable will. When the build has an
encoder list (`dpsr index --encoder_list`), its weight is chosen the same way, on the list the
servable will serve (dpsr_tf/evaluation/encoder_choice.py), unless --encoder_weight is given. The
choices and every candidate's score are written to the servable's
assets.extra/dpsr_servable.json.
"""
import json
import os

from absl import flags

from dpsr_tf.cli import feedback_flags, fusion_flags
from dpsr_tf.evaluation import encoder_choice, fusion_choice, fusion_objective
from dpsr_tf.indexing import index_layout, joint_pq_index
from dpsr_tf.indexing.catalog_index import EMBEDDINGS_FILE
from dpsr_tf.export.saved_model_export import export_all_shards
from dpsr_tf.search.dense_feedback import FeedbackConfig
from dpsr_tf.search.encoder_fusion import EncoderFusionConfig
from dpsr_tf.search.fusion import FusionConfig
from dpsr_tf.search.rewrite_merge import RewriteConfig
from dpsr_tf.export.servable_graph import ServableConfig
from dpsr_tf.export.stages import pipeline as stage_pipeline
from dpsr_tf.export.stages.rewrites import RewritesStage

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
# The flags the servable's stages declare (dpsr_tf/export/stages/: request limits, search
# settings, --hybrid, rewrites, the ranker), defined here where flags belong.
_DEFINE = {"integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
           "bool": flags.DEFINE_bool, "string": flags.DEFINE_string, "list": flags.DEFINE_list}
for _flag in stage_pipeline.export_flags():
    if _flag.kind == "enum":
        flags.DEFINE_enum(_flag.name, _flag.default, list(_flag.enum_values), _flag.help)
    else:
        _DEFINE[_flag.kind](_flag.name, _flag.default, _flag.help)
_CHOOSE_FUSION = flags.DEFINE_bool(
    "choose_fusion", True, "Choose a hybrid servable's fusion on the layout's validation split "
    "(carved from the training queries; the best of a grid that includes dense only and "
    "lexical only); off when any fusion flag is given.")
_FUSION_OBJECTIVE = flags.DEFINE_list(
    "fusion_objective", list(fusion_objective.OBJECTIVE), "The metrics whose mean "
    "chooses the fusion (and --spelling=auto) on the validation split: recall@N, ndcg@10, mrr@10. "
    "A servable that feeds a re-ranker may be chosen for its recall alone, e.g. "
    "recall@100,recall@1000 (docs/export.md).")
_REWRITES = flags.DEFINE_string(
    "rewrites", None, "A rewrite table (dpsr rewrite): the servable also searches the lexical "
    "index with each query's rewrites (docs/rewriting.md). Hybrid servables only.")
_SPELLING = flags.DEFINE_enum(
    "spelling", "auto", ["auto", "on", "off"],
    "Correct each query's words that no catalog item uses with the index build's catalog "
    "speller before the query tower and BM25 see it (docs/spelling.md). auto: on when it "
    "scores higher on the layout's validation split (with the fusion chosen or given; recorded in "
    "assets.extra/dpsr_servable.json); on / off: always / never. A build without a speller "
    "vocabulary (made before it existed) exports without.")
_DENSE_FEEDBACK = flags.DEFINE_enum(
    "dense_feedback", "auto", ["auto", "on", "off"],
    "Move each query head toward its first few hits before the dense search (pseudo-relevance "
    "feedback, --dense_feedback_items and --dense_feedback_weight; docs/export.md). auto: on "
    "when it scores higher on the layout's validation split, chosen with the fusion (a build "
    "with a lexical index; otherwise off); on / off: always / never. Sharded servables move the "
    "query toward the whole catalog's first hits when `dpsr proxy` fronts them (two rounds; "
    "docs/export.md).")
_ONLINE_REWRITER = flags.DEFINE_string(
    "online_rewriter", None, "A rewriter directory (dpsr train-rewriter): queries without a "
    "rewrite table entry get its greedy rewrite, decoded in the servable's graph (a fixed cost "
    "per request, measured in docs/benchmarks.md; off by default). Hybrid servables only.")
flags.mark_flags_as_required(["model_dir", "export_base"])
FUSION_FLAGS = ("fusion", "rrf_k", "dense_weight", "lexical_weight", "lexical_k",
                "lexical_min_score")


def _flag_values():
    return {flag.name: flags.FLAGS[flag.name].value for flag in stage_pipeline.export_flags()}


def _rewrite_config() -> RewriteConfig:
    return RewritesStage.from_flags(_flag_values()).rewrites


def _servable_config(fusion, spelling: bool, feedback, encoder) -> ServableConfig:
    """The ServableConfig of the stages' flags and the chosen fusion, spelling, feedback and
    encoder list."""
    fields = {flag.config_field: flags.FLAGS[flag.name].value
              for flag in stage_pipeline.export_flags() if flag.config_field}
    return ServableConfig(**fields, fusion=fusion, rewrites=_rewrite_config(),
                          spelling=spelling, dense_feedback=feedback, encoder_fusion=encoder)


def _encoder_fusion(index_dir: str, fusion, spelling: bool, feedback):
    """(EncoderFusionConfig, the choice's JSON or None): --encoder_weight when given (>= 0),
    else chosen on the validation split for the servable the other choices make, on a build
    with an encoder list (and a lexical index to read the split's lists through); otherwise no
    encoder list."""
    weight, rrf_k = flags.FLAGS.encoder_weight, flags.FLAGS.encoder_rrf_k
    if not (weight >= 0 or weight == -1):  # NaN too: it would otherwise mean "choose"
        raise ValueError(f"--encoder_weight must be -1 (chosen on validation) or >= 0, got "
                         f"{weight:g}")
    manifest = index_layout.read_manifest(index_dir, check_files=False)
    if weight >= 0:
        config = EncoderFusionConfig(weight=weight, rrf_k=rrf_k)
        config.validate()
        if config.enabled and manifest.encoder is None:
            raise ValueError(f"--encoder_weight={weight:g} needs an encoder list in {index_dir}: "
                             f"add one with `dpsr index --encoder_only --output_dir={index_dir} "
                             "--layout_dir=LAYOUT`")
        return config, None
    if manifest.encoder is None:
        return EncoderFusionConfig(), None
    if manifest.lexical is None or manifest.num_shards > 1:
        print("encoder list off: --encoder_weight=-1 chooses on a one-shard build with a "
              "lexical index (give --encoder_weight to set it)")
        return EncoderFusionConfig(), None
    choice = encoder_choice.choose_for_index(
        _MODEL_DIR.value, index_dir, fusion, feedback, spelling,
        fusion_choice.parse_objective(_FUSION_OBJECTIVE.value), _LAYOUT.value,
        _CHECKPOINT.value, flags.FLAGS.nprobe or None, hybrid=flags.FLAGS.hybrid)
    print(choice.table())
    print(f"encoder list chosen on the {choice.split} split: {choice.config.describe()} "
          "(give --encoder_weight to set it)")
    return choice.config, choice.to_json()


def _feedbacks(manifest, index_dir: str):
    """The dense feedback variants to choose among, or None when no choice is made.

    Raises:
      ValueError: --dense_feedback=on with an index build without saved embeddings.
    """
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
    fusion, or one chosen on the layout's validation split (eval_set.choice_split) when the
    export is hybrid and no fusion flag was given; with --spelling=auto, spelling on or off by
    the same split; with --dense_feedback=auto, dense feedback on or off with the fusion."""
    given = [name for name in FUSION_FLAGS if flags.FLAGS[name].present]
    manifest = index_layout.read_manifest(index_dir, check_files=False)
    has_lexical = manifest.lexical is not None
    choose = not given and _CHOOSE_FUSION.value and flags.FLAGS.hybrid and has_lexical
    auto = _SPELLING.value == "auto" and has_lexical and bool(manifest.lexical.speller_file)
    feedbacks = _feedbacks(manifest, index_dir)
    fixed_feedback = (feedback_flags.feedback_config() if _DENSE_FEEDBACK.value == "on"
                      else FeedbackConfig())
    if not (choose or auto or feedbacks):
        return fusion_flags.fusion_config(), _SPELLING.value == "on", fixed_feedback, None
    candidates = (fusion_choice.CANDIDATES if choose else
                  (fusion_flags.fusion_config() if flags.FLAGS.hybrid
                   else FusionConfig(lexical_weight=0.0),))
    kwargs = dict(rewrite_table=_REWRITES.value, rewrites=_rewrite_config(),
                  candidates=candidates,
                  objective=fusion_choice.parse_objective(_FUSION_OBJECTIVE.value),
                  feedbacks=feedbacks or (fixed_feedback,))
    args = (_MODEL_DIR.value, index_dir, _LAYOUT.value, _CHECKPOINT.value, flags.FLAGS.nprobe or None)
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
        print(f"dense feedback {'on' if choice.feedback.enabled else 'off'}: chosen on the "
              f"{choice.split} split with the fusion (--dense_feedback=on/off to set it)")
    if not choose:
        return fusion_flags.fusion_config(), spelling, choice.feedback, record
    print(f"fusion chosen on the {choice.split} split: {fusion_choice.describe(choice.config)} "
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
        encoder, encoder_record = _encoder_fusion(index_dir, fusion, spelling, feedback)
        if encoder_record is not None:
            choice = dict(choice or {}, encoder_list=encoder_record)
        servable = _servable_config(fusion, spelling, feedback, encoder)
        servable.validate()
        paths = export_all_shards(_MODEL_DIR.value, index_dir, _BASE.value,
                                  version=_VERSION.value, servable=servable,
                                  checkpoint=_CHECKPOINT.value, layout_dir=_LAYOUT.value,
                                  ranker_dir=flags.FLAGS.ranker_dir,
                                  rerank_n=flags.FLAGS.rerank_n,
                                  fusion_choice=choice, rewrite_table=_REWRITES.value,
                                  online_rewriter=_ONLINE_REWRITER.value)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"dpsr export: {e}") from None
    print(json.dumps({"servables": paths}))
