// Unit tests of TopKBuffer against a brute-force reference (exit status 0 = pass).
#include "search_cc/core/top_k_buffer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "tests/cc/check.h"

namespace {

using dpsr::search::TopKBuffer;

// Pushes the stream the way a search does (only candidates above the threshold) and checks
// the result against sorting everything: the same scores at every rank, the same labels for
// every score above the k-th, labels ascending among equal scores, -1/-inf padding.
void CheckStream(const std::vector<float>& scores, int64_t k) {
  TopKBuffer top(k);
  for (size_t i = 0; i < scores.size(); ++i) {
    if (scores[i] > top.threshold()) top.Push(scores[i], static_cast<int64_t>(i));
  }
  std::vector<float> got_s(k);
  std::vector<int64_t> got_l(k);
  top.Write(got_s.data(), got_l.data());

  std::vector<int64_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  const size_t found = std::min<size_t>(order.size(), static_cast<size_t>(k));
  for (size_t r = 0; r < found; ++r) CHECK(got_s[r] == scores[order[r]]);
  for (size_t r = found; r < static_cast<size_t>(k); ++r) {
    CHECK(got_l[r] == -1);
    CHECK(std::isinf(got_s[r]) && got_s[r] < 0);
  }
  if (found == 0) return;
  const float kth = scores[order[found - 1]];
  std::set<int64_t> want_above, got_above;
  for (size_t r = 0; r < found; ++r) {
    if (scores[order[r]] > kth) want_above.insert(order[r]);
    if (got_s[r] > kth) got_above.insert(got_l[r]);
    CHECK(got_l[r] >= 0 && got_l[r] < static_cast<int64_t>(scores.size()));
    if (got_l[r] >= 0 && got_l[r] < static_cast<int64_t>(scores.size())) {
      CHECK(scores[got_l[r]] == got_s[r]);  // each label with its own score
    }
    if (r > 0 && got_s[r] == got_s[r - 1]) CHECK(got_l[r] > got_l[r - 1]);
  }
  CHECK(want_above == got_above);
}

void TestRandomStreamsWithTies() {
  std::mt19937 rng(7);
  for (int64_t k : {1, 2, 7, 63, 64, 100, 1000}) {
    for (size_t n : {0, 1, 5, 64, 300, 1000, 2500, 20000}) {
      for (int distinct : {3, 50, 0}) {  // 0: continuous scores, no ties
        std::vector<float> s(n);
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        std::uniform_int_distribution<int> v(0, std::max(distinct, 1) - 1);
        for (float& x : s) x = distinct ? static_cast<float>(v(rng)) / 7.f - 1.f : u(rng);
        CheckStream(s, k);
      }
    }
  }
}

void TestOrderedStreams() {
  std::vector<float> up(50000), down(50000);
  for (size_t i = 0; i < up.size(); ++i) {
    up[i] = static_cast<float>(i) * 1e-3f - 20.f;  // every candidate beats the threshold
    down[i] = -up[i];
  }
  for (int64_t k : {1, 10, 1000, 10000}) {
    CheckStream(up, k);
    CheckStream(down, k);
  }
}

void TestSignsAndExtremes() {
  const float big = std::numeric_limits<float>::max();
  const float tiny = std::numeric_limits<float>::denorm_min();
  CheckStream({0.5f, -0.5f, big, -big, tiny, -tiny, 0.f, 1e-30f, -1e-30f, 3.f}, 4);
  CheckStream({-3.f, -2.f, -1.f, -2.f, -3.f}, 3);
}

}  // namespace

int main() {
  TestRandomStreamsWithTies();
  TestOrderedStreams();
  TestSignsAndExtremes();
  return dpsr_test::Report("top_k_buffer_test");
}
