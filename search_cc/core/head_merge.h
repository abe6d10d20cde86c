// Merging the per-head search results of the multi-head query tower into one list (DPSR §4.3):
// all m*n hits of a query sorted by score, an item found by several heads kept once with its best
// score and the head that found it, the first k returned. Header-only standard C++.
//
// The servable ran this as about a hundred TF ops (argsort, unique, gathers, top_k): half a
// millisecond of CPU per query, as much as the FAISS search. Here it is one ordering pass and
// one pass with a reused hash set. The ordering is a merge when each head's list comes best
// first, as searches return them, and a sort otherwise (a comparison sort of the m * n hits
// was a tenth of the default servable's CPU at k = 1,000). The output is exactly that graph's
// and its NumPy twin's (dpsr_tf/search/head_merge.py, merge_heads_np), ties included.
#ifndef DPSR_SEARCH_CC_CORE_HEAD_MERGE_H_
#define DPSR_SEARCH_CC_CORE_HEAD_MERGE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace dpsr {
namespace search {

// Scratch of MergeHeadLists, reused across queries: no allocation per query once warm.
class HeadMergeScratch {
 public:
  struct Entry {
    float score;
    int32_t position;  // head-major index in [0, m * n)
  };
  std::vector<Entry> order;
  std::vector<Entry> merged;  // the merge's output, swapped into `order`
  std::vector<char> kept;

  // Starts an empty set able to hold `count` labels.
  void ResetSet(int64_t count) {
    size_t capacity = 16;
    while (capacity < static_cast<size_t>(2 * count)) capacity *= 2;
    if (slots_.size() != capacity) {
      slots_.assign(capacity, 0);
      stamps_.assign(capacity, 0);
      stamp_ = 0;
    }
    if (++stamp_ == 0) {  // the stamp wrapped: forget every old stamp once
      std::fill(stamps_.begin(), stamps_.end(), 0);
      stamp_ = 1;
    }
  }

  // Adds a label >= 0; false when it was already in the set.
  bool Insert(int64_t label) {
    const size_t mask = slots_.size() - 1;
    size_t i = static_cast<size_t>(static_cast<uint64_t>(label) * 0x9E3779B97F4A7C15ull >> 17) &
               mask;
    while (stamps_[i] == stamp_) {
      if (slots_[i] == label) return false;
      i = (i + 1) & mask;
    }
    stamps_[i] = stamp_;
    slots_[i] = label;
    return true;
  }

 private:
  std::vector<int64_t> slots_;
  std::vector<uint32_t> stamps_;  // a slot is in the set iff its stamp is the current one
  uint32_t stamp_ = 0;
};

// Heads merged by MergeSortedHeads rather than sorted: a linear scan over the heads per entry
// stays cheaper than a comparison sort's log(m * n) comparisons up to about this many.
constexpr int64_t kMergeMaxHeads = 8;

// True when every head's block of `order` (head-major, n entries each) is best first.
inline bool HeadsSorted(const std::vector<HeadMergeScratch::Entry>& order, int64_t m,
                        int64_t n) {
  for (int64_t h = 0; h < m; ++h) {
    for (int64_t i = h * n + 1; i < (h + 1) * n; ++i) {
      if (order[i].score > order[i - 1].score) return false;
    }
  }
  return true;
}

// Orders `order` (m <= kMergeMaxHeads best-first head blocks of n) by score descending,
// position ascending among equal scores: at each step the best head front, the lowest head on
// a tie (its positions are the lower ones), so the result is exactly the stable sort's.
inline void MergeSortedHeads(int64_t m, int64_t n, HeadMergeScratch* scratch) {
  auto& order = scratch->order;
  auto& merged = scratch->merged;
  merged.resize(order.size());
  int64_t next[kMergeMaxHeads];
  for (int64_t h = 0; h < m; ++h) next[h] = h * n;
  for (auto& out : merged) {
    int64_t best = -1;
    for (int64_t h = 0; h < m; ++h) {
      if (next[h] == (h + 1) * n) continue;  // this head is used up
      if (best < 0 || order[next[h]].score > order[next[best]].score) best = h;
    }
    out = order[next[best]++];
  }
  order.swap(merged);
}

// Merges one query's m head lists of n hits each.
//
// scores, labels: [m * n] head-major (head h's hits at [h * n, (h + 1) * n)); a label < 0 marks
// padding, whose score is ignored. Writes k entries to out_scores / out_labels / out_heads: the
// distinct labels best first (equal scores: the earlier head-major position first), each with
// its best score and the head of that hit. Where the distinct labels run out the tail is
// padding: -inf, -1, -1. A NaN score ranks as -inf. Requires 1 <= k <= m * n < 2^31.
//
// Exactly the graph's rule: every hit gets score -inf when it is padding or not the first
// (best-first) hit of its label, and the k best of all m * n positions are returned, the
// dropped ones as padding. So a kept hit that itself scores -inf comes after the dropped
// entries ranked before it.
inline void MergeHeadLists(const float* scores, const int64_t* labels, int64_t m, int64_t n,
                           int64_t k, float* out_scores, int64_t* out_labels,
                           int32_t* out_heads, HeadMergeScratch* scratch) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t width = m * n;
  auto& order = scratch->order;
  order.resize(width);
  for (int64_t i = 0; i < width; ++i) {
    // NaN ranks as -inf: it has no order, and std::sort needs one.
    const float s = labels[i] >= 0 && !std::isnan(scores[i]) ? scores[i] : kNegInf;
    order[i] = {s, static_cast<int32_t>(i)};
  }
  // Score descending, position ascending among equal scores: a stable sort's order.
  if (m <= kMergeMaxHeads && HeadsSorted(order, m, n)) {
    MergeSortedHeads(m, n, scratch);
  } else {
    std::sort(order.begin(), order.end(), [](const HeadMergeScratch::Entry& a,
                                             const HeadMergeScratch::Entry& b) {
      return a.score > b.score || (a.score == b.score && a.position < b.position);
    });
  }
  scratch->ResetSet(width);
  auto& kept = scratch->kept;
  kept.assign(width, 0);
  int64_t written = 0;
  // Pass 1: the kept hits with a score above -inf, in order.
  for (int64_t r = 0; r < width && written < k; ++r) {
    const int32_t i = order[r].position;
    if (labels[i] < 0 || !scratch->Insert(labels[i])) continue;
    kept[r] = 1;
    if (order[r].score == kNegInf) continue;
    out_scores[written] = order[r].score;
    out_labels[written] = labels[i];
    out_heads[written] = static_cast<int32_t>(i / n);
    ++written;
  }
  // Pass 2 (only when pass 1 saw every position): every position now scored -inf, in order.
  for (int64_t r = 0; r < width && written < k; ++r) {
    const int32_t i = order[r].position;
    if (kept[r] && order[r].score != kNegInf) continue;  // written in pass 1
    out_scores[written] = kNegInf;
    out_labels[written] = kept[r] ? labels[i] : -1;
    out_heads[written] = kept[r] ? static_cast<int32_t>(i / n) : -1;
    ++written;
  }
}

}  // namespace search
}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_HEAD_MERGE_H_
