"""TensorFlow ops over lexical (BM25) indexes: a memory-mapped index resource, and search.

    index = LexicalIndex("/data/index/shard_00000/lexical.idx")
    tokens = tokenize_op.tokenize(queries, lexical_config.tokenizer_config())  # RaggedTensor
    scores, labels = search(index, tokens, k=100)            # [B, 100] float32 / int64

The resource follows FaissIndex's rules (dpsr_tf/search/index_resource.py): saved with a SavedModel as
an asset, loaded once per file and process, TF1 initializers in TABLE_INITIALIZERS. The ops
(Dpsr>LexicalIndexHandle/Load/Release, Dpsr>LexicalSearch, Dpsr>LexicalIndexInfo) live in the
project's op library; the C++ core is search_cc/core/lexical_index.h.
"""
import collections
import uuid

import tensorflow as tf

from dpsr_tf import op_library
from dpsr_tf.search import index_resource

# Largest k the search op accepts (LexicalIndex::kMaxK).
MAX_K = 10000

LexicalIndexInfo = collections.namedtuple(
    "LexicalIndexInfo", ["num_docs", "num_terms", "num_postings", "avg_doc_length"])


def _ops():
    return op_library.load()


class LexicalIndex(index_resource.IndexResource):
    """A lexical index file (`dpsr index --lexical`) memory-mapped into a TensorFlow resource.

    What is mapped is a snapshot of the file taken at load (a shared read-only copy in the
    asset cache directory, $DPSR_ASSET_CACHE_DIR; private memory when that cannot be used), so
    changing the file in place cannot affect the loaded index (docs/serving.md).

    Args:
      path: the lexical.idx file, as a str, scalar tf.string tensor or tf.saved_model.Asset.
      shared_name: resource name; default a fresh unique name.
      name: name of the handle op.

    Raises (when the file is read):
      tf.errors.NotFoundError: the file does not exist.
      tf.errors.InvalidArgumentError: a truncated, corrupt or foreign file, naming it.
    """

    def __init__(self, path, *, shared_name=None, name="lexical_index"):
        super().__init__(path, shared_name=shared_name or
                         f"dpsr_lexical_index_{uuid.uuid4().hex}", name=name)

    def _handle_op(self, shared_name, name):
        return _ops().dpsr_lexical_index_handle(shared_name=shared_name, name=name)

    def _load_op(self, handle, path, name):
        return _ops().dpsr_lexical_index_load(handle, path, name=name)

    def _release_op(self, handle):
        return _ops().dpsr_lexical_index_release(handle)


def search(index, query_tokens: tf.RaggedTensor, k, min_score=0.0, name=None):
    """BM25 top k of each query, best first.

    Args:
      index: a LexicalIndex, a restored one, or its resource handle.
      query_tokens: [B, None] int64 RaggedTensor of feature ids from the index's tokenizer
        configuration (LexicalManifest.config.tokenizer_config()).
      k: int32 scalar in [1, MAX_K]; a Python int gives outputs of static shape [B, k].
      min_score: only documents scoring strictly above it are returned.

    Returns:
      scores [B, k] float32 (-inf pads), labels [B, k] int64 shard rows (-1 pads).
    """
    if not isinstance(query_tokens, tf.RaggedTensor) or query_tokens.ragged_rank != 1:
        raise TypeError("query_tokens must be a RaggedTensor [batch, None] of int64 ids")
    k = index_resource.check_int("k", k, 1, MAX_K)
    return _ops().dpsr_lexical_search(
        index_resource.handle_of(index), tf.cast(query_tokens.flat_values, tf.int64),
        tf.cast(query_tokens.row_splits, tf.int64), k,
        tf.convert_to_tensor(min_score, tf.float32), name=name)


def index_info(index) -> LexicalIndexInfo:
    """Scalar tensors: documents, terms, postings, average document length of the catalog."""
    return LexicalIndexInfo(*_ops().dpsr_lexical_index_info(index_resource.handle_of(index)))
