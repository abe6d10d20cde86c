// UTF-8 decoding and character normalization for the DPSR tokenizer.
//
// Plain C++: no TensorFlow or pybind11 headers (the same code runs in data preparation, in the
// training graph and in the serving SavedModel).
#ifndef DPSR_TOKENIZER_CC_CORE_UTF8_H_
#define DPSR_TOKENIZER_CC_CORE_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace dpsr {
namespace text {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes one code point from s[*pos, size) and advances *pos. Never reads past `size`.
// Invalid input (a stray continuation byte, a truncated sequence, an overlong form, a surrogate,
// a value above U+10FFFF) yields U+FFFD and consumes exactly one byte, so the result is
// deterministic and every byte is visited once.
char32_t DecodeUtf8(const char* s, size_t size, size_t* pos);

// Appends the UTF-8 encoding of `c` (assumed valid) to *out.
void AppendUtf8(char32_t c, std::string* out);

// Full-width ASCII forms (U+FF01..U+FF5E) and the ideographic space (U+3000) become their
// ASCII counterparts.
char32_t FoldWidth(char32_t c);

// Simple lower-casing for Latin (ASCII, Latin-1, Latin Extended-A), Greek and Cyrillic capitals.
// Characters outside those blocks are returned unchanged.
char32_t FoldCase(char32_t c);

// Character classes that drive segmentation.
enum class CharClass {
  kSeparator,  // whitespace, punctuation, symbols, emoji, U+FFFD, controls: ends a word
  kWord,       // Latin/Greek/Cyrillic letters and ASCII digits: runs form words
  kMark,       // combining marks: continue a word, never start one
  kCjk,        // CJK ideographs, kana, hangul: one token per character
};
CharClass Classify(char32_t c);

}  // namespace text
}  // namespace dpsr

#endif  // DPSR_TOKENIZER_CC_CORE_UTF8_H_
