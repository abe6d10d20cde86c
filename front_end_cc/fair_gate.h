// Which waiting call goes to the backend next: at most `max_running` calls at the backend, at
// most `max_running_per_client` of them from one client, and the waiting calls of different
// clients taken in turn (round robin), each client's own in arrival order. A client that fires
// 2,000 calls therefore delays another client's next call by at most one call per client ahead
// of it, not by 2,000.
//
// Slow start: a client's calls started and not yet ended (answered AND read, or given up) are
// at most its window, which begins at `initial_window` and grows by one with each call that ends
// delivered (Ended), up to max_running_per_client. A client that never reads its answers so
// never gets more than initial_window calls computed, while one that reads ramps up to its
// share within a few answers. The window is forgotten with the client once it has nothing
// started or waiting.
//
// A client can be held back (its answers pile up unread): its calls then wait, however many
// slots are free, until it is let go again.
//
// Strangers: a call offered as a stranger's (a client none of whose answers has been read yet)
// counts apart. All strangers together run at most one client's share of calls at once, and
// while they are limited (LimitStrangers: the front end's first answers are over their budget,
// i.e. many connections ask and never read) one call at a time. Why: each connection takes its
// turn, so 300 connections that each open one call and never read took 300 of every 301 turns,
// and a reading client waited behind all of them (docs/benchmarks.md, "The native front end");
// limited, they share one slot, and the clients that read keep the rest. One slot rather than
// a client's share: four such calls at once still took the CPU from the readers' (hostile_bench.py,
// 300 connections: normal p99 649 ms with four, 134 ms with one, loaded machine). A client's
// share before the limit: otherwise the first 32 strangers all ran before the budget filled,
// and their burst alone set the readers' p99. A stranger that reads its answer becomes a
// reader at once, so a new honest client waits for a stranger slot once at most.
//
// Overload (adaptive LIFO): a client's calls run in arrival order while its oldest waiting call
// has waited less than `lifo_after` microseconds; past that its newest waiting call runs next.
// Why: a client sending faster than its share is served builds a queue that, in arrival order,
// only ever hands the backend its oldest calls, which have waited nearly their whole deadline:
// every answer comes late and the client's answered rate collapses (docs/benchmarks.md,
// "Misbehaving clients"). Newest first, the calls that run
// still have their deadline ahead of them, and the old ones expire where they wait, never
// reaching the backend. The times are the caller's (Offer and the methods that start calls
// take `now`), so the order is testable; 0 = arrival order always.
//
// Overload (queue delay, CoDel at arrival): past capacity a client's queue only grows, and in
// arrival order every call waits nearly its whole deadline. With `queue.target` set, a client
// whose oldest waiting call has waited at least the target for a whole `queue.interval`
// (a standing queue, not a burst) has its new calls refused at once (kOverloaded) until its
// oldest waiting call is younger than the target again. The refused calls cost the backend
// nothing and their clients learn in microseconds; the queue stays about one target deep, so
// the calls admitted are answered fast. A client refused within the last `kRefusalMemory`
// intervals is refused again as soon as its oldest call waits past the target, without a new
// interval of grace (CoDel's memory of its last dropping state): otherwise, past capacity, each
// grace admitted a whole interval of arrivals (at 3x capacity, 100 ms of calls that took 300 ms
// to serve: answered calls waited 170 ms at the median). A burst after a quiet spell still has
// its whole interval. The target is the larger of `queue.target` and the measured service time
// (ObserveService: how long a call holds its backend slot, averaged), so a servable whose calls
// take 50 ms is not refused for queueing one call's worth.
//
// With the control on, a call that brings its deadline (`deadline_left` >= 0) and could not
// start before it ends (its client's waiting calls ahead of it, in turns of the client's share,
// each one service time) is refused at once too (kCannotFinish) instead of expiring in the
// queue.
//
// Standard C++ only and not thread-safe: the front end holds its lock around every method and
// starts the calls Release() hands back after dropping it.
#ifndef DPSR_FRONT_END_CC_FAIR_GATE_H_
#define DPSR_FRONT_END_CC_FAIR_GATE_H_

