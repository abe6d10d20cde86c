// dpsr_front_end: a gRPC front end in C++ that takes every client call off the Python servers'
// event loop until its turn comes. This file is the process: flags, the listening socket,
// signals and the drain at exit; the work is in front_end_service.h (the service and what calls
// share) and call_reactor.h (one call), with the turn order in fair_gate.h and the accepting
// of connections in listener.h.
//
// Why: `dpsr serve` and `dpsr proxy` run their gRPC servers on one Python event loop, which
// spends CPU on each call it sees, so a burst of calls (zero-window readers, cancelled bursts, a
// flood) holds every other client's next call behind it (docs/benchmarks.md, "Misbehaving
// clients"). Here each call costs C++ time on gRPC's own threads, waits in a
// per-client queue (fair_gate.h: clients in turn, at most half the backend slots to one client,
// a new client's share opened as its answers are delivered), and reaches the Python server only
// when its turn comes.
//
// Usage (dpsr_tf/serving/front_end.py starts it for `dpsr serve --front_end=native`, on a
// listening socket it keeps open across restarts of this process):
//   dpsr_front_end --listen_fd=N --backend=unix:/path/to/socket ...
// It prints "dpsr_front_end listening on port N" once serving, and on SIGTERM/SIGINT stops
// accepting, drains (drain.h: later calls refused UNAVAILABLE, at most --grace_seconds) and
// prints one line of counts.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <grpc/compression.h>
#include <grpcpp/grpcpp.h>

#include "front_end_cc/accept_shedding.h"
#include "front_end_cc/flags.h"
#include "front_end_cc/front_end_service.h"
#include "front_end_cc/heap_trim.h"
#include "front_end_cc/listener.h"

namespace dpsr {
namespace front_end {
namespace {

// Connections hold one descriptor each: a low soft limit (often 1,024) lets a few idle clients
// use them all, when the hard limit would allow far more.
void RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

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
  RaiseFileLimit();
  if (!ReserveDescriptorForShedding()) {
    std::fprintf(stderr, "dpsr_front_end: no descriptor to hold in reserve yet; while "
                 "descriptors are out, new connections may wait in the backlog\n");
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // every gRPC thread inherits the mask
  std::string error;
  const int listen_fd = options.listen_fd;
  int port = BoundPort(listen_fd);
  if (port == 0) {
    std::fprintf(stderr, "dpsr_front_end: --listen_fd=%d is not a listening TCP socket\n",
                 listen_fd);
    return 1;
  }

  FrontEnd front_end(options);
  grpc::ServerBuilder builder;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor =
      builder.experimental().AddExternalConnectionAcceptor(
          grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
          grpc::InsecureServerCredentials());
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
  // gRPC inflates a compressed message in full before it compares the size with the limit
  // (a 1 MB gzip request can become 1 GiB): only uncompressed requests are accepted; a
  // compressed one is refused UNIMPLEMENTED before its message is read (docs/serving.md).
  if (!user.count(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET)) {
    builder.AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET,
                               1 << GRPC_COMPRESS_NONE);
  }
  for (const auto& [key, value] : user) AddChannelArgument(&builder, key, value);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "dpsr_front_end: the gRPC server did not start (see above)\n");
    return 1;
  }
  Listener listener(listen_fd, acceptor.get());
  if (!listener.Start(&error)) {
    std::fprintf(stderr, "dpsr_front_end: %s\n", error.c_str());
    return 1;
  }
  HeapTrimmer trimmer;
  trimmer.Start();
  std::printf("dpsr_front_end listening on port %d\n", port);
  std::fflush(stdout);
  if (getppid() == 1) return 0;  // the parent died before prctl took hold

  int sig = 0;
  sigwait(&signals, &sig);
  // Stop taking connections before the drain. Closing our descriptor closes the port unless
  // the server that started us still holds it (it closes its own before asking us to stop).
  listener.Stop();
  close(listen_fd);
  // Drain by refusal (drain.h): Shutdown only once the calls admitted before have finished, so
  // that gRPC has no received-but-unhandled call left to cancel.
  const long long left =
      front_end.DrainFor(static_cast<long long>(options.grace_seconds * 1e6));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::microseconds(left));
  server->Wait();
  trimmer.Stop();
  std::fprintf(stderr, "%s; connections shed (descriptors out) %llu; heap trims %zu, %zu MiB "
               "released\n", front_end.Summary().c_str(),
               static_cast<unsigned long long>(ShedConnections()), trimmer.trims(),
               trimmer.released_mib());
  return 0;
}

}  // namespace
}  // namespace front_end
}  // namespace dpsr

int main(int argc, char** argv) { return dpsr::front_end::Main(argc, argv); }
