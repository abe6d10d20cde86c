// Implementation of asset snapshots (see asset_snapshot.h).
#include "search_cc/core/asset_snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace dpsr {
namespace assets {
namespace {

using Code = AssetSnapshotError::Code;

constexpr size_t kChunk = size_t{1} << 20;
constexpr char kSuffix[] = ".snapshot";
constexpr char kTempPrefix[] = ".tmp-";

// A 128-bit hash of a byte stream (two independent 64-bit lanes over 8-byte words): names a
// snapshot by its contents. Not cryptographic: the directory is private to the server's user,
// and a reused file is checked against its name before it is mapped.
class Hasher {
 public:
  void Update(const uint8_t* p, size_t n) {
    total_ += n;
    while (n > 0) {
      if (carry_n_ == 0 && n >= 8) {
        const size_t words = n / 8;
        for (size_t i = 0; i < words; ++i) {
          uint64_t w;
          std::memcpy(&w, p + 8 * i, 8);
          Mix(w);
        }
        p += 8 * words;
        n -= 8 * words;
        continue;
      }
      carry_[carry_n_++] = *p++;
      --n;
      if (carry_n_ == 8) {
        uint64_t w;
        std::memcpy(&w, carry_, 8);
        Mix(w);
        carry_n_ = 0;
      }
    }
  }

  std::string Hex() const {
    uint64_t a = a_, b = b_;
    for (size_t i = 0; i < carry_n_; ++i) {  // the tail, then the length
      a = Round(a ^ carry_[i], 0x9E3779B97F4A7C15ULL);
      b = Round(b + carry_[i], 0xC2B2AE3D27D4EB4FULL);
    }
    a = Final(a ^ total_);
    b = Final(b + total_ * 0x165667B19E3779F9ULL);
    char buf[33];
    std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(a),
                  static_cast<unsigned long long>(b));
    return buf;
  }

 private:
  static uint64_t Round(uint64_t h, uint64_t prime) {
    h *= prime;
    return (h << 31) | (h >> 33);
  }
  static uint64_t Final(uint64_t h) {  // murmur3 fmix64
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 33);
  }
  void Mix(uint64_t w) {
    a_ = Round(a_ ^ w, 0x9E3779B97F4A7C15ULL);
    b_ = Round(b_ + (w ^ (w >> 29)), 0xC2B2AE3D27D4EB4FULL);
  }

  uint64_t a_ = 0x243F6A8885A308D3ULL;
  uint64_t b_ = 0x13198A2E03707344ULL;
  uint64_t total_ = 0;
  uint8_t carry_[8] = {};
  size_t carry_n_ = 0;
};

// Closes a descriptor on scope exit unless released.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

