// Unit tests of TrimRule against hand-worked resident sizes (exit status 0 = pass).
#include "front_end_cc/heap_trim.h"

#include "tests/cc/check.h"

namespace {

using dpsr::front_end::TrimRule;

constexpr size_t kMiB = 1 << 20;

// Due once the resident size is 16 MiB above the mark; a trim moves the mark to the size after.
void TestDueAtTheGrowthAboveTheLastTrim() {
  TrimRule rule(100 * kMiB);
  CHECK(!rule.Due(100 * kMiB));
  CHECK(!rule.Due(115 * kMiB));
  CHECK(rule.Due(116 * kMiB));
  rule.Trimmed(116 * kMiB, 104 * kMiB);
  CHECK(rule.trims() == 1 && rule.released() == 12 * kMiB);
  CHECK(!rule.Due(119 * kMiB));  // 15 MiB above 104
  CHECK(rule.Due(120 * kMiB));
}

// A trim that released 16 MiB or more is followed by another at the next check, however the
// resident size moved, until one releases less.
void TestTrimsAgainWhileTrimmingPays() {
  TrimRule rule(100 * kMiB);
  CHECK(rule.Due(300 * kMiB));
  rule.Trimmed(300 * kMiB, 250 * kMiB);  // 50 MiB released; the burst's calls still held
  CHECK(rule.Due(250 * kMiB));
  rule.Trimmed(250 * kMiB, 120 * kMiB);  // they were freed meanwhile
  CHECK(rule.Due(120 * kMiB));
  rule.Trimmed(120 * kMiB, 110 * kMiB);  // 10 MiB: no longer worth a walk
  CHECK(!rule.Due(110 * kMiB));
  CHECK(!rule.Due(125 * kMiB));
  CHECK(rule.Due(126 * kMiB));
  CHECK(rule.trims() == 3 && rule.released() == 190 * kMiB);
}

// A fall lowers the mark: growth counts from the lowest size seen since the last trim.
void TestAFallLowersTheMark() {
  TrimRule rule(100 * kMiB);
  CHECK(!rule.Due(90 * kMiB));
  CHECK(!rule.Due(105 * kMiB));  // 15 MiB above 90
  CHECK(rule.Due(106 * kMiB));
  rule.Trimmed(106 * kMiB, 110 * kMiB);  // grew meanwhile: nothing counted as released
  CHECK(rule.trims() == 1 && rule.released() == 0);
  CHECK(!rule.Due(125 * kMiB));
}

}  // namespace

int main() {
  TestDueAtTheGrowthAboveTheLastTrim();
  TestTrimsAgainWhileTrimmingPays();
  TestAFallLowersTheMark();
  return dpsr_test::Report("heap_trim_test");
}
