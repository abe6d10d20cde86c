// The command line of dpsr_front_end: every setting the process takes (Options) and the parser
// that fills them from argv, exiting with a usage message on a bad flag.
#ifndef DPSR_FRONT_END_CC_FLAGS_H_
#define DPSR_FRONT_END_CC_FLAGS_H_

#include <map>
#include <string>

namespace dpsr {
namespace front_end {

struct Options {
  // The listening socket to accept from, opened and kept by the Python server that starts this
  // process (dpsr_tf/serving/front_end.py), so the port stays open while it is replaced
  // (listener.h). Required.
  int listen_fd = -1;
  std::string backend;
  // A UNIX socket path: Predict calls go to the server as frames there (framed_backend.h)
  // instead of as gRPC calls on --backend; empty: every call on --backend.
  std::string framed_backend;
  // 0: derived from the usable cores (ResolveLimits): 16 per core in all, 2 per core per client.
  int max_running = 0;
  int max_running_per_client = 0;
  int initial_running_per_client = 2;  // slow start (fair_gate.h); 0: none
  long max_queued_per_client = 4096;
  long max_queued = 65536;
  long lifo_after_ms = 0;  // adaptive LIFO (fair_gate.h); 0: arrival order always
  long queue_target_ms = 5;     // queue delay control (fair_gate.h); 0: off
  long queue_interval_ms = 100;
  int max_streams_per_connection = 128;
  long max_receive_message_bytes = 64L << 20;
  long max_unread_bytes_per_client = 64L << 20;
  // Bytes of requests read and not yet answered (request_budget.h): per client, and all
  // together. 0: derived in ResolveLimits from max_receive_message_bytes.
  long max_request_bytes_per_client = 0;
  long max_request_bytes = 0;
  // A Predict request of this many bytes or more goes over gRPC, not the framed hop; 0: none.
  long framed_max_request_bytes = 1L << 20;
  // A Predict request with a string input element longer than this is refused here, as the
  // server behind would refuse it (string_limit.h); 0: none refused here.
  long max_string_input_bytes = 0;
  long hold_back_unread_bytes = 4L << 20;
  long hold_back_total_unread_bytes = 8L << 20;
  std::string client_metadata_key = "dpsr-client";
  double grace_seconds = 10.0;
  // --channel_arg=KEY=VALUE, repeated: the user's --grpc_channel_arguments, applied to the
  // listening port as TF Serving applies them to its own (an integer VALUE is an int).
  std::map<std::string, std::string> channel_args;
};

// The CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1.
int UsableCores();

// Options with max_running and max_running_per_client of 0 given their values for `cores`:
// 16 calls at the backend per core (a backend's run threads and batches need calls waiting at
// it to keep every core busy), 2 per core from one client (one computing and one in transfer
// per core: one client alone can still fill the machine), at most max_running. Request byte
// budgets of 0: one largest message per client, two in all (past that, small calls still pass).
Options ResolveLimits(Options o, int cores);

// --flag=value arguments into Options. A bad or unknown flag, or no --backend, prints the usage
// to stderr and exits with status 2: the process has nothing to serve without them.
Options ParseFlags(int argc, char** argv);

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_FLAGS_H_