// Reads exactly n bytes (or to the end of the file); returns the count read, -1 on error.
ssize_t ReadFull(int fd, uint8_t* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = read(fd, buf + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

bool WriteFull(int fd, const uint8_t* buf, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, buf, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Streams the whole of `fd` (from offset 0) through `sink(bytes, n)` and a hasher; checks that
// exactly `expected` bytes come out. Returns the hash.
template <typename Sink>
std::string Stream(int fd, const std::string& path, const std::string& what, size_t expected,
                   Sink&& sink) {
  std::vector<uint8_t> buf(kChunk);
  Hasher hasher;
  size_t total = 0;
  if (lseek(fd, 0, SEEK_SET) != 0) {
    Fail(Code::kInternal, "cannot read " + what + " '" + path + "': " + std::strerror(errno));
  }
  for (;;) {
    const ssize_t n = ReadFull(fd, buf.data(), buf.size());
    if (n < 0) {
      Fail(Code::kInternal, "cannot read " + what + " '" + path + "': " + std::strerror(errno));
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
    if (total > expected) break;
    hasher.Update(buf.data(), static_cast<size_t>(n));
    sink(buf.data(), static_cast<size_t>(n));
  }
  if (total != expected) {
    Fail(Code::kInvalidArgument,
         what + " '" + path + "' changed while it was loaded (" + std::to_string(expected) +
             " bytes when opened, " + (total > expected ? "more" : std::to_string(total)) +
             " when read): replace a served file by writing a new version, not in place");
  }
  return hasher.Hex();
}

// The cache directory, created if needed; "" and *why when it cannot be used.
std::string UsableCacheDirectory(std::string* why) {
  const std::string dir = CacheDirectory();
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    *why = "cannot create the asset cache directory '" + dir + "': " + std::strerror(errno);
    return "";
  }
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    *why = "the asset cache path '" + dir + "' is not a directory";
    return "";
  }
  if (st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
    *why = "the asset cache directory '" + dir + "' is owned by another user or writable by "
           "others; point " + kCacheDirVariable + " at a directory only this user can write";
    return "";
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    *why = "the asset cache directory '" + dir + "' is not writable: " + std::strerror(errno);
    return "";
  }
  return dir;
}

// Deletes the snapshot file `name` behind `fd` if no other process holds it. Taking the
// exclusive lock drops this holder's shared one (flock converts by unlocking first).
void DeleteIfUnheld(int fd, const std::string& name) {
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) return;
  struct stat mine, named;
  if (fstat(fd, &mine) == 0 && stat(name.c_str(), &named) == 0 &&
      mine.st_dev == named.st_dev && mine.st_ino == named.st_ino) {
    unlink(name.c_str());
  }
}

// Removes snapshot and temporary files nobody holds (left by killed processes). A live holder
// keeps a shared flock from the moment the file is created, so they are never touched.
void SweepUnheld(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  while (struct dirent* entry = readdir(d)) {
    const std::string base = entry->d_name;
    const bool temp = base.compare(0, sizeof(kTempPrefix) - 1, kTempPrefix) == 0;
    const bool snapshot = base.size() > sizeof(kSuffix) - 1 &&
                          base.compare(base.size() - (sizeof(kSuffix) - 1), std::string::npos,
                                       kSuffix) == 0;
    if (!temp && !snapshot) continue;
    const std::string name = dir + "/" + base;
    Fd fd(open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() >= 0) DeleteIfUnheld(fd.get(), name);
  }
  closedir(d);
}

// Opens the snapshot `name` if it exists with `size` bytes whose hash is `hash`, holding a
// shared flock on it; -1 otherwise (absent, being deleted, or not what its name says).
int OpenExisting(const std::string& name, size_t size, const std::string& hash,
                 const std::string& what) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    Fd fd(open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() < 0) return -1;
    if (flock(fd.get(), LOCK_SH) != 0) return -1;
    struct stat mine, named;
    if (fstat(fd.get(), &mine) != 0) return -1;
    if (stat(name.c_str(), &named) != 0 || named.st_ino != mine.st_ino ||
        named.st_dev != mine.st_dev) {
      continue;  // deleted by its last holder between our open and lock: look again
    }
    if (!S_ISREG(mine.st_mode) || static_cast<size_t>(mine.st_size) != size) return -1;
    try {
      if (Stream(fd.get(), name, what, size, [](const uint8_t*, size_t) {}) != hash) return -1;
    } catch (const AssetSnapshotError&) {
      return -1;
    }
    return fd.release();
  }
  return -1;
}

