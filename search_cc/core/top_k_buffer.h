// A buffer of the k best (score, label) pairs of a stream of candidates, for searches that
// return large k (the IVF-SQ8 scan, ivf_sq8_scan.cc, keeps the best 1,000 of ~30,000 codes).
// Header-only, standard C++.
#ifndef DPSR_SEARCH_CC_CORE_TOP_K_BUFFER_H_
#define DPSR_SEARCH_CC_CORE_TOP_K_BUFFER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace dpsr {
namespace search {

// The k best (score, label) pairs seen so far. Callers drop candidates at or below
// threshold() (the k-th best score after the last trim, -inf before) and push the rest into a
// buffer that is cut back to the best k when it fills. The buffer holds 64-bit keys, the
// score mapped to an order-preserving integer above the candidate's slot in `labels_`.
// Selecting the k-th score and sorting the result are radix passes over the score bits
// (counting and branch-free compaction), where nth_element and std::sort spend most of their
// time on mispredicted comparisons (at k = 1,000 they were a quarter of an IVF-SQ8 query's CPU).
class TopKBuffer {
 public:
  explicit TopKBuffer(int64_t k)
      : k_(static_cast<size_t>(k)), capacity_(std::max<size_t>(2 * k_, 256)) {
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
      CompactLabels();
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
    CompactLabels();
  }

  // Renumbers the kept keys' slots 0..k-1 (in their current order) so that labels_ holds only
  // theirs: memory stays O(k) however many candidates a search pushes (a hostile nprobe over
  // an increasing stream would otherwise keep one label per code scanned).
  void CompactLabels() {
    spare_labels_.resize(keys_.size());
    for (size_t i = 0; i < keys_.size(); ++i) {
      spare_labels_[i] = labels_[static_cast<uint32_t>(keys_[i])];
      keys_[i] = (keys_[i] & ~uint64_t{0xFFFFFFFF}) | i;
    }
    labels_.swap(spare_labels_);
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
  std::vector<int64_t> labels_;  // the labels of the keys, by slot
  std::vector<int64_t> spare_labels_;
};

}  // namespace search
}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_TOP_K_BUFFER_H_
