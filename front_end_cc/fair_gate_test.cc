// Unit tests of FairGate against hand-worked admission orders (exit status 0 = pass).
#include "front_end_cc/fair_gate.h"

#include <string>
#include <utility>
#include <vector>

#include "tests/cc/check.h"

namespace {

using dpsr::front_end::Admission;
using dpsr::front_end::FairGate;
using dpsr::front_end::QueueDelay;

std::vector<int> Items(const std::vector<std::pair<std::string, int>>& started) {
  std::vector<int> out;
  for (const auto& s : started) out.push_back(s.second);
  return out;
}

// A flood of one client queued behind a full gate; another client's single call is the next
// to run, not the flood's 100th.
void TestRoundRobinAheadOfFlood() {
  FairGate<int> gate(2, 0, 1000, 10000);
  CHECK(gate.max_running_per_client() == 1);
  CHECK(gate.Offer("flood", 0) == Admission::kRun);
  for (int i = 1; i < 100; ++i) CHECK(gate.Offer("flood", i) == Admission::kQueued);
  // The flood holds its share (1 of 2); the other slot is free for someone else.
  CHECK(gate.Offer("normal", 1000) == Admission::kRun);
  CHECK(gate.Offer("normal", 1001) == Admission::kQueued);
  CHECK(gate.running() == 2);
  CHECK(gate.queued() == 100);
  // The normal client's call ends: its next call runs before any more of the flood's.
  CHECK(Items(gate.Release("normal")) == std::vector<int>({1001}));
  // The flood's call ends: its next call, in arrival order.
  CHECK(Items(gate.Release("flood")) == std::vector<int>({1}));
  CHECK(Items(gate.Release("normal")).empty());  // the flood is at its share of 1
  CHECK(gate.running() == 1);
  CHECK(Items(gate.Release("flood")) == std::vector<int>({2}));
}

// Three clients waiting are served in turn, each in its own arrival order.
void TestTurns() {
  FairGate<int> gate(1, 1, 1000, 10000);
  CHECK(gate.Offer("a", 1) == Admission::kRun);
  for (int i = 2; i <= 4; ++i) CHECK(gate.Offer("a", i) == Admission::kQueued);
  CHECK(gate.Offer("b", 11) == Admission::kQueued);
  CHECK(gate.Offer("b", 12) == Admission::kQueued);
  CHECK(gate.Offer("c", 21) == Admission::kQueued);
  std::vector<int> order;
  std::string last = "a";
  for (int n = 0; n < 6; ++n) {
    auto started = gate.Release(last);
    CHECK(started.size() == 1);
    if (started.empty()) break;
    last = started[0].first;
    order.push_back(started[0].second);
  }
  CHECK(order == std::vector<int>({2, 11, 21, 3, 12, 4}));
  CHECK(gate.Release(last).empty());
  CHECK(gate.running() == 0);
  CHECK(gate.queued() == 0);
  CHECK(gate.clients() == 0);  // every client forgotten once it has nothing left
}

// A waiting call that gives up is removed and never handed out; a running one cannot be.
void TestRemove() {
  FairGate<int> gate(1, 1, 1000, 10000);
  CHECK(gate.Offer("a", 1) == Admission::kRun);
  CHECK(gate.Offer("a", 2) == Admission::kQueued);
  CHECK(gate.Offer("b", 3) == Admission::kQueued);
  CHECK(!gate.Remove("a", 1));
  CHECK(gate.Remove("b", 3));
  CHECK(!gate.Remove("b", 3));
  CHECK(gate.queued() == 1);
  CHECK(Items(gate.Release("a")) == std::vector<int>({2}));
  CHECK(Items(gate.Release("a")).empty());
  CHECK(gate.clients() == 0);
}

// The per-client and total queue limits refuse without counting anything.
void TestQueueLimits() {
  FairGate<int> gate(1, 1, 2, 3);
  CHECK(gate.Offer("a", 1) == Admission::kRun);
  CHECK(gate.Offer("a", 2) == Admission::kQueued);
  CHECK(gate.Offer("a", 3) == Admission::kQueued);
  CHECK(gate.Offer("a", 4) == Admission::kClientQueueFull);
  CHECK(gate.Offer("b", 5) == Admission::kQueued);
  CHECK(gate.Offer("c", 6) == Admission::kQueueFull);
  CHECK(gate.queued() == 3);
  CHECK(gate.running() == 1);
  CHECK(gate.running_of("c") == 0);
  CHECK(gate.clients() == 2);  // the refused client left nothing behind
}

// A client whose calls arrive while a slot is free but others wait still queues behind them:
// arriving later never jumps a client's own earlier calls.
void TestNoOvertakingOwnCalls() {
  FairGate<int> gate(4, 2, 1000, 10000);
  CHECK(gate.Offer("a", 1) == Admission::kRun);
  CHECK(gate.Offer("a", 2) == Admission::kRun);
  CHECK(gate.Offer("a", 3) == Admission::kQueued);  // at its share of 2
  CHECK(gate.Offer("b", 4) == Admission::kRun);
  CHECK(Items(gate.Release("a")) == std::vector<int>({3}));
  CHECK(gate.Offer("a", 5) == Admission::kQueued);
  CHECK(gate.running() == 3);
}

// A held-back client's calls wait however many slots are free, and run once it is let go.
void TestHoldBack() {
  FairGate<int> gate(4, 2, 1000, 10000);
  CHECK(gate.HoldBack("slow", true).empty());
  CHECK(gate.held_back("slow"));
  CHECK(gate.Offer("slow", 1) == Admission::kQueued);
  CHECK(gate.Offer("slow", 2) == Admission::kQueued);
  CHECK(gate.Offer("other", 3) == Admission::kRun);
  CHECK(Items(gate.Release("other")).empty());  // slots free, but "slow" is held back
  CHECK(gate.running() == 0);
  CHECK(Items(gate.HoldBack("slow", false)) == std::vector<int>({1, 2}));
  CHECK(!gate.held_back("slow"));
  CHECK(gate.running() == 2);
}

// Slow start: two calls started at first; each call that ends delivered lets the window grow
// by one, up to the share; calls that end undelivered do not.
void TestSlowStart() {
  FairGate<int> gate(8, 4, 1000, 10000, 2);
  for (int i = 1; i <= 10; ++i) gate.Offer("a", i);
  CHECK(gate.running() == 2);
  CHECK(gate.window_of("a") == 2);
  // Answers of 1 and 2 arrive (slots released) but are not read yet: nothing more starts.
  CHECK(Items(gate.Release("a")).empty());
  CHECK(Items(gate.Release("a")).empty());
  CHECK(gate.running() == 0);
  // Call 1 ends delivered: window 3, so two more start (started 1 + 2 = 3).
  CHECK(Items(gate.Ended("a", true)) == std::vector<int>({3, 4}));
  CHECK(gate.window_of("a") == 3);
  // Call 2 ends undelivered (the client gave up): one more starts, the window stays 3.
  CHECK(Items(gate.Ended("a", false)) == std::vector<int>({5}));
  CHECK(gate.window_of("a") == 3);
  // Windows never pass the share (4) however much is delivered.
  for (int i = 0; i < 3; ++i) gate.Release("a");
  gate.Ended("a", true);
  gate.Ended("a", true);
  gate.Ended("a", true);
  CHECK(gate.window_of("a") == 4);
  CHECK(gate.running_of("a") <= 4);
  // A client that never gets an answer delivered keeps two started, however many wait and
  // however many of its answers arrive.
  for (int i = 100; i < 150; ++i) gate.Offer("silent", i);
  CHECK(gate.running_of("silent") == 2);
  CHECK(Items(gate.Release("silent")).empty());
  CHECK(Items(gate.Release("silent")).empty());
  CHECK(gate.window_of("silent") == 2);
  // A new client starts again at two.
  CHECK(gate.window_of("new") == 2);
}

// Adaptive LIFO: in arrival order while the client's oldest waiting call is younger than
// lifo_after (here 100), newest first past it; an expired call taken out lets order return.
void TestNewestFirstOnceTheOldestWaitedTooLong() {
  FairGate<int> gate(4, 1, 1000, 10000, /*initial_window=*/0, /*lifo_after=*/100);
  CHECK(gate.Offer("a", 1, 0) == Admission::kRun);
  CHECK(gate.Offer("a", 2, 0) == Admission::kQueued);
  CHECK(gate.Offer("a", 3, 10) == Admission::kQueued);
  CHECK(gate.Offer("a", 4, 20) == Admission::kQueued);
  CHECK(Items(gate.Release("a", 50)) == std::vector<int>({2}));   // 2 waited 50: in order
  CHECK(gate.newest_first() == 0);
  CHECK(Items(gate.Release("a", 150)) == std::vector<int>({4}));  // 3 waited 140: newest
  CHECK(gate.Offer("a", 5, 160) == Admission::kQueued);
  CHECK(Items(gate.Release("a", 170)) == std::vector<int>({5}));
  CHECK(gate.newest_first() == 2);
  CHECK(gate.Remove("a", 3));                                   // 3's deadline passed
  CHECK(gate.Offer("a", 6, 200) == Admission::kQueued);
  CHECK(gate.Offer("a", 7, 210) == Admission::kQueued);
  CHECK(Items(gate.Release("a", 250)) == std::vector<int>({6}));  // 6 waited 50: in order
  // Another client keeps its turn whatever the order inside a's queue.
  CHECK(gate.Offer("b", 8, 260) == Admission::kRun);
  CHECK(gate.Offer("b", 9, 260) == Admission::kQueued);
  CHECK(gate.Offer("a", 10, 400) == Admission::kQueued);        // 7 waited 190 by then
  std::vector<int> next = Items(gate.Release("a", 400));
  CHECK(next == std::vector<int>({10}));
  CHECK(Items(gate.Release("b", 400)) == std::vector<int>({9}));
  CHECK(gate.newest_first() == 3);
}

// lifo_after = 0: arrival order however long a call waited.
void TestArrivalOrderWithoutLifo() {
  FairGate<int> gate(4, 1, 1000, 10000);
  CHECK(gate.Offer("a", 1, 0) == Admission::kRun);
  CHECK(gate.Offer("a", 2, 0) == Admission::kQueued);
  CHECK(gate.Offer("a", 3, 1000000) == Admission::kQueued);
  CHECK(Items(gate.Release("a", 5000000)) == std::vector<int>({2}));
  CHECK(gate.newest_first() == 0);
}

// Queue delay control (target 10, interval 100): a burst that waits past the target is kept;
// a queue whose oldest call has waited past the target for the whole interval has new calls
// refused at once, until its oldest call is younger than the target again. Another client is
// not refused for the flood's queue and keeps its turn.
void TestStandingQueueIsRefusedAtOnce() {
  FairGate<int> gate(2, 1, 1000, 10000, 0, 0, QueueDelay{10, 100});
  CHECK(gate.delay_target() == 10);
  CHECK(gate.Offer("a", 1, 0) == Admission::kRun);
  CHECK(gate.Offer("a", 2, 0) == Admission::kQueued);
  CHECK(gate.Offer("a", 3, 5) == Admission::kQueued);    // oldest waited 5 < 10
  CHECK(gate.Offer("a", 4, 20) == Admission::kQueued);   // 20 >= 10: the interval starts
  CHECK(gate.Offer("a", 5, 119) == Admission::kQueued);  // above for 99 < 100
  CHECK(gate.Offer("a", 6, 120) == Admission::kOverloaded);
  CHECK(gate.Offer("b", 7, 120) == Admission::kRun);     // another client: its own queue
  CHECK(gate.Offer("b", 8, 121) == Admission::kQueued);
  CHECK(Items(gate.Release("a", 130)) == std::vector<int>({2}));
  CHECK(gate.Offer("a", 9, 130) == Admission::kOverloaded);   // 3 has waited 125
  CHECK(Items(gate.Release("b", 130)) == std::vector<int>({8}));  // b's turn is kept
  CHECK(Items(gate.Release("a", 131)) == std::vector<int>({3}));
  CHECK(Items(gate.Release("a", 132)) == std::vector<int>({4}));
  CHECK(gate.Offer("a", 10, 133) == Admission::kOverloaded);  // 5 has waited 14
  CHECK(Items(gate.Release("a", 134)) == std::vector<int>({5}));
  CHECK(gate.Offer("a", 11, 135) == Admission::kQueued);  // nothing waits: below again
  CHECK(gate.Offer("a", 12, 140) == Admission::kQueued);  // 11 waited 5 < 10
  // 11 waited 11, and a was refused 13 ago (within 16 intervals): refused at once, no new
  // interval of grace for a client that stays past capacity.
  CHECK(gate.Offer("a", 13, 146) == Admission::kOverloaded);
  CHECK(Items(gate.Release("a", 2000)) == std::vector<int>({11}));
  CHECK(Items(gate.Release("a", 2001)) == std::vector<int>({12}));
  // Refused last at 146, more than 16 intervals ago: a new burst has its whole interval.
  CHECK(gate.Offer("a", 14, 2002) == Admission::kQueued);
  CHECK(gate.Offer("a", 15, 2013) == Admission::kQueued);  // 14 waited 11: the interval starts
  CHECK(gate.Offer("a", 16, 2112) == Admission::kQueued);
  CHECK(gate.Offer("a", 17, 2113) == Admission::kOverloaded);
  CHECK(gate.queued() == 3);
  CHECK(gate.running() == 2);
}

// Target 0: the queue grows however long its calls wait.
void TestNoDelayControlWithoutTarget() {
  FairGate<int> gate(1, 1, 1000, 10000);
  CHECK(gate.Offer("a", 1, 0) == Admission::kRun);
  for (int i = 2; i < 50; ++i) CHECK(gate.Offer("a", i, i * 1000000LL) == Admission::kQueued);
  CHECK(gate.queued() == 48);
}

// The measured service time: the first call's, then an average moving 1/8 of the way to each
// new one; it raises the delay target above the configured one when calls take longer.
void TestServiceTimeRaisesTheTarget() {
  FairGate<int> gate(1, 1, 1000, 10000, 0, 0, QueueDelay{10, 100});
  CHECK(gate.service_time() == 0);
  gate.ObserveService(50);
  CHECK(gate.service_time() == 50);
  CHECK(gate.delay_target() == 50);
  gate.ObserveService(130);  // 50 + (130 - 50) / 8
  CHECK(gate.service_time() == 60);
  gate.ObserveService(4);    // 60 + (4 - 60) / 8 = 53
  CHECK(gate.service_time() == 53);
  // 40 waited > 10 but < 53: not standing, however long.
  CHECK(gate.Offer("a", 1, 0) == Admission::kRun);
  CHECK(gate.Offer("a", 2, 0) == Admission::kQueued);
  CHECK(gate.Offer("a", 3, 40) == Admission::kQueued);
  CHECK(gate.Offer("a", 4, 52) == Admission::kQueued);
}

// With the control on, a call whose deadline ends before its expected turn (one service time
// per turn of its client's share, behind the client's waiting calls) is refused at once; one
// with time enough, or with no deadline, waits; nothing is refused before a service time is
// measured.
void TestCannotFinishBeforeItsDeadline() {
  FairGate<int> gate(4, 2, 1000, 10000, 0, 0, QueueDelay{10, 100});
  CHECK(gate.Offer("a", 1, 0, 0) == Admission::kRun);  // a free slot: runs whatever its deadline
  CHECK(gate.Offer("a", 2, 0, 0) == Admission::kRun);
  CHECK(gate.Offer("a", 3, 0, 0) == Admission::kQueued);  // no service time measured yet
  gate.ObserveService(100);
  CHECK(gate.Offer("a", 4, 0, 150) == Admission::kQueued);       // 1 ahead, share 2: 100
  CHECK(gate.Offer("a", 5, 0, 150) == Admission::kCannotFinish);  // 2 ahead: 200 > 150
  CHECK(gate.Offer("a", 6, 0, 200) == Admission::kQueued);        // 200 <= 200
  CHECK(gate.Offer("a", 7, 0, -1) == Admission::kQueued);         // no deadline
  CHECK(gate.Offer("a", 8, 0, 250) == Admission::kCannotFinish);  // 4 ahead: 300
  CHECK(gate.Offer("b", 9, 0, 50) == Admission::kRun);            // another client: free slot
  CHECK(gate.queued() == 4);
  // With the control off (target 0) deadlines are left to expire where they wait.
  FairGate<int> off(1, 1, 1000, 10000);
  off.ObserveService(100);
  CHECK(off.Offer("a", 1, 0, 0) == Admission::kRun);
  CHECK(off.Offer("a", 2, 0, 0) == Admission::kQueued);
}

}  // namespace