// Copies `src` into a new snapshot file in `dir` and returns its descriptor (shared flock held)
// and its name; -1 and *why when the directory cannot take it.
int WriteSnapshot(int src, const std::string& path, const std::string& what, size_t size,
                  const std::string& dir, std::string* name, std::string* why) {
  std::string temp;
  Fd fd;
  for (int attempt = 0; attempt < 4 && fd.get() < 0; ++attempt) {
    temp = dir + "/" + kTempPrefix + "XXXXXX";
    fd.reset(mkostemp(&temp[0], O_CLOEXEC));
    if (fd.get() < 0) {
      *why = "cannot create a file in the asset cache directory '" + dir + "': " +
             std::strerror(errno);
      return -1;
    }
    flock(fd.get(), LOCK_SH);
    // Another process's sweep may have removed the file between its creation and the lock.
    struct stat mine, named;
    if (fstat(fd.get(), &mine) != 0 || stat(temp.c_str(), &named) != 0 ||
        mine.st_ino != named.st_ino || mine.st_dev != named.st_dev) {
      fd.reset();
    }
  }
  if (fd.get() < 0) {
    *why = "cannot keep a temporary file in the asset cache directory '" + dir + "'";
    return -1;
  }
  bool written = true;
  int write_errno = 0;
  std::string hash;
  try {
    hash = Stream(src, path, what, size, [&](const uint8_t* p, size_t n) {
      if (written && !WriteFull(fd.get(), p, n)) {
        written = false;
        write_errno = errno;
      }
    });
  } catch (...) {
    unlink(temp.c_str());
    throw;
  }
  if (!written || fchmod(fd.get(), 0444) != 0) {
    *why = "cannot write a snapshot into the asset cache directory '" + dir + "': " +
           std::strerror(written ? errno : write_errno);
    unlink(temp.c_str());
    return -1;
  }
  *name = dir + "/" + hash + "-" + std::to_string(size) + kSuffix;
  // Published with link(), which never replaces: of several processes loading the same bytes
  // at once (servers started together on one port), the first to finish publishes its copy
  // and the others map that one, so they share it.
  if (link(temp.c_str(), name->c_str()) == 0) {
    // Held through its own name (what /proc/<pid>/maps and lsof then show), not the temp's.
    Fd named(open(name->c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    struct stat mine, linked;
    if (named.get() >= 0 && flock(named.get(), LOCK_SH) == 0 && fstat(fd.get(), &mine) == 0 &&
        fstat(named.get(), &linked) == 0 && mine.st_ino == linked.st_ino &&
        mine.st_dev == linked.st_dev) {
      unlink(temp.c_str());
      return named.release();
    }
    unlink(temp.c_str());
    return fd.release();
  }
  if (errno == EEXIST) {
    const int existing = OpenExisting(*name, size, hash, what);
    if (existing >= 0) {
      unlink(temp.c_str());
      return existing;
    }
  }
  // Not what its name says (or no hard links here): replace it.
  if (rename(temp.c_str(), name->c_str()) != 0) {
    *why = "cannot rename a snapshot in the asset cache directory '" + dir + "': " +
           std::strerror(errno);
    unlink(temp.c_str());
    return -1;
  }
  return fd.release();
}

}  // namespace

std::string CacheDirectory() {
  const char* value = std::getenv(kCacheDirVariable);
  if (value != nullptr && *value != '\0') return value;
  return "/var/tmp/dpsr-asset-cache-" + std::to_string(geteuid());
}

std::unique_ptr<AssetSnapshot> AssetSnapshot::Take(const std::string& path,
                                                   const std::string& what, Mode mode,
                                                   bool map_file) {
  Fd src(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (src.get() < 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) Fail(Code::kNotFound, what + " not found: '" + path + "'");
    Fail(Code::kInvalidArgument, "cannot open " + what + " '" + path + "': " + std::strerror(e));
  }
  struct stat st;
  if (fstat(src.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    Fail(Code::kInvalidArgument, what + " '" + path + "' is not a regular file");
  }
  if (st.st_size == 0) Fail(Code::kInvalidArgument, what + " '" + path + "' is empty");
  std::unique_ptr<AssetSnapshot> snap(new AssetSnapshot());
  snap->source_ = path;
  snap->size_ = static_cast<size_t>(st.st_size);

  if (mode == Mode::kSharedFile) {
    std::string why;
    const std::string dir = UsableCacheDirectory(&why);
    if (!dir.empty()) {
      SweepUnheld(dir);
      // Hash first: when another process already holds these bytes, map its file.
      const std::string hash =
          Stream(src.get(), path, what, snap->size_, [](const uint8_t*, size_t) {});
      std::string name = dir + "/" + hash + "-" + std::to_string(snap->size_) + kSuffix;
      Fd fd(OpenExisting(name, snap->size_, hash, what));
      if (fd.get() < 0) {
        fd.reset(WriteSnapshot(src.get(), path, what, snap->size_, dir, &name, &why));
      }
      if (fd.get() >= 0) {
        snap->file_ = name;
        if (map_file) {
          void* m = mmap(nullptr, snap->size_, PROT_READ, MAP_SHARED, fd.get(), 0);
          if (m == MAP_FAILED) {
            const int e = errno;
            DeleteIfUnheld(fd.get(), name);
            Fail(Code::kInternal, "cannot map the snapshot '" + name + "' of " + what + " '" +
                                      path + "': " + std::strerror(e));
          }
          snap->mapping_ = m;
          snap->data_ = static_cast<const uint8_t*>(m);
        }
        snap->fd_ = fd.release();
        return snap;
      }
    }
    snap->fallback_reason_ = why + "; " + what + " '" + path + "' is held in private memory";
    if (!map_file) return snap;  // the caller reads the source into memory itself
  }
  snap->memory_.resize((snap->size_ + 7) / 8);
  uint8_t* out = reinterpret_cast<uint8_t*>(snap->memory_.data());
  size_t at = 0;
  Stream(src.get(), path, what, snap->size_, [&](const uint8_t* p, size_t n) {
    std::memcpy(out + at, p, n);
    at += n;
  });
  snap->data_ = out;
  return snap;
}

AssetSnapshot::~AssetSnapshot() {
  if (mapping_ != nullptr) munmap(mapping_, size_);
  if (fd_ >= 0) {
    DeleteIfUnheld(fd_, file_);
    close(fd_);
  }
}

}  // namespace assets
}  // namespace dpsr
