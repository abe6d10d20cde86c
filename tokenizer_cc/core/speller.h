// The catalog speller: a query's words that no catalog item uses, replaced by catalog words.
//
// One core used by the pybind11 module (`dpsr index` builds its vocabulary, `dpsr evaluate`
// corrects queries) and by the Dpsr>SpellCorrect op of the serving SavedModel, so evaluation
// and serving correct identically. docs/spelling.md has the rules and the measurements.
//
// A query is segmented as the tokenizer's unigram features segment it (words lowercased,
// punctuation dropped, CJK characters one unit each). Each ASCII word of at least 3 characters
// that the vocabulary lacks is replaced by, in this order:
//   1. its split at digit/letter boundaries when every part is a vocabulary word ("6ft" ->
//      "6 ft"); a word mixing digits and letters is otherwise kept (model numbers);
//   2. the vocabulary word with the lowest cost within max_distance edits (optimal string
//      alignment: insert, delete, substitute, swap adjacent), words shorter than long_word
//      letters taking one edit at most; cost = edits, plus one when the first letter differs;
//      ties go to the word more documents use, then the smaller word in byte order;
//   3. failing both, its split into two vocabulary words of at least 3 letters each ("snowblower"
//      -> "snow blower"), the split whose rarer part is most used (the first such on ties).
// A query with nothing to correct comes back byte for byte; a corrected one is its units joined
// by spaces (CJK characters glued where the query had them adjacent), which tokenizes back
// into the same units.
// Candidates come from a symmetric-delete map (every vocabulary word with up to max_distance
// characters deleted; a sorted array of their hashes), so a word costs a few binary searches,
// never a scan of the vocabulary.
#ifndef DPSR_TOKENIZER_CC_CORE_SPELLER_H_
#define DPSR_TOKENIZER_CC_CORE_SPELLER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer_cc/core/tokenizer.h"

namespace dpsr {
namespace text {

// The first line of a speller vocabulary file; then one "<word>\t<document count>" per line. A
// count of 0 marks a word that users type and no item uses: known (never corrected), never
// proposed as a correction.
inline constexpr char kSpellerHeader[] = "# dpsr speller vocabulary 1";
// Words shorter than this are never corrected (units and abbreviations: "in", "ft").
inline constexpr int kMinSpellWord = 3;
// Bounds on one query's work, so a hostile query (thousands of long made-up words) costs what
// an ordinary one does: words longer than kMaxSpellWordBytes are not corrected (a word of n
// letters generates about n^2/2 deletes), and only the first kMaxSpellWords words of a query
// that would be searched (ASCII, in length, unknown) are; both bounds are above what real
// corrections and queries need (docs/spelling.md, "The rules").
inline constexpr int kMaxSpellWordBytes = 24;
inline constexpr int kMaxSpellWords = 16;

struct SpellerConfig {
  int max_distance = 2;  // 1 or 2
  int long_word = 6;     // words of at least this many letters may take max_distance edits
  void Validate() const;  // throws TokenizerError naming the bad field
};

class Speller {
 public:
  // counts: word -> number of catalog documents using it (words as the tokenizer emits them;
  // 0: known, never proposed).
  Speller(std::vector<std::pair<std::string, int64_t>> counts, const SpellerConfig& config);
  // Reads a vocabulary file (kSpellerHeader, then word<TAB>count lines). Throws TokenizerError
  // with the file and line of a bad line, a duplicate word, or if the file cannot be read.
  static std::unique_ptr<Speller> Load(const std::string& path, const SpellerConfig& config);

  // The correction of one word (possibly two words joined by a space), or "" when the word is
  // known, too short or too long, not ASCII, a number or model number, or has no candidate.
  std::string CorrectWord(std::string_view word) const;
  // The corrected query, or the query itself when nothing changed. *changed says which.
  // Words after the first kMaxSpellWords searched ones are not corrected.
  std::string Correct(std::string_view query, bool* changed) const;

  bool Known(std::string_view word) const;
  int64_t size() const { return static_cast<int64_t>(words_.size()); }
  const SpellerConfig& config() const { return config_; }

 private:
  // Whether a word is looked up (and counts toward kMaxSpellWords): in length, ASCII, unknown.
  bool Searched(std::string_view word) const;
  std::string Split(const std::string& word) const;
  int64_t CountOf(std::string_view word) const;

  SpellerConfig config_;
  std::vector<std::string> words_;
  std::vector<int64_t> counts_;
  std::unordered_map<std::string, int32_t> index_;                 // word -> position
  std::vector<std::pair<uint64_t, int32_t>> deletes_;  // (hash of a delete, word), sorted
  Tokenizer units_;
};

// Optimal-string-alignment distance of a and b (bytes), or limit + 1 when it exceeds limit.
int EditDistance(std::string_view a, std::string_view b, int limit);

}  // namespace text
}  // namespace dpsr

#endif  // DPSR_TOKENIZER_CC_CORE_SPELLER_H_
