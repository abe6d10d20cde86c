// Unit tests of Drain against hand-worked timelines in microseconds (exit status 0 = pass).
#include "front_end_cc/drain.h"

#include "tests/cc/check.h"

namespace {

using dpsr::front_end::Drain;

// Calls admitted before the drain are waited for; calls after it are refused and not counted;
// a call that lasts as long as its client wishes is never waited for.
void TestAdmittedCallsAreWaitedForAndLaterOnesRefused() {
  Drain drain;
  CHECK(drain.Admit(/*counted=*/true));
  CHECK(drain.Admit(/*counted=*/true));
  CHECK(drain.Admit(/*counted=*/false));  // a health Watch
  CHECK(drain.busy() == 2);
  drain.Begin();
  CHECK(!drain.Admit(true));
  CHECK(!drain.Admit(false));
  CHECK(drain.busy() == 2);
  const long long deadline = 10000000;
  CHECK(!drain.CanStop(1000000, deadline));
  drain.Done();
  CHECK(!drain.CanStop(1000001, deadline));  // one still running, however quiet
  drain.Done();
  CHECK(drain.CanStop(1000002, deadline));  // none running, no arrival ever: quiet
}

// Once nothing runs, refusals go on while calls keep arriving, until kQuietMicros without one
// or kRefuseMicros after the last call ended.
void TestRefusesWhileCallsArriveThenStops() {
  Drain drain;
  CHECK(drain.Admit(true));
  drain.Begin();
  const long long deadline = 100000000;
  drain.Arrived(5000000);
  drain.Done();
  CHECK(!drain.CanStop(5000100, deadline));  // idle from 5.0001 s; an arrival 100 us ago
  drain.Arrived(5200000);
  CHECK(!drain.CanStop(5449999, deadline));  // 249.999 ms quiet
  CHECK(drain.CanStop(5450000, deadline));   // 250 ms quiet

  // A client retrying without pause: the refusals end 1 s after the drain found it idle.
  Drain busy;
  busy.Begin();
  busy.Arrived(0);
  CHECK(!busy.CanStop(0, deadline));  // idle from 0, with arrivals every 100 ms
  for (long long t = 100000; t < 1000000; t += 100000) {
    busy.Arrived(t);
    CHECK(!busy.CanStop(t + 1, deadline));
  }
  busy.Arrived(1000000);
  CHECK(busy.CanStop(1000000, deadline));
}

// The grace bounds everything: a call still running at its end does not hold the stop.
void TestTheGraceEndsTheWait() {
  Drain drain;
  CHECK(drain.Admit(true));
  drain.Begin();
  drain.Arrived(100);
  CHECK(!drain.CanStop(1999999, 2000000));
  CHECK(drain.CanStop(2000000, 2000000));
  // Idle, calls arriving, and a grace shorter than the refusal time: the grace wins.
  Drain idle;
  idle.Begin();
  idle.Arrived(0);
  CHECK(!idle.CanStop(10, 300000));
  idle.Arrived(200000);
  CHECK(idle.CanStop(300000, 300000));
}

}  // namespace

int main() {
  TestAdmittedCallsAreWaitedForAndLaterOnesRefused();
  TestRefusesWhileCallsArriveThenStops();
  TestTheGraceEndsTheWait();
  return dpsr_test::Report("drain_test");
}
