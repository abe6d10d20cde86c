// Implementation of the lexical (BM25) index core (see lexical_index.h).
#include "search_cc/core/lexical_index.h"
#include "search_cc/core/asset_snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace dpsr {
namespace lexical {
namespace {

using Code = LexicalIndexError::Code;

constexpr char kMagic[8] = {'D', 'P', 'S', 'R', 'L', 'E', 'X', '1'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kHeaderBytes = 64;
// A document's length is stored as u32; one document with more features is refused.
constexpr int64_t kMaxDocLength = std::numeric_limits<uint32_t>::max();

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t num_docs;
  uint64_t num_terms;
  uint64_t postings_bytes;
  uint64_t corpus_docs;
  double avg_doc_length;
  float k1;
  float b;
};
static_assert(sizeof(Header) == kHeaderBytes, "header layout");

int64_t Align8(int64_t n) { return (n + 7) & ~int64_t{7}; }

// Byte offsets of the sections for a header; the whole file size last. Overflow-safe for any
// header values that fit the limits checked before (counts below 2^40).
struct Sections {
  int64_t doc_length, term, idf, offset, postings, checksum, file_bytes;
};

Sections SectionsOf(uint64_t num_docs, uint64_t num_terms, uint64_t postings_bytes) {
  Sections s;
  s.doc_length = kHeaderBytes;
  s.term = s.doc_length + Align8(static_cast<int64_t>(num_docs) * 4);
  s.idf = s.term + static_cast<int64_t>(num_terms) * 8;
  s.offset = s.idf + Align8(static_cast<int64_t>(num_terms) * 4);
  s.postings = s.offset + (static_cast<int64_t>(num_terms) + 1) * 8;
  s.checksum = s.postings + Align8(static_cast<int64_t>(postings_bytes));
  s.file_bytes = s.checksum + 8;
  return s;
}

uint64_t Fnv1a(const uint8_t* data, size_t n, uint64_t h = 1469598103934665603ULL) {
  for (size_t i = 0; i < n; ++i) {
    h ^= data[i];
    h *= 1099511628211ULL;
  }
  return h;
}

void PutVarint(uint64_t v, std::vector<uint8_t>* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<uint8_t>(v));
}

// Reads one varint from [*p, end); false if it runs past end or beyond 64 bits.
inline bool GetVarint(const uint8_t** p, const uint8_t* end, uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift < 64 && *p < end; shift += 7) {
    const uint8_t byte = *(*p)++;
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) {
      *v = result;
      return true;
    }
  }
  return false;
}

