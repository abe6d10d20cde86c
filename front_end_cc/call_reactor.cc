// The call reactor (call_reactor.h): how one client call is read, admitted, forwarded to the
// backend and answered.
#include "front_end_cc/call_reactor.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "front_end_cc/fair_gate.h"
#include "front_end_cc/flags.h"
#include "front_end_cc/front_end_service.h"
#include "front_end_cc/string_limit.h"

namespace dpsr {
namespace front_end {
namespace {

// Metadata a client may not pass on: HTTP/2 and gRPC's own headers, and the client name that
// only the front end sets.
bool Forwardable(const std::string& key, const std::string& client_key) {
  if (key.empty() || key[0] == ':') return false;
  if (key.rfind("grpc-", 0) == 0) return false;
  return key != "user-agent" && key != "te" && key != "content-type" && key != "host" &&
         key != client_key;
}

// Calls that last as long as the client asks, not as long as the server computes: a health
// Watch (answers until the client leaves) and the profiler's calls (Profile and Monitor run
// for the duration asked; Terminate must reach a running Profile). They pass without a turn:
// taking one, a Watch or a ten-minute Profile would hold its client's slot and slow-start
// window for its whole life, and every later call of that client would wait behind it.
bool Unmetered(const std::string& method) {
  return method == "/grpc.health.v1.Health/Watch" ||
         method.rfind("/tensorflow.ProfilerService/", 0) == 0;
}

// Who a call is from: its connection, and the client a proxy names in the client metadata key
// (capped), so that a proxy's clients take turns here as direct clients do. A client gains
// nothing by naming sub-clients that it could not gain by opening connections: the queue
// limits bound them all.
std::string ClientOf(grpc::GenericCallbackServerContext* ctx, const std::string& client_key) {
  std::string client = ctx->peer();
  for (const auto& kv : ctx->client_metadata()) {
    if (std::string(kv.first.data(), kv.first.size()) == client_key) {
      client += "/" + std::string(kv.second.data(), std::min<size_t>(kv.second.size(), 256));
      break;
    }
  }
  return client;
}

const char kPredictMethod[] = "/tensorflow.serving.PredictionService/Predict";

// An answer dropped because its client holds too many unread.
grpc::Status UnreadRefusal(FrontEnd* fe) {
  return grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      "dpsr front end: this connection holds answers it has not read (at most " +
          std::to_string(fe->options().max_unread_bytes_per_client) +
          " bytes per connection; while all connections hold more than " +
          std::to_string(fe->options().hold_back_total_unread_bytes) +
          ", at most 16384 for one that has read none yet); read them before asking for "
          "more");
}

// The status of a call the gate refused (a refusal answer of FairGate::Offer).
grpc::Status Refusal(Admission a, FrontEnd* fe) {
  const Options& o = fe->options();
  switch (a) {
    case Admission::kClientQueueFull:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "dpsr front end: this connection already has " +
                              std::to_string(o.max_queued_per_client) +
                              " calls waiting, the most one connection may have; send fewer at "
                              "once");
    case Admission::kOverloaded:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "dpsr front end: overloaded: this connection's calls have waited more "
                          "than " + std::to_string(fe->DelayTargetMicros() / 1000.0) +
                              " ms for their turn for " + std::to_string(o.queue_interval_ms) +
                              " ms; send fewer at once, or retry on another replica");
    case Admission::kCannotFinish:
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "dpsr front end: the call's deadline ends before its turn would come "
                          "(its connection's calls waiting ahead of it); not run");
    default:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "dpsr front end: " + std::to_string(o.max_queued) +
                              " calls are waiting, the most the server queues; try again later");
  }
}

}  // namespace

Call::Call(FrontEnd* fe, grpc::GenericCallbackServerContext* ctx)
    : fe_(fe), ctx_(ctx), client_(ClientOf(ctx, fe->options().client_metadata_key)) {
  // A client whose calls already hold its request bytes gets this one refused unread: gRPC
  // discards its message instead of the front end holding it to learn its size.
  grpc::Status refused = fe_->BeforeRequestRead(client_);
  if (!refused.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(refused);
    return;
  }
  StartRead(&request_);
}

void Call::OnReadDone(bool ok) {
  // The one request message (every method served is unary or server-streaming), or none when
  // the client half-closed without one. It is never read again: the backend gets it with its
  // end-of-stream in one write. Its bytes count against the request budgets until the call
  // ends (OnDone), or it is refused and dropped now.
  grpc::Status refused;  // over a request budget, or a string over the limit
  if (ok) {
    const size_t bytes = request_.Length();
    refused = fe_->HoldRequest(client_, bytes);
    if (refused.ok()) {
      request_bytes_ = bytes;
      refused = OverlongStringRefusal();
      if (!refused.ok()) request_.Clear();
    } else {
      request_.Clear();
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  have_request_ = ok && refused.ok();
  if (cancelled_) {
    fe_->CountDroppedUnread();
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before it was read"));
    return;
  }
  if (!refused.ok()) {
    FinishLocked(refused);
    return;
  }
  const bool unmetered = Unmetered(std::string(ctx_->method()));
  if (!fe_->drain().Admit(/*counted=*/!unmetered)) {
    fe_->CountStopping();
    FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "dpsr front end: the server is shutting down; send the call to "
                              "another replica"));
    return;
  }
  drain_counted_ = !unmetered;
  if (unmetered) {
    lock.unlock();
    fe_->CountUnmetered();
    StartBackend(/*metered=*/false);
    return;
  }
  state_ = State::kQueued;
  lock.unlock();
  Admission a = fe_->Offer(this);
  if (a == Admission::kRun) {
    StartBackend();
    return;
  }
  lock.lock();
  if (a == Admission::kQueued) {
    fe_->CountQueued();
    if (cancelled_ && fe_->Withdraw(this)) {  // cancelled while we offered it
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting"));
    }
    return;
  }
  FinishLocked(Refusal(a, fe_));
}

