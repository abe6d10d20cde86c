#include "tokenizer_cc/core/utf8.h"

namespace dpsr {
namespace text {

char32_t DecodeUtf8(const char* s, size_t size, size_t* pos) {
  const auto* b = reinterpret_cast<const unsigned char*>(s);
  const size_t i = *pos;
  const unsigned char lead = b[i];
  if (lead < 0x80) {
    *pos = i + 1;
    return lead;
  }
  int len;
  char32_t c;
  char32_t min;
  if ((lead & 0xE0) == 0xC0) {
    len = 2, c = lead & 0x1F, min = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    len = 3, c = lead & 0x0F, min = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    len = 4, c = lead & 0x07, min = 0x10000;
  } else {
    *pos = i + 1;  // stray continuation byte or 0xF8..0xFF
    return kReplacementChar;
  }
  if (i + len > size) {
    *pos = i + 1;  // truncated at the end of the input
    return kReplacementChar;
  }
  for (int k = 1; k < len; ++k) {
    const unsigned char cont = b[i + k];
    if ((cont & 0xC0) != 0x80) {
      *pos = i + 1;
      return kReplacementChar;
    }
    c = (c << 6) | (cont & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
    *pos = i + 1;  // overlong, out of range, or a surrogate
    return kReplacementChar;
  }
  *pos = i + len;
  return c;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

char32_t FoldWidth(char32_t c) {
  if (c >= 0xFF01 && c <= 0xFF5E) return c - 0xFF01 + 0x21;
  if (c == 0x3000) return 0x20;
  return c;
}

char32_t FoldCase(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;  // Latin-1 capitals
  if (c >= 0x100 && c <= 0x17F) {
    // Latin Extended-A alternates capital/small, with an odd-aligned stretch in the middle.
    if (c == 0x130 || c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17F) return c;
    if (c == 0x178) return 0xFF;
    const bool odd_pairs = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (odd_pairs) return (c & 1) ? c + 1 : c;
    return (c & 1) ? c : c + 1;
  }
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;  // Greek capitals
  if (c >= 0x410 && c <= 0x42F) return c + 32;                // Cyrillic capitals
  if (c >= 0x400 && c <= 0x40F) return c + 80;                // Cyrillic Ѐ..Џ
  return c;
}

CharClass Classify(char32_t c) {
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
      return CharClass::kWord;
    }
    return CharClass::kSeparator;
  }
  if (c == 0xAA || c == 0xB5 || c == 0xBA) return CharClass::kWord;
  if (c >= 0xC0 && c <= 0x24F && c != 0xD7 && c != 0xF7) return CharClass::kWord;
  if (c >= 0x300 && c <= 0x36F) return CharClass::kMark;
  if ((c >= 0x386 && c <= 0x3FF && c != 0x387) || (c >= 0x400 && c <= 0x481) ||
      (c >= 0x48A && c <= 0x52F)) {
    return CharClass::kWord;
  }
  if (c >= 0x483 && c <= 0x489) return CharClass::kMark;
  if ((c >= 0x1E00 && c <= 0x1EFF)) return CharClass::kWord;  // Latin Extended Additional
  if ((c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
      (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x2FA1F) ||
      (c >= 0x3040 && c <= 0x30FF && c != 0x30FB) || (c >= 0x31F0 && c <= 0x31FF) ||
      (c >= 0xFF66 && c <= 0xFF9F) || (c >= 0xAC00 && c <= 0xD7AF) ||
      (c >= 0x1100 && c <= 0x11FF) || (c >= 0x3130 && c <= 0x318F)) {
    return CharClass::kCjk;
  }
  return CharClass::kSeparator;
}

}  // namespace text
}  // namespace dpsr
