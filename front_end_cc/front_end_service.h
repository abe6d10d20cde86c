// The front end's gRPC service: a generic service (every method forwarded as bytes, so it needs
// no protos and serves whatever the backend serves) that makes a Call reactor per client call
// and owns what the calls share: the fair gate that hands out backend turns (fair_gate.h), the
// per-client budget of answer bytes not yet read, the backend channel and the counts printed
// at exit.
//
// Clients are told apart by connection, and a proxy's clients by the name it gives each in the
// dpsr-client metadata (ClientOf in call_reactor.cc); that name is passed on in the same
// metadata, so the backend's per-client limits still tell them apart. The bytes of answers a
// client has not read yet are bounded per client (--max_unread_bytes_per_client): past it, a
// call's answer is dropped with RESOURCE_EXHAUSTED instead of held; so are the bytes of requests
// read and not yet answered (request_budget.h): past them, a call is refused at once.
#ifndef DPSR_FRONT_END_CC_FRONT_END_SERVICE_H_
#define DPSR_FRONT_END_CC_FRONT_END_SERVICE_H_

#include <atomic>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "front_end_cc/drain.h"
#include "front_end_cc/fair_gate.h"
#include "front_end_cc/flags.h"
#include "front_end_cc/framed_backend.h"
#include "front_end_cc/request_budget.h"

namespace dpsr {
namespace front_end {

class Call;

class FrontEnd : public grpc::CallbackGenericService {
 public:
  explicit FrontEnd(const Options& o);

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

  // Request bytes held (request_budget.h): before a call's message is read, OK or the refusal
  // that its client's spent budget earns it; once read, OK (its `bytes` counted until
  // FreeRequest) or the refusal.
  grpc::Status BeforeRequestRead(const std::string& client);
  grpc::Status HoldRequest(const std::string& client, size_t bytes);
  void FreeRequest(const std::string& client, size_t bytes);

  // The first message of `call` arrived: run it now, queue it, or refuse it.
  Admission Offer(Call* call);

  // A waiting call gave up; true when it was still waiting (it never reaches the backend).
  bool Withdraw(Call* call);

  // A call that reached the backend ended, its answers read by the client or not (slow start).
  void Ended(const std::string& client, bool delivered);

  // A call's backend slot is free after `held_micros`: start the calls it lets through.
  void Release(const std::string& client, long long held_micros);

  // The queue delay past which a connection's calls are refused (fair_gate.h).
  long long DelayTargetMicros();

  // Answer bytes a client has not read yet (HTTP/2 flow control holds them here). False (and
  // nothing counted) past its budget. A client that does not read gets no more answers
  // computed: its waiting calls stop going to the backend while it holds more than
  // --hold_back_unread_bytes, or more than 64 KiB while all clients together hold more than
  // --hold_back_total_unread_bytes (the Python server's rule for its own unsent answers).
  // A new connection holds nothing, so its first answer would always be held: unread answers
  // of connections none of whose answers has been read yet count apart too, and while both
  // they and all unread answers are over that total, such a connection's answer over
  // kFirstAnswerAllowance is refused (a thousand connections that each ask one large answer
  // and never read would hold them all; the Python server's unsent_answers.py rule).
  bool HoldUnread(const std::string& client, size_t bytes);
  // `delivered`: the call ended with its answers read, so `client` is known to read.
  void FreeUnread(const std::string& client, size_t bytes, bool delivered);

  // The drain at SIGTERM (drain.h): calls admitted before it are waited for, later ones refused.
  Drain& drain() { return drain_; }
  // Begins the drain and waits (polling every 5 ms) until the server may be shut down, at most
  // `grace_micros`; returns the part of it left for Shutdown.
  long long DrainFor(long long grace_micros);

  void CountQueued() { queued_.fetch_add(1, std::memory_order_relaxed); }
  void CountStopping() { stopping_refused_.fetch_add(1, std::memory_order_relaxed); }
  void CountUnmetered() { unmetered_.fetch_add(1, std::memory_order_relaxed); }
  void CountDroppedUnread() { dropped_waiting_.fetch_add(1, std::memory_order_relaxed); }
  void CountOverlongString() { overlong_string_.fetch_add(1, std::memory_order_relaxed); }

  // One line of counts, printed when the process stops.
  std::string Summary();

  const Options& options() const { return options_; }
  grpc::GenericStub* stub() { return stub_.get(); }
  // The framed Predict hop (--framed_backend), or null.
  FramedBackend* framed() { return framed_.get(); }
  uint64_t NextFramedId() { return framed_ids_.fetch_add(1, std::memory_order_relaxed) + 1; }
  void CountFramed() { framed_calls_.fetch_add(1, std::memory_order_relaxed); }

 private:
  using Started = std::vector<std::pair<std::string, Call*>>;

  static constexpr size_t kSmallUnread = 64 << 10;
  static constexpr size_t kFirstAnswerAllowance = 16 << 10;  // a 10-item answer: about 1 KB
  static constexpr size_t kReadersRemembered = 65536;

  // Starts the calls the gate handed out (called without mu_: StartBackend takes the call's
  // own lock and gRPC's).
  void Start(Started started);

  grpc::Status RequestRefusal(RequestBudget::Verdict verdict, bool before_read);

  bool OverTotal() const {
    return total_unread_ > static_cast<size_t>(options_.hold_back_total_unread_bytes);
  }

  // Holds `client` back or lets it go by the rule of HoldUnread (mu_ held); returns the calls
  // that run now.
  Started UpdateHoldBack(const std::string& client, size_t held);
  // Strangers (clients none of whose answers has been read) share one client's share of the
  // backend while the first answers they hold are over the total budget (fair_gate.h).
  Started UpdateStrangerLimit();

  const Options options_;
  std::unique_ptr<grpc::GenericStub> stub_;
  std::unique_ptr<FramedBackend> framed_;
  std::mutex mu_;
  FairGate<Call*> gate_;
  RequestBudget requests_;  // under mu_
  Drain drain_;
  std::unordered_map<std::string, size_t> unread_;  // under mu_
  size_t total_unread_ = 0;                         // under mu_
  size_t first_unread_ = 0;  // of it, held by clients not in readers_ (under mu_)
  std::unordered_set<std::string> readers_;  // clients with an answer read (under mu_)
  std::deque<std::string> readers_order_;    // readers_ oldest first, to forget the oldest
  std::atomic<long long> accepted_{0}, forwarded_{0}, queued_{0}, dropped_waiting_{0},
      refused_{0}, overloaded_{0}, cannot_finish_{0}, unread_refused_{0}, held_back_{0}, unmetered_{0},
      framed_calls_{0}, stopping_refused_{0}, request_refused_{0}, overlong_string_{0};
  std::atomic<uint64_t> framed_ids_{0};
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_FRONT_END_SERVICE_H_