grpc::Status Call::OverlongStringRefusal() {
  const size_t limit = static_cast<size_t>(fe_->options().max_string_input_bytes);
  if (limit == 0 || request_bytes_ <= limit || ctx_->method() != kPredictMethod) {
    return grpc::Status::OK;  // no string of a request this small can be over the limit
  }
  std::vector<grpc::Slice> slices;  // references to gRPC's read buffers, not copies
  if (!request_.Dump(&slices).ok()) return grpc::Status::OK;
  std::vector<std::string_view> pieces;
  pieces.reserve(slices.size());
  for (const auto& s : slices) {
    pieces.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  std::string message = OverlongString(Pieces(std::move(pieces)), limit);
  if (message.empty()) return grpc::Status::OK;
  fe_->CountOverlongString();
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

long long Call::DeadlineLeftMicros() const {
  auto deadline = ctx_->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return -1;
  auto left = std::chrono::duration_cast<std::chrono::microseconds>(
                  deadline - std::chrono::system_clock::now())
                  .count();
  return std::max(0LL, static_cast<long long>(left));
}

bool Call::LeftBeforeItsTurn() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!cancelled_ && !ctx_->IsCancelled()) return false;
    // This thread's own reference while the lock is dropped: called from another call's
    // thread, so no reaction of this call holds its OnDone (and its delete) back.
    refs_.fetch_add(1);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting"));
  }
  Unref();
  return true;
}

void Call::StartBackend(bool metered) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = State::kRunning;
    slot_held_ = metered;
    started_ = metered;
    if (metered) slot_since_ = std::chrono::steady_clock::now();
    // The backend call's reference, and this thread's until it returns. Without the second,
    // an answer fast enough (the framed hop's reader thread, gRPC's for a backend call) could
    // finish the call, and its OnDone delete it, before this thread is done with it: when a
    // call is started from another call's thread (FrontEnd::Start), no reaction of its own
    // holds its OnDone back.
    refs_.fetch_add(2);
  }
  if (!StartFramed()) StartGrpc();
  Unref();
}

void Call::StartGrpc() {
  backend_ctx_.set_deadline(ctx_->deadline());
  const std::string& client_key = fe_->options().client_metadata_key;
  for (const auto& kv : ctx_->client_metadata()) {
    std::string key(kv.first.data(), kv.first.size());
    if (Forwardable(key, client_key)) {
      backend_ctx_.AddMetadata(key, std::string(kv.second.data(), kv.second.size()));
    }
  }
  backend_ctx_.AddMetadata(client_key, client_);
  fe_->stub()->PrepareBidiStreamingCall(&backend_ctx_, ctx_->method(), grpc::StubOptions(),
                                        &backend_);
  // Held until this side starts no more backend reads (EndBackendReads), so that the backend
  // call cannot end between a check and a StartRead made from a client-side callback.
  backend_.AddHold();
  backend_.StartRead(&response_);
  if (have_request_) backend_.StartWriteLast(&request_, grpc::WriteOptions());
  else backend_.StartWritesDone();
  backend_.StartCall();
  bool cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel = cancelled_;
  }
  if (cancel) backend_ctx_.TryCancel();
}

bool Call::StartFramed() {
  FramedBackend* framed = fe_->framed();
  // A large request goes over gRPC: the framed hop is one stream, which the server reads one
  // request at a time, so a large one's read and parse held every later call behind it (8
  // connections sending 4 MiB calls at once: other clients' p99 343-494 ms framed, 73-88 over gRPC;
  // hostile_bench.py).
  const long framed_max = fe_->options().framed_max_request_bytes;
  const bool large = framed_max > 0 && request_bytes_ >= static_cast<size_t>(framed_max);
  if (framed == nullptr || !have_request_ || ctx_->method() != kPredictMethod || large) {
    return false;
  }
  const uint64_t id = fe_->NextFramedId();
  {
    std::lock_guard<std::mutex> lock(mu_);
    framed_ = true;
    framed_id_ = id;
  }
  if (!framed->Send(id, DeadlineLeftMicros(), client_, request_,
                    [this](const grpc::Status& status, std::string bytes, Trailers trailers) {
                      OnFramedAnswer(status, std::move(bytes), trailers);
                    })) {
    std::lock_guard<std::mutex> lock(mu_);  // not sent whole: the gRPC hop takes it
    framed_ = false;
    return false;
  }
  fe_->CountFramed();
  bool cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel = cancelled_;
  }
  if (cancel) framed->Cancel(id);
  return true;
}