#include <algorithm>
#include <cstddef>
#include <deque>
#include <list>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace dpsr {
namespace front_end {

enum class Admission {
  kRun,                  // start it now: a slot was free
  kQueued,               // it waits its client's turn
  kClientQueueFull,      // refused: its client already has max_queued_per_client waiting
  kQueueFull,            // refused: max_queued calls wait in all
  kOverloaded,           // refused: its client's queue has stood above the delay target
  kCannotFinish,         // refused: its deadline ends before its expected turn
};

// The queue delay control (see above); times in the caller's unit (the front end: us).
struct QueueDelay {
  long long target = 0;       // 0: off
  long long interval = 100000;
};

template <typename T>
class FairGate {
 public:
  // max_running >= 1; max_running_per_client in [1, max_running] (0: half of max_running, at
  // least 1); queue limits >= 1; initial_window in [1, max_running_per_client] (0: no slow
  // start, the whole share at once).
  FairGate(int max_running, int max_running_per_client, size_t max_queued_per_client,
           size_t max_queued, int initial_window = 0, long long lifo_after = 0,
           QueueDelay queue = QueueDelay())
      : max_running_(std::max(1, max_running)),
        max_per_client_(max_running_per_client > 0
                            ? std::min(max_running_per_client, max_running_)
                            : std::max(1, max_running_ / 2)),
        max_queued_per_client_(std::max<size_t>(1, max_queued_per_client)),
        max_queued_(std::max<size_t>(1, max_queued)),
        slow_start_(initial_window > 0),
        initial_window_(slow_start_ ? std::min(initial_window, max_per_client_)
                                    : max_per_client_),
        lifo_after_(std::max(0LL, lifo_after)),
        queue_(queue) {}

  // A new call of `client`, arrived at `now`, with `deadline_left` until its deadline (< 0:
  // none). Counts it as running when the answer is kRun; keeps it when kQueued.
  // `stranger`: none of the client's answers has been read yet (see above).
  Admission Offer(const std::string& client, T item, long long now = 0,
                  long long deadline_left = -1, bool stranger = false) {
    Client& c = Find(client);
    c.stranger = stranger;
    if (c.waiting.empty() && CanStart(client, c) && running_ < max_running_) {
      CountStart(c);
      return Admission::kRun;
    }
    Admission refusal = Admission::kRun;
    if (c.waiting.size() >= max_queued_per_client_) refusal = Admission::kClientQueueFull;
    else if (queued_ >= max_queued_) refusal = Admission::kQueueFull;
    else if (Standing(c, now)) refusal = Admission::kOverloaded;
    else if (queue_.target > 0 && deadline_left >= 0 && ExpectedWait(c) > deadline_left) {
      refusal = Admission::kCannotFinish;
    }
    if (refusal != Admission::kRun) {
      Forget(client, c);
      return refusal;
    }
    c.waiting.push_back(Waiting{std::move(item), now});
    ++queued_;
    if (!c.in_ring) {
      ring_.push_back(client);
      c.in_ring = true;
    }
    return Admission::kQueued;
  }

  // Takes a waiting call out (its client gave up). False when it is not waiting (already handed
  // out by Release, or never queued).
  bool Remove(const std::string& client, const T& item) {
    auto it = clients_.find(client);
    if (it == clients_.end()) return false;
    std::deque<Waiting>& waiting = it->second.waiting;
    auto pos = std::find_if(waiting.begin(), waiting.end(),
                            [&item](const Waiting& w) { return w.item == item; });
    if (pos == waiting.end()) return false;
    waiting.erase(pos);
    --queued_;
    if (waiting.empty()) DropFromRing(client, it->second);
    Forget(client, it->second);
    return true;
  }