double Idf(int64_t num_docs, int64_t df) {
  return std::log(1.0 + (static_cast<double>(num_docs) - df + 0.5) / (df + 0.5));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Input validation and corpus statistics.

void RaggedIds::Validate(const char* what) const {
  if (num_rows < 0 || num_values < 0) {
    Fail(Code::kInvalidArgument, std::string(what) + ": negative size");
  }
  if (row_splits == nullptr || (num_values > 0 && values == nullptr)) {
    Fail(Code::kInvalidArgument, std::string(what) + ": missing values or row splits");
  }
  if (row_splits[0] != 0) {
    Fail(Code::kInvalidArgument,
         std::string(what) + ": row_splits must start at 0, got " + std::to_string(row_splits[0]));
  }
  for (int64_t i = 0; i < num_rows; ++i) {
    if (row_splits[i + 1] < row_splits[i]) {
      Fail(Code::kInvalidArgument, std::string(what) + ": row_splits must be non-decreasing; " +
                                       "row_splits[" + std::to_string(i + 1) + "] = " +
                                       std::to_string(row_splits[i + 1]) + " < " +
                                       std::to_string(row_splits[i]));
    }
  }
  if (row_splits[num_rows] != num_values) {
    Fail(Code::kInvalidArgument, std::string(what) + ": row_splits ends at " +
                                     std::to_string(row_splits[num_rows]) + " but there are " +
                                     std::to_string(num_values) + " values");
  }
}

void Bm25Params::Validate() const {
  if (!(std::isfinite(k1) && k1 >= 0)) {
    Fail(Code::kInvalidArgument, "BM25 k1 must be finite and >= 0, got " + std::to_string(k1));
  }
  if (!(std::isfinite(b) && b >= 0 && b <= 1)) {
    Fail(Code::kInvalidArgument, "BM25 b must be in [0, 1], got " + std::to_string(b));
  }
}

CorpusStats CorpusStats::Compute(const RaggedIds& docs) {
  docs.Validate("corpus");
  // (term, doc) pairs, one per distinct term of a document, then counted per term.
  std::vector<int64_t> distinct;
  std::vector<int64_t> all_terms;
  all_terms.reserve(static_cast<size_t>(docs.num_values));
  for (int64_t d = 0; d < docs.num_rows; ++d) {
    distinct.assign(docs.values + docs.row_splits[d], docs.values + docs.row_splits[d + 1]);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    all_terms.insert(all_terms.end(), distinct.begin(), distinct.end());
  }
  std::sort(all_terms.begin(), all_terms.end());
  CorpusStats stats;
  stats.num_docs = docs.num_rows;
  stats.total_length = static_cast<double>(docs.num_values);
  for (size_t i = 0; i < all_terms.size();) {
    size_t j = i;
    while (j < all_terms.size() && all_terms[j] == all_terms[i]) ++j;
    stats.terms.push_back(all_terms[i]);
    stats.doc_freq.push_back(static_cast<int64_t>(j - i));
    i = j;
  }
  return stats;
}

int64_t CorpusStats::DocFreq(int64_t term) const {
  auto it = std::lower_bound(terms.begin(), terms.end(), term);
  return (it != terms.end() && *it == term) ? doc_freq[it - terms.begin()] : 0;
}

// ---------------------------------------------------------------------------------------------
// Writer.

void WriteIndex(const std::string& path, const RaggedIds& docs, const CorpusStats& stats,
                const Bm25Params& params) {
  docs.Validate("documents");
  params.Validate();
  if (stats.num_docs < docs.num_rows) {
    Fail(Code::kInvalidArgument, "corpus statistics cover " + std::to_string(stats.num_docs) +
                                     " documents, fewer than the " +
                                     std::to_string(docs.num_rows) + " of this shard");
  }
  // (term, doc, tf) per distinct term of each document; sorted by term then doc.
  struct Posting {
    int64_t term;
    int64_t doc;
    uint32_t tf;
  };
  std::vector<Posting> postings;
  postings.reserve(static_cast<size_t>(docs.num_values));
  std::vector<uint32_t> doc_length(static_cast<size_t>(docs.num_rows));
  std::vector<int64_t> terms_of_doc;
  for (int64_t d = 0; d < docs.num_rows; ++d) {
    const int64_t length = docs.row_splits[d + 1] - docs.row_splits[d];
    if (length > kMaxDocLength) {
      Fail(Code::kInvalidArgument, "document " + std::to_string(d) + " has " +
                                       std::to_string(length) + " features; at most " +
                                       std::to_string(kMaxDocLength));
    }
    doc_length[d] = static_cast<uint32_t>(length);
    terms_of_doc.assign(docs.values + docs.row_splits[d], docs.values + docs.row_splits[d + 1]);
    std::sort(terms_of_doc.begin(), terms_of_doc.end());
    for (size_t i = 0; i < terms_of_doc.size();) {
      size_t j = i;
      while (j < terms_of_doc.size() && terms_of_doc[j] == terms_of_doc[i]) ++j;
      postings.push_back({terms_of_doc[i], d, static_cast<uint32_t>(j - i)});
      i = j;
    }
  }
  std::stable_sort(postings.begin(), postings.end(),
                   [](const Posting& a, const Posting& b) { return a.term < b.term; });

  std::vector<int64_t> terms;
  std::vector<float> idf;
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> blob;
  blob.reserve(postings.size() * 3);
  for (size_t i = 0; i < postings.size();) {
    const int64_t term = postings[i].term;
    const int64_t df = stats.DocFreq(term);
    if (df < 1) {
      Fail(Code::kInvalidArgument, "feature id " + std::to_string(term) +
                                       " of the documents is not in the corpus statistics: "
                                       "compute them over the whole catalog");
    }
    terms.push_back(term);
    idf.push_back(static_cast<float>(Idf(stats.num_docs, df)));
    offsets.push_back(blob.size());
    int64_t previous = 0;
    for (; i < postings.size() && postings[i].term == term; ++i) {
      PutVarint(static_cast<uint64_t>(postings[i].doc - previous), &blob);
      PutVarint(postings[i].tf, &blob);
      previous = postings[i].doc;
    }
  }
  offsets.push_back(blob.size());

  Header header;
  std::memset(&header, 0, sizeof(header));
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.version = kVersion;
  header.num_docs = static_cast<uint64_t>(docs.num_rows);
  header.num_terms = terms.size();
  header.postings_bytes = blob.size();
  header.corpus_docs = static_cast<uint64_t>(stats.num_docs);
  header.avg_doc_length = stats.avg_doc_length();
  header.k1 = params.k1;
  header.b = params.b;
  const Sections sections = SectionsOf(header.num_docs, header.num_terms, header.postings_bytes);

  std::vector<uint8_t> file(static_cast<size_t>(sections.file_bytes), 0);
  std::memcpy(file.data(), &header, sizeof(header));
  std::memcpy(file.data() + sections.doc_length, doc_length.data(), doc_length.size() * 4);
  std::memcpy(file.data() + sections.term, terms.data(), terms.size() * 8);
  std::memcpy(file.data() + sections.idf, idf.data(), idf.size() * 4);
  std::memcpy(file.data() + sections.offset, offsets.data(), offsets.size() * 8);
  std::memcpy(file.data() + sections.postings, blob.data(), blob.size());
  const uint64_t checksum = Fnv1a(file.data(), static_cast<size_t>(sections.checksum));
  std::memcpy(file.data() + sections.checksum, &checksum, 8);

  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    Fail(Code::kInternal, "cannot write lexical index " + tmp + ": " + std::strerror(errno));
  }
  const size_t written = std::fwrite(file.data(), 1, file.size(), f);
  const bool ok = written == file.size() && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const int saved_errno = errno;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    Fail(Code::kInternal, "cannot write lexical index " + path + ": " +
                              std::strerror(ok ? errno : saved_errno));
  }
}

