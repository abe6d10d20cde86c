"""dpsr index: item tower over the catalog -> FAISS index shards (dpsr_tf/indexing/catalog_index.py), and
the lexical (BM25) index of the titles beside them (dpsr_tf/indexing/lexical_index.py).

    dpsr index --model_dir=M --output_dir=I                    # FAISS + lexical shards
    dpsr index --lexical_only --output_dir=I --layout_dir=L    # (re)build only the lexical side
    dpsr index --model_dir=M --output_dir=I --encoder_list     # + a pretrained encoder's list
    dpsr index --encoder_only --output_dir=I --layout_dir=L    # (re)build only the encoder list
    dpsr index --from_model_pq --model_dir=M --output_dir=I    # a --joint_pq model's learned index
"""
import json

from absl import flags, logging

from dpsr_tf.data import item_text
from dpsr_tf.indexing import catalog_index, encoder_index, index_layout, joint_pq_index
from dpsr_tf.model.model_dir import load_model_config
from dpsr_tf.indexing.index_builder import IndexBuildConfig
from dpsr_tf.indexing.lexical_manifest import DEFAULT_FEATURES, FEATURE_KINDS, LexicalConfig

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Trained model directory (dpsr train).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Index build directory to write.")
_LAYOUT = flags.DEFINE_string("layout_dir", None,
                              "Training layout; default the one the model was trained on.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default the newest.")
_FACTORY = flags.DEFINE_string("index_factory", "auto",
                               "FAISS index_factory string: Flat, SQfp16, IVF2048,SQ8, "
                               "IVF4096,PQ32, HNSW32, ..., or auto: per shard, Flat below 20k "
                               "items, SQfp16 (every item as 16-bit floats: half the memory "
                               "read, 0.56-0.69x the CPU per request at 55k items) below 100k, "
                               "else IVF<nlist ~ 2 sqrt(n)>,SQ8 (1M items: IVF2048,SQ8; it "
                               "returned more of the exact top 1,000 per ms of CPU than 8-bit "
                               "PQ and fast-scan at 1M items: docs/benchmarks.md)")
_SHARDS = flags.DEFINE_integer("num_shards", 1, "Split the catalog into this many shards.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 0,
                                   "Vectors to train the index on; 0 = automatic.")
_NPROBE = flags.DEFINE_integer("nprobe", 64, "Default nprobe stored in IVF indexes.")
_EF = flags.DEFINE_integer("ef_search", 128, "Default efSearch stored in HNSW indexes.")
_K_FACTOR = flags.DEFINE_float("refine_k_factor", IndexBuildConfig.refine_k_factor,
                               "Refine factories (...,Refine(SQ8)): k * this many candidates "
                               "of the base index are re-ranked with the refine codes.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the training sample.")
_BATCH = flags.DEFINE_integer("batch_size", 4096, "Items per item-tower batch.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing build.")
_LEXICAL = flags.DEFINE_bool("lexical", True,
                             "Also build the lexical (BM25) index of the item titles, for "
                             "hybrid servables and `dpsr evaluate --hybrid`.")
_LEXICAL_ONLY = flags.DEFINE_bool("lexical_only", False,
                                  "Only (re)build the lexical index of an existing build "
                                  "directory (needs --layout_dir, not --model_dir).")
_LEXICAL_FEATURES = flags.DEFINE_list("lexical_features", list(DEFAULT_FEATURES),
                                      f"Tokenizer feature kinds indexed, of {FEATURE_KINDS}.")
_LEXICAL_FIELDS = flags.DEFINE_string(
    "lexical_fields", LexicalConfig.fields, "What each item's lexical document holds: title, "
    "all (the title and every categorical item column), or a list of fields with optional "
    "integer weights, e.g. title:2,brand,category (docs/indexing.md).")
_K1 = flags.DEFINE_float("bm25_k1", LexicalConfig.k1, "BM25 k1 (term-frequency saturation).")
_B = flags.DEFINE_float("bm25_b", LexicalConfig.b, "BM25 b (document-length normalization).")
_FROM_PQ = flags.DEFINE_bool("from_model_pq", False,
                             "Write the index a --joint_pq model learned (rotation, coarse "
                             "centroids, PQ codebooks, the model's codes; no FAISS training; "
                             "--index_factory and --train_size are not used).")