void Call::OnFramedAnswer(const grpc::Status& status, std::string bytes,
                          const Trailers& trailers) {
  ReleaseSlot();  // the server's work for this call is done
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (state_ != State::kFinished) {
      for (const auto& kv : trailers) ctx_->AddTrailingMetadata(kv.first, kv.second);
      if (!status.ok()) {
        FinishLocked(status);
      } else if (!fe_->HoldUnread(client_, bytes.size())) {
        FinishLocked(UnreadRefusal(fe_));
      } else {
        unread_bytes_ += bytes.size();
        grpc::Slice slice(bytes);
        response_ = grpc::ByteBuffer(&slice, 1);
        lock.unlock();
        StartWrite(&response_);  // OnWriteDone finishes the call
      }
    }
  }
  Unref();  // the framed hop's reference; the server side's holds the call until OnDone
}

void Call::EndBackendReads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reads_ended_) return;
    reads_ended_ = true;
  }
  backend_.RemoveHold();
}

void Call::OnBackendRead(bool ok) {
  if (!ok) {  // no more answers; OnBackendDone finishes
    EndBackendReads();
    return;
  }
  ReleaseSlot();  // the backend's work for this call is done once an answer came
  std::unique_lock<std::mutex> lock(mu_);
  if (state_ == State::kFinished) {
    lock.unlock();
    backend_ctx_.TryCancel();
    EndBackendReads();
    return;
  }
  size_t bytes = response_.Length();
  if (!fe_->HoldUnread(client_, bytes)) {
    lock.unlock();
    backend_ctx_.TryCancel();
    EndBackendReads();
    lock.lock();
    FinishLocked(UnreadRefusal(fe_));
    return;
  }
  unread_bytes_ += bytes;
  if (!initial_metadata_copied_) {  // sent with the first answer, so copied before it
    for (const auto& kv : backend_ctx_.GetServerInitialMetadata()) {
      ctx_->AddInitialMetadata(std::string(kv.first.data(), kv.first.size()),
                               std::string(kv.second.data(), kv.second.size()));
    }
    initial_metadata_copied_ = true;
  }
  StartWrite(&response_);
}

void Call::OnWriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  if (framed_) {  // its one answer is written (or the client left)
    FinishLocked(ok ? grpc::Status::OK
                    : grpc::Status(grpc::StatusCode::CANCELLED, "the client left"));
    return;
  }
  bool more = ok && state_ != State::kFinished;
  lock.unlock();
  if (more) {  // the next answer (or the end), read only now: as fast as the client reads
    backend_.StartRead(&response_);
    return;
  }
  backend_ctx_.TryCancel();  // the client is gone
  EndBackendReads();
}

void Call::OnBackendDone(const grpc::Status& status) {
  ReleaseSlot();
  {
    std::lock_guard<std::mutex> lock(mu_);
    backend_done_ = true;
    if (state_ != State::kFinished) FinishLocked(status);
  }
  Unref();
}

void Call::FinishLocked(const grpc::Status& status) {
  if (state_ == State::kFinished) return;
  state_ = State::kFinished;
  if (backend_done_) {
    for (const auto& kv : backend_ctx_.GetServerTrailingMetadata()) {
      ctx_->AddTrailingMetadata(std::string(kv.first.data(), kv.first.size()),
                                std::string(kv.second.data(), kv.second.size()));
    }
  }
  Finish(status);
}

void Call::OnCancel() {
  std::unique_lock<std::mutex> lock(mu_);
  cancelled_ = true;
  if (state_ == State::kQueued) {
    lock.unlock();
    bool withdrawn = fe_->Withdraw(this);
    lock.lock();
    if (withdrawn) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting"));
    }
    return;
  }
  if (state_ == State::kRunning) {
    const bool framed = framed_;
    lock.unlock();
    if (framed) fe_->framed()->Cancel(framed_id_);
    else backend_ctx_.TryCancel();
  }
}

void Call::ReleaseSlot() {
  long long held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!slot_held_) return;
    slot_held_ = false;
    held = std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now() - slot_since_)
               .count();
  }
  fe_->Release(client_, held);
}

void Call::OnDone() {
  // Delivered: the call ended with its answers and status sent, which HTTP/2 flow control
  // allows only once the client has read them (a finished write alone is not proof: gRPC
  // completes writes it has buffered).
  if (request_bytes_ > 0) fe_->FreeRequest(client_, request_bytes_);
  if (unread_bytes_ > 0) fe_->FreeUnread(client_, unread_bytes_, !ctx_->IsCancelled());
  if (started_) fe_->Ended(client_, unread_bytes_ > 0 && !ctx_->IsCancelled());
  if (drain_counted_) fe_->drain().Done();
  Unref();
}

void Call::Unref() {
  if (refs_.fetch_sub(1) == 1) delete this;
}

}  // namespace front_end
}  // namespace dpsr