// ---------------------------------------------------------------------------------------------
// Loaded index.

struct LexicalIndex::Impl {
  std::string path;
  // The bytes searched: a snapshot taken at load (asset_snapshot.h), never the file at `path`,
  // so changing that file in place cannot fault or change a loaded index.
  std::unique_ptr<assets::AssetSnapshot> snapshot;
  const uint8_t* base = nullptr;
  size_t bytes = 0;
  Header header;
  const uint32_t* doc_length = nullptr;
  const int64_t* terms = nullptr;
  const float* idf = nullptr;
  const uint64_t* offsets = nullptr;
  const uint8_t* postings = nullptr;
  int64_t num_postings = 0;
  // k1 * (1 - b + b * |d| / avgdl) of every document, computed once at load.
  std::vector<float> norm;

  [[noreturn]] void Corrupt(const std::string& what) const {
    Fail(Code::kInvalidArgument, "lexical index " + path + " is not a valid DPSR lexical index: " +
                                     what + " (rebuild it with `dpsr index --lexical`)");
  }

  // Index of a term in the sorted term table, or -1.
  int64_t Find(int64_t term) const {
    const int64_t* end = terms + header.num_terms;
    const int64_t* it = std::lower_bound(terms, end, term);
    return (it != end && *it == term) ? it - terms : -1;
  }

  // Calls fn(doc, tf) for each posting of term index t (validated at load).
  template <typename Fn>
  void ForEachPosting(int64_t t, Fn&& fn) const {
    const uint8_t* p = postings + offsets[t];
    const uint8_t* end = postings + offsets[t + 1];
    uint64_t doc = 0, delta = 0, tf = 0;
    while (p < end) {
      GetVarint(&p, end, &delta);
      GetVarint(&p, end, &tf);
      doc += delta;
      fn(static_cast<int64_t>(doc), static_cast<float>(tf));
    }
  }

