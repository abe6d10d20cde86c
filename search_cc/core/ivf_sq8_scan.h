// A faster search for FAISS's `IVF...,SQ8` indexes with inner-product scores (the `dpsr
// index` default), used by the searcher core (faiss_index.cc) in place of FAISS 1.7.3's own
// IndexIVFScalarQuantizer::search. Same index file, same scores (up to float rounding), same
// results; about a third of its CPU at k = 1,000 (docs/benchmarks.md).
//
// Why it is faster: an 8-bit code's inner product with the query is affine in the codes,
//   <q, vmin + (c + 0.5) * vdiff / 255> = sum_i q_i (vmin_i + 0.5 vdiff_i / 255)
//                                          + sum_i (q_i vdiff_i / 255) c_i,
// so a list is scanned as one dot product of the raw bytes with a per-query weight vector
// (AVX2: bytes widened to floats, fused multiply-add), where FAISS decodes each component
// to a float first. The best k are kept with a threshold and a buffer (top_k_buffer.h)
// instead of a binary heap updated per candidate.
#ifndef DPSR_SEARCH_CC_CORE_IVF_SQ8_SCAN_H_
#define DPSR_SEARCH_CC_CORE_IVF_SQ8_SCAN_H_

#include <cstddef>
#include <cstdint>

namespace faiss {
struct IndexIVFScalarQuantizer;
}  // namespace faiss

namespace dpsr {
namespace search {

// True when SearchIvfSq8 can search `index` exactly as FAISS would, and faster: a CPU with
// AVX2 and FMA (the kernels are compiled for them whatever the build's flags), d a multiple
// of 32, 8-bit codes (per-dimension or uniform range), inner-product metric, a flat coarse
// quantizer (scoring with inner products when codes are residuals), and no max_codes cap.
bool IvfSq8Supported(const faiss::IndexIVFScalarQuantizer& index);

// Searches n queries ([n, d] row-major) in the `nprobe` best lists each, writing [n, k] scores
// (descending) and labels; missing results are label -1 with score -infinity. Queries are
// searched in parallel with OpenMP when the calling thread allows more than one thread.
// Requires IvfSq8Supported(index) (throws std::logic_error otherwise).
void SearchIvfSq8(const faiss::IndexIVFScalarQuantizer& index, int64_t n, const float* x,
                  int64_t k, size_t nprobe, float* distances, int64_t* labels);

}  // namespace search
}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_IVF_SQ8_SCAN_H_
