"""dpsr export: model + index -> versioned SavedModel servable(s) (dpsr_tf/export/saved_model_export.py).

One servable per index shard: <export_base>/<version>/ for a one-shard index, else
<export_base>_shard<i>/<version>/ (the proxy merges the shards' answers). When the index build
has a lexical index, each servable is hybrid: dense and BM25 results fused (--fusion, ...;
--nohybrid for dense only).
"""
import json

from absl import flags

from dpsr_tf.cli import fusion_flags
from dpsr_tf.export import joint_pq_index
from dpsr_tf.export.saved_model_export import export_all_shards
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
flags.mark_flags_as_required(["model_dir", "export_base"])


def main(argv):
    del argv
    try:
        servable = ServableConfig(default_k=_K.value, max_k=_MAX_K.value,
                                  max_query_bytes=_MAX_QUERY.value, nprobe=_NPROBE.value,
                                  ef_search=_EF.value, hybrid=_HYBRID.value,
                                  mmap_index=_MMAP.value,
                                  fusion=fusion_flags.fusion_config())
        servable.validate()
        index_dir = _INDEX_DIR.value or joint_pq_index.index_for_export(
            _MODEL_DIR.value, checkpoint=_CHECKPOINT.value, layout_dir=_LAYOUT.value)
        paths = export_all_shards(_MODEL_DIR.value, index_dir, _BASE.value,
                                  version=_VERSION.value, servable=servable,
                                  checkpoint=_CHECKPOINT.value, layout_dir=_LAYOUT.value,
                                  ranker_dir=_RANKER.value, rerank_n=_RERANK_N.value)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"dpsr export: {e}") from None
    print(json.dumps({"servables": paths}))
