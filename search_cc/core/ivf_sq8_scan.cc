// Implementation of the IVF-SQ8 inner-product search (see ivf_sq8_scan.h).
#include "search_cc/core/ivf_sq8_scan.h"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <vector>

#include <faiss/IndexFlat.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/invlists/InvertedLists.h>

#include "search_cc/core/top_k_buffer.h"

// The kernels are compiled for AVX2 + FMA whatever the op library's own flags (the Bazel build
// has none) and used only on CPUs that have them (IvfSq8Supported); elsewhere FAISS searches.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DPSR_SQ8_KERNELS 1
#define DPSR_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace dpsr {
namespace search {
namespace {

using faiss::ScalarQuantizer;

// Codes are scored this many at a time (a stack buffer of scores).
constexpr size_t kBlock = 256;
// Bytes of the next list to prefetch (see PrefetchList).
constexpr size_t kPrefetchBytes = 4096;

#ifdef DPSR_SQ8_KERNELS
bool CpuHasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// [a0 a1 a2 a3] -> their four lane sums: two rounds of pairwise adds, then the 128-bit halves.
DPSR_AVX2 inline __m128 Sum4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

DPSR_AVX2 inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// 32 code bytes times 32 permuted weights (see DotCodes), into two accumulators. The load holds
// dims 4m + b in byte b of 32-bit lane m; masks and shifts split it into four vectors of eight
// dims (no shuffles, which share one port).
DPSR_AVX2 inline void Step32(const uint8_t* c, const float* w, __m256* a, __m256* b) {
  const __m256i low = _mm256_set1_epi32(0xFF);
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
  *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(x, low)), _mm256_loadu_ps(w), *a);
  *b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, 8), low)),
                       _mm256_loadu_ps(w + 8), *b);
  *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, 16), low)),
                       _mm256_loadu_ps(w + 16), *a);
  *b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 24)), _mm256_loadu_ps(w + 24), *b);
}

// Dot products of `count` consecutive codes (d bytes each, d a multiple of 32) with weights
// permuted by PermuteWeights. Four codes at a time, two accumulators each, so the fused
// multiply-adds do not wait on each other.
DPSR_AVX2 void DotCodes(const uint8_t* codes, size_t count, const float* wp, size_t d,
                        float* out) {
  size_t v = 0;
  for (; v + 4 <= count; v += 4) {
    const uint8_t* c = codes + v * d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (size_t i = 0; i < d; i += 32) {
      Step32(c + i, wp + i, &a0, &b0);
      Step32(c + d + i, wp + i, &a1, &b1);
      Step32(c + 2 * d + i, wp + i, &a2, &b2);
      Step32(c + 3 * d + i, wp + i, &a3, &b3);
    }
    _mm_storeu_ps(out + v, Sum4x8(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1),
                                  _mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3)));
  }
  for (; v < count; ++v) {
    const uint8_t* c = codes + v * d;
    __m256 a = _mm256_setzero_ps(), b = a;
    for (size_t i = 0; i < d; i += 32) Step32(c + i, wp + i, &a, &b);
    out[v] = Sum8(_mm256_add_ps(a, b));
  }
}

// Inner products of `count` consecutive float rows (d each, a multiple of 8) with q: the coarse
// quantizer's centroids. Four rows at a time share each load of q.
DPSR_AVX2 void DotRows(const float* rows, size_t count, const float* q, size_t d, float* out) {
  size_t v = 0;
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
    _mm_storeu_ps(out + v, Sum4x8(a0, a1, a2, a3));
  }
  for (; v < count; ++v) {
    const float* r = rows + v * d;
    __m256 a = _mm256_setzero_ps();
    for (size_t i = 0; i < d; i += 8) {
      a = _mm256_fmadd_ps(_mm256_loadu_ps(r + i), _mm256_loadu_ps(q + i), a);
    }
    out[v] = Sum8(a);
  }
}

