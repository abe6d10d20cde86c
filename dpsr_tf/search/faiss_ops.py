"""TensorFlow ops over FAISS indexes: an index resource loaded once from a file, and search.

TF2 (eager, tf.function, tf.Module, tf.saved_model)::

    index = FaissIndex(tf.saved_model.Asset("/data/index/shard_00000/index.faiss"))
    scores, labels = search(index, queries, k=100, nprobe=32)   # [B, 100] float32 / int64

A FaissIndex held by a tf.Module is saved with the SavedModel: the index file is copied into
the SavedModel's assets/ and reloaded from there on tf.saved_model.load, wherever the directory
has moved.

TF1 graphs (tf.compat.v1 Graph + Session): building a FaissIndex adds its load op to the
TABLE_INITIALIZERS collection (and a constant path to ASSET_FILEPATHS), like a lookup table::

    with tf.Graph().as_default():
        index = FaissIndex("/data/index.faiss")
        queries = tf.compat.v1.placeholder(tf.float32, [None, 64])
        scores, labels = search(index, queries, k=100)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.tables_initializer())     # or main_op= of a SavedModel
            sess.run([scores, labels], {queries: q})

The ops (Dpsr>FaissIndexHandle, Dpsr>FaissIndexLoad, Dpsr>FaissIndexRelease, Dpsr>FaissSearch,
Dpsr>FaissIndexInfo) live in the project's one op library (dpsr_tf/_dpsr_ops*.so); the C++ core
is search_cc/core/faiss_index.h. docs/indexing.md describes them.
"""
import collections
import uuid

import tensorflow as tf

from dpsr_tf import op_library
from dpsr_tf.search import index_resource

# Largest k the search op accepts (search_cc/core/faiss_index.h kMaxK).
MAX_K = 10000
# Largest nprobe / ef_search the search op accepts (kMaxKnob).
MAX_KNOB = 1 << 20

IndexInfo = collections.namedtuple("IndexInfo", ["size", "dimension", "metric", "description"])


def _ops():
    return op_library.load()


class FaissIndex(index_resource.IndexResource):
    """A FAISS index file loaded once into a TensorFlow resource.

    The file is read when the index is built (eagerly), when the initializer runs (TF1
    graphs), or when a SavedModel holding it is loaded. A process loads one file once: indexes
    created from the same file share its memory, across sessions and loaded models.

    Args:
      path: path of a FAISS index file written by faiss-cpu 1.7.3 (dpsr_tf/indexing/index_builder.py
        writes them), as a str, a scalar tf.string tensor, or a tf.saved_model.Asset. A str or
        tensor is wrapped in an Asset so that a SavedModel carries the file.
      mmap: memory-map IVF inverted lists read-only instead of reading them into memory (other
        index types are always read into memory; FAISS 1.7.3 maps only IVF lists). What is
        mapped is a snapshot of the file in the asset cache directory ($DPSR_ASSET_CACHE_DIR,
        docs/serving.md), shared by the processes of a host; the file itself is never read
        again, so changing it in place cannot affect the loaded index. When that directory
        cannot be used, the index is read into memory (and the log says so).
      shared_name: resource name; by default a fresh unique name, so two FaissIndex objects
        never share a resource by accident.
      name: name of the handle op.

    Raises (when the file is read):
      tf.errors.NotFoundError: the file does not exist.
      tf.errors.InvalidArgumentError: the file is not a readable FAISS index (truncated,
        garbage, trailing bytes, a directory); the message names the file.
    """

    def __init__(self, path, *, mmap=False, shared_name=None, name="faiss_index"):
        self._mmap = bool(mmap)
        super().__init__(path, shared_name=shared_name or f"dpsr_faiss_index_{uuid.uuid4().hex}",
                         name=name)

    @property
    def mmap(self) -> bool:
        return self._mmap

    def _handle_op(self, shared_name, name):
        return _ops().dpsr_faiss_index_handle(shared_name=shared_name, name=name)

    def _load_op(self, handle, path, name):
        return _ops().dpsr_faiss_index_load(handle, path, mmap=self._mmap, name=name)

    def _release_op(self, handle):
        return _ops().dpsr_faiss_index_release(handle)

    def search(self, queries, k, nprobe=0, ef_search=0, name=None):
        """Same as search(self, ...)."""
        return search(self, queries, k, nprobe=nprobe, ef_search=ef_search, name=name)

    def info(self) -> IndexInfo:
        """Same as index_info(self)."""
        return index_info(self)


_handle = index_resource.handle_of
_check_int = index_resource.check_int


def search(index, queries, k, nprobe=0, ef_search=0, name=None):
    """The k best items of each query in a FAISS index, best first.

    Args:
      index: a FaissIndex, a FaissIndex restored from a SavedModel, or a resource handle.
      queries: [batch, dim] float32 query embeddings; dim must equal the index dimension and
        every value must be finite.
      k: int32 scalar in [1, MAX_K]. A Python int gives outputs of static shape [batch, k];
        k may exceed the number of indexed items (the rest is padding).
      nprobe: int32 scalar; inverted lists an IVF index visits for this call (clamped to
        nlist); 0 = the index's own nprobe (dpsr_tf/indexing/index_builder.py stores one). Ignored by
        indexes without inverted lists. Per call: the shared index is never modified.
      ef_search: int32 scalar; HNSW efSearch for this call (HNSW index or HNSW coarse
        quantizer); 0 = the index's own. Ignored by other indexes. (FAISS 1.7.3 ignores
        SearchParametersHNSW.efSearch, so the op switches the stored value while no other
        search runs on that index; searches with equal values run concurrently.)
      name: op name.

    Returns:
      scores: [batch, k] float32 inner products (L2 distances for an L2 index), best first;
        padding is -inf (inner product) or +inf (L2).
      labels: [batch, k] int64 FAISS labels, i.e. line numbers of the shard's id map
        (dpsr_tf/indexing/index_layout.py); -1 pads rows with fewer than k results.

    Raises:
      ValueError: k, nprobe or ef_search is a Python int out of range.
      tf.errors.InvalidArgumentError (when run): wrong query dimension or rank, non-finite
        query, k out of range.
      tf.errors.FailedPreconditionError (when run): the index was not initialized.
    """
    queries = tf.convert_to_tensor(queries, tf.float32, name="queries")
    k = _check_int("k", k, 1, MAX_K)
    nprobe = _check_int("nprobe", nprobe, 0, MAX_KNOB)
    ef_search = _check_int("ef_search", ef_search, 0, MAX_KNOB)
    scores, labels = _ops().dpsr_faiss_search(_handle(index), queries, k, nprobe, ef_search,
                                              name=name)
    return scores, labels


def index_info(index) -> IndexInfo:
    """Facts about a loaded index: scalar tensors size (int64, number of vectors), dimension
    (int64), metric (string, "inner_product" or "l2") and description (string)."""
    return IndexInfo(*_ops().dpsr_faiss_index_info(_handle(index)))
