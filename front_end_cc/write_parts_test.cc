// Unit tests of WriteParts (exit status 0 = pass): what is written equals the parts joined,
// whatever their number and sizes and however few parts one call takes; over a socket pair, and
// through a sender that writes a few bytes per call (partial writes, which a blocking socket
// pair does not make on demand) or is interrupted.
#include "front_end_cc/write_parts.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/cc/check.h"

namespace {

using dpsr::front_end::WriteParts;
using dpsr::front_end::WritePartsWith;

// Everything the other end of `fd` reads until it is closed.
std::string ReadAll(int fd) {
  std::string got;
  char buf[4096];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) return got;
    got.append(buf, static_cast<size_t>(n));
  }
}

// The parts written from one thread and read on another; true when WriteParts did.
bool WrittenAndRead(const std::vector<std::string_view>& parts, size_t max_per_call,
                    std::string* read_back) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return false;
  std::thread reader([&] { *read_back = ReadAll(fds[1]); });
  const bool ok = WriteParts(fds[0], parts, max_per_call);
  close(fds[0]);
  reader.join();
  close(fds[1]);
  return ok;
}

// Parts of random sizes (0 to 3,000 bytes, a fifth of them empty) and their bytes joined.
std::vector<std::string> RandomParts(size_t n, uint32_t seed, std::string* joined) {
  std::mt19937 rng(seed);
  std::vector<std::string> parts;
  for (size_t i = 0; i < n; ++i) {
    const size_t size = rng() % 5 == 0 ? 0 : rng() % 3000;
    std::string p(size, '\0');
    for (auto& c : p) c = static_cast<char>(rng());
    parts.push_back(p);
    *joined += p;
  }
  return parts;
}

void TestTheOtherEndReadsThePartsJoined() {
  for (size_t n : {0, 1, 7, 1500}) {
    std::string joined;
    const std::vector<std::string> parts = RandomParts(n, static_cast<uint32_t>(n), &joined);
    const std::vector<std::string_view> views(parts.begin(), parts.end());
    for (size_t max_per_call : {1, 3, 1024}) {
      std::string got;
      CHECK(WrittenAndRead(views, max_per_call, &got));
      CHECK(got == joined);
    }
  }
}

// A sender that takes at most `most` bytes per call from the buffers it is given, never more
// than `max_per_call` of them, and is interrupted (EINTR) every third call.
struct FewBytesAtATime {
  size_t most, max_per_call;
  std::string* sent;
  int calls = 0;
  bool over_max = false;
  ssize_t operator()(const iovec* iov, size_t n) {
    over_max |= n > max_per_call;
    if (++calls % 3 == 0) {
      errno = EINTR;
      return -1;
    }
    size_t taken = 0;
    for (size_t i = 0; i < n && taken < most; ++i) {
      const size_t k = std::min(most - taken, iov[i].iov_len);
      sent->append(static_cast<const char*>(iov[i].iov_base), k);
      taken += k;
    }
    return static_cast<ssize_t>(taken);
  }
};

void TestPartialWritesResumeWhereTheyStopped() {
  std::string joined;
  const std::vector<std::string> parts = RandomParts(200, 7, &joined);
  const std::vector<std::string_view> views(parts.begin(), parts.end());
  for (size_t most : {1, 7, 2999, 4096, 1 << 20}) {
    for (size_t max_per_call : {1, 3, 1024}) {
      std::string sent;
      FewBytesAtATime send{most, max_per_call, &sent};
      CHECK(WritePartsWith(std::ref(send), views, max_per_call));
      CHECK(sent == joined);
      CHECK(!send.over_max);
    }
  }
}

void TestAFailedSendIsFalse() {
  auto fails = [](const iovec*, size_t) -> ssize_t {
    errno = EPIPE;
    return -1;
  };
  CHECK(!WritePartsWith(fails, {std::string_view("abc")}, 1024));
  auto writes_nothing = [](const iovec*, size_t) -> ssize_t { return 0; };
  CHECK(!WritePartsWith(writes_nothing, {std::string_view("abc")}, 1024));
}

void TestOnlyEmptyPartsWriteNothing() {
  std::string got = "x";
  CHECK(WrittenAndRead({std::string_view(), std::string_view()}, 1024, &got));
  CHECK(got.empty());
}

void TestAGonePeerIsFalseNotASignal() {
  int fds[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  close(fds[1]);
  const std::string part(100, 'a');
  CHECK(!WriteParts(fds[0], {part, part}));
  close(fds[0]);
}

}  // namespace

int main() {
  TestTheOtherEndReadsThePartsJoined();
  TestOnlyEmptyPartsWriteNothing();
  TestPartialWritesResumeWhereTheyStopped();
  TestAFailedSendIsFalse();
  TestAGonePeerIsFalseNotASignal();
  return dpsr_test::Report("write_parts_test");
}
