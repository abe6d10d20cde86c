// The listening socket and its accepting thread (listener.h).
#include "front_end_cc/listener.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#include "front_end_cc/accept_shedding.h"

namespace dpsr {
namespace front_end {
namespace {

// The accept errors that concern one connection only: skip it and go on.
bool ConnectionError(int e) {
  return e == ECONNABORTED || e == EPROTO || e == EPERM || e == EINTR || e == ENETDOWN ||
         e == ENOPROTOOPT || e == EHOSTDOWN || e == ENONET || e == EHOSTUNREACH ||
         e == EOPNOTSUPP || e == ENETUNREACH;
}

}  // namespace

int BoundPort(int fd) {
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0) return 0;
  if (bound.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (bound.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  }
  return 0;
}

Listener::Listener(int fd, grpc::experimental::ExternalConnectionAcceptor* acceptor)
    : fd_(fd), acceptor_(acceptor) {}

Listener::~Listener() {
  Stop();
  for (int end : wake_) {
    if (end >= 0) close(end);
  }
}

bool Listener::Start(std::string* error) {
  if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    *error = std::string("no pipe for the accepting thread: ") + std::strerror(errno);
    return false;
  }
  thread_ = std::thread(&Listener::Run, this);
  return true;
}

void Listener::Stop() {
  if (!thread_.joinable()) return;
  char byte = 0;
  while (write(wake_[1], &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
}

void Listener::Run() {
  pollfd polled[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
  for (;;) {
    if (poll(polled, 2, -1) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "dpsr_front_end: poll on the listening socket failed: %s\n",
                   std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (polled[1].revents != 0) return;
    int accepted = 0;
    uint64_t shed_before = ShedConnections();
    for (;;) {
      int connection = AcceptOrShed(fd_);
      if (connection < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (ConnectionError(errno)) continue;
        // Out of memory or buffers, or the socket itself is wrong: nothing to do for this
        // connection but leave it and try again shortly (never stop accepting for good).
        std::fprintf(stderr, "dpsr_front_end: accept failed: %s; trying again in 100 ms\n",
                     std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        break;
      }
      ++accepted;
      int one = 1;  // answers go out as written, as gRPC's own listener sets
      setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters p;
      p.listener_fd = fd_;
      p.fd = connection;  // gRPC owns it from here, and closes it
      acceptor_->HandleNewConnection(&p);
    }
    // Woken with nothing accepted or shed: descriptors are out with no reserve to shed with,
    // so the backlog stays readable; wait rather than spin.
    if (accepted == 0 && ShedConnections() == shed_before) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

}  // namespace front_end
}  // namespace dpsr
