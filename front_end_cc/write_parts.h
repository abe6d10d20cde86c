// Bytes in several parts written to a stream socket in order, as one stream, without joining
// them: the framed Predict hop (framed_backend.cc) writes a frame's head and the request where
// gRPC holds it, in the read buffers it arrived in (dozens for a request of a few MiB), so no
// request is ever copied into one large buffer that glibc would keep after it is freed.
//
// POSIX only (sendmsg), header-only, unit-tested over a socket pair (write_parts_test.cc).
#ifndef DPSR_FRONT_END_CC_WRITE_PARTS_H_
#define DPSR_FRONT_END_CC_WRITE_PARTS_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

namespace dpsr {
namespace front_end {

// Writes every byte of `parts` (empty ones allowed) in order through `send(iov, n)`, which
// writes from up to n <= `max_per_call` buffers and returns what sendmsg does: the bytes it
// wrote, which may stop inside any part (the next call then resumes there), or -1 with errno.
template <typename Send>
bool WritePartsWith(Send send, std::vector<std::string_view> parts, size_t max_per_call) {
  std::vector<iovec> iov;
  iov.reserve(std::min(parts.size(), max_per_call));
  size_t first = 0;  // the first part not yet written whole
  while (true) {
    while (first < parts.size() && parts[first].empty()) ++first;
    if (first == parts.size()) return true;
    iov.clear();
    for (size_t i = first; i < parts.size() && iov.size() < max_per_call; ++i) {
      if (!parts[i].empty()) iov.push_back({const_cast<char*>(parts[i].data()), parts[i].size()});
    }
    const ssize_t written = send(iov.data(), iov.size());
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return false;
    for (size_t left = static_cast<size_t>(written); left > 0; ++first) {
      const size_t taken = std::min(left, parts[first].size());
      parts[first].remove_prefix(taken);
      left -= taken;
      if (!parts[first].empty()) break;  // written in part: the next call resumes in it
    }
  }
}

// The parts written to the blocking stream socket `fd`, at most `max_per_call` per sendmsg
// (IOV_MAX on Linux is 1,024). False when the socket fails or the peer has gone (no SIGPIPE);
// how much was written is then unknown.
inline bool WriteParts(int fd, std::vector<std::string_view> parts, size_t max_per_call = 1024) {
  auto send = [fd](const iovec* iov, size_t n) {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov);
    msg.msg_iovlen = n;
    return sendmsg(fd, &msg, MSG_NOSIGNAL);
  };
  return WritePartsWith(send, std::move(parts), max_per_call);
}

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_WRITE_PARTS_H_
