// The front end's service (front_end_service.h): admission through the fair gate, the unread
// answer budget and hold-back, and the exit summary.
#include "front_end_cc/front_end_service.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "front_end_cc/call_reactor.h"

namespace dpsr {
namespace front_end {
namespace {

long long NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Append(std::vector<std::pair<std::string, Call*>>* to,
            std::vector<std::pair<std::string, Call*>> from) {
  for (auto& f : from) to->push_back(std::move(f));
}

}  // namespace

FrontEnd::FrontEnd(const Options& o)
    : options_(o),
      gate_(o.max_running, o.max_running_per_client,
            static_cast<size_t>(o.max_queued_per_client), static_cast<size_t>(o.max_queued),
            o.initial_running_per_client, o.lifo_after_ms * 1000LL,
            QueueDelay{o.queue_target_ms * 1000LL, o.queue_interval_ms * 1000LL}),
      requests_(static_cast<size_t>(o.max_request_bytes_per_client),
                static_cast<size_t>(o.max_request_bytes)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  std::string target = o.backend;
  stub_ = std::make_unique<grpc::GenericStub>(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  if (!o.framed_backend.empty()) framed_ = std::make_unique<FramedBackend>(o.framed_backend);
}

grpc::ServerGenericBidiReactor* FrontEnd::CreateReactor(
    grpc::GenericCallbackServerContext* ctx) {
  accepted_.fetch_add(1, std::memory_order_relaxed);
  drain_.Arrived(NowMicros());
  return new Call(this, ctx);
}

Admission FrontEnd::Offer(Call* call) {
  std::lock_guard<std::mutex> lock(mu_);
  Admission a = gate_.Offer(call->client(), call, NowMicros(), call->DeadlineLeftMicros(),
                            /*stranger=*/readers_.count(call->client()) == 0);
  switch (a) {
    case Admission::kRun: forwarded_.fetch_add(1, std::memory_order_relaxed); break;
    case Admission::kQueued: break;
    case Admission::kOverloaded: overloaded_.fetch_add(1, std::memory_order_relaxed); break;
    case Admission::kCannotFinish: cannot_finish_.fetch_add(1, std::memory_order_relaxed); break;
    default: refused_.fetch_add(1, std::memory_order_relaxed);
  }
  return a;
}

bool FrontEnd::Withdraw(Call* call) {
  std::lock_guard<std::mutex> lock(mu_);
  bool removed = gate_.Remove(call->client(), call);
  if (removed) dropped_waiting_.fetch_add(1, std::memory_order_relaxed);
  return removed;
}

void FrontEnd::Ended(const std::string& client, bool delivered) {
  Started started;
  {
    std::lock_guard<std::mutex> lock(mu_);
    started = gate_.Ended(client, delivered, NowMicros());
  }
  Start(started);
}

void FrontEnd::Release(const std::string& client, long long held_micros) {
  Started started;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gate_.ObserveService(held_micros);
    started = gate_.Release(client, NowMicros());
  }
  Start(started);
}

grpc::Status FrontEnd::RequestRefusal(RequestBudget::Verdict verdict, bool before_read) {
  request_refused_.fetch_add(1, std::memory_order_relaxed);
  // Before the read the call's size is unknown: the budget is already spent.
  const std::string hold = before_read ? " already hold " : " would hold more than ";
  const std::string with = before_read ? " (refused before its message was read)" :
                                         " with this one";
  if (verdict == RequestBudget::Verdict::kClientFull) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "dpsr front end: this connection's calls waiting or running" + hold +
                            std::to_string(requests_.per_client()) + " request bytes" + with +
                            ", the most one connection may hold "
                            "(--front_end_max_request_bytes_per_client); wait for their answers "
                            "before sending more");
  }
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "dpsr front end: the calls waiting or running" + hold +
                          std::to_string(requests_.total()) + " request bytes" + with +
                          ", the most the server holds (--front_end_max_request_bytes); until "
                          "some are answered only calls under " +
                          std::to_string(RequestBudget::kSmallBytes) +
                          " bytes pass; try again later");
}

grpc::Status FrontEnd::BeforeRequestRead(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  RequestBudget::Verdict v = requests_.BeforeRead(client);
  return v == RequestBudget::Verdict::kHeld ? grpc::Status::OK : RequestRefusal(v, true);
}

grpc::Status FrontEnd::HoldRequest(const std::string& client, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  RequestBudget::Verdict v = requests_.Hold(client, bytes);
  return v == RequestBudget::Verdict::kHeld ? grpc::Status::OK : RequestRefusal(v, false);
}

void FrontEnd::FreeRequest(const std::string& client, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.Free(client, bytes);
}

long long FrontEnd::DelayTargetMicros() {
  std::lock_guard<std::mutex> lock(mu_);
  return gate_.delay_target();
}

