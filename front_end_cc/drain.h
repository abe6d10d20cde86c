// How the front end stops without cancelling calls. gRPC's Shutdown cancels, with CANCELLED (not
// retriable), every call its core has received but not yet handed to a reactor, so calls in
// flight at SIGTERM could be lost in the instant between arrival and handling. Instead, SIGTERM
// starts a drain: every call that reaches a reactor from then on is refused UNAVAILABLE at once
// (retriable; the proxy fails over on it) while the admitted ones finish, and Shutdown comes
// only once they have, and no call arrived for kQuietMicros (or kRefuseMicros passed: a client
// that retries at once would keep it open). The Python server drains the same way
// (grpc_calls.InFlight).
//
// Header-only standard C++, with the clock passed in, so its rule is unit-tested
// (drain_test.cc).
#ifndef DPSR_FRONT_END_CC_DRAIN_H_
#define DPSR_FRONT_END_CC_DRAIN_H_

#include <algorithm>
#include <mutex>

namespace dpsr {
namespace front_end {

class Drain {
 public:
  static constexpr long long kQuietMicros = 250000;
  static constexpr long long kRefuseMicros = 1000000;

  // A call reached a reactor at `now` (admitted or not).
  void Arrived(long long now) {
    std::lock_guard<std::mutex> lock(mu_);
    last_arrival_ = now;
  }

  // False once the drain began: the call is refused. Else it is admitted and, if `counted`,
  // the drain waits for its Done (calls that last as long as the client wishes, such as a
  // health Watch, are not waited for).
  bool Admit(bool counted) {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return false;
    if (counted) ++busy_;
    return true;
  }

  // A counted call ended.
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    --busy_;
  }

  void Begin() {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }

  // True when Shutdown may start at `now` (the grace ends at `deadline`): no counted call is
  // running, and either no call arrived for kQuietMicros or kRefuseMicros passed since the
  // last one ended; or the grace is over.
  bool CanStop(long long now, long long deadline) {
    std::lock_guard<std::mutex> lock(mu_);
    if (now >= deadline) return true;
    if (busy_ > 0) return false;
    if (idle_since_ < 0) idle_since_ = now;
    if (now >= std::min(deadline, idle_since_ + kRefuseMicros)) return true;
    return now - last_arrival_ >= kQuietMicros;
  }

  int busy() {
    std::lock_guard<std::mutex> lock(mu_);
    return busy_;
  }

 private:
  std::mutex mu_;
  bool draining_ = false;
  int busy_ = 0;
  long long last_arrival_ = -kQuietMicros;  // no call yet: quiet from the start
  long long idle_since_ = -1;  // when the drain first found no call running; -1: not yet
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_DRAIN_H_
