// Open-loop load generator for a gRPC unary method, in C++ (bench/serving_bench.py
// --client=native): the same schedule, measures and JSON line as bench/serving_loadgen.py, at a
// small fraction of its CPU per call, so that on a machine the server shares with its client the
// client takes little of the cores the server is measured on.
//
// Requests come serialized from a file (--requests: each a 4-byte little-endian length, then the
// message), so this program needs no generated protobuf code; they are sent in turn, call i on
// connection i % --channels. Calls leave on a Poisson schedule at --rate per second whatever the
// server does, each latency timed from its scheduled send (no coordinated omission). Prints
// LOAD_START and LOAD_END (flushed) around the load, then one JSON line.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string address;
  std::string requests_file;
  std::string method = "/tensorflow.serving.PredictionService/Predict";
  double rate = 0;
  double duration = 15;
  double warmup = 3;
  double timeout = 2;
  int channels = 1;
  uint64_t seed = 0;
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "dpsr_loadgen: %s\n", message.c_str());
  std::exit(2);
}

double ParseNumber(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0') Fail(flag + " must be a number, got '" + value + "'");
  return v;
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      Fail("flags are --name=value; got '" + arg + "'");
    }
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (name == "address") o.address = value;
    else if (name == "requests") o.requests_file = value;
    else if (name == "method") o.method = value;
    else if (name == "rate") o.rate = ParseNumber(arg, value);
    else if (name == "duration") o.duration = ParseNumber(arg, value);
    else if (name == "warmup") o.warmup = ParseNumber(arg, value);
    else if (name == "timeout") o.timeout = ParseNumber(arg, value);
    else if (name == "channels") o.channels = static_cast<int>(ParseNumber(arg, value));
    else if (name == "seed") o.seed = static_cast<uint64_t>(ParseNumber(arg, value));
    else Fail("unknown flag --" + name);
  }
  if (o.address.empty()) Fail("--address is required");
  if (o.requests_file.empty()) Fail("--requests is required");
  if (!(o.rate > 0)) Fail("--rate must be > 0");
  if (o.channels < 1) Fail("--channels must be >= 1");
  if (!(o.timeout > 0) || o.duration < 0 || o.warmup < 0) {
    Fail("--timeout must be > 0, --duration and --warmup >= 0");
  }
  return o;
}

std::vector<grpc::ByteBuffer> ReadRequests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open --requests file " + path);
  std::vector<grpc::ByteBuffer> out;
  for (;;) {
    unsigned char head[4];
    if (!in.read(reinterpret_cast<char*>(head), 4)) break;
    const uint32_t n = head[0] | head[1] << 8 | head[2] << 16 | uint32_t{head[3]} << 24;
    std::string bytes(n, '\0');
    if (!in.read(&bytes[0], n)) {
      Fail(path + ": request " + std::to_string(out.size()) + " is cut short");
    }
    grpc::Slice slice(bytes);
    out.emplace_back(&slice, 1);
  }
  if (out.empty()) Fail(path + " holds no request");
  return out;
}

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

// numpy.percentile's default (linear interpolation between the closest ranks), in ms.
double Percentile(std::vector<double>& sorted_ms, double q) {
  if (sorted_ms.empty()) return std::nan("");
  const double pos = q / 100.0 * (sorted_ms.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, sorted_ms.size() - 1);
  return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo);
}

std::string Json(double v) {
  if (v != v) return "NaN";  // as Python's json.dumps writes it
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", v);
  return buf;
}

double CpuSeconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// What the calls' callbacks record (gRPC's threads) and the main thread reads at the end.
class Tally {
 public:
  void Done(const grpc::Status& status, Clock::time_point scheduled, bool record) {
    const double ms =
        std::chrono::duration<double, std::milli>(Clock::now() - scheduled).count();
    std::lock_guard<std::mutex> lock(mu_);
    if (status.ok()) {
      ++answered_all_;
      if (record) latencies_ms_.push_back(ms);
    } else if (record) {
      ++errors_[CodeName(status.error_code())];
      if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) refused_ms_.push_back(ms);
    }
    if (--in_flight_ == 0) idle_.notify_all();
  }
  void Started() {
    std::lock_guard<std::mutex> lock(mu_);
    ++in_flight_;
  }
  void ResetAnswered() {
    std::lock_guard<std::mutex> lock(mu_);
    answered_all_ = 0;
  }
  // Waits until no call is in flight or `limit` passes; returns the calls left in flight.
  long WaitIdle(Clock::time_point limit) {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait_until(lock, limit, [this] { return in_flight_ == 0; });
    return in_flight_;
  }

  std::mutex mu_;
  std::condition_variable idle_;
  long in_flight_ = 0;
  long answered_all_ = 0;
  std::vector<double> latencies_ms_, refused_ms_;
  std::map<std::string, long> errors_;
};