_ENCODER_LIST = flags.DEFINE_bool(
    "encoder_list", False, "Also embed every item with a pretrained sentence encoder "
    "(--encoder_dir) into an index beside the FAISS shards (--encoder_index_factory): `dpsr "
    "export` then fuses the "
    "encoder's list with the served one (--encoder_weight, chosen on validation by default; "
    "docs/indexing.md, \"The encoder list\").")
_ENCODER_ONLY = flags.DEFINE_bool(
    "encoder_only", False, "Only (re)build the encoder list of an existing build directory "
    "(needs --layout_dir, not --model_dir).")
_ENCODER_DIR = flags.DEFINE_string(
    "encoder_dir", "", "The encoder list's pretrained encoder: a Hugging Face directory "
    "(config.json, vocab.txt, model.safetensors), or a `dpsr train --text_encoder=pretrained "
    "--num_heads=1` model on titles only, whose fine-tuned encoder is written into the build; "
    "empty = the installed all-MiniLM-L6-v2.")
_ENCODER_FIELDS = flags.DEFINE_string(
    "encoder_fields", item_text.TITLE, "What each item's document holds for the encoder list: "
    "title, all, or a list of fields (as --lexical_fields).")
_ENCODER_QUERY_DIR = flags.DEFINE_string(
    "encoder_query_dir", "", "The encoder list's queries embedded by a fast query encoder "
    "instead of the encoder: a `dpsr train --teacher_dir=ENCODER --item_side=teacher` model "
    "trained against --encoder_dir's items (docs/training.md, \"A fast query encoder\"), or "
    "several comma-separated (students of different --seed): each query is the mean of their "
    "vectors; empty = the encoder embeds them.")
_ENCODER_FACTORY = flags.DEFINE_string(
    "encoder_index_factory", "auto", "The encoder list's FAISS index (inner product): auto "
    "searches every item (Flat below 20k items per shard, else SQfp16: 16-bit floats, half the "
    "bytes read); Flat searches exactly; an IVF (e.g. IVF256,SQfp16) searches a few of its "
    "lists, for a large catalog or a cheaper request (docs/indexing.md, \"The encoder "
    "list\").")
_ENCODER_NPROBE = flags.DEFINE_integer(
    "encoder_nprobe", 64, "Lists an IVF --encoder_index_factory searches per query (stored in "
    "the index; clamped to its lists).", lower_bound=1)
_ENCODER_PROJECTED = flags.DEFINE_integer(
    "encoder_projected_dimension", 0, "0 = the encoder's own; else the encoder list stores "
    "each item, and searches each query, as its projection onto this many of the items' "
    "principal directions (uncentered, so inner products keep their order up to the dropped "
    "part), --encoder_index_factory applying to the projected vectors: fewer bytes read per "
    "item (docs/indexing.md, \"The encoder list\").", lower_bound=0)
flags.mark_flags_as_required(["output_dir"])


def _encoder_list(layout_dir: str) -> None:
    """Adds the encoder list to the build in --output_dir (SystemExit with the reason)."""
    students = [d.strip() for d in _ENCODER_QUERY_DIR.value.split(",")]
    if _ENCODER_QUERY_DIR.value and not all(students):
        raise SystemExit(f"dpsr index: --encoder_query_dir={_ENCODER_QUERY_DIR.value}: an empty "
                         "name in the list; give model directories separated by single commas")
    try:
        encoder_index.add_encoder_index(_OUTPUT.value, layout_dir, _ENCODER_DIR.value,
                                        _ENCODER_FIELDS.value,
                                        log=lambda m: logging.info("%s", m),
                                        query_model_dir=students[0],
                                        query_ensemble=students[1:],
                                        index_factory=_ENCODER_FACTORY.value,
                                        nprobe=_ENCODER_NPROBE.value,
                                        projected_dimension=_ENCODER_PROJECTED.value)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"dpsr index: {e}") from None


def _encoder_list_of_model() -> None:
    """--encoder_list after a model's build: the layout is --layout_dir or the model's."""
    if _ENCODER_LIST.value:
        _encoder_list(_LAYOUT.value or load_model_config(_MODEL_DIR.value)[1].layout_dir)