bool FrontEnd::HoldUnread(const std::string& client, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t& held = unread_[client];
  if (held > 0 && held + bytes > static_cast<size_t>(options_.max_unread_bytes_per_client)) {
    unread_refused_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const bool reader = readers_.count(client) > 0;
  if (!reader && held == 0 && bytes > kFirstAnswerAllowance && OverTotal() &&
      first_unread_ > static_cast<size_t>(options_.hold_back_total_unread_bytes)) {
    unread_refused_.fetch_add(1, std::memory_order_relaxed);
    unread_.erase(client);
    return false;
  }
  if (!reader) first_unread_ += bytes;
  held += bytes;
  bool was_over = OverTotal();
  total_unread_ += bytes;
  if (!was_over && OverTotal()) {
    for (const auto& kv : unread_) UpdateHoldBack(kv.first, kv.second);
  } else {
    UpdateHoldBack(client, held);
  }
  UpdateStrangerLimit();  // first answers only grew: it can only start limiting here
  return true;
}

void FrontEnd::FreeUnread(const std::string& client, size_t bytes, bool delivered) {
  Started started;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = unread_.find(client);
    if (it == unread_.end()) return;
    bytes = std::min(it->second, bytes);
    it->second -= bytes;
    if (!readers_.count(client)) {
      first_unread_ -= bytes;
      if (delivered) {  // known to read from now on: what it still holds is not first answers
        first_unread_ -= it->second;
        readers_.insert(client);
        readers_order_.push_back(client);
        if (readers_order_.size() > kReadersRemembered) {
          const std::string& oldest = readers_order_.front();
          auto held = unread_.find(oldest);
          if (held != unread_.end()) first_unread_ += held->second;
          readers_.erase(oldest);
          readers_order_.pop_front();
        }
      }
    }
    bool was_over = OverTotal();
    total_unread_ -= bytes;
    if (was_over && !OverTotal()) {
      for (const auto& kv : unread_) Append(&started, UpdateHoldBack(kv.first, kv.second));
    } else {
      Append(&started, UpdateHoldBack(client, it->second));
    }
    if (it->second == 0) unread_.erase(it);
    Append(&started, UpdateStrangerLimit());
  }
  Start(started);
}

long long FrontEnd::DrainFor(long long grace_micros) {
  const long long deadline = NowMicros() + grace_micros;
  drain_.Begin();
  while (!drain_.CanStop(NowMicros(), deadline)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return std::max(0LL, deadline - NowMicros());
}

std::string FrontEnd::Summary() {
  std::lock_guard<std::mutex> lock(mu_);
  char line[1024];
  std::snprintf(line, sizeof(line),
                "dpsr_front_end: calls accepted %lld, forwarded %lld, queued %lld, "
                "dropped before their turn %lld, refused (queue full) %lld, answers refused "
                "(unread budget) %lld, clients held back %lld, passed without a turn "
                "%lld, run newest first (overload) %lld, refused (overloaded) %lld, refused (deadline "
                "before its turn) %lld; service time %lld us; limits: %d running, %d per "
                "client; now running %d, waiting %zu; framed %lld; refused (stopping) %lld; "
                "refused (request bytes) %lld; refused (string over the limit) %lld",
                (long long)accepted_.load(), (long long)forwarded_.load(),
                (long long)queued_.load(), (long long)dropped_waiting_.load(),
                (long long)refused_.load(), (long long)unread_refused_.load(),
                (long long)held_back_.load(), (long long)unmetered_.load(),
                gate_.newest_first(), (long long)overloaded_.load(),
                (long long)cannot_finish_.load(), gate_.service_time(), options_.max_running,
                gate_.max_running_per_client(), gate_.running(), gate_.queued(),
                (long long)framed_calls_.load(), (long long)stopping_refused_.load(),
                (long long)request_refused_.load(), (long long)overlong_string_.load());
  return line;
}

void FrontEnd::Start(Started started) {
  // A call whose client left while it waited gives its slot straight back, which may hand
  // out more calls: a loop, not recursion, however many of them a closed connection left.
  while (!started.empty()) {
    Started more;
    for (const auto& s : started) {
      if (!s.second->LeftBeforeItsTurn()) {
        forwarded_.fetch_add(1, std::memory_order_relaxed);
        s.second->StartBackend();
        continue;
      }
      dropped_waiting_.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(mu_);
      Append(&more, gate_.Release(s.first, NowMicros()));
      Append(&more, gate_.Ended(s.first, /*delivered=*/false, NowMicros()));
    }
    started = std::move(more);
  }
}

FrontEnd::Started FrontEnd::UpdateStrangerLimit() {
  return gate_.LimitStrangers(
      OverTotal() && first_unread_ > static_cast<size_t>(options_.hold_back_total_unread_bytes),
      NowMicros());
}

FrontEnd::Started FrontEnd::UpdateHoldBack(const std::string& client, size_t held) {
  bool hold = held > static_cast<size_t>(options_.hold_back_unread_bytes) ||
              (OverTotal() && held > kSmallUnread);
  if (hold == gate_.held_back(client)) return {};
  if (hold) held_back_.fetch_add(1, std::memory_order_relaxed);
  return gate_.HoldBack(client, hold, NowMicros());
}

}  // namespace front_end
}  // namespace dpsr
