// The listening socket and the thread that accepts from it, handing each connection to gRPC.
//
// Why the front end accepts for gRPC rather than letting gRPC listen: the socket can then be
// one the Python server opened and keeps (--listen_fd). When the front end dies and is started
// again, the port never closes: connections made meanwhile wait in the kernel's backlog for the
// new process instead of being refused, and a refused client would wait out its reconnect
// backoff (gRPC's: 1 s, growing) before trying again. It also keeps accepting through any
// accept error (gRPC 1.51's listener gives up for good on all but EAGAIN/ECONNABORTED).
#ifndef DPSR_FRONT_END_LISTENER_H_
#define DPSR_FRONT_END_LISTENER_H_

#include <atomic>
#include <string>
#include <thread>

#include <grpcpp/server_builder.h>

namespace dpsr {
namespace front_end {

// The port `fd` is bound to (0 if it is not a bound TCP socket).
int BoundPort(int fd);

class Listener {
 public:
  // Accepts from the listening socket `fd` (owned by the caller, which must keep it open until
  // Stop returns) and hands each connection to `acceptor`.
  Listener(int fd, grpc::experimental::ExternalConnectionAcceptor* acceptor);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Starts the accepting thread; false (with `error`) when it cannot.
  bool Start(std::string* error);
  // Stops accepting and joins the thread; connections still in the backlog stay there.
  void Stop();

 private:
  void Run();

  const int fd_;
  grpc::experimental::ExternalConnectionAcceptor* const acceptor_;
  int wake_[2] = {-1, -1};  // a pipe: Stop writes to it to end the thread's poll
  std::thread thread_;
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_LISTENER_H_
