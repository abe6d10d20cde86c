// dpsr_front_end: a gRPC front end in C++ that takes every client call off the Python servers'
// event loop until its turn comes. This file is the process: flags, the listening port, signals
// and the drain at exit; the work is in front_end_service.h (the service and what calls share)
// and call_reactor.h (one call), with the turn order in fair_gate.h.
//
// Why: `dpsr serve` and `dpsr proxy` run their gRPC servers on one Python event loop, which
// spends CPU on each call it sees, so a burst of calls (zero-window readers, cancelled bursts, a
// flood) holds every other client's next call behind it (docs/benchmarks.md, "Misbehaving
// clients"). Here each call costs C++ time on gRPC's own threads, waits in a
// per-client queue (fair_gate.h: clients in turn, at most half the backend slots to one client,
// a new client's share opened as its answers are delivered), and reaches the Python server only
// when its turn comes.
//
// Usage (dpsr_tf/serving/front_end.py starts it for `dpsr serve --front_end=native`):
//   dpsr_front_end --listen=127.0.0.1:0 --backend=unix:/path/to/socket [--max_running=32] ...
// It prints "dpsr_front_end listening on port N" once serving, and on SIGTERM/SIGINT drains
// for --grace_seconds and prints one line of counts.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "front_end_cc/flags.h"
#include "front_end_cc/front_end_service.h"

namespace dpsr {
namespace front_end {
namespace {

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
