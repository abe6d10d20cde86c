// Unit tests of the tokenizer core: a plain executable (exit status 0 = pass), built by
// tools/run_cc_tests.py (make cc-test) and by Bazel as a cc_test. No test framework needed.
#include <string>
#include <vector>

#include "tests/cc/check.h"
#include "tokenizer_cc/core/hash.h"
#include "tokenizer_cc/core/tokenizer.h"
#include "tokenizer_cc/core/utf8.h"

namespace {

using dpsr::text::Tokenizer;
using dpsr::text::TokenizerConfig;
using dpsr::text::TokenizerError;

std::vector<std::string> Keys(const Tokenizer& tok, const std::string& text) {
  std::vector<std::string> keys;
  tok.Features(text, &keys);
  return keys;
}

void TestDecode() {
  // "é" = C3 A9; a stray continuation byte, a truncated 3-byte sequence, an overlong "/",
  // a surrogate: each invalid byte becomes one U+FFFD.
  const std::string s = "\xC3\xA9\x80\xE6\x89\xC0\xAF\xED\xA0\x80";
  size_t pos = 0;
  std::vector<char32_t> got;
  while (pos < s.size()) got.push_back(dpsr::text::DecodeUtf8(s.data(), s.size(), &pos));
  const std::vector<char32_t> want = {0xE9,   0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD,
                                      0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD};
  CHECK(got == want);
  // A lead byte at the very end never reads past the buffer.
  const std::string t = "a\xF0";
  pos = 1;
  CHECK(dpsr::text::DecodeUtf8(t.data(), t.size(), &pos) == 0xFFFD && pos == 2);
}

void TestFolding() {
  CHECK(dpsr::text::FoldWidth(0xFF21) == 'A');   // Ａ
  CHECK(dpsr::text::FoldWidth(0x3000) == ' ');   // ideographic space
  CHECK(dpsr::text::FoldCase('Q') == 'q');
  CHECK(dpsr::text::FoldCase(0xC9) == 0xE9);     // É -> é
  CHECK(dpsr::text::FoldCase(0x41C) == 0x43C);   // М -> м
  CHECK(dpsr::text::FoldCase(0x100) == 0x101);   // Ā -> ā
  CHECK(dpsr::text::FoldCase(0x141) == 0x142);   // Ł -> ł (odd-aligned pair)
}

void TestFeatures() {
  Tokenizer tok{TokenizerConfig{}};
  const std::vector<std::string> want = {
      "w:ab", "t:#ab", "t:ab#", "w:c", "ww:ab c", "t:#c#", "c:手", "c:机", "cc:手机"};
  CHECK(Keys(tok, "AB c 手机") == want);
  // Bigrams do not cross a CJK character; CJK bigrams do not cross a separator.
  const std::vector<std::string> want2 = {"w:x", "t:#x#", "c:中", "w:y", "t:#y#", "c:国"};
  CHECK(Keys(tok, "x中y 国") == want2);
  CHECK(Keys(tok, "").empty());
  CHECK(Keys(tok, " ,.!? \xF0\x9F\x98\x80 ").empty());  // punctuation and an emoji only
}

void TestCaps() {
  TokenizerConfig c;
  c.max_tokens = 5;
  Tokenizer tok(c);
  CHECK(Keys(tok, "one two three four five six").size() == 5);
  TokenizerConfig w;
  w.max_word_chars = 3;
  w.letter_trigrams = false;
  w.word_bigrams = false;
  CHECK(Keys(Tokenizer(w), "abcdefg") == std::vector<std::string>{"w:abc"});
  TokenizerConfig b;
  b.max_input_bytes = 4;  // cuts "ab手" (5 bytes) before the CJK char, at a char boundary
  b.letter_trigrams = false;
  CHECK(Keys(Tokenizer(b), "ab\xE6\x89\x8B") == std::vector<std::string>{"w:ab"});
  std::string big(1 << 20, 'a');  // a 1 MB word is bounded by max_input_bytes/max_word_chars
  CHECK(Keys(tok, big).size() <= 5);
}

void TestIds() {
  TokenizerConfig c;
  c.num_buckets = 1000;
  Tokenizer tok(c);
  std::vector<int64_t> ids;
  tok.Ids("apple", &ids);
  CHECK(ids.size() == 6);  // w:apple + 5 trigrams
  CHECK(ids[0] == static_cast<int64_t>(dpsr::text::FeatureHash("w:apple") % 1000));
  for (int64_t id : ids) CHECK(id >= 0 && id < 1000);
}

void TestBadConfig() {
  TokenizerConfig c;
  c.num_buckets = 0;
  bool threw = false;
  try {
    Tokenizer tok(c);
  } catch (const TokenizerError& e) {
    threw = std::string(e.what()).find("num_buckets") != std::string::npos;
  }
  CHECK(threw);
  threw = false;
  try {
    dpsr::text::Vocabulary::Load("/nonexistent/vocab.txt");
  } catch (const TokenizerError& e) {
    threw = std::string(e.what()).find("/nonexistent/vocab.txt") != std::string::npos;
  }
  CHECK(threw);
}

}  // namespace

int main() {
  TestDecode();
  TestFolding();
  TestFeatures();
  TestCaps();
  TestIds();
  TestBadConfig();
  return dpsr_test::Report("tokenizer_test");
}
