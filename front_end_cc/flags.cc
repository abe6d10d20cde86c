// Parsing of dpsr_front_end's command line (flags.h).
#include "front_end_cc/flags.h"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace dpsr {
namespace front_end {
namespace {

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "dpsr_front_end: %s\n"
               "usage: dpsr_front_end --listen_fd=N --backend=unix:PATH|HOST:PORT\n"
               "  [--max_running=N] [--max_running_per_client=N] [--initial_running_per_client=N]\n"
               "  [--max_queued_per_client=N]\n"
               "  [--max_queued=N] [--lifo_after_ms=N] [--queue_target_ms=N] [--queue_interval_ms=N]\n"
               "  [--max_streams_per_connection=N]\n"
               "  [--max_receive_message_bytes=N] [--max_unread_bytes_per_client=N]\n"
               "  [--max_request_bytes_per_client=N] [--max_request_bytes=N]\n"
               "  [--framed_max_request_bytes=N] [--max_string_input_bytes=N]\n"
               "  [--hold_back_unread_bytes=N] [--hold_back_total_unread_bytes=N]\n"
               "  [--client_metadata_key=KEY] [--grace_seconds=S] [--channel_arg=KEY=VALUE ...]\n",
               why.c_str());
  std::exit(2);
}

long ParseLong(const std::string& flag, const std::string& value, long lo) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || v < lo) {
    Usage("--" + flag + "=" + value + " is not an integer >= " + std::to_string(lo));
  }
  return v;
}

}  // namespace

int UsableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

Options ResolveLimits(Options o, int cores) {
  cores = std::max(1, cores);
  if (o.max_running <= 0) o.max_running = 16 * cores;
  if (o.max_running_per_client <= 0) o.max_running_per_client = 2 * cores;
  o.max_running_per_client = std::min(o.max_running_per_client, o.max_running);
  if (o.max_request_bytes_per_client <= 0) {
    o.max_request_bytes_per_client = o.max_receive_message_bytes;
  }
  if (o.max_request_bytes <= 0) o.max_request_bytes = 2 * o.max_receive_message_bytes;
  return o;
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) Usage("bad argument: " + arg);
    std::string flag = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (flag == "listen_fd") o.listen_fd = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "backend") o.backend = value;
    else if (flag == "framed_backend") o.framed_backend = value;
    else if (flag == "max_running") o.max_running = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "max_running_per_client")
      o.max_running_per_client = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "initial_running_per_client")
      o.initial_running_per_client = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "max_queued_per_client") o.max_queued_per_client = ParseLong(flag, value, 1);
    else if (flag == "max_queued") o.max_queued = ParseLong(flag, value, 1);
    else if (flag == "lifo_after_ms") o.lifo_after_ms = ParseLong(flag, value, 0);
    else if (flag == "queue_target_ms") o.queue_target_ms = ParseLong(flag, value, 0);
    else if (flag == "queue_interval_ms") o.queue_interval_ms = ParseLong(flag, value, 1);
    else if (flag == "max_streams_per_connection")
      o.max_streams_per_connection = static_cast<int>(ParseLong(flag, value, 0));
    else if (flag == "max_receive_message_bytes")
      o.max_receive_message_bytes = ParseLong(flag, value, 1);
    else if (flag == "max_unread_bytes_per_client")
      o.max_unread_bytes_per_client = ParseLong(flag, value, 1);
    else if (flag == "max_request_bytes_per_client")
      o.max_request_bytes_per_client = ParseLong(flag, value, 0);
    else if (flag == "max_request_bytes") o.max_request_bytes = ParseLong(flag, value, 0);
    else if (flag == "framed_max_request_bytes") {
      o.framed_max_request_bytes = ParseLong(flag, value, 0);
    }
    else if (flag == "max_string_input_bytes") {
      o.max_string_input_bytes = ParseLong(flag, value, 0);
    }
    else if (flag == "hold_back_unread_bytes") o.hold_back_unread_bytes = ParseLong(flag, value, 0);
    else if (flag == "hold_back_total_unread_bytes")
      o.hold_back_total_unread_bytes = ParseLong(flag, value, 0);
    else if (flag == "client_metadata_key") o.client_metadata_key = value;
    else if (flag == "grace_seconds") o.grace_seconds = std::atof(value.c_str());
    else if (flag == "channel_arg") {
      size_t sep = value.find('=');
      if (sep == 0 || sep == std::string::npos) {
        Usage("--channel_arg=" + value + " is not KEY=VALUE");
      }
      o.channel_args[value.substr(0, sep)] = value.substr(sep + 1);
    }
    else Usage("unknown flag --" + flag);
  }
  if (o.backend.empty()) Usage("--backend is required");
  if (o.listen_fd < 0) Usage("--listen_fd is required (a listening socket the caller keeps)");
  if (o.max_receive_message_bytes > INT32_MAX) o.max_receive_message_bytes = INT32_MAX;
  return ResolveLimits(o, UsableCores());
}

}  // namespace front_end
}  // namespace dpsr