struct Call {
  grpc::ClientContext ctx;
  grpc::ByteBuffer response;
  Clock::time_point scheduled;
  bool record = false;
};

void Send(grpc::GenericStub* stub, const Options& o, const grpc::ByteBuffer& request,
          Clock::time_point scheduled, bool record, Tally* tally) {
  auto* call = new Call;
  call->scheduled = scheduled;
  call->record = record;
  // gRPC takes deadlines on the system clock.
  call->ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::duration_cast<std::chrono::system_clock::duration>(
                             std::chrono::duration<double>(o.timeout)));
  tally->Started();
  stub->UnaryCall(&call->ctx, o.method, grpc::StubOptions(), &request, &call->response,
                  [call, tally](grpc::Status status) {
                    tally->Done(status, call->scheduled, call->record);
                    delete call;
                  });
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseFlags(argc, argv);
  const std::vector<grpc::ByteBuffer> requests = ReadRequests(o.requests_file);
  const auto wall_start = Clock::now();
  // One TCP connection per channel (a local subchannel pool keeps gRPC from sharing one).
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < o.channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxReceiveMessageSize(-1);
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(o.address, grpc::InsecureChannelCredentials(), args)));
  }
  Tally tally;
  // Connect and warm up: calls one at a time, unrecorded.
  const int first = std::max(20, 2 * o.channels);
  for (int n = 0; n < first; ++n) {
    Send(stubs[n % o.channels].get(), o, requests[n % requests.size()], Clock::now(), false,
         &tally);
    tally.WaitIdle(Clock::now() + std::chrono::seconds(30));
  }
  tally.ResetAnswered();
  std::printf("LOAD_START\n");
  std::fflush(stdout);
  const double cpu0 = CpuSeconds();
  std::mt19937_64 rng(o.seed);
  std::exponential_distribution<double> gap(o.rate);
  const auto start = Clock::now();
  const auto seconds = [](double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  const auto warm_end = start + seconds(o.warmup);
  const auto end = warm_end + seconds(o.duration);
  auto t = start;
  long sent = 0;
  for (long i = 0;; ++i) {
    t += seconds(gap(rng));
    if (t >= end) break;
    std::this_thread::sleep_until(t);
    const bool record = t >= warm_end;
    Send(stubs[i % o.channels].get(), o, requests[i % requests.size()], t, record, &tally);
    sent += record;
  }
  const long left = tally.WaitIdle(Clock::now() + seconds(o.timeout + 5));
  const double cpu1 = CpuSeconds();
  std::printf("LOAD_END\n");
  std::fflush(stdout);
  std::lock_guard<std::mutex> lock(tally.mu_);
  std::vector<double>& lat = tally.latencies_ms_;
  std::sort(lat.begin(), lat.end());
  std::sort(tally.refused_ms_.begin(), tally.refused_ms_.end());
  std::string errors;
  for (const auto& [code, n] : tally.errors_) {
    errors += (errors.empty() ? "\"" : ", \"") + code + "\": " + std::to_string(n);
  }
  const double wall = std::chrono::duration<double>(Clock::now() - wall_start).count();
  std::printf(
      "{\"rate\": %s, \"sent\": %ld, \"ok\": %zu, \"errors\": {%s}, \"answered_all\": %ld, "
      "\"achieved_qps\": %s, \"p50_ms\": %s, \"p90_ms\": %s, \"p99_ms\": %s, \"max_ms\": %s, "
      "\"refused_p50_ms\": %s, \"refused_p99_ms\": %s, \"client_cpu_s\": %s, "
      "\"unfinished\": %ld, \"wall_s\": %s, \"client\": \"native\"}\n",
      Json(o.rate).c_str(), sent, lat.size(), errors.c_str(), tally.answered_all_,
      Json(o.duration > 0 ? lat.size() / o.duration : std::nan("")).c_str(),
      Json(Percentile(lat, 50)).c_str(), Json(Percentile(lat, 90)).c_str(),
      Json(Percentile(lat, 99)).c_str(), Json(lat.empty() ? std::nan("") : lat.back()).c_str(),
      Json(Percentile(tally.refused_ms_, 50)).c_str(),
      Json(Percentile(tally.refused_ms_, 99)).c_str(), Json(cpu1 - cpu0).c_str(), left,
      Json(wall).c_str());
  std::fflush(stdout);
  // Calls still in flight past the wait hold pointers into `tally`: leave without unwinding.
  std::_Exit(0);
}
