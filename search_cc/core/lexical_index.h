// The lexical (BM25) index core of DPSR-TF: an inverted index over the tokenizer's int64
// feature ids, written once from a catalog shard, snapshotted and mapped read-only at load
// (asset_snapshot.h) and searched by many threads.
//
// Standard C++ and POSIX only: no TensorFlow, pybind11 or FAISS headers. Every error is a
// LexicalIndexError whose code() tells an adapter which status to report. Used by the TF ops
// Dpsr>LexicalIndexLoad / Dpsr>LexicalSearch (the servable) and by the pybind11 module
// dpsr_tf._lexical (`dpsr index --lexical`, `dpsr evaluate`), so evaluation and serving rank
// with the same code.
//
// Scoring is BM25 with Lucene's idf (the `bm25s` default, "lucene" method):
//   score(q, d) = sum over query term occurrences t in q of
//                 idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
//   idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
// N, df and avgdl are corpus-wide statistics passed to the writer (CorpusStats), so every shard
// of a sharded catalog scores exactly as one unsharded index would. A query term repeated in
// the query counts once per occurrence (as in bm25s and Lucene).
//
// File format (little-endian, every section 8-byte aligned; docs/indexing.md):
//   header (64 bytes): magic "DPSRLEX1", version, num_docs, num_terms, postings_bytes,
//                      corpus_docs, avg_doc_length (f64), k1, b (f32)
//   u32 doc_length[num_docs]        features of each document (labels are row numbers)
//   i64 term[num_terms]             feature ids, strictly increasing
//   f32 idf[num_terms]              corpus-wide idf of each term
//   u64 offset[num_terms + 1]       byte range of each term's postings
//   u8  postings[postings_bytes]    per term, (doc delta, tf) pairs as LEB128 varints; the
//                                   first delta is the document itself, later ones are > 0
//   u64 checksum                    FNV-1a 64 of every byte before it
// The file size follows from the header, so truncation and trailing bytes are detected before
// anything is read; the checksum and a full decode at load catch the rest.
#ifndef DPSR_SEARCH_CC_CORE_LEXICAL_INDEX_H_
#define DPSR_SEARCH_CC_CORE_LEXICAL_INDEX_H_

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "search_cc/core/core_error.h"

namespace dpsr {
namespace lexical {

// The core's errors: the search cores' one error type (core_error.h).
using LexicalIndexError = ::dpsr::CoreError;

// Documents as a ragged array of feature ids: document i is values[row_splits[i] ..
// row_splits[i + 1]). Throws kInvalidArgument unless row_splits[0] == 0, row_splits is
// non-decreasing and row_splits[num_docs] == num_values.
struct RaggedIds {
  const int64_t* values = nullptr;
  int64_t num_values = 0;
  const int64_t* row_splits = nullptr;
  int64_t num_rows = 0;  // row_splits has num_rows + 1 entries

  void Validate(const char* what) const;
};

struct Bm25Params {
  float k1 = 1.5f;  // term-frequency saturation, >= 0
  float b = 0.75f;  // document-length normalization, in [0, 1]

  void Validate() const;
};

// Corpus-wide statistics of a whole catalog: what idf and avgdl are computed from.
struct CorpusStats {
  int64_t num_docs = 0;
  double total_length = 0;                // features in all documents
  std::vector<int64_t> terms;             // distinct feature ids, increasing
  std::vector<int64_t> doc_freq;          // documents holding terms[i]

  static CorpusStats Compute(const RaggedIds& docs);
  double avg_doc_length() const { return num_docs ? total_length / num_docs : 0.0; }
  // df of a term, 0 if absent.
  int64_t DocFreq(int64_t term) const;
};

// Writes the index of `docs` (labels = row numbers) to `path`: a temporary file renamed into
// place, so a reader never sees half a file. Every term of docs must be in stats (a shard of
// the catalog stats were computed over). Throws kInvalidArgument for bad input, kInternal for
// I/O errors (naming the file).
void WriteIndex(const std::string& path, const RaggedIds& docs, const CorpusStats& stats,
                const Bm25Params& params);

struct SearchParams {
  int64_t k = 0;                 // results per query, in [1, kMaxK]
  float min_score = 0.0f;        // keep only documents scoring strictly above this
};

// A loaded, immutable lexical index. Search() is safe to call from many threads at once.
class LexicalIndex {
 public:
  static constexpr int64_t kMaxK = 10000;
  // Largest number of feature ids one query may carry (bounds the work of a request).
  static constexpr int64_t kMaxQueryTerms = 4096;

  // Takes a snapshot of the file at `path` (asset_snapshot.h: a shared read-only copy in the
  // asset cache directory, mapped; private memory when that directory cannot be used) and
  // validates it, or returns the copy this process already loaded from the same file (same
  // device, inode, size and modification time). The loaded index never reads `path` again, so
  // changing that file in place cannot fault or change its answers. Throws kNotFound when the file does not exist and kInvalidArgument naming the file
  // when it is not a valid index (truncated, trailing bytes, bad magic or version, checksum
  // mismatch, corrupt postings, a directory, an empty file).
  static std::shared_ptr<const LexicalIndex> Load(const std::string& path);

  ~LexicalIndex();
  LexicalIndex(const LexicalIndex&) = delete;
  LexicalIndex& operator=(const LexicalIndex&) = delete;

  const std::string& path() const;
  int64_t num_docs() const;
  int64_t num_terms() const;
  int64_t num_postings() const;
  int64_t file_bytes() const;
  // The snapshot file mapped, or "" when the index is held in private memory.
  const std::string& snapshot_file() const;
  // Why the snapshot is in private memory instead of the shared cache; "" when it is not.
  const std::string& load_warning() const;
  int64_t corpus_docs() const;     // N of the idf (the whole catalog)
  double avg_doc_length() const;   // avgdl of the whole catalog
  Bm25Params params() const;

  // Searches queries.num_rows queries. Writes [n, k] scores and labels (document rows), best
  // first, ties by lower label. Rows with fewer than k documents above min_score are padded
  // with label -1 and score -inf. Throws kInvalidArgument for k out of [1, kMaxK], a
  // non-finite min_score, a query with more than kMaxQueryTerms ids, or bad row splits.
  void Search(const RaggedIds& queries, const SearchParams& params, float* scores,
              int64_t* labels) const;

  // BM25 of every document for each query: row-major [n, num_docs] scores (0 where no term
  // matches). Same arithmetic as Search, in the same order. For evaluation (pair scoring).
  void ScoreAll(const RaggedIds& queries, float* scores) const;

  struct Impl;

 private:
  explicit LexicalIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lexical
}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_LEXICAL_INDEX_H_
