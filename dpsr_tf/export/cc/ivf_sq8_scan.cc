// Implementation of the IVF-SQ8 inner-product search (see ivf_sq8_scan.h).
#include "dpsr_tf/export/cc/ivf_sq8_scan.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DPSR_SQ8_AVX2 1
#endif

#include <faiss/IndexFlat.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/invlists/InvertedLists.h>

namespace dpsr {
namespace search {
namespace {

using faiss::ScalarQuantizer;

// Dot products of `count` consecutive codes (d bytes each) with the weights.
void DotCodesScalar(const uint8_t* codes, size_t count, const float* w, size_t d, float* out) {
  for (size_t v = 0; v < count; ++v) {
    const uint8_t* c = codes + v * d;
    float acc = 0.f;
    for (size_t i = 0; i < d; ++i) acc += w[i] * static_cast<float>(c[i]);
    out[v] = acc;
  }
}

#ifdef DPSR_SQ8_AVX2
inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// d a multiple of 32. Each 32-byte load holds dims 4m + b in byte b of 32-bit lane m; masks
// and shifts split it into four vectors of eight dims (no shuffles, which share one port),
// matched by weights permuted the same way (PermuteWeights). Four codes at a time, two
// accumulators each, so the fused multiply-adds do not wait on each other.
void DotCodesAvx2(const uint8_t* codes, size_t count, const float* wp, size_t d, float* out) {
  const __m256i low = _mm256_set1_epi32(0xFF);
  auto step = [&](const uint8_t* c, const float* w, __m256& a, __m256& b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
    a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(x, low)), _mm256_loadu_ps(w), a);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, 8), low)),
                        _mm256_loadu_ps(w + 8), b);
    a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, 16), low)),
                        _mm256_loadu_ps(w + 16), a);
    b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 24)), _mm256_loadu_ps(w + 24), b);
  };
  size_t v = 0;
  for (; v + 4 <= count; v += 4) {
    const uint8_t* c = codes + v * d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (size_t i = 0; i < d; i += 32) {
      step(c + i, wp + i, a0, b0);
      step(c + d + i, wp + i, a1, b1);
      step(c + 2 * d + i, wp + i, a2, b2);
      step(c + 3 * d + i, wp + i, a3, b3);
    }
    // [a0 a1 a2 a3] lane sums: two rounds of pairwise adds, then the two 128-bit halves.
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1)),
                                    _mm256_hadd_ps(_mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3)));
    _mm_storeu_ps(out + v,
                  _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  for (; v < count; ++v) {
    const uint8_t* c = codes + v * d;
    __m256 a = _mm256_setzero_ps(), b = a;
    for (size_t i = 0; i < d; i += 32) step(c + i, wp + i, a, b);
    out[v] = Sum8(_mm256_add_ps(a, b));
  }
}
#endif

// Inner products of `count` consecutive float rows (d each) with q: the coarse quantizer's
// centroids. Four rows at a time share each load of q.
void DotRows(const float* rows, size_t count, const float* q, size_t d, float* out) {
  size_t v = 0;
#ifdef DPSR_SQ8_AVX2
  if (d % 8 == 0) {
    for (; v + 4 <= count; v += 4) {
      const float* r = rows + v * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = 0; i < d; i += 8) {
        const __m256 qi = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i), qi, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + d + i), qi, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 2 * d + i), qi, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 3 * d + i), qi, a3);
      }
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      _mm_storeu_ps(out + v,
                    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
  }
#endif
  for (; v < count; ++v) {
    const float* r = rows + v * d;
    float acc = 0.f;
    for (size_t i = 0; i < d; ++i) acc += r[i] * q[i];
    out[v] = acc;
  }
}

// True when DotCodes takes the AVX2 path, which wants its weights permuted.
bool Avx2Path(size_t d) {
#ifdef DPSR_SQ8_AVX2
  return d % 32 == 0;
#else
  return false;
#endif
}

// Reorders weights for DotCodesAvx2: in each block of 32 dims, byte b of lane m (dim 4m + b)
// is multiplied by weight slot 8b + m.
std::vector<float> PermuteWeights(const std::vector<float>& w) {
  std::vector<float> wp(w.size());
  for (size_t i = 0; i < w.size(); i += 32) {
    for (size_t b = 0; b < 4; ++b) {
      for (size_t m = 0; m < 8; ++m) wp[i + 8 * b + m] = w[i + 4 * m + b];
    }
  }
  return wp;
}

