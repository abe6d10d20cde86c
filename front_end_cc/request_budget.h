// The bytes of requests the front end holds: read from a client but not yet answered (waiting
// for a turn, at the server, or having their answer written). Without a bound, many
// connections that each send calls of a few MiB, faster than the server answers, make the front
// end hold every one of them (8 connections of 200 calls of 8 MiB: 2.6 GiB) while everyone's
// calls slow down. Each client (connection, or a proxy's named client) may hold up to its
// budget; all clients together up to the total, past which a client may still hold
// kSmallBytes (so that ordinary small calls pass while big ones are refused). One call is
// always admitted to a client that holds nothing, however large (the message size limit bounds
// it), unless the total is spent. A call that would pass a budget is refused with
// RESOURCE_EXHAUSTED; a client already at its budget has its new calls refused before their
// message is read (gRPC then discards it).
//
// Header-only standard C++ with no lock of its own (the front end's lock guards it), so its
// rule is unit-tested (request_budget_test.cc).
#ifndef DPSR_FRONT_END_CC_REQUEST_BUDGET_H_
#define DPSR_FRONT_END_CC_REQUEST_BUDGET_H_

#include <algorithm>
#include <cstddef>
#include <string>
#include <unordered_map>

namespace dpsr {
namespace front_end {

class RequestBudget {
 public:
  static constexpr size_t kSmallBytes = 64 << 10;

  enum class Verdict { kHeld, kClientFull, kTotalFull };

  RequestBudget(size_t per_client, size_t total) : per_client_(per_client), total_(total) {}

  // Before a call's message is read: kHeld when it may be read, else the budget its client
  // has already spent (its message would be refused whatever its size).
  Verdict BeforeRead(const std::string& client) const {
    const size_t held = HeldBy(client);
    if (held >= per_client_) return Verdict::kClientFull;
    if (held >= kSmallBytes && held_total_ >= total_) return Verdict::kTotalFull;
    return Verdict::kHeld;
  }

  // A message of `bytes` was read: counted (kHeld) or refused (nothing counted).
  Verdict Hold(const std::string& client, size_t bytes) {
    auto it = held_.find(client);
    const size_t held = it == held_.end() ? 0 : it->second;
    if (held > 0 && held + bytes > per_client_) return Verdict::kClientFull;
    if (held_total_ + bytes > total_ && held + bytes > kSmallBytes) return Verdict::kTotalFull;
    if (it == held_.end()) it = held_.emplace(client, 0).first;
    it->second += bytes;
    held_total_ += bytes;
    return Verdict::kHeld;
  }

  // A held message's call ended (or it no longer needs the bytes).
  void Free(const std::string& client, size_t bytes) {
    auto it = held_.find(client);
    if (it == held_.end()) return;
    bytes = std::min(bytes, it->second);
    it->second -= bytes;
    held_total_ -= bytes;
    if (it->second == 0) held_.erase(it);
  }

  size_t HeldBy(const std::string& client) const {
    auto it = held_.find(client);
    return it == held_.end() ? 0 : it->second;
  }
  size_t held_total() const { return held_total_; }
  size_t clients() const { return held_.size(); }
  size_t per_client() const { return per_client_; }
  size_t total() const { return total_; }

 private:
  const size_t per_client_, total_;
  std::unordered_map<std::string, size_t> held_;
  size_t held_total_ = 0;
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_REQUEST_BUDGET_H_