  void Validate() {
    if (bytes < static_cast<size_t>(kHeaderBytes)) {
      Corrupt("the file has " + std::to_string(bytes) + " bytes, less than the header");
    }
    std::memcpy(&header, base, sizeof(header));
    if (std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0) Corrupt("bad magic bytes");
    if (header.version != kVersion) {
      Corrupt("format version " + std::to_string(header.version) + " (this reader knows " +
              std::to_string(kVersion) + ")");
    }
    constexpr uint64_t kLimit = uint64_t{1} << 40;
    if (header.num_docs >= kLimit || header.num_terms >= kLimit ||
        header.postings_bytes >= kLimit || header.corpus_docs >= kLimit) {
      Corrupt("implausible counts in the header");
    }
    const Sections s = SectionsOf(header.num_docs, header.num_terms, header.postings_bytes);
    if (static_cast<uint64_t>(s.file_bytes) != bytes) {
      Corrupt("the header implies " + std::to_string(s.file_bytes) + " bytes but the file has " +
              std::to_string(bytes) + (bytes < static_cast<uint64_t>(s.file_bytes)
                                           ? " (truncated)" : " (trailing bytes)"));
    }
    uint64_t stored = 0;
    std::memcpy(&stored, base + s.checksum, 8);
    if (Fnv1a(base, static_cast<size_t>(s.checksum)) != stored) Corrupt("checksum mismatch");
    if (header.corpus_docs < header.num_docs || !(header.avg_doc_length >= 0) ||
        !std::isfinite(header.avg_doc_length)) {
      Corrupt("bad corpus statistics in the header");
    }
    Bm25Params params{header.k1, header.b};
    try {
      params.Validate();
    } catch (const LexicalIndexError& e) {
      Corrupt(e.what());
    }
    doc_length = reinterpret_cast<const uint32_t*>(base + s.doc_length);
    terms = reinterpret_cast<const int64_t*>(base + s.term);
    idf = reinterpret_cast<const float*>(base + s.idf);
    offsets = reinterpret_cast<const uint64_t*>(base + s.offset);
    postings = base + s.postings;
    if (offsets[0] != 0 || offsets[header.num_terms] != header.postings_bytes) {
      Corrupt("posting offsets do not span the postings");
    }
    for (uint64_t t = 0; t < header.num_terms; ++t) {
      if (t > 0 && terms[t] <= terms[t - 1]) Corrupt("terms are not strictly increasing");
      if (offsets[t + 1] < offsets[t]) Corrupt("posting offsets decrease");
      if (!(std::isfinite(idf[t]) && idf[t] >= 0)) Corrupt("a non-finite or negative idf");
      const uint8_t* p = postings + offsets[t];
      const uint8_t* end = postings + offsets[t + 1];
      uint64_t doc = 0, delta = 0, tf = 0;
      bool first = true;
      while (p < end) {
        if (!GetVarint(&p, end, &delta) || !GetVarint(&p, end, &tf)) {
          Corrupt("a posting list runs past its end");
        }
        if ((!first && delta == 0) || delta >= header.num_docs || doc + delta >= header.num_docs ||
            tf == 0 || tf > doc_length[doc + delta]) {
          Corrupt("a posting names a bad document or frequency");
        }
        doc += delta;
        first = false;
        ++num_postings;
      }
    }
    const double avgdl = header.avg_doc_length > 0 ? header.avg_doc_length : 1.0;
    norm.resize(header.num_docs);
    for (uint64_t d = 0; d < header.num_docs; ++d) {
      norm[d] = static_cast<float>(header.k1 * (1.0 - header.b + header.b * doc_length[d] / avgdl));
    }
  }
};

