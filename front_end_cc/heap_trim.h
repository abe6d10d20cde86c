// Freed heap pages returned to the system while the front end runs. glibc keeps what a thread
// frees in its arena, and gRPC assembles a large request from many small read buffers: after a
// burst of calls of a few MiB each is refused or answered, their pages stay resident (8
// connections of 200 calls of 8 MiB: about 850 MiB still resident 2 s after the last call)
// until malloc_trim walks the arenas. The rule is the Python server's (dpsr_tf/serving/
// heap_trim.py): trim whenever the resident size is kMinGrowthBytes above what it was after
// the last trim, checked every kIntervalMillis, so a quiet front end never pays for a walk;
// and again at the next check while a trim releases that much (the calls of a burst are freed
// after the trim that ran during it, without the resident size growing).
//
// TrimRule is standard C++ with the sizes passed in, unit-tested (heap_trim_test.cc);
// HeapTrimmer runs it on a thread of its own with glibc's malloc_trim.
#ifndef DPSR_FRONT_END_CC_HEAP_TRIM_H_
#define DPSR_FRONT_END_CC_HEAP_TRIM_H_

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <mutex>
#include <thread>

namespace dpsr {
namespace front_end {

class TrimRule {
 public:
  static constexpr size_t kMinGrowthBytes = 16 << 20;

  explicit TrimRule(size_t rss_at_start) : mark_(rss_at_start) {}

  // Whether to trim now, the resident size being `rss`. A fall lowers the mark, so growth is
  // counted from the lowest size seen since the last trim.
  bool Due(size_t rss) {
    if (!paying_ && rss < mark_ + kMinGrowthBytes) {
      mark_ = std::min(mark_, rss);
      return false;
    }
    return true;
  }

  // A trim took the resident size from `before` to `after`.
  void Trimmed(size_t before, size_t after) {
    mark_ = after;
    ++trims_;
    const size_t released = before > after ? before - after : 0;
    released_ += released;
    paying_ = released >= kMinGrowthBytes;
  }

  size_t trims() const { return trims_; }
  size_t released() const { return released_; }

 private:
  size_t mark_;
  size_t trims_ = 0, released_ = 0;
  bool paying_ = false;  // the last trim released kMinGrowthBytes or more
};

// This process's resident set size in bytes, from /proc/self/statm (0 where there is none).
inline size_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const bool read = std::fscanf(f, "%llu %llu", &size, &resident) == 2;
  std::fclose(f);
  return read ? static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

class HeapTrimmer {
 public:
  static constexpr int kIntervalMillis = 500;

  HeapTrimmer() : rule_(ResidentBytes()) {}
  ~HeapTrimmer() { Stop(); }

  void Start() {
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!cv_.wait_for(lock, std::chrono::milliseconds(kIntervalMillis),
                           [this] { return stopping_; })) {
        const size_t before = ResidentBytes();
        if (!rule_.Due(before)) continue;
        malloc_trim(0);
        rule_.Trimmed(before, ResidentBytes());
      }
    });
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Read after Stop (the thread updates them).
  size_t trims() const { return rule_.trims(); }
  size_t released_mib() const { return rule_.released() >> 20; }

 private:
  TrimRule rule_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_HEAP_TRIM_H_
