// Unit tests of RequestBudget against hand-worked byte counts (exit status 0 = pass).
#include "front_end_cc/request_budget.h"

#include "tests/cc/check.h"

namespace {

using dpsr::front_end::RequestBudget;
using Verdict = RequestBudget::Verdict;

// A client holds up to its budget; the call that would pass it is refused and counts nothing;
// its first call passes whatever its size.
void TestOneClientUpToItsBudget() {
  RequestBudget budget(/*per_client=*/1000000, /*total=*/10000000);
  CHECK(budget.Hold("a", 300000) == Verdict::kHeld);
  CHECK(budget.Hold("a", 300000) == Verdict::kHeld);
  CHECK(budget.Hold("a", 300000) == Verdict::kHeld);
  CHECK(budget.HeldBy("a") == 900000);
  CHECK(budget.Hold("a", 300000) == Verdict::kClientFull);  // 1,200,000 > 1,000,000
  CHECK(budget.HeldBy("a") == 900000);
  CHECK(budget.Hold("a", 100000) == Verdict::kHeld);  // exactly 1,000,000
  CHECK(budget.BeforeRead("a") == Verdict::kClientFull);
  CHECK(budget.Hold("a", 1) == Verdict::kClientFull);
  budget.Free("a", 300000);
  CHECK(budget.BeforeRead("a") == Verdict::kHeld);
  CHECK(budget.held_total() == 700000);
  // Alone, a message over the budget passes once: the message size limit bounds it.
  CHECK(budget.Hold("b", 5000000) == Verdict::kHeld);
  CHECK(budget.Hold("b", 10) == Verdict::kClientFull);
  CHECK(budget.held_total() == 5700000);
}

// Past the total, big calls are refused from every client, one that holds nothing too, while
// small calls still pass up to kSmallBytes per client.
void TestTheTotalRefusesBigCallsAndPassesSmallOnes() {
  RequestBudget budget(/*per_client=*/1000000, /*total=*/2000000);
  CHECK(budget.Hold("a", 1000000) == Verdict::kHeld);
  CHECK(budget.Hold("b", 900000) == Verdict::kHeld);
  CHECK(budget.Hold("c", 200000) == Verdict::kTotalFull);  // 2,100,000 > 2,000,000
  CHECK(budget.HeldBy("c") == 0 && budget.clients() == 2);
  CHECK(budget.Hold("c", 100000) == Verdict::kHeld);  // exactly the total
  CHECK(budget.held_total() == 2000000);
  // Small calls: up to 65,536 bytes per client while the total is spent.
  CHECK(budget.Hold("d", 65536) == Verdict::kHeld);
  CHECK(budget.BeforeRead("d") == Verdict::kTotalFull);
  CHECK(budget.Hold("d", 1) == Verdict::kTotalFull);
  CHECK(budget.BeforeRead("e") == Verdict::kHeld);
  CHECK(budget.Hold("e", 1000) == Verdict::kHeld);
  CHECK(budget.Hold("e", 64536) == Verdict::kHeld);  // 65,536 in all
  CHECK(budget.Hold("e", 1) == Verdict::kTotalFull);
  // c holds 100,000 (> kSmallBytes): refused before reading while the total is spent.
  CHECK(budget.BeforeRead("c") == Verdict::kTotalFull);
  budget.Free("a", 1000000);
  CHECK(budget.BeforeRead("c") == Verdict::kHeld);
  CHECK(budget.Hold("c", 200000) == Verdict::kHeld);
  CHECK(budget.held_total() == 2000000 + 65536 * 2 - 1000000 + 200000);
}

// Freeing more than held, or for a client holding nothing, changes nothing else.
void TestFreeIsBoundedByWhatIsHeld() {
  RequestBudget budget(100, 1000);
  budget.Free("x", 50);
  CHECK(budget.held_total() == 0 && budget.clients() == 0);
  CHECK(budget.Hold("x", 60) == Verdict::kHeld);
  CHECK(budget.Hold("y", 30) == Verdict::kHeld);
  budget.Free("x", 80);
  CHECK(budget.HeldBy("x") == 0 && budget.held_total() == 30 && budget.clients() == 1);
}

}  // namespace

int main() {
  TestOneClientUpToItsBudget();
  TestTheTotalRefusesBigCallsAndPassesSmallOnes();
  TestFreeIsBoundedByWhatIsHeld();
  return dpsr_test::Report("request_budget_test");
}
