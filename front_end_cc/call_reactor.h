// One client call through the front end, from its first message to its status: Call is the
// server-side reactor that reads the request, asks the service (front_end_service.h) for a
// turn, then forwards the request as bytes to the backend and relays the answers back.
//
// Answers are read from the backend only as fast as the client reads them (one message in
// flight per call), so a client that stops reading stops the backend's work for it instead of
// piling answers up here. A call whose client cancelled or whose deadline passed while it
// waited never reaches the backend at all.
#ifndef DPSR_FRONT_END_CC_CALL_REACTOR_H_
#define DPSR_FRONT_END_CC_CALL_REACTOR_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_callback.h>

#include "front_end_cc/framed_backend.h"

namespace dpsr {
namespace front_end {

class FrontEnd;

// One client call: its server side (this reactor) and, once admitted, its backend call.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(FrontEnd* fe, grpc::GenericCallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // The gate handed this call a slot, but its client has gone (the call is cancelled, though
  // its OnCancel may not have run yet: a closed connection cancels its calls one by one):
  // finishes it CANCELLED and returns true; it must not reach the backend. Else false.
  bool LeftBeforeItsTurn();

  // The gate handed this call a slot, or it needs none (`metered` false: Unmetered); called
  // without the front end's lock.
  void StartBackend(bool metered = true);

  const std::string& client() const { return client_; }

  // Microseconds until the call's deadline (0 once past), or -1 when it has none.
  long long DeadlineLeftMicros() const;

 private:
  class Backend : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Backend(Call* call) : call_(call) {}
    void OnReadDone(bool ok) override { call_->OnBackendRead(ok); }
    void OnDone(const grpc::Status& s) override { call_->OnBackendDone(s); }

   private:
    Call* call_;
  };

  // INVALID_ARGUMENT, with the server's message, for a Predict request with a string over
  // --max_string_input_bytes (string_limit.h); else OK.
  grpc::Status OverlongStringRefusal();
  // The framed hop (framed_backend.h) for a Predict call: true when the call went that way.
  bool StartFramed();
  void StartGrpc();  // the backend call over gRPC, for every call the framed hop does not take
  void OnFramedAnswer(const grpc::Status& status, std::string bytes, const Trailers& trailers);
  void OnBackendRead(bool ok);
  void EndBackendReads();  // this side starts no more backend reads: let the call end
  void OnBackendDone(const grpc::Status& status);
  void FinishLocked(const grpc::Status& status);  // mu_ held
  void ReleaseSlot();
  void Unref();

  FrontEnd* const fe_;
  grpc::GenericCallbackServerContext* const ctx_;
  const std::string client_;
  std::mutex mu_;
  enum class State { kReading, kQueued, kRunning, kFinished } state_ = State::kReading;
  bool have_request_ = false;    // the first message arrived (else the client half-closed)
  bool reads_ended_ = false;
  bool backend_done_ = false;
  bool slot_held_ = false;
  bool started_ = false;  // it reached the backend with a turn (counts against the window)
  bool cancelled_ = false;
  bool initial_metadata_copied_ = false;
  bool drain_counted_ = false;  // admitted before the drain, which waits for its end
  bool framed_ = false;  // sent on the framed hop; its one answer finishes the call
  uint64_t framed_id_ = 0;
  std::chrono::steady_clock::time_point slot_since_;  // when it took its backend slot
  size_t unread_bytes_ = 0;  // answer bytes written to the client and counted against its budget
  size_t request_bytes_ = 0;  // the request's bytes, counted against the request budgets
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  grpc::ClientContext backend_ctx_;
  Backend backend_{this};
  // The server side's (until OnDone), +1 while a backend call exists, +1 while a thread that is
  // not one of this call's reactions works on it (StartBackend, LeftBeforeItsTurn).
  std::atomic<int> refs_{1};
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_CALL_REACTOR_H_
