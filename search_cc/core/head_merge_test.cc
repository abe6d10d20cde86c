// Unit tests of MergeHeadLists against the rule of the TF graph it replaced, written out
// literally (exit status 0 = pass): padding and NaN scored -inf, a stable sort best first, each
// label's first hit kept and every other entry scored -inf, then a stable sort again and the
// first k, the dropped entries as padding.
#include "search_cc/core/head_merge.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "tests/cc/check.h"

namespace {

using dpsr::search::HeadMergeScratch;
using dpsr::search::MergeHeadLists;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Merged {
  std::vector<float> scores;
  std::vector<int64_t> labels;
  std::vector<int32_t> heads;
};

Merged Reference(const std::vector<float>& scores, const std::vector<int64_t>& labels,
                 int64_t m, int64_t n, int64_t k) {
  const int64_t width = m * n;
  std::vector<float> s(width);
  for (int64_t i = 0; i < width; ++i) {
    s[i] = labels[i] >= 0 && !std::isnan(scores[i]) ? scores[i] : kNegInf;
  }
  std::vector<int64_t> order(width);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  std::set<int64_t> seen;
  std::vector<float> s2(width);
  std::vector<bool> keep(width);
  for (int64_t r = 0; r < width; ++r) {
    const int64_t i = order[r];
    keep[r] = labels[i] >= 0 && seen.insert(labels[i]).second;
    s2[r] = keep[r] ? s[i] : kNegInf;
  }
  std::vector<int64_t> top(width);
  std::iota(top.begin(), top.end(), int64_t{0});
  std::stable_sort(top.begin(), top.end(), [&](int64_t a, int64_t b) { return s2[a] > s2[b]; });
  Merged out;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t r = top[j];
    out.scores.push_back(s2[r]);
    out.labels.push_back(keep[r] ? labels[order[r]] : -1);
    out.heads.push_back(keep[r] ? static_cast<int32_t>(order[r] / n) : -1);
  }
  return out;
}

void Check(const std::vector<float>& scores, const std::vector<int64_t>& labels, int64_t m,
           int64_t n, int64_t k, HeadMergeScratch* scratch) {
  Merged want = Reference(scores, labels, m, n, k);
  Merged got{std::vector<float>(k), std::vector<int64_t>(k), std::vector<int32_t>(k)};
  MergeHeadLists(scores.data(), labels.data(), m, n, k, got.scores.data(), got.labels.data(),
                 got.heads.data(), scratch);
  for (int64_t j = 0; j < k; ++j) {
    CHECK(got.scores[j] == want.scores[j]);
    CHECK(got.labels[j] == want.labels[j]);
    CHECK(got.heads[j] == want.heads[j]);
  }
}

// `width` hits: scores among `distinct_scores` integers (0: uniform in [-1, 1], hardly any
// ties), labels uniform below `label_space` (small: many repeats within and across heads).
void DrawHits(std::mt19937* rng, int64_t width, int distinct_scores, int64_t label_space,
              std::vector<float>* scores, std::vector<int64_t>* labels) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> v(0, std::max(distinct_scores, 1) - 1);
  std::uniform_int_distribution<int64_t> lab(0, label_space - 1);
  scores->resize(width);
  labels->resize(width);
  for (int64_t i = 0; i < width; ++i) {
    (*scores)[i] = distinct_scores ? static_cast<float>(v(*rng)) : u(*rng);
    (*labels)[i] = lab(*rng);
  }
}

// By hand: head 0 finds 7 (0.9) and 3 (0.5); head 1 finds 3 (0.8), 7 (0.2) and pads.
void TestByHand() {
  HeadMergeScratch scratch;
  const std::vector<float> s = {0.9f, 0.5f, 0.0f, 0.8f, 0.2f, 5.0f};
  const std::vector<int64_t> l = {7, 3, -1, 3, 7, -1};
  std::vector<float> os(4);
  std::vector<int64_t> ol(4);
  std::vector<int32_t> oh(4);
  MergeHeadLists(s.data(), l.data(), 2, 3, 4, os.data(), ol.data(), oh.data(), &scratch);
  CHECK(os[0] == 0.9f && ol[0] == 7 && oh[0] == 0);
  CHECK(os[1] == 0.8f && ol[1] == 3 && oh[1] == 1);   // 3's best hit is head 1's
  for (int j = 2; j < 4; ++j) CHECK(std::isinf(os[j]) && os[j] < 0 && ol[j] == -1 && oh[j] == -1);
}