def _encoder_only() -> None:
    if _MODEL_DIR.value or not _LAYOUT.value:
        raise SystemExit("dpsr index: --encoder_only needs --layout_dir and no --model_dir")
    _encoder_list(_LAYOUT.value)
    manifest = index_layout.read_manifest(_OUTPUT.value)
    print(json.dumps({"output_dir": _OUTPUT.value, "encoder": manifest.encoder.to_dict()}))


def _lexical_only(lexical: LexicalConfig):
    if _MODEL_DIR.value or not _LAYOUT.value:
        raise SystemExit("dpsr index: --lexical_only needs --layout_dir and no --model_dir")
    try:
        manifest = catalog_index.add_lexical_index(_OUTPUT.value, _LAYOUT.value, lexical)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dpsr index: {e}") from None
    print(json.dumps({"output_dir": _OUTPUT.value, "lexical": manifest.lexical.to_dict()}))


def main(argv):
    del argv
    lexical = LexicalConfig(features=tuple(_LEXICAL_FEATURES.value), k1=_K1.value, b=_B.value,
                            fields=_LEXICAL_FIELDS.value)
    try:
        lexical.validate()
    except ValueError as e:
        raise SystemExit(f"dpsr index: {e}") from None
    try:
        item_text.parse_fields(_ENCODER_FIELDS.value)
    except ValueError as e:
        raise SystemExit(f"dpsr index: --encoder_fields: {e}") from None
    list_flags = [f"--{name}" for name, value, default in (
        ("encoder_query_dir", _ENCODER_QUERY_DIR.value, ""),
        ("encoder_index_factory", _ENCODER_FACTORY.value, "auto"),
        ("encoder_nprobe", _ENCODER_NPROBE.value, 64),
        ("encoder_projected_dimension", _ENCODER_PROJECTED.value, 0)) if value != default]
    if list_flags and not (_ENCODER_LIST.value or _ENCODER_ONLY.value):
        raise SystemExit(f"dpsr index: {', '.join(list_flags)} shape the encoder list; add "
                         "--encoder_list (or --encoder_only on an existing build)")
    if _LEXICAL_ONLY.value:
        return _lexical_only(lexical)
    if _ENCODER_ONLY.value:
        return _encoder_only()
    if not _MODEL_DIR.value:
        raise SystemExit("dpsr index: --model_dir is required (or --lexical_only)")
    if _FROM_PQ.value:
        try:
            manifest = joint_pq_index.build_joint_pq_index(
                _MODEL_DIR.value, _OUTPUT.value, layout_dir=_LAYOUT.value,
                checkpoint=_CHECKPOINT.value, num_shards=_SHARDS.value, nprobe=_NPROBE.value,
                batch_size=_BATCH.value, overwrite=_OVERWRITE.value,
                lexical=lexical if _LEXICAL.value else None)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise SystemExit(f"dpsr index: {e}") from None
        _encoder_list_of_model()
        print(json.dumps({"output_dir": _OUTPUT.value, "num_items": manifest.num_items,
                          "num_shards": manifest.num_shards, "factory": manifest.factory,
                          "nprobe": manifest.nprobe, "lexical": manifest.lexical is not None,
                          "encoder": _ENCODER_LIST.value}))
        return None
    config = IndexBuildConfig(factory=_FACTORY.value, num_shards=_SHARDS.value,
                              train_size=_TRAIN_SIZE.value, seed=_SEED.value,
                              nprobe=_NPROBE.value, ef_search=_EF.value,
                              refine_k_factor=_K_FACTOR.value)
    try:
        config.validate()
        manifest = catalog_index.index_catalog(
            _MODEL_DIR.value, _OUTPUT.value, config, layout_dir=_LAYOUT.value,
            checkpoint=_CHECKPOINT.value, batch_size=_BATCH.value, overwrite=_OVERWRITE.value,
            lexical=lexical if _LEXICAL.value else None)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"dpsr index: {e}") from None
    _encoder_list_of_model()
    logging.info("index in %s: %d items, %d shard(s), %s, built in %.1fs", _OUTPUT.value,
                 manifest.num_items, manifest.num_shards, manifest.factory,
                 manifest.build_seconds)
    print(json.dumps({"output_dir": _OUTPUT.value, "num_items": manifest.num_items,
                      "num_shards": manifest.num_shards, "factory": manifest.factory,
                      "build_seconds": round(manifest.build_seconds, 2),
                      "lexical": manifest.lexical is not None,
                      "encoder": _ENCODER_LIST.value}))
