// See accept_shedding.h for why the executable defines accept4().
#include "front_end_cc/accept_shedding.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <mutex>

namespace dpsr {
namespace front_end {
namespace {

// The system call itself: what libc's accept4 wraps (this file's accept4 replaces libc's in the
// process, so it cannot call that one by name).
int SystemAccept4(int listener, sockaddr* address, socklen_t* length, int flags) {
  return static_cast<int>(syscall(SYS_accept4, listener, address, length, flags));
}

std::mutex reserve_mu;
int reserve_fd = -1;  // guarded by reserve_mu; -1 until reserved, or while lent out
std::atomic<uint64_t> shed_total{0};
std::atomic<bool> shedding{false};  // in an episode: for one log line at its start and end

int OpenReserve() { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

// Lends the reserve descriptor to accept one waiting connection and closes it (`cause`: the
// accept's errno, for the log). Returns false when nothing was shed: the backlog is empty
// (EAGAIN), or no descriptor could be freed.
bool ShedOne(int listener, int flags, int cause) {
  std::lock_guard<std::mutex> lock(reserve_mu);
  if (reserve_fd < 0) reserve_fd = OpenReserve();  // a descriptor freed since the last try
  if (reserve_fd < 0) return false;
  close(reserve_fd);
  reserve_fd = -1;
  int connection = SystemAccept4(listener, nullptr, nullptr, flags | SOCK_CLOEXEC);
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

}  // namespace front_end
}  // namespace dpsr

// Exported by the executable, so gRPC's listener calls this one (accept_shedding.h).
extern "C" int accept4(int listener, sockaddr* address, socklen_t* length, int flags) {
  using namespace dpsr::front_end;  // NOLINT: the C entry point of this file's namespace
  for (;;) {
    int connection = SystemAccept4(listener, address, length, flags);
    if (connection >= 0) {
      if (shedding.exchange(false)) {
        std::fprintf(stderr, "dpsr_front_end: accepting connections again (%llu shed in all)\n",
                     static_cast<unsigned long long>(ShedConnections()));
      }
      return connection;
    }
    if (errno != EMFILE && errno != ENFILE) return -1;
    if (!ShedOne(listener, flags, errno)) {
      // The backlog is empty, or no descriptor could be freed: gRPC re-arms on EAGAIN and
      // tries again at the next connection.
      errno = EAGAIN;
      return -1;
    }
  }
}
