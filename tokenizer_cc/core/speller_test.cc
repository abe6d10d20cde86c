// Unit tests of the speller core: a plain executable (exit status 0 = pass), built by
// tools/run_cc_tests.py (make cc-test, under ASan/UBSan) and by Bazel as a cc_test.
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/cc/check.h"
#include "tokenizer_cc/core/speller.h"

namespace {

using dpsr::text::EditDistance;
using dpsr::text::Speller;
using dpsr::text::SpellerConfig;
using dpsr::text::TokenizerError;

Speller Catalog() {
  return Speller({{"ceiling", 2}, {"fan", 3}, {"shelving", 2}, {"fence", 2}, {"post", 1},
                  {"6", 2}, {"ft", 2}, {"snow", 2}, {"blower", 1}, {"valve", 1},
                  {"timer", 5}, {"dimmer", 2}, {"switch", 3}},
                 SpellerConfig());
}

std::string Correct(const Speller& s, const std::string& q, bool* changed = nullptr) {
  bool any = false;
  std::string out = s.Correct(q, &any);
  if (changed != nullptr) *changed = any;
  return out;
}

void TestEditDistance() {
  CHECK(EditDistance("ceilikng", "ceiling", 2) == 1);
  CHECK(EditDistance("vlave", "valve", 2) == 1);          // one adjacent swap
  CHECK(EditDistance("abc", "ca", 3) == 3);                // OSA, not Damerau: 3
  CHECK(EditDistance("kitten", "sitting", 2) == 3);        // over the limit: limit + 1
  CHECK(EditDistance("", "ab", 2) == 2);
  CHECK(EditDistance("abcdef", "ab", 2) == 3);             // length gap alone exceeds
}

void TestCorrections() {
  const Speller s = Catalog();
  bool changed = false;
  CHECK(Correct(s, "outdoor ceilikng fan", &changed) == "outdoor ceiling fan" && changed);
  CHECK(Correct(s, "fencde post 6ft") == "fence post 6 ft");
  CHECK(Correct(s, "vlave") == "valve");
  CHECK(Correct(s, "snowblower") == "snow blower");
  CHECK(Correct(s, "dimer switch") == "dimmer switch");     // "timer": first letter differs
  CHECK(Correct(s, "Ceiling  FAN!", &changed) == "Ceiling  FAN!" && !changed);
  CHECK(Correct(s, "fan 1021424", &changed) == "fan 1021424" && !changed);
  CHECK(Correct(s, "\xE6\x89\x8B ceilng") == "\xE6\x89\x8B ceiling");  // CJK unit kept
  CHECK(Correct(s, "", &changed).empty() && !changed);
  CHECK(s.CorrectWord("fn").empty());                      // too short
  CHECK(s.CorrectWord("fnec").empty());                    // 2 edits, 4 letters
}

void TestBoundedWork() {
  // A long vocabulary word is known but out of reach: a typo of it is longer than a query
  // word may be for correction.
  const std::string long_word(26, 'a');
  const std::string reachable = std::string(24, 'b') + "x";  // 25 letters: in reach of 24 + 2
  const Speller s({{"fan", 1}, {long_word, 1}, {reachable, 1}, {"ceiling", 1}}, SpellerConfig());
  CHECK(s.Known(long_word));
  CHECK(s.CorrectWord(std::string(25, 'a')).empty());                  // 25 letters: kept
  CHECK(s.CorrectWord(std::string(24, 'b')) == reachable);             // 24: corrected
  // Only the first kMaxSpellWords unknown words are searched; known words do not count.
  std::string query, want;
  for (int i = 0; i < dpsr::text::kMaxSpellWords + 2; ++i) {
    query += (i ? " fan " : "fan ") + std::string("ceilng");
    want += (i ? " fan " : "fan ") +
            std::string(i < dpsr::text::kMaxSpellWords ? "ceiling" : "ceilng");
  }
  CHECK(Correct(s, query) == want);
  // With long_word 3, a 3-letter word may take two edits, down to a one-letter word.
  SpellerConfig short_words;
  short_words.long_word = 3;
  const Speller letters({{"h", 5}, {"ceiling", 1}}, short_words);
  CHECK(letters.CorrectWord("hdh") == "h");
}

// Whether loading a vocabulary of these lines throws a TokenizerError naming `where`.
bool LoadFailsAt(const std::string& path, const std::string& lines, const std::string& where) {
  {
    std::ofstream f(path);
    f << dpsr::text::kSpellerHeader << "\n" << lines;
  }
  try {
    Speller::Load(path, SpellerConfig());
  } catch (const TokenizerError& e) {
    return std::string(e.what()).find(where) != std::string::npos;
  }
  return false;
}

void TestBadInput() {
  bool threw = false;
  try {
    Speller({{"fan", 1}, {"fan", 2}}, SpellerConfig());
  } catch (const TokenizerError&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    SpellerConfig c;
    c.max_distance = 3;
    Speller({{"fan", 1}}, c);
  } catch (const TokenizerError&) {
    threw = true;
  }
  CHECK(threw);
  const std::string path = "speller_test_vocab.txt";
  CHECK(LoadFailsAt(path, "fan\t3\nceiling\tx\n", ":3:"));
  // A count past int64 is refused without overflowing; the largest one (line 2) is read.
  CHECK(LoadFailsAt(path, "fan\t9223372036854775807\nceiling\t9223372036854775808\n", ":3:"));
  {
    std::ofstream f(path);
    f << dpsr::text::kSpellerHeader << "\nfan\t3\nceiling\t2\n";
  }
  CHECK(Correct(*Speller::Load(path, SpellerConfig()), "ceilng fna") == "ceiling fan");
  std::remove(path.c_str());
}

}  // namespace

int main() {
  TestEditDistance();
  TestCorrections();
  TestBoundedWork();
  TestBadInput();
  return dpsr_test::Report("speller_test");
}
