// The stable 64-bit feature hash. Documented in docs/tokenizer.md and re-implemented in pure
// Python by the tests, so ids can never silently change between releases.
#ifndef DPSR_TOKENIZER_CC_CORE_HASH_H_
#define DPSR_TOKENIZER_CC_CORE_HASH_H_

#include <cstdint>
#include <string_view>

namespace dpsr {
namespace text {

// FNV-1a (64-bit) over the bytes, then the splitmix64 finalizer so that the low bits used by
// `hash % num_buckets` are well mixed.
inline uint64_t FeatureHash(std::string_view key) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : key) {
    h ^= ch;
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

}  // namespace text
}  // namespace dpsr

#endif  // DPSR_TOKENIZER_CC_CORE_HASH_H_