// `w` permuted (PermuteWeights) when Avx2Path(d).
void DotCodes(const uint8_t* codes, size_t count, const float* w, size_t d, float* out) {
#ifdef DPSR_SQ8_AVX2
  if (Avx2Path(d)) {
    DotCodesAvx2(codes, count, w, d, out);
    return;
  }
#endif
  DotCodesScalar(codes, count, w, d, out);
}

// score(code) = offset + sum_i weight[i] * code[i] for one query (see the header).
struct QueryWeights {
  std::vector<float> weight;
  float offset = 0.f;
};

QueryWeights WeightsFor(const ScalarQuantizer& sq, const float* q) {
  const size_t d = sq.d;
  QueryWeights out;
  out.weight.resize(d);
  const bool uniform = sq.qtype == ScalarQuantizer::QT_8bit_uniform;
  double offset = 0;
  for (size_t i = 0; i < d; ++i) {
    const float vmin = uniform ? sq.trained[0] : sq.trained[i];
    const float vdiff = uniform ? sq.trained[1] : sq.trained[d + i];
    out.weight[i] = q[i] * vdiff / 255.0f;
    offset += static_cast<double>(q[i]) * (vmin + 0.5f * vdiff / 255.0f);
  }
  out.offset = static_cast<float>(offset);
  if (Avx2Path(d)) out.weight = PermuteWeights(out.weight);
  return out;
}

// Bytes of the next list to prefetch (see PrefetchList).
constexpr size_t kPrefetchBytes = 4096;

// The k best (score, label) pairs seen so far. Candidates at or below the threshold (the k-th
// best score after the last trim) are dropped at once; the rest go to a buffer that is cut
// back to the best k when it fills. The buffer holds 64-bit keys, the score mapped to an
// order-preserving integer above the candidate's slot in `labels_`. Selecting the k-th score
// and sorting the result are radix passes over the score bits: counting and branch-free
// compaction, where nth_element and std::sort spend most of their time on mispredicted
// comparisons (at k = 1,000 they were a quarter of a query's CPU).
class TopK {
 public:
  explicit TopK(int64_t k) : k_(static_cast<size_t>(k)), capacity_(std::max<size_t>(2 * k_, 256)) {
    keys_.reserve(capacity_);
    labels_.reserve(2 * capacity_);
  }

  float threshold() const { return threshold_; }

  void Push(float score, int64_t label) {
    keys_.push_back((uint64_t{Ordered(score)} << 32) | labels_.size());
    labels_.push_back(label);
    if (keys_.size() == capacity_) Trim();
  }

  // Writes the best k, best first (equal scores: smaller label first), padding with -1/-inf.
  void Write(float* scores, int64_t* labels) {
    if (keys_.size() > k_) Trim();
    SortDescending();
    const size_t found = keys_.size();
    for (size_t i = 0; i < found; ++i) {
      scores[i] = Score(static_cast<uint32_t>(keys_[i] >> 32));
      labels[i] = labels_[static_cast<uint32_t>(keys_[i])];
    }
    for (size_t i = 0; i < found;) {  // runs of equal scores: labels ascending
      size_t j = i + 1;
      while (j < found && scores[j] == scores[i]) ++j;
      if (j - i > 1) std::sort(labels + i, labels + j);
      i = j;
    }
    for (size_t i = found; i < k_; ++i) {
      scores[i] = -std::numeric_limits<float>::infinity();
      labels[i] = -1;
    }
  }

 private:
  static constexpr size_t kRadixBelow = 64;  // fewer keys: comparison sorts are cheaper

