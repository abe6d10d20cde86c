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

// The message of the TokenizerError FromString(text) throws ("" if none).
std::string ParseError(const std::string& text) {
  try {
    TokenizerConfig::FromString(text);
  } catch (const TokenizerError& e) {
    return e.what();
  }
  return "";
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

void TestConfigString() {
  const std::string defaults =
      "cjk_bigrams=true,cjk_unigrams=true,letter_trigrams=true,max_input_bytes=16384,"
      "max_tokens=256,max_word_chars=32,num_buckets=1048576,num_oov_buckets=16384,"
      "word_bigrams=true,word_unigrams=true";
  CHECK(TokenizerConfig{}.ToString() == defaults);
  CHECK(TokenizerConfig::FromString("").ToString() == defaults);
  CHECK(TokenizerConfig::FromString(defaults).ToString() == defaults);
  // Any order; an option left out keeps its default.
  const TokenizerConfig c =
      TokenizerConfig::FromString("num_buckets=97,letter_trigrams=false,max_tokens=7");
  CHECK(c.num_buckets == 97 && !c.letter_trigrams && c.max_tokens == 7 && c.word_unigrams &&
        c.num_oov_buckets == 16384);
  CHECK(c.ToString() ==
        "cjk_bigrams=true,cjk_unigrams=true,letter_trigrams=false,max_input_bytes=16384,"
        "max_tokens=7,max_word_chars=32,num_buckets=97,num_oov_buckets=16384,"
        "word_bigrams=true,word_unigrams=true");
  CHECK(TokenizerConfig::FromString("num_buckets=8589934592").num_buckets == (int64_t{1} << 33));

  CHECK(Contains(ParseError("num_bucket=5"), "unknown option 'num_bucket'"));
  CHECK(Contains(ParseError("num_bucket=5"), "num_buckets"));  // the message lists the options
  CHECK(Contains(ParseError("max_tokens=5,max_tokens=6"), "max_tokens is given twice"));
  CHECK(Contains(ParseError("word_bigrams=1"), "word_bigrams must be true or false, got '1'"));
  CHECK(Contains(ParseError("max_tokens=12x"), "max_tokens must be a decimal int32, got '12x'"));
  CHECK(Contains(ParseError("max_tokens=2147483648"), "decimal int32"));  // 2^31
  CHECK(Contains(ParseError("num_buckets="), "num_buckets must be a decimal int64, got ''"));
  CHECK(Contains(ParseError("num_buckets=+5"), "decimal int64"));
  CHECK(Contains(ParseError("max_tokens"), "expected name=value, got 'max_tokens'"));
  CHECK(Contains(ParseError("max_tokens=5,"), "expected name=value, got ''"));
  CHECK(Contains(ParseError("=5"), "expected name=value"));
  // Parsed configs are validated.
  CHECK(Contains(ParseError("num_buckets=0"), "num_buckets must be >= 1, got 0"));
  CHECK(Contains(ParseError("word_unigrams=false,word_bigrams=false,letter_trigrams=false,"
                            "cjk_unigrams=false,cjk_bigrams=false"),
                 "every feature kind is disabled"));
}

}  // namespace

int main() {
  TestDecode();
  TestFolding();
  TestFeatures();
  TestCaps();
  TestIds();
  TestBadConfig();
  TestConfigString();
  return dpsr_test::Report("tokenizer_test");
}
