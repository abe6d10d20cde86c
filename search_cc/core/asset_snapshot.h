// Private, immutable snapshots of the index files a server maps into memory.
//
// A servable's index files live under the model base path, where a careless redeploy may
// truncate them or `cp` another file over them while a version serves. A mapping of such a file
// then faults (SIGBUS past the new end) or reads bytes that no longer match what was validated
// at load (wrong answers, then out-of-bounds reads). So the cores never map a file under the
// model path: at load they copy its bytes into a snapshot nobody else writes, and map that.
//
// A mapped snapshot is a read-only file in a server-owned cache directory, named by the hash
// and size of its bytes: every process on the host that loads the same bytes maps the same file,
// so they share one copy in the page cache (what memory-mapping an index is for). The directory
// is $DPSR_ASSET_CACHE_DIR, default /var/tmp/dpsr-asset-cache-<uid>; it is created with mode
// 0700 and refused when another user owns it or others may write to it. A snapshot file is
// written under a temporary name and linked into place, so a reader never sees half of one
// and processes loading the same bytes at once end up on one file; a file whose bytes do not
// match its name is replaced. It is deleted when the last process holding it releases it
// (each holder keeps a shared flock on it; files left by a killed process are removed by the
// next load in that directory).
//
// When the directory cannot be used (not writable, full, owned by another user) a snapshot
// falls back to private memory: it keeps working, without sharing, and fallback_reason() says
// why so that the adapter can log it.
//
// Standard C++ and POSIX only. Errors are AssetSnapshotError.
#ifndef DPSR_SEARCH_CC_CORE_ASSET_SNAPSHOT_H_
#define DPSR_SEARCH_CC_CORE_ASSET_SNAPSHOT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "search_cc/core/core_error.h"

namespace dpsr {
namespace assets {

// The snapshots' errors: the search cores' one error type (core_error.h).
using AssetSnapshotError = ::dpsr::CoreError;

// The environment variable naming the cache directory of mapped snapshots.
constexpr char kCacheDirVariable[] = "DPSR_ASSET_CACHE_DIR";

// The cache directory in use: $DPSR_ASSET_CACHE_DIR, else /var/tmp/dpsr-asset-cache-<uid>.
std::string CacheDirectory();

class AssetSnapshot {
 public:
  enum class Mode {
    kMemory,      // the bytes, read into private memory
    kSharedFile,  // a read-only file in the cache directory (private memory as a fallback)
  };

  // Copies the bytes of the file at `path` (`what` names it in messages, e.g. "FAISS index
  // file"). kMemory: data() is a private copy. kSharedFile with `map_file`: data() is a
  // read-only mapping of the snapshot file, or a private copy when the cache directory cannot
  // be used. kSharedFile without `map_file` (for a reader that maps file() itself): data() is
  // nullptr, and after a fallback file() is "" too and the caller reads `path` into memory
  // itself. Throws kNotFound when the file does not exist, kInvalidArgument when it is not a
  // regular non-empty file or its size changed while it was copied.
  static std::unique_ptr<AssetSnapshot> Take(const std::string& path, const std::string& what,
                                             Mode mode, bool map_file);

  ~AssetSnapshot();  // unmaps, and deletes the snapshot file if no other process holds it
  AssetSnapshot(const AssetSnapshot&) = delete;
  AssetSnapshot& operator=(const AssetSnapshot&) = delete;

  const std::string& source() const { return source_; }
  size_t size() const { return size_; }
  // The bytes: the mapping of the snapshot file, or the private copy. nullptr for a snapshot
  // file taken without map_file.
  const uint8_t* data() const { return data_; }
  // The snapshot file, or "" when the bytes are in private memory.
  const std::string& file() const { return file_; }
  // Why a kSharedFile snapshot fell back to private memory; "" otherwise.
  const std::string& fallback_reason() const { return fallback_reason_; }

 private:
  AssetSnapshot() = default;

  std::string source_;
  size_t size_ = 0;
  const uint8_t* data_ = nullptr;
  void* mapping_ = nullptr;
  std::vector<uint64_t> memory_;  // 8-byte aligned private copy
  std::string file_;
  int fd_ = -1;  // the snapshot file, holding a shared flock while this snapshot lives
  std::string fallback_reason_;
};

}  // namespace assets
}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_ASSET_SNAPSHOT_H_
