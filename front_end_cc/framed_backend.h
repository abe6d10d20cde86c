// Predict calls handed to the Python server as frames on a private UNIX socket
// (--framed_backend), instead of as gRPC calls on its backend socket: the server reads them on a
// thread of its own and never runs gRPC's asyncio machinery for them, which was most of the
// Python time (and of the GIL) a call cost it (docs/serving.md, "The framed Predict hop").
//
// The socket is private (the server's 0700 directory), so both ends trust each other; a frame
// that breaks the protocol ends the connection. Every frame is a 16-byte head, then a body:
//   head: u32 length of what follows the length field, u8 kind, 3 zero bytes, u64 call id
//   kRequest (front end -> server): i64 deadline in microseconds from now (-1: none),
//     u32 client name length, the client name, then the serialized PredictRequest
//   kCancel (front end -> server): no body; the server answers the call CANCELLED if its run
//     has not started, else it answers as usual
//   kAnswer (server -> front end): i32 gRPC status code, u32 message length, the message, u32
//     trailing metadata length, the trailing metadata (pairs of u32 key length, key, u32 value
//     length, value; the proxy's dpsr-partial, for one), then the serialized PredictResponse
//     (empty unless the status is OK)
// Integers are little-endian. Every request gets exactly one answer, unless the connection
// ends first: then every call waiting on it ends UNAVAILABLE.
#ifndef DPSR_FRONT_END_CC_FRAMED_BACKEND_H_
#define DPSR_FRONT_END_CC_FRAMED_BACKEND_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

namespace dpsr {
namespace front_end {

enum class FrameKind : uint8_t { kRequest = 1, kCancel = 2, kAnswer = 3 };

// Trailing metadata an answer frame carries, for the client's call: (key, value) pairs.
using Trailers = std::vector<std::pair<std::string, std::string>>;

// What a call is told when its answer comes: the status, when OK the answer's bytes, and the
// trailing metadata.
using AnswerCallback = std::function<void(const grpc::Status&, std::string, Trailers)>;

class FramedBackend {
 public:
  explicit FramedBackend(std::string socket_path) : path_(std::move(socket_path)) {}

  // Sends one Predict call; `done` runs once, on this object's reader thread, never on the
  // caller's. False (and `done` never runs) when the call did not reach the server whole: no
  // connection could be made, or the connection broke under its frame. The caller then
  // forwards the call another way.
  bool Send(uint64_t id, long long deadline_micros, const std::string& client,
            const grpc::ByteBuffer& request, AnswerCallback done);

  // Asks the server to drop call `id` if its run has not started (its answer still comes).
  void Cancel(uint64_t id);

 private:
  bool ConnectLocked();            // write_mu_ held
  bool WriteAllLocked(std::vector<std::string_view> parts);  // write_mu_ held
  void ReadLoop(int fd);          // one detached thread per connection
  void FailAll(int fd, const std::string& why);
  AnswerCallback Take(uint64_t id, int fd);

  struct Waiting {
    int fd;  // the connection it was sent on
    AnswerCallback done;
  };

  const std::string path_;
  std::mutex write_mu_;  // one frame written at a time; the connection itself
  int fd_ = -1;          // under write_mu_
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, Waiting> calls_;  // sent, waiting for an answer
};

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_FRAMED_BACKEND_H_
