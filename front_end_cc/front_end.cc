// dpsr_front_end: a gRPC front end in C++ that takes every client call off the Python servers'
// event loop until its turn comes.
//
// Why: `dpsr serve` and `dpsr proxy` run their gRPC servers on one Python event loop, which
// spends ~0.5 ms of CPU on each call it sees. A burst of 800 calls (zero-window readers, cancelled
// bursts, a 2,000-call flood) therefore holds every other client's next call ~0.3-1 s
// (docs/benchmarks.md). Here each call costs C++ time on gRPC's own threads, waits in a
// per-client queue (fair_gate.h: clients in turn, at most half the backend slots to one client,
// a new client's share opened as its answers are delivered),
// and reaches the Python server only when its turn comes; a call whose client cancelled or whose
// deadline passed while it waited never reaches Python at all.
//
// Every method is forwarded as bytes (a generic service), so the front end needs no protos and
// serves whatever the backend serves. Clients are told apart by connection, and a proxy's
// clients by the name it gives each in the dpsr-client metadata (ClientOf); that client name is
// passed on in the same metadata, so the backend's per-client limits still tell them apart. Answers are read from the backend only as fast as the client reads them (one
// message in flight per call), and the bytes of answers a client has not read yet are bounded
// per client (--max_unread_bytes_per_client): past it, a call's answer is dropped with
// RESOURCE_EXHAUSTED instead of held.
//
// Usage (dpsr_tf/serving/front_end.py starts it for `dpsr serve --front_end=native`):
//   dpsr_front_end --listen=127.0.0.1:0 --backend=unix:/path/to/socket [--max_running=32] ...
// It prints "dpsr_front_end listening on port N" once serving, and on SIGTERM/SIGINT drains
// for --grace_seconds and prints one line of counts.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "front_end_cc/fair_gate.h"

namespace dpsr {
namespace front_end {
namespace {

struct Options {
  std::string listen = "127.0.0.1:0";
  std::string backend;
  int max_running = 32;
  int max_running_per_client = 0;  // 0: half of max_running
  int initial_running_per_client = 2;  // slow start (fair_gate.h); 0: none
  long max_queued_per_client = 4096;
  long max_queued = 65536;
  long lifo_after_ms = 0;  // adaptive LIFO (fair_gate.h); 0: arrival order always
  int max_streams_per_connection = 128;
  long max_receive_message_bytes = 64L << 20;
  long max_unread_bytes_per_client = 64L << 20;
  long hold_back_unread_bytes = 4L << 20;
  long hold_back_total_unread_bytes = 8L << 20;
  std::string client_metadata_key = "dpsr-client";
  double grace_seconds = 10.0;
  // --channel_arg=KEY=VALUE, repeated: the user's --grpc_channel_arguments, applied to the
  // listening port as TF Serving applies them to its own (an integer VALUE is an int).
  std::map<std::string, std::string> channel_args;
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "dpsr_front_end: %s\n"
               "usage: dpsr_front_end --backend=unix:PATH|HOST:PORT [--listen=HOST:PORT]\n"
               "  [--max_running=N] [--max_running_per_client=N] [--initial_running_per_client=N]\n"
               "  [--max_queued_per_client=N]\n"
               "  [--max_queued=N] [--lifo_after_ms=N] [--max_streams_per_connection=N]\n"
               "  [--max_receive_message_bytes=N] [--max_unread_bytes_per_client=N]\n"
               "  [--hold_back_unread_bytes=N] [--hold_back_total_unread_bytes=N]\n"
               "  [--client_metadata_key=KEY] [--grace_seconds=S] [--channel_arg=KEY=VALUE ...]\n",
               why.c_str());
  std::exit(2);
}

long ParseLong(const std::string& flag, const std::string& value, long lo) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || v < lo) {
    Usage("--" + flag + "=" + value + " is not an integer >= " + std::to_string(lo));
  }
  return v;
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) Usage("bad argument: " + arg);
    std::string flag = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (flag == "listen") o.listen = value;
    else if (flag == "backend") o.backend = value;
    else if (flag == "max_running") o.max_running = static_cast<int>(ParseLong(flag, value, 1));
    else if (flag == "max_running_per_client")
      o.max_running_per_client = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "initial_running_per_client")
      o.initial_running_per_client = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "max_queued_per_client") o.max_queued_per_client = ParseLong(flag, value, 1);
    else if (flag == "max_queued") o.max_queued = ParseLong(flag, value, 1);
    else if (flag == "lifo_after_ms") o.lifo_after_ms = ParseLong(flag, value, 0);
    else if (flag == "max_streams_per_connection")
      o.max_streams_per_connection = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "max_receive_message_bytes")
      o.max_receive_message_bytes = ParseLong(flag, value, 1);
    else if (flag == "max_unread_bytes_per_client")
      o.max_unread_bytes_per_client = ParseLong(flag, value, 1);
    else if (flag == "hold_back_unread_bytes") o.hold_back_unread_bytes = ParseLong(flag, value, 0);
    else if (flag == "hold_back_total_unread_bytes")
      o.hold_back_total_unread_bytes = ParseLong(flag, value, 0);
    else if (flag == "client_metadata_key") o.client_metadata_key = value;
    else if (flag == "grace_seconds") o.grace_seconds = std::atof(value.c_str());
    else if (flag == "channel_arg") {
      size_t sep = value.find('=');
      if (sep == 0 || sep == std::string::npos) {
        Usage("--channel_arg=" + value + " is not KEY=VALUE");
      }
      o.channel_args[value.substr(0, sep)] = value.substr(sep + 1);
    }
    else Usage("unknown flag --" + flag);
  }
  if (o.backend.empty()) Usage("--backend is required");
  if (o.max_receive_message_bytes > INT32_MAX) o.max_receive_message_bytes = INT32_MAX;
  return o;
}

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

