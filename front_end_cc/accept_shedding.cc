// See accept_shedding.h for why connections are shed while descriptors are out.
#include "front_end_cc/accept_shedding.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <mutex>

namespace dpsr {
namespace front_end {
namespace {

constexpr int kAcceptFlags = SOCK_NONBLOCK | SOCK_CLOEXEC;

std::mutex reserve_mu;
int reserve_fd = -1;  // guarded by reserve_mu; -1 until reserved, or while lent out
std::atomic<uint64_t> shed_total{0};
std::atomic<bool> shedding{false};  // in an episode: for one log line at its start and end

int OpenReserve() { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

// Lends the reserve descriptor to accept one waiting connection and closes it (`cause`: the
// accept's errno, for the log). Returns false when nothing was shed: the backlog is empty
// (EAGAIN), or no descriptor could be freed.
bool ShedOne(int listener, int cause) {
  std::lock_guard<std::mutex> lock(reserve_mu);
  if (reserve_fd < 0) reserve_fd = OpenReserve();  // a descriptor freed since the last try
  if (reserve_fd < 0) return false;
  close(reserve_fd);
  reserve_fd = -1;
  int connection = accept4(listener, nullptr, nullptr, kAcceptFlags);
  int accept_errno = errno;
  if (connection >= 0) close(connection);
  reserve_fd = OpenReserve();  // the descriptor just freed, unless another thread took it
  if (connection < 0) {
    errno = accept_errno;
    return false;
  }
  uint64_t shed = shed_total.fetch_add(1) + 1;
  if (!shedding.exchange(true)) {
    std::fprintf(stderr, "dpsr_front_end: descriptors ran out (%s); closing new connections "
                 "at accept until some are free (%llu shed so far)\n",
                 cause == ENFILE ? "ENFILE" : "EMFILE",
                 static_cast<unsigned long long>(shed));
  }
  return true;
}

}  // namespace

bool ReserveDescriptorForShedding() {
  std::lock_guard<std::mutex> lock(reserve_mu);
  if (reserve_fd < 0) reserve_fd = OpenReserve();
  return reserve_fd >= 0;
}

uint64_t ShedConnections() { return shed_total.load(); }

int AcceptOrShed(int listener) {
  for (;;) {
    int connection = accept4(listener, nullptr, nullptr, kAcceptFlags);
    if (connection >= 0) {
      if (shedding.exchange(false)) {
        std::fprintf(stderr, "dpsr_front_end: accepting connections again (%llu shed in all)\n",
                     static_cast<unsigned long long>(ShedConnections()));
      }
      return connection;
    }
    if (errno != EMFILE && errno != ENFILE) return -1;
    if (!ShedOne(listener, errno)) {
      errno = EAGAIN;  // the backlog is empty, or no descriptor could be freed
      return -1;
    }
  }
}

}  // namespace front_end
}  // namespace dpsr