  // A running call of `client` ended at `now`. Returns the waiting calls that now run, as
  // (client, item), each already counted as running.
  std::vector<std::pair<std::string, T>> Release(const std::string& client, long long now = 0) {
    auto it = clients_.find(client);
    if (it != clients_.end() && it->second.running > 0) {
      --it->second.running;
      --running_;
      if (it->second.stranger_running > 0) {
        --it->second.stranger_running;
        --strangers_running_;
      }
      Forget(client, it->second);
    }
    return Dispatch(now);
  }

  // Limits strangers' calls to one at a time in all (true) or to one client's share (false);
  // returns the waiting calls that run now, as Release does.
  std::vector<std::pair<std::string, T>> LimitStrangers(bool limit, long long now = 0) {
    if (limit == strangers_limited_) return {};
    strangers_limited_ = limit;
    return limit ? std::vector<std::pair<std::string, T>>() : Dispatch(now);
  }
  bool strangers_limited() const { return strangers_limited_; }
  int strangers_running() const { return strangers_running_; }

  // Holds `client`'s calls back (true) or lets them go again (false); returns the waiting calls
  // that run now, as Release does.
  std::vector<std::pair<std::string, T>> HoldBack(const std::string& client, bool hold,
                                                  long long now = 0) {
    if (hold) {
      held_back_.insert(client);
      return {};
    }
    held_back_.erase(client);
    return Dispatch(now);
  }

  // A started call of `client` ended (after its Release): `delivered` when its answers reached
  // the client, which grows the client's window by one (up to its share). Returns the waiting
  // calls that run now, as Release does.
  std::vector<std::pair<std::string, T>> Ended(const std::string& client, bool delivered,
                                               long long now = 0) {
    auto it = clients_.find(client);
    if (it == clients_.end() || it->second.started == 0) return {};
    Client& c = it->second;
    --c.started;
    if (delivered && c.window < max_per_client_) ++c.window;
    Forget(client, c);
    return Dispatch(now);
  }

  // A call held its backend slot for `held` (the service time that targets and expected waits
  // are measured in): an average that follows the latest calls, as TCP's smoothed RTT.
  void ObserveService(long long held) {
    held = std::max(0LL, held);
    service_ = service_ == 0 ? std::max(1LL, held) : std::max(1LL, service_ + (held - service_) / 8);
  }
  long long service_time() const { return service_; }  // 0: none measured yet
  long long delay_target() const { return std::max(queue_.target, service_); }

  int window_of(const std::string& client) const {
    auto it = clients_.find(client);
    return it == clients_.end() ? initial_window_ : it->second.window;
  }

  bool held_back(const std::string& client) const { return held_back_.count(client) > 0; }

  int running() const { return running_; }
  size_t queued() const { return queued_; }
  int running_of(const std::string& client) const {
    auto it = clients_.find(client);
    return it == clients_.end() ? 0 : it->second.running;
  }
  size_t clients() const { return clients_.size(); }  // with a call running or waiting
  int max_running_per_client() const { return max_per_client_; }
  long long newest_first() const { return newest_first_; }  // calls run out of arrival order

 private:
  // The waiting calls that can run now, counted as running.
  std::vector<std::pair<std::string, T>> Dispatch(long long now) {
    std::vector<std::pair<std::string, T>> started;
    // One pass over the ring per started call at most: a client at its share or held back is
    // skipped and keeps its place; the one served moves to the back.
    while (running_ < max_running_ && !ring_.empty()) {
      bool any = false;
      for (auto r = ring_.begin(); r != ring_.end(); ++r) {
        Client& c = clients_[*r];
        if (!CanStart(*r, c)) continue;
        if (lifo_after_ > 0 && c.waiting.size() > 1 &&
            now - c.waiting.front().since >= lifo_after_) {
          started.emplace_back(*r, std::move(c.waiting.back().item));
          c.waiting.pop_back();
          ++newest_first_;
        } else {
          started.emplace_back(*r, std::move(c.waiting.front().item));
          c.waiting.pop_front();
        }
        --queued_;
        CountStart(c);
        std::string name = *r;
        ring_.erase(r);
        if (c.waiting.empty()) c.in_ring = false;
        else ring_.push_back(name);
        any = true;
        break;
      }
      if (!any) break;
    }
    return started;
  }