class FrontEnd;
std::string ClientOf(grpc::GenericCallbackServerContext* ctx, const std::string& client_key);

// One client call: its server side (this reactor) and, once admitted, its backend call.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(FrontEnd* fe, grpc::GenericCallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // The gate handed this call a slot, or it needs none (`metered` false: Unmetered); called
  // without the front end's lock.
  void StartBackend(bool metered = true);

  const std::string& client() const { return client_; }

 private:
  class Backend : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Backend(Call* call) : call_(call) {}
    void OnReadDone(bool ok) override { call_->OnBackendRead(ok); }
    void OnDone(const grpc::Status& s) override { call_->OnBackendDone(s); }

   private:
    Call* call_;
  };

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
  size_t unread_bytes_ = 0;  // answer bytes written to the client and counted against its budget
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  grpc::ClientContext backend_ctx_;
  Backend backend_{this};
  std::atomic<int> refs_{1};  // the server side; +1 while a backend call exists
};

class FrontEnd : public grpc::CallbackGenericService {
 public:
  explicit FrontEnd(const Options& o)
      : options_(o),
        gate_(o.max_running, o.max_running_per_client,
              static_cast<size_t>(o.max_queued_per_client), static_cast<size_t>(o.max_queued),
              o.initial_running_per_client, o.lifo_after_ms * 1000LL) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    std::string target = o.backend;
    stub_ = std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  }

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* ctx) override {
    accepted_.fetch_add(1, std::memory_order_relaxed);
    return new Call(this, ctx);
  }

  // The first message of `call` arrived: run it now, queue it, or refuse it.
  Admission Offer(Call* call) {
    std::lock_guard<std::mutex> lock(mu_);
    Admission a = gate_.Offer(call->client(), call, NowMicros());
    if (a == Admission::kRun) forwarded_.fetch_add(1, std::memory_order_relaxed);
    else if (a != Admission::kQueued) refused_.fetch_add(1, std::memory_order_relaxed);
    return a;
  }

  // A waiting call gave up; true when it was still waiting (it never reaches the backend).
  bool Withdraw(Call* call) {
    std::lock_guard<std::mutex> lock(mu_);
    bool removed = gate_.Remove(call->client(), call);
    if (removed) dropped_waiting_.fetch_add(1, std::memory_order_relaxed);
    return removed;
  }

  // A call that reached the backend ended, its answers read by the client or not (slow start).
  void Ended(const std::string& client, bool delivered) {
    std::vector<std::pair<std::string, Call*>> started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      started = gate_.Ended(client, delivered, NowMicros());
    }
    Start(started);
  }

  // A call's backend slot is free: start the calls it lets through.
  void Release(const std::string& client) {
    std::vector<std::pair<std::string, Call*>> started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      started = gate_.Release(client, NowMicros());
    }
    Start(started);
  }

  // Answer bytes a client has not read yet (HTTP/2 flow control holds them here). False (and
  // nothing counted) past its budget. A client that does not read gets no more answers
  // computed: its waiting calls stop going to the backend while it holds more than
  // --hold_back_unread_bytes, or more than 64 KiB while all clients together hold more than
  // --hold_back_total_unread_bytes (the Python server's rule for its own unsent answers).
  bool HoldUnread(const std::string& client, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t& held = unread_[client];
    if (held > 0 && held + bytes > static_cast<size_t>(options_.max_unread_bytes_per_client)) {
      unread_refused_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    held += bytes;
    bool was_over = OverTotal();
    total_unread_ += bytes;
    if (!was_over && OverTotal()) {
      for (const auto& kv : unread_) UpdateHoldBack(kv.first, kv.second);
    } else {
      UpdateHoldBack(client, held);
    }
    return true;
  }
  void FreeUnread(const std::string& client, size_t bytes) {
    std::vector<std::pair<std::string, Call*>> started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = unread_.find(client);
      if (it == unread_.end()) return;
      bytes = std::min(it->second, bytes);
      it->second -= bytes;
      bool was_over = OverTotal();
      total_unread_ -= bytes;
      if (was_over && !OverTotal()) {
        for (const auto& kv : unread_) Append(&started, UpdateHoldBack(kv.first, kv.second));
      } else {
        Append(&started, UpdateHoldBack(client, it->second));
      }
      if (it->second == 0) unread_.erase(it);
    }
    Start(started);
  }

  void CountQueued() { queued_.fetch_add(1, std::memory_order_relaxed); }
  void CountUnmetered() { unmetered_.fetch_add(1, std::memory_order_relaxed); }
  void CountDroppedUnread() { dropped_waiting_.fetch_add(1, std::memory_order_relaxed); }

  std::string Summary() {
    std::lock_guard<std::mutex> lock(mu_);
    char line[512];
    std::snprintf(line, sizeof(line),
                  "dpsr_front_end: calls accepted %lld, forwarded %lld, queued %lld, "
                  "dropped before their turn %lld, refused (queue full) %lld, answers refused "
                  "(unread budget) %lld, clients held back %lld, passed without a turn "
                  "%lld, run newest first (overload) %lld; now running %d, waiting %zu",
                  (long long)accepted_.load(), (long long)forwarded_.load(),
                  (long long)queued_.load(), (long long)dropped_waiting_.load(),
                  (long long)refused_.load(), (long long)unread_refused_.load(),
                  (long long)held_back_.load(), (long long)unmetered_.load(),
                  gate_.newest_first(), gate_.running(), gate_.queued());
    return line;
  }

  const Options& options() const { return options_; }
  grpc::GenericStub* stub() { return stub_.get(); }

 private:
  static long long NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  static constexpr size_t kSmallUnread = 64 << 10;

  // Starts the calls the gate handed out (called without mu_: StartBackend takes the call's
  // own lock and gRPC's).
  void Start(const std::vector<std::pair<std::string, Call*>>& started) {
    forwarded_.fetch_add(started.size(), std::memory_order_relaxed);
    for (const auto& s : started) s.second->StartBackend();
  }

  bool OverTotal() const {
    return total_unread_ > static_cast<size_t>(options_.hold_back_total_unread_bytes);
  }

  // Holds `client` back or lets it go by the rule of HoldUnread (mu_ held); returns the calls
  // that run now.
  std::vector<std::pair<std::string, Call*>> UpdateHoldBack(const std::string& client,
                                                            size_t held) {
    bool hold = held > static_cast<size_t>(options_.hold_back_unread_bytes) ||
                (OverTotal() && held > kSmallUnread);
    if (hold == gate_.held_back(client)) return {};
    if (hold) held_back_.fetch_add(1, std::memory_order_relaxed);
    return gate_.HoldBack(client, hold, NowMicros());
  }

  static void Append(std::vector<std::pair<std::string, Call*>>* to,
                     std::vector<std::pair<std::string, Call*>> from) {
    for (auto& f : from) to->push_back(std::move(f));
  }

  const Options options_;
  std::unique_ptr<grpc::GenericStub> stub_;
  std::mutex mu_;
  FairGate<Call*> gate_;
  std::unordered_map<std::string, size_t> unread_;  // under mu_
  size_t total_unread_ = 0;                         // under mu_
  std::atomic<long long> accepted_{0}, forwarded_{0}, queued_{0}, dropped_waiting_{0},
      refused_{0}, unread_refused_{0}, held_back_{0}, unmetered_{0};
};

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