// Reorders weights for DotCodes: in each block of 32 dims, byte b of lane m (dim 4m + b) is
// multiplied by weight slot 8b + m.
std::vector<float> PermuteWeights(const std::vector<float>& w) {
  std::vector<float> wp(w.size());
  for (size_t i = 0; i < w.size(); i += 32) {
    for (size_t b = 0; b < 4; ++b) {
      for (size_t m = 0; m < 8; ++m) wp[i + 8 * b + m] = w[i + 4 * m + b];
    }
  }
  return wp;
}

// score(code) = offset + sum_i weight[i] * code[i] for one query (see the header); weights
// permuted for DotCodes.
struct QueryWeights {
  std::vector<float> weight;
  float offset = 0.f;
};

QueryWeights WeightsFor(const ScalarQuantizer& sq, const float* q) {
  const size_t d = sq.d;
  std::vector<float> weight(d);
  const bool uniform = sq.qtype == ScalarQuantizer::QT_8bit_uniform;
  double offset = 0;
  for (size_t i = 0; i < d; ++i) {
    const float vmin = uniform ? sq.trained[0] : sq.trained[i];
    const float vdiff = uniform ? sq.trained[1] : sq.trained[d + i];
    weight[i] = q[i] * vdiff / 255.0f;
    offset += static_cast<double>(q[i]) * (vmin + 0.5f * vdiff / 255.0f);
  }
  return {PermuteWeights(weight), static_cast<float>(offset)};
}

// Asks the CPU to start loading the beginning of the next list while this one is scanned:
// a list is a few KB that the hardware prefetcher only picks up after its first misses.
void PrefetchList(const faiss::InvertedLists* invlists, int64_t list, size_t d) {
  const size_t bytes = std::min<size_t>(invlists->list_size(list) * d, kPrefetchBytes);
  if (bytes == 0) return;
  faiss::InvertedLists::ScopedCodes codes(invlists, list);
  const char* c = reinterpret_cast<const char*>(codes.get());
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

// The nprobe lists to scan for query q, best first, with the coarse quantizer's scores. With
// inner products the centroids are scored here (DotRows, best kept by TopKBuffer), a fraction
// of FAISS's one-query flat search; an L2 quantizer is asked itself.
void CoarseLists(const faiss::IndexIVFScalarQuantizer& index, const float* q, size_t nprobe,
                 float* scores, int64_t* lists) {
  const auto& flat = static_cast<const faiss::IndexFlat&>(*index.quantizer);
  if (flat.metric_type != faiss::METRIC_INNER_PRODUCT) {
    flat.search(1, q, static_cast<int64_t>(nprobe), scores, lists);
    return;
  }
  const size_t d = index.d;
  const float* centroids = flat.get_xb();
  TopKBuffer top(static_cast<int64_t>(nprobe));
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
  TopKBuffer top(k);
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
#endif  // DPSR_SQ8_KERNELS

}  // namespace

bool IvfSq8Supported(const faiss::IndexIVFScalarQuantizer& index) {
#ifdef DPSR_SQ8_KERNELS
  // Where the kernels cannot run (no AVX2, d not a multiple of 32), FAISS's own SIMD search is
  // the faster one.
  if (!CpuHasAvx2Fma() || index.d % 32 != 0) return false;
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
#else
  (void)index;
  return false;
#endif
}

void SearchIvfSq8(const faiss::IndexIVFScalarQuantizer& index, int64_t n, const float* x,
                  int64_t k, size_t nprobe, float* distances, int64_t* labels) {
#ifdef DPSR_SQ8_KERNELS
  if (!IvfSq8Supported(index)) throw std::logic_error("SearchIvfSq8 on an unsupported index");
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
#else
  (void)index, (void)n, (void)x, (void)k, (void)nprobe, (void)distances, (void)labels;
  throw std::logic_error("SearchIvfSq8: built without its kernels");
#endif
}

}  // namespace search
}  // namespace dpsr