  struct Waiting {
    T item;
    long long since;  // when it was offered
  };

  struct Client {
    std::deque<Waiting> waiting;
    int running = 0;  // started, not yet Released (at the backend)
    int started = 0;  // started, not yet Ended
    int window = 0;   // the most `started` may be (slow start)
    bool in_ring = false;
    bool stranger = false;     // as its latest call was offered
    int stranger_running = 0;  // of `running`, started while it was a stranger
    long long above_until = 0;  // its queue stands above target from then on; 0: below
    long long refused_at = -1;  // when a standing queue last refused one of its calls; -1: never
  };

  // How long (in intervals) a client's last refusal is remembered (CoDel re-enters its dropping
  // state at once within 16 intervals of leaving it).
  static constexpr long long kRefusalMemory = 16;

  // Whether `c`'s oldest waiting call has waited past the target for a whole interval (CoDel's
  // standing queue), evaluated at `now`; a queue below the target starts the interval again,
  // unless the client was refused within the last kRefusalMemory intervals: then at once.
  bool Standing(Client& c, long long now) {
    if (queue_.target <= 0 || c.waiting.empty() ||
        now - c.waiting.front().since < delay_target()) {
      c.above_until = 0;
      return false;
    }
    if (c.above_until == 0) {
      bool recent = c.refused_at >= 0 && now - c.refused_at < kRefusalMemory * queue_.interval;
      c.above_until = recent ? now : now + queue_.interval;
    }
    if (now < c.above_until) return false;
    c.refused_at = now;
    return true;
  }

  // When a new call of `c` would start: one service time per turn of its share, behind its
  // waiting calls. 0 while no service time is measured.
  long long ExpectedWait(const Client& c) const {
    int share = slow_start_ ? std::min(c.window, max_per_client_) : max_per_client_;
    long long turns = static_cast<long long>(c.waiting.size()) / std::max(1, share) + 1;
    return turns * service_;
  }

  bool CanStart(const std::string& name, const Client& c) const {
    return c.running < max_per_client_ && (!slow_start_ || c.started < c.window) &&
           held_back_.count(name) == 0 &&
           !(c.stranger &&
             strangers_running_ >= (strangers_limited_ ? kStrangerSlots : max_per_client_));
  }

  void CountStart(Client& c) {
    ++c.running;
    if (slow_start_) ++c.started;
    ++running_;
    if (c.stranger) {
      ++c.stranger_running;
      ++strangers_running_;
    }
  }

  Client& Find(const std::string& client) {
    auto it = clients_.find(client);
    if (it != clients_.end()) return it->second;
    Client& c = clients_[client];
    c.window = initial_window_;
    return c;
  }

  void DropFromRing(const std::string& client, Client& c) {
    if (!c.in_ring) return;
    ring_.remove(client);
    c.in_ring = false;
  }

  // A client with nothing running or waiting is forgotten, so the map holds only live clients.
  void Forget(const std::string& client, const Client& c) {
    if (c.running == 0 && c.started == 0 && c.waiting.empty() && !c.in_ring) {
      clients_.erase(client);
    }
  }

  static constexpr int kStrangerSlots = 1;  // strangers' calls at once, while limited
  const int max_running_;
  const int max_per_client_;
  const size_t max_queued_per_client_;
  const size_t max_queued_;
  const bool slow_start_;
  const int initial_window_;
  const long long lifo_after_;
  const QueueDelay queue_;
  long long service_ = 0;
  long long newest_first_ = 0;
  int running_ = 0;
  int strangers_running_ = 0;
  bool strangers_limited_ = false;
  size_t queued_ = 0;
  std::unordered_map<std::string, Client> clients_;
  std::list<std::string> ring_;  // clients with calls waiting, in the order they are served
  std::unordered_set<std::string> held_back_;
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_FAIR_GATE_H_
