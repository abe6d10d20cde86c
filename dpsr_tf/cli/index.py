"""dpsr index: item tower over the catalog -> FAISS index shards (export/catalog_index.py)."""
import json

from absl import flags, logging

from export import catalog_index
from export.index_builder import IndexBuildConfig

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Trained model directory (dpsr train).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Index build directory to write.")
_LAYOUT = flags.DEFINE_string("layout_dir", None,
                              "Training layout; default the one the model was trained on.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default the newest.")
_FACTORY = flags.DEFINE_string("index_factory", "auto",
                               "FAISS index_factory string: Flat, IVF4096,PQ32, HNSW32, ..., or "
                               "auto: Flat below 100k items per shard, else IVF<nlist ~ 4 "
                               "sqrt(n)>,PQ<d/2> (1M items: IVF4096,PQ32) "
                               "(avoid fast-scan ...x4fs: Debian's libfaiss has no AVX2, see "
                               "docs/benchmarks.md)")
_SHARDS = flags.DEFINE_integer("num_shards", 1, "Split the catalog into this many shards.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 0,
                                   "Vectors to train the index on; 0 = automatic.")
_NPROBE = flags.DEFINE_integer("nprobe", 64, "Default nprobe stored in IVF indexes.")
_EF = flags.DEFINE_integer("ef_search", 128, "Default efSearch stored in HNSW indexes.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the training sample.")
_BATCH = flags.DEFINE_integer("batch_size", 4096, "Items per item-tower batch.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing build.")
flags.mark_flags_as_required(["model_dir", "output_dir"])


def main(argv):
    del argv
    config = IndexBuildConfig(factory=_FACTORY.value, num_shards=_SHARDS.value,
                              train_size=_TRAIN_SIZE.value, seed=_SEED.value,
                              nprobe=_NPROBE.value, ef_search=_EF.value)
    try:
        config.validate()
        manifest = catalog_index.index_catalog(
            _MODEL_DIR.value, _OUTPUT.value, config, layout_dir=_LAYOUT.value,
            checkpoint=_CHECKPOINT.value, batch_size=_BATCH.value, overwrite=_OVERWRITE.value)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"dpsr index: {e}") from None
    logging.info("index in %s: %d items, %d shard(s), %s, built in %.1fs", _OUTPUT.value,
                 manifest.num_items, manifest.num_shards, manifest.factory,
                 manifest.build_seconds)
    print(json.dumps({"output_dir": _OUTPUT.value, "num_items": manifest.num_items,
                      "num_shards": manifest.num_shards, "factory": manifest.factory,
                      "build_seconds": round(manifest.build_seconds, 2)}))