// Random lists with many ties, repeated labels within and across heads, padding, -inf and NaN
// scores; the same scratch reused across shapes (the set's stamps and sizes change).
void TestRandom() {
  std::mt19937 rng(11);
  HeadMergeScratch scratch;
  for (int64_t m : {1, 2, 3, 4}) {
    for (int64_t n : {1, 2, 5, 64, 1000}) {
      for (int distinct_scores : {2, 7, 0}) {
        for (int64_t label_space : {3, 50, 1000000}) {
          const int64_t width = m * n;
          std::vector<float> s;
          std::vector<int64_t> l;
          DrawHits(&rng, width, distinct_scores, label_space, &s, &l);
          std::uniform_int_distribution<int> odd(0, 19);
          for (int64_t i = 0; i < width; ++i) {
            const int roll = odd(rng);
            if (roll == 0) l[i] = -1;
            if (roll == 1) s[i] = kNegInf;
            if (roll == 2) s[i] = std::nanf("");
          }
          for (int64_t k : {int64_t{1}, std::max<int64_t>(1, width / 2), width}) {
            Check(s, l, m, n, k, &scratch);
          }
        }
      }
    }
  }
}

// Each head's list best first, as searches return it (the merge path): ties within and across
// heads, repeated labels, padding (-1, -inf or NaN scores) at each list's end; m = 9 is past
// kMergeMaxHeads and is sorted instead. HeadsSorted says which path a query takes.
void TestHeadsBestFirst() {
  std::mt19937 rng(5);
  HeadMergeScratch scratch;
  for (int64_t m : {1, 2, 3, 8, 9}) {
    for (int64_t n : {1, 3, 64, 1000}) {
      for (int distinct_scores : {3, 0}) {
        for (int64_t label_space : {40, 1000000}) {
          const int64_t width = m * n;
          std::vector<float> s;
          std::vector<int64_t> l;
          DrawHits(&rng, width, distinct_scores, label_space, &s, &l);
          std::uniform_int_distribution<int64_t> pad(0, n / 4);
          for (int64_t h = 0; h < m; ++h) {
            std::sort(s.begin() + h * n, s.begin() + (h + 1) * n, std::greater<float>());
            const int64_t padded = pad(rng);  // the list's last entries are padding
            for (int64_t j = 0; j < padded; ++j) {
              const int64_t i = (h + 1) * n - 1 - j;
              const int how = static_cast<int>(j % 3);
              if (how == 0) l[i] = -1;
              if (how == 1) s[i] = kNegInf;
              if (how == 2) s[i] = std::nanf("");
            }
          }
          std::vector<HeadMergeScratch::Entry> sanitized(width);
          for (int64_t i = 0; i < width; ++i) {
            const bool pad_entry = l[i] < 0 || std::isnan(s[i]);
            sanitized[i] = {pad_entry ? kNegInf : s[i], static_cast<int32_t>(i)};
          }
          CHECK(dpsr::search::HeadsSorted(sanitized, m, n));
          for (int64_t k : {int64_t{1}, std::max<int64_t>(1, n), width}) {
            Check(s, l, m, n, k, &scratch);
          }
        }
      }
    }
  }
  // One entry out of order sends the query to the sort.
  std::vector<HeadMergeScratch::Entry> order = {{0.9f, 0}, {0.5f, 1}, {0.8f, 2}, {0.7f, 3}};
  CHECK(dpsr::search::HeadsSorted(order, 2, 2));
  CHECK(!dpsr::search::HeadsSorted(order, 1, 4));
  order[3].score = 0.8f;  // ties within a head are in order
  CHECK(dpsr::search::HeadsSorted(order, 2, 2));
  order[3].score = 0.81f;
  CHECK(!dpsr::search::HeadsSorted(order, 2, 2));
}

// Every hit padding: the whole list is padding.
void TestAllPadding() {
  HeadMergeScratch scratch;
  std::vector<float> s(8, 1.0f);
  std::vector<int64_t> l(8, -1);
  Check(s, l, 2, 4, 8, &scratch);
}

// One scratch across many queries: each query starts with an empty set.
void TestManyQueriesReuseTheSet() {
  HeadMergeScratch scratch;
  std::vector<float> s = {0.3f, 0.2f, 0.3f, 0.1f};
  std::vector<int64_t> l = {5, 6, 6, 5};
  for (int q = 0; q < 1000; ++q) Check(s, l, 2, 2, 4, &scratch);
}

}  // namespace

int main() {
  TestByHand();
  TestRandom();
  TestHeadsBestFirst();
  TestAllPadding();
  TestManyQueriesReuseTheSet();
  return dpsr_test::Report("head_merge_test");
}