Call::Call(FrontEnd* fe, grpc::GenericCallbackServerContext* ctx)
    : fe_(fe), ctx_(ctx), client_(ClientOf(ctx, fe->options().client_metadata_key)) {
  StartRead(&request_);
}

void Call::OnReadDone(bool ok) {
  // The one request message (every method served is unary or server-streaming), or none when
  // the client half-closed without one. It is never read again: the backend gets it with its
  // end-of-stream in one write.
  std::unique_lock<std::mutex> lock(mu_);
  have_request_ = ok;
  if (cancelled_) {
    fe_->CountDroppedUnread();
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before it was read"));
    return;
  }
  if (Unmetered(std::string(ctx_->method()))) {
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
  const Options& o = fe_->options();
  FinishLocked(grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      a == Admission::kClientQueueFull
          ? "dpsr front end: this connection already has " +
                std::to_string(o.max_queued_per_client) +
                " calls waiting, the most one connection may have; send fewer at once"
          : "dpsr front end: " + std::to_string(o.max_queued) +
                " calls are waiting, the most the server queues; try again later"));
}

void Call::StartBackend(bool metered) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = State::kRunning;
    slot_held_ = metered;
    started_ = metered;
    refs_.fetch_add(1);
  }
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
    FinishLocked(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        "dpsr front end: this connection has " +
            std::to_string(fe_->options().max_unread_bytes_per_client) +
            " bytes of answers it has not read, the most one connection may hold; read them "
            "before asking for more"));
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
    lock.unlock();
    backend_ctx_.TryCancel();
  }
}