  // Maps floats to unsigned integers in the same order (negative floats reversed).
  static uint32_t Ordered(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  static float Score(uint32_t o) {
    const uint32_t u = (o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static uint32_t OrderedOf(uint64_t key) { return static_cast<uint32_t>(key >> 32); }

  // The k-th largest ordered score among the keys, one byte at a time from the top: count
  // the keys matching the bytes fixed so far by their next byte, then descend into the bucket
  // that holds the k-th. Sets *above to how many keys score strictly higher.
  uint32_t KthOrdered(size_t* above) const {
    uint32_t prefix = 0, mask = 0;
    size_t need = k_;  // rank of the k-th among the keys matching prefix
    for (int shift = 24; shift >= 0; shift -= 8) {
      uint32_t count[256] = {0};
      for (const uint64_t key : keys_) {
        const uint32_t o = OrderedOf(key);
        count[(o >> shift) & 0xFF] += (o & mask) == prefix;
      }
      int bucket = 255;
      while (count[bucket] < need) need -= count[bucket--];
      prefix |= static_cast<uint32_t>(bucket) << shift;
      mask |= 0xFFu << shift;
    }
    *above = k_ - need;
    return prefix;
  }

  // Keeps the best k keys (ties at the k-th score: the first pushed), in push order.
  void Trim() {
    if (keys_.size() < kRadixBelow) {
      std::stable_sort(keys_.begin(), keys_.end(), [](uint64_t a, uint64_t b) {
        return OrderedOf(a) > OrderedOf(b);
      });
      keys_.resize(k_);
      threshold_ = Score(OrderedOf(keys_[k_ - 1]));
      return;
    }
    size_t above = 0;
    const uint32_t kth = KthOrdered(&above);
    size_t ties_left = k_ - above, kept = 0;
    for (const uint64_t key : keys_) {  // branch-free, in place (kept <= read position)
      const uint32_t o = OrderedOf(key);
      const bool tie = o == kth && ties_left > 0;
      const bool keep = o > kth || tie;
      keys_[kept] = key;
      kept += keep;
      ties_left -= tie;
    }
    keys_.resize(k_);
    threshold_ = Score(kth);
  }

  // Best score first; equal scores keep their order (push order). LSD radix sort on the
  // inverted score bytes, keys carried along.
  void SortDescending() {
    const size_t n = keys_.size();
    if (n < kRadixBelow) {
      std::stable_sort(keys_.begin(), keys_.end(), [](uint64_t a, uint64_t b) {
        return OrderedOf(a) > OrderedOf(b);
      });
      return;
    }
    scratch_.resize(n);
    uint64_t* from = keys_.data();
    uint64_t* to = scratch_.data();
    for (int shift = 0; shift < 32; shift += 8) {
      size_t start[257] = {0};
      for (size_t i = 0; i < n; ++i) ++start[((~OrderedOf(from[i]) >> shift) & 0xFF) + 1];
      for (int b = 0; b < 256; ++b) start[b + 1] += start[b];
      for (size_t i = 0; i < n; ++i) to[start[(~OrderedOf(from[i]) >> shift) & 0xFF]++] = from[i];
      std::swap(from, to);
    }
    // Four passes: the sorted keys are back in keys_.
  }

  size_t k_;
  size_t capacity_;
  float threshold_ = -std::numeric_limits<float>::infinity();
  std::vector<uint64_t> keys_;
  std::vector<uint64_t> scratch_;
  std::vector<int64_t> labels_;  // every label pushed, by slot
};

// Asks the CPU to start loading the beginning of the next list while this one is scanned:
// a list is a few KB that the hardware prefetcher only picks up after its first misses.
void PrefetchList(const faiss::InvertedLists* invlists, int64_t list, size_t d) {
  const size_t bytes = std::min<size_t>(invlists->list_size(list) * d, kPrefetchBytes);
  if (bytes == 0) return;
  faiss::InvertedLists::ScopedCodes codes(invlists, list);
  const char* c = reinterpret_cast<const char*>(codes.get());
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

// Codes are scored this many at a time (a stack buffer of scores).
constexpr size_t kBlock = 256;

// The nprobe lists to scan for query q, best first, with the coarse quantizer's scores. With
// inner products the centroids are scored here (DotRows, best kept by TopK), which costs a
// fraction of FAISS's one-query flat search; an L2 quantizer is asked itself.
void CoarseLists(const faiss::IndexIVFScalarQuantizer& index, const float* q, size_t nprobe,
                 float* scores, int64_t* lists) {
  const auto& flat = static_cast<const faiss::IndexFlat&>(*index.quantizer);
  if (flat.metric_type != faiss::METRIC_INNER_PRODUCT) {
    flat.search(1, q, static_cast<int64_t>(nprobe), scores, lists);
    return;
  }
  const size_t d = index.d;
  const float* centroids = flat.get_xb();
  TopK top(static_cast<int64_t>(nprobe));
  float block_scores[kBlock];
  for (size_t start = 0; start < index.nlist; start += kBlock) {
    const size_t count = std::min(kBlock, index.nlist - start);
    DotRows(centroids + start * d, count, q, d, block_scores);
    for (size_t c = 0; c < count; ++c) {
      if (block_scores[c] > top.threshold()) top.Push(block_scores[c], start + c);
    }
  }
  top.Write(scores, lists);
}

void SearchOne(const faiss::IndexIVFScalarQuantizer& index, const float* q, int64_t k,
               size_t nprobe, float* distances, int64_t* labels) {
  const size_t d = index.d;
  const QueryWeights qw = WeightsFor(index.sq, q);
  std::vector<float> coarse_scores(nprobe);
  std::vector<int64_t> lists(nprobe);
  CoarseLists(index, q, nprobe, coarse_scores.data(), lists.data());
  const faiss::InvertedLists* invlists = index.invlists;
  TopK top(k);
  float block_scores[kBlock];
  for (size_t p = 0; p < nprobe; ++p) {
    const int64_t list = lists[p];
    if (list < 0) continue;  // fewer lists than nprobe
    const size_t size = invlists->list_size(list);
    if (size == 0) continue;
    faiss::InvertedLists::ScopedCodes codes(invlists, list);
    faiss::InvertedLists::ScopedIds ids(invlists, list);
    if (p + 1 < nprobe && lists[p + 1] >= 0) PrefetchList(invlists, lists[p + 1], d);
    const float base = qw.offset + (index.by_residual ? coarse_scores[p] : 0.f);
    for (size_t start = 0; start < size; start += kBlock) {
      const size_t count = std::min(kBlock, size - start);
      DotCodes(codes.get() + start * d, count, qw.weight.data(), d, block_scores);
      // A candidate enters only above the current k-th best: compare before adding `base`.
      const float bar = top.threshold() - base;
      for (size_t v = 0; v < count; ++v) {
        if (block_scores[v] > bar) top.Push(base + block_scores[v], ids[start + v]);
      }
    }
  }
  top.Write(distances, labels);
}

}  // namespace

bool IvfSq8Supported(const faiss::IndexIVFScalarQuantizer& index) {
  const auto qtype = index.sq.qtype;
  if (qtype != ScalarQuantizer::QT_8bit && qtype != ScalarQuantizer::QT_8bit_uniform) {
    return false;
  }
  if (index.metric_type != faiss::METRIC_INNER_PRODUCT) return false;
  // A flat coarse quantizer: its search takes no knob, and with inner products its scores
  // are <q, centroid>, the residual codes' offset.
  const auto* coarse = dynamic_cast<const faiss::IndexFlat*>(index.quantizer);
  if (coarse == nullptr || (index.by_residual &&
                            coarse->metric_type != faiss::METRIC_INNER_PRODUCT)) {
    return false;
  }
  const size_t expected_trained = qtype == ScalarQuantizer::QT_8bit ? 2 * index.d : 2;
  return index.max_codes == 0 && index.code_size == static_cast<size_t>(index.d) &&
         index.sq.d == static_cast<size_t>(index.d) &&
         index.sq.trained.size() == expected_trained && index.invlists != nullptr;
}

void SearchIvfSq8(const faiss::IndexIVFScalarQuantizer& index, int64_t n, const float* x,
                  int64_t k, size_t nprobe, float* distances, int64_t* labels) {
  nprobe = std::max<size_t>(1, std::min<size_t>(nprobe, index.nlist));
  const int64_t d = index.d;
  // An exception must not leave an OpenMP region: the first one is kept and rethrown here.
  std::exception_ptr error;
#pragma omp parallel for if (n > 1) schedule(dynamic)
  for (int64_t i = 0; i < n; ++i) {
    try {
      SearchOne(index, x + i * d, k, nprobe, distances + i * k, labels + i * k);
    } catch (...) {
#pragma omp critical(dpsr_sq8_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace search
}  // namespace dpsr
