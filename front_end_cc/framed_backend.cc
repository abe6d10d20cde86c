// The framed Predict hop (framed_backend.h): connection, frames out, the reader of answers.
#include "front_end_cc/framed_backend.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "front_end_cc/write_parts.h"

namespace dpsr {
namespace front_end {
namespace {

constexpr size_t kHead = 16;
// An answer larger than this breaks the protocol (the server's answers are bounded far below).
constexpr uint32_t kMaxFrame = 1u << 30;

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetLE(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// A trailing metadata key the front end passes on to its client: a plain (not binary) gRPC key
// that is not gRPC's own. The server is trusted; this keeps a bug there from reaching gRPC.
bool PlainKey(const std::string& key) {
  if (key.empty() || key.rfind("grpc-", 0) == 0) return false;
  if (key.size() > 4 && key.compare(key.size() - 4, 4, "-bin") == 0) return false;
  for (unsigned char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
          c == '.')) {
      return false;
    }
  }
  return true;
}

bool PlainValue(const std::string& value) {
  for (unsigned char c : value) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// The trailing metadata of an answer frame, `n` bytes at `p`; false when they are malformed.
bool ParseTrailers(const unsigned char* p, size_t n, Trailers* out) {
  size_t at = 0;
  while (at < n) {
    std::string kv[2];
    for (auto& s : kv) {
      if (n - at < 4) return false;
      const size_t len = static_cast<size_t>(GetLE(p + at, 4));
      at += 4;
      if (len > n - at) return false;
      s.assign(reinterpret_cast<const char*>(p + at), len);
      at += len;
    }
    if (!PlainKey(kv[0]) || !PlainValue(kv[1])) return false;
    out->emplace_back(std::move(kv[0]), std::move(kv[1]));
  }
  return true;
}

// A frame's head: its length (of a body of `body` bytes), kind and call id.
std::string Head(FrameKind kind, uint64_t id, size_t body) {
  std::string s;
  s.reserve(kHead + 64);  // and the request frame's deadline, client name
  PutU32(&s, static_cast<uint32_t>(kHead - 4 + body));
  s.push_back(static_cast<char>(kind));
  s.append(3, '\0');
  PutU64(&s, id);
  return s;
}

// Reads exactly n bytes; false at the end of the stream or on an error.
bool ReadFull(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

bool FramedBackend::ConnectLocked() {
  if (fd_ >= 0) return true;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof(addr.sun_path)) {
    close(fd);
    return false;
  }
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return false;
  }
  fd_ = fd;
  std::thread([this, fd] { ReadLoop(fd); }).detach();
  return true;
}

bool FramedBackend::WriteAllLocked(std::vector<std::string_view> parts) {
  return WriteParts(fd_, std::move(parts));
}

bool FramedBackend::Send(uint64_t id, long long deadline_micros, const std::string& client,
                         const grpc::ByteBuffer& request, AnswerCallback done) {
  // The request is written from gRPC's read buffers, behind the frame's head (write_parts.h).
  std::vector<grpc::Slice> slices;
  if (!request.Dump(&slices).ok()) return false;
  const size_t body = 8 + 4 + client.size() + request.Length();
  std::string head = Head(FrameKind::kRequest, id, body);
  PutU64(&head, static_cast<uint64_t>(deadline_micros));
  PutU32(&head, static_cast<uint32_t>(client.size()));
  head += client;
  std::vector<std::string_view> frame;
  frame.reserve(1 + slices.size());
  frame.emplace_back(head);
  for (const auto& s : slices) frame.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
  std::unique_lock<std::mutex> lock(write_mu_);
  if (!ConnectLocked()) return false;
  const int fd = fd_;
  {
    std::lock_guard<std::mutex> calls(calls_mu_);
    calls_[id] = Waiting{fd, std::move(done)};
  }
  if (WriteAllLocked(std::move(frame))) return true;
  // The connection broke under this frame: its reader fails the calls sent whole on it. This
  // one is taken back before write_mu_ is dropped, so the reader (which takes write_mu_ before
  // failing a connection's calls) never has it: the server got part of its frame at most and
  // will not run it, so the caller forwards it another way instead of failing it.
  shutdown(fd, SHUT_RDWR);
  fd_ = -1;
  Take(id, fd);
  return false;
}

void FramedBackend::Cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(write_mu_);
  if (fd_ < 0) return;
  {
    std::lock_guard<std::mutex> calls(calls_mu_);
    auto it = calls_.find(id);
    if (it == calls_.end() || it->second.fd != fd_) return;  // answered, or sent elsewhere
  }
  const std::string frame = Head(FrameKind::kCancel, id, 0);
  if (!WriteAllLocked({frame})) {
    shutdown(fd_, SHUT_RDWR);  // its reader sees the end and fails its calls
    fd_ = -1;
  }
}

AnswerCallback FramedBackend::Take(uint64_t id, int fd) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  auto it = calls_.find(id);
  if (it == calls_.end() || it->second.fd != fd) return nullptr;
  AnswerCallback done = std::move(it->second.done);
  calls_.erase(it);
  return done;
}

void FramedBackend::ReadLoop(int fd) {
  std::string why = "the server closed its framed socket";
  for (;;) {
    unsigned char head[kHead];
    if (!ReadFull(fd, head, kHead)) break;
    const uint32_t length = static_cast<uint32_t>(GetLE(head, 4));
    const auto kind = static_cast<FrameKind>(head[4]);
    const uint64_t id = GetLE(head + 8, 8);
    if (kind != FrameKind::kAnswer || length < kHead - 4 + 12 || length > kMaxFrame) {
      why = "the server's framed socket sent a frame that is not an answer";
      break;
    }
    std::string body(length - (kHead - 4), '\0');
    if (!ReadFull(fd, &body[0], body.size())) break;
    const auto* p = reinterpret_cast<const unsigned char*>(body.data());
    const int code = static_cast<int32_t>(GetLE(p, 4));
    const size_t message_length = static_cast<size_t>(GetLE(p + 4, 4));
    // code, message length, message, trailers' length: the fixed fields need 12 bytes.
    size_t trailers_length = 0;
    Trailers trailers;
    bool ok = code >= 0 && code <= 16 && message_length <= body.size() - 12;
    if (ok) {
      trailers_length = static_cast<size_t>(GetLE(p + 8 + message_length, 4));
      ok = trailers_length <= body.size() - 12 - message_length &&
           ParseTrailers(p + 12 + message_length, trailers_length, &trailers);
    }
    if (!ok) {
      why = "the server's framed socket sent a malformed answer";
      break;
    }
    AnswerCallback done = Take(id, fd);
    if (!done) continue;  // not a call of this connection's: nothing waits for it
    grpc::Status status(static_cast<grpc::StatusCode>(code), body.substr(8, message_length));
    done(status, status.ok() ? body.substr(12 + message_length + trailers_length) : std::string(),
         std::move(trailers));
  }
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (fd_ == fd) fd_ = -1;
  }
  FailAll(fd, why);
  close(fd);
}

void FramedBackend::FailAll(int fd, const std::string& why) {
  std::vector<AnswerCallback> failed;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto it = calls_.begin(); it != calls_.end();) {
      if (it->second.fd == fd) {
        failed.push_back(std::move(it->second.done));
        it = calls_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& done : failed) {
    done(grpc::Status(grpc::StatusCode::UNAVAILABLE, "dpsr front end: " + why), std::string(),
         Trailers());
  }
}

}  // namespace front_end
}  // namespace dpsr