namespace {

using CacheKey = std::tuple<dev_t, ino_t, off_t, int64_t, int64_t>;

std::mutex& CacheMutex() {
  static std::mutex mu;
  return mu;
}
std::map<CacheKey, std::weak_ptr<const LexicalIndex>>& Cache() {
  static auto* cache = new std::map<CacheKey, std::weak_ptr<const LexicalIndex>>();
  return *cache;
}

// Per-thread scoring scratch: dense accumulators reset only where they were touched.
struct Scratch {
  std::vector<float> acc;
  std::vector<int64_t> touched;
  std::vector<std::pair<float, int64_t>> candidates;
};
Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

std::shared_ptr<const LexicalIndex> LexicalIndex::Load(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) {
      Fail(Code::kNotFound, "lexical index " + path + " does not exist");
    }
    Fail(Code::kInvalidArgument, "cannot open lexical index " + path + ": " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    Fail(Code::kInvalidArgument, "lexical index " + path + " is not a regular file");
  }
  const CacheKey key{st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  std::lock_guard<std::mutex> lock(CacheMutex());
  auto found = Cache().find(key);
  if (found != Cache().end()) {
    if (auto alive = found->second.lock()) return alive;
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  // An AssetSnapshotError is this core's CoreError: it propagates with its own code.
  impl->snapshot = assets::AssetSnapshot::Take(
      path, "lexical index", assets::AssetSnapshot::Mode::kSharedFile, /*map_file=*/true);
  impl->base = impl->snapshot->data();
  impl->bytes = impl->snapshot->size();
  impl->Validate();
  std::shared_ptr<const LexicalIndex> index(new LexicalIndex(std::move(impl)));
  Cache()[key] = index;
  return index;
}

LexicalIndex::LexicalIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LexicalIndex::~LexicalIndex() = default;

const std::string& LexicalIndex::path() const { return impl_->path; }
int64_t LexicalIndex::num_docs() const { return static_cast<int64_t>(impl_->header.num_docs); }
int64_t LexicalIndex::num_terms() const { return static_cast<int64_t>(impl_->header.num_terms); }
int64_t LexicalIndex::num_postings() const { return impl_->num_postings; }
int64_t LexicalIndex::file_bytes() const { return static_cast<int64_t>(impl_->bytes); }
const std::string& LexicalIndex::snapshot_file() const { return impl_->snapshot->file(); }
const std::string& LexicalIndex::load_warning() const {
  return impl_->snapshot->fallback_reason();
}
int64_t LexicalIndex::corpus_docs() const {
  return static_cast<int64_t>(impl_->header.corpus_docs);
}
double LexicalIndex::avg_doc_length() const { return impl_->header.avg_doc_length; }
Bm25Params LexicalIndex::params() const { return {impl_->header.k1, impl_->header.b}; }

namespace {

void CheckQueries(const RaggedIds& queries) {
  queries.Validate("queries");
  for (int64_t q = 0; q < queries.num_rows; ++q) {
    const int64_t n = queries.row_splits[q + 1] - queries.row_splits[q];
    if (n > LexicalIndex::kMaxQueryTerms) {
      Fail(Code::kInvalidArgument, "query " + std::to_string(q) + " has " + std::to_string(n) +
                                       " feature ids; at most " +
                                       std::to_string(LexicalIndex::kMaxQueryTerms));
    }
  }
}

}  // namespace

void LexicalIndex::Search(const RaggedIds& queries, const SearchParams& params, float* scores,
                          int64_t* labels) const {
  if (params.k < 1 || params.k > kMaxK) {
    Fail(Code::kInvalidArgument,
         "k must be in [1, " + std::to_string(kMaxK) + "], got " + std::to_string(params.k));
  }
  if (!std::isfinite(params.min_score)) {
    Fail(Code::kInvalidArgument, "min_score must be finite");
  }
  CheckQueries(queries);
  const Impl& x = *impl_;
  Scratch& s = ThreadScratch();
  if (s.acc.size() < x.header.num_docs) s.acc.assign(x.header.num_docs, 0.0f);
  const int64_t k = params.k;
  for (int64_t q = 0; q < queries.num_rows; ++q) {
    s.touched.clear();
    for (int64_t i = queries.row_splits[q]; i < queries.row_splits[q + 1]; ++i) {
      const int64_t t = x.Find(queries.values[i]);
      if (t < 0) continue;
      const float idf = x.idf[t];
      x.ForEachPosting(t, [&](int64_t doc, float tf) {
        if (s.acc[doc] == 0.0f) s.touched.push_back(doc);
        s.acc[doc] += idf * tf / (tf + x.norm[doc]);
      });
    }
    s.candidates.clear();
    for (int64_t doc : s.touched) {  // every contribution is > 0, so each doc is listed once
      if (s.acc[doc] > params.min_score) s.candidates.emplace_back(s.acc[doc], doc);
      s.acc[doc] = 0.0f;
    }
    auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    const int64_t n = std::min<int64_t>(k, static_cast<int64_t>(s.candidates.size()));
    std::partial_sort(s.candidates.begin(), s.candidates.begin() + n, s.candidates.end(), better);
    float* row_scores = scores + q * k;
    int64_t* row_labels = labels + q * k;
    for (int64_t j = 0; j < n; ++j) {
      row_scores[j] = s.candidates[j].first;
      row_labels[j] = s.candidates[j].second;
    }
    for (int64_t j = n; j < k; ++j) {
      row_scores[j] = -std::numeric_limits<float>::infinity();
      row_labels[j] = -1;
    }
  }
}

void LexicalIndex::ScoreAll(const RaggedIds& queries, float* scores) const {
  CheckQueries(queries);
  const Impl& x = *impl_;
  const int64_t n = static_cast<int64_t>(x.header.num_docs);
  for (int64_t q = 0; q < queries.num_rows; ++q) {
    float* row = scores + q * n;
    std::fill(row, row + n, 0.0f);
    for (int64_t i = queries.row_splits[q]; i < queries.row_splits[q + 1]; ++i) {
      const int64_t t = x.Find(queries.values[i]);
      if (t < 0) continue;
      const float idf = x.idf[t];
      x.ForEachPosting(t, [&](int64_t doc, float tf) { row[doc] += idf * tf / (tf + x.norm[doc]); });
    }
  }
}

}  // namespace lexical
}  // namespace dpsr