// 300 strangers (no answer of theirs read) each offer one call to a gate of 32 slots, 4 per
// client. Not limited, they run one client's share (4) in all and a reading client's calls run
// at once; limited, they run one at a time in all.
void TestStrangersShareOneSlot() {
  FairGate<int> open_gate(32, 4, 1000, 10000);
  for (int i = 0; i < 300; ++i) {
    open_gate.Offer("stranger" + std::to_string(i), i, 0, -1, /*stranger=*/true);
  }
  CHECK(open_gate.running() == 4);
  CHECK(open_gate.strangers_running() == 4);
  CHECK(open_gate.Offer("reader", 1000) == Admission::kRun);
  // A stranger's call ends: the next stranger in turn takes its slot, no more.
  CHECK(Items(open_gate.Release("stranger0")) == std::vector<int>({4}));
  CHECK(open_gate.strangers_running() == 4);

  FairGate<int> gate(32, 4, 1000, 10000);
  CHECK(gate.LimitStrangers(true).empty());
  int ran = 0;
  for (int i = 0; i < 300; ++i) {
    if (gate.Offer("stranger" + std::to_string(i), i, 0, -1, true) == Admission::kRun) ++ran;
  }
  CHECK(ran == 1);
  CHECK(gate.strangers_running() == 1);
  for (int i = 0; i < 4; ++i) CHECK(gate.Offer("reader", 1000 + i) == Admission::kRun);
  CHECK(gate.Offer("other reader", 2000) == Admission::kRun);
  // A stranger's call ends: the next stranger runs (one in all still); a reader's slot goes to
  // no stranger.
  CHECK(Items(gate.Release("stranger0")) == std::vector<int>({1}));
  CHECK(Items(gate.Release("reader")).empty());
  CHECK(gate.strangers_running() == 1);
  // Lifted: strangers run one client's share again (3 more), the other slots stay free.
  CHECK(gate.LimitStrangers(false).size() == 3);
  CHECK(gate.running() == 4 + 3 + 1);  // strangers, "reader", "other reader"
}

int main() {
  TestRoundRobinAheadOfFlood();
  TestTurns();
  TestRemove();
  TestQueueLimits();
  TestNoOvertakingOwnCalls();
  TestHoldBack();
  TestSlowStart();
  TestNewestFirstOnceTheOldestWaitedTooLong();
  TestArrivalOrderWithoutLifo();
  TestStandingQueueIsRefusedAtOnce();
  TestNoDelayControlWithoutTarget();
  TestServiceTimeRaisesTheTarget();
  TestCannotFinishBeforeItsDeadline();
  TestStrangersShareOneSlot();
  return dpsr_test::Report("fair_gate_test");
}
