// The FAISS searcher core of DPSR-TF: loads a FAISS 1.7.3 index file once and searches it with
// per-call knobs (IVF nprobe, HNSW efSearch) without mutating the shared index.
//
// Standard C++ only: no TensorFlow or pybind11 headers, and no FAISS headers either (the FAISS
// objects live behind a pointer to an implementation), so adapters stay thin. Every error is a
// FaissIndexError whose code() tells an adapter which status to report.
#ifndef DPSR_SEARCH_CC_CORE_FAISS_INDEX_H_
#define DPSR_SEARCH_CC_CORE_FAISS_INDEX_H_

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "search_cc/core/core_error.h"

namespace dpsr {
namespace search {

// The core's errors: the search cores' one error type (core_error.h).
using FaissIndexError = ::dpsr::CoreError;

struct LoadOptions {
  // Memory-map the inverted lists of IVF indexes read-only (FAISS IO_FLAG_MMAP) instead of
  // reading them into memory. Other index types (Flat, HNSW, IVF fast-scan blocks) are read
  // into memory either way: FAISS 1.7.3 maps only array inverted lists. What is mapped is a
  // snapshot of the file in the shared asset cache (asset_snapshot.h), never the file itself;
  // when the cache directory cannot be used the index is read into memory instead
  // (mmap() is then false and load_warning() says why).
  bool mmap = false;
};

struct SearchParams {
  int64_t k = 0;          // results per query, in [1, kMaxK]
  int64_t nprobe = 0;     // IVF: inverted lists to visit; 0 = the index's own default
  // HNSW (index or IVF coarse quantizer): efSearch for this call; 0 = the stored one. FAISS
  // 1.7.3 ignores SearchParametersHNSW::efSearch, so the core sets hnsw.efSearch behind a
  // per-node gate: changed only while no search runs, equal values searched concurrently.
  int64_t ef_search = 0;
};

// A loaded, immutable FAISS index. Search() is safe to call from many threads at once.
class FaissIndex {
 public:
  static constexpr int64_t kMaxK = 10000;
  static constexpr int64_t kMaxKnob = int64_t{1} << 20;  // upper bound of nprobe and ef_search
  // Batches smaller than this run on the calling thread; larger ones use FAISS's OpenMP
  // threads (OMP_NUM_THREADS, default all cores).
  static constexpr int64_t kParallelBatch = 16;

  // Loads the index file at `path`, or returns the copy this process already loaded from the
  // same file (same device, inode, size and modification time, same options): a model loaded
  // twice, or by several sessions, shares one index in memory. The loaded index never reads
  // `path` again (see LoadOptions::mmap). Throws kNotFound when the file
  // does not exist and kInvalidArgument (naming the file) when it is not a readable FAISS
  // index: truncated, trailing bytes, garbage, a directory, an empty file.
  static std::shared_ptr<const FaissIndex> Load(const std::string& path,
                                                const LoadOptions& options);

  ~FaissIndex();
  FaissIndex(const FaissIndex&) = delete;
  FaissIndex& operator=(const FaissIndex&) = delete;

  const std::string& path() const;
  bool mmap() const;                         // true when a snapshot file is mapped
  const std::string& snapshot_file() const;  // the snapshot mapped, or ""
  const std::string& load_warning() const;   // why mmap fell back to memory, or ""
  int64_t dimension() const;
  int64_t size() const;             // number of indexed vectors (ntotal)
  bool higher_is_better() const;    // inner product: true; L2 and other distances: false
  const std::string& metric() const;       // "inner_product", "l2", ...
  const std::string& description() const;  // e.g. "IndexPreTransform(IndexIVFPQFastScan)"

  // Searches n queries of dimension `dim` (row-major [n, dim]). Writes [n, k] scores (inner
  // products, or distances for L2) and labels (FAISS int64 labels), best first. When fewer
  // than k results exist, the tail of a row has label -1 and score -inf (higher_is_better)
  // or +inf. nprobe applies only to IVF indexes and ef_search only to HNSW ones; a nonzero
  // value is ignored by an index without that knob, so one caller serves any factory string.
  // Throws kInvalidArgument for dim != dimension(), k out of [1, kMaxK], a knob out of
  // [0, kMaxKnob], or a non-finite query value.
  void Search(int64_t n, int64_t dim, const float* queries, const SearchParams& params,
              float* scores, int64_t* labels) const;

  struct Impl;

 private:
  explicit FaissIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace search
}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_FAISS_INDEX_H_