void Call::ReleaseSlot() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!slot_held_) return;
    slot_held_ = false;
  }
  fe_->Release(client_);
}

void Call::OnDone() {
  // Delivered: the call ended with its answers and status sent, which HTTP/2 flow control
  // allows only once the client has read them (a finished write alone is not proof: gRPC
  // completes writes it has buffered).
  if (unread_bytes_ > 0) fe_->FreeUnread(client_, unread_bytes_);
  if (started_) fe_->Ended(client_, unread_bytes_ > 0 && !ctx_->IsCancelled());
  Unref();
}

void Call::Unref() {
  if (refs_.fetch_sub(1) == 1) delete this;
}

std::atomic<bool> g_stop{false};

// One --channel_arg on the server: an int when VALUE is one (as the Python server's
// --grpc_channel_arguments parsing), else a string.
void AddChannelArgument(grpc::ServerBuilder* builder, const std::string& key,
                        const std::string& value) {
  char* end = nullptr;
  errno = 0;
  long number = std::strtol(value.c_str(), &end, 10);
  if (!value.empty() && *end == '\0' && errno == 0 && number >= INT32_MIN &&
      number <= INT32_MAX) {
    builder->AddChannelArgument(key, static_cast<int>(number));
  } else {
    builder->AddChannelArgument(key, value);
  }
}

int Main(int argc, char** argv) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);  // the Python server that started us is gone: stop too
  Options options = ParseFlags(argc, argv);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // every gRPC thread inherits the mask

  FrontEnd front_end(options);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&front_end);
  const auto& user = options.channel_args;  // the user's value of a key replaces our default
  if (!user.count(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH)) {  // the builder's would win over it
    builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_message_bytes));
  }
  builder.SetMaxSendMessageSize(-1);
  if (options.max_streams_per_connection > 0 && !user.count(GRPC_ARG_MAX_CONCURRENT_STREAMS)) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               options.max_streams_per_connection);
  }
  if (!user.count(GRPC_ARG_ALLOW_REUSEPORT)) {
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  }
  for (const auto& [key, value] : user) AddChannelArgument(&builder, key, value);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "dpsr_front_end: cannot bind gRPC to %s (in use, or not an address)\n",
                 options.listen.c_str());
    return 1;
  }
  std::printf("dpsr_front_end listening on port %d\n", port);
  std::fflush(stdout);
  if (getppid() == 1) return 0;  // the parent died before prctl took hold

  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<long>(options.grace_seconds * 1000)));
  server->Wait();
  std::fprintf(stderr, "%s\n", front_end.Summary().c_str());
  return 0;
}

}  // namespace
}  // namespace front_end
}  // namespace dpsr

int main(int argc, char** argv) { return dpsr::front_end::Main(argc, argv); }
