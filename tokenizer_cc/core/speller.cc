#include "tokenizer_cc/core/speller.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <limits>
#include <tuple>
#include <unordered_set>

namespace dpsr {
namespace text {
namespace {

TokenizerConfig UnitConfig() {
  TokenizerConfig c;
  c.word_unigrams = true;
  c.word_bigrams = false;
  c.letter_trigrams = false;
  c.cjk_unigrams = true;
  c.cjk_bigrams = true;  // a "cc:" pair follows two CJK characters the query had side by side
  return c;
}

bool IsAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c & 0x80) == 0; });
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool AllDigits(std::string_view s) { return std::all_of(s.begin(), s.end(), IsDigit); }

// The delete map stores a key's hash, not the key: a colliding key only adds a candidate that
// the exact edit distance then rejects, and the map is one sorted array of 16-byte entries,
// several times smaller than string keys with word vectors (docs/spelling.md, "The rules").
uint64_t KeyHash(const std::string& key) { return std::hash<std::string>{}(key); }

// word with 0..depth characters deleted, into *out.
void Deletes(const std::string& word, int depth, std::unordered_set<std::string>* out) {
  out->insert(word);
  std::vector<std::string> frontier{word};
  for (int d = 0; d < depth; ++d) {
    std::vector<std::string> next;
    for (const std::string& w : frontier) {
      for (size_t i = 0; i < w.size(); ++i) {
        if (i > 0 && w[i] == w[i - 1]) continue;  // deleting either of a double letter: one key
        std::string shorter;
        shorter.reserve(w.size() - 1);
        shorter.append(w, 0, i).append(w, i + 1, std::string::npos);
        if (out->insert(shorter).second) next.push_back(std::move(shorter));
      }
    }
    frontier = std::move(next);
  }
}

}  // namespace

void SpellerConfig::Validate() const {
  if (max_distance != 1 && max_distance != 2) {
    throw TokenizerError("speller max_distance must be 1 or 2, got " +
                         std::to_string(max_distance));
  }
  if (long_word < 1 || long_word > 64) {
    throw TokenizerError("speller long_word must be in [1, 64], got " +
                         std::to_string(long_word));
  }
}

int EditDistance(std::string_view a, std::string_view b, int limit) {
  const int n = static_cast<int>(a.size()), m = static_cast<int>(b.size());
  if (std::abs(n - m) > limit) return limit + 1;
  std::vector<int> prev2(m + 1), prev(m + 1), row(m + 1);
  for (int j = 0; j <= m; ++j) prev[j] = j;
  for (int i = 1; i <= n; ++i) {
    row[0] = i;
    int best = row[0];
    for (int j = 1; j <= m; ++j) {
      const int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      row[j] = std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        row[j] = std::min(row[j], prev2[j - 2] + 1);
      }
      best = std::min(best, row[j]);
    }
    if (best > limit) return limit + 1;
    std::swap(prev2, prev);
    std::swap(prev, row);
  }
  return prev[m] <= limit ? prev[m] : limit + 1;
}

Speller::Speller(std::vector<std::pair<std::string, int64_t>> counts, const SpellerConfig& config)
    : config_(config), units_(UnitConfig()) {
  config_.Validate();
  words_.reserve(counts.size());
  counts_.reserve(counts.size());
  for (auto& [word, count] : counts) {
    if (word.empty() || count < 0) {
      throw TokenizerError("speller vocabulary: word '" + word + "' needs a count >= 0, got " +
                           std::to_string(count));
    }
    if (!index_.emplace(word, static_cast<int32_t>(words_.size())).second) {
      throw TokenizerError("speller vocabulary: word '" + word + "' is given twice");
    }
    words_.push_back(std::move(word));
    counts_.push_back(count);
  }
  std::unordered_set<std::string> keys;
  for (size_t w = 0; w < words_.size(); ++w) {
    const std::string& word = words_[w];
    const int size = static_cast<int>(word.size());
    if (counts_[w] == 0 || size < kMinSpellWord - config_.max_distance ||
        size > kMaxSpellWordBytes + config_.max_distance || !IsAscii(word) || AllDigits(word)) {
      continue;  // count 0: a word users type that no item uses, known but never proposed;
                 // shorter or longer than a correctable word give or take its edits: unreachable
    }
    keys.clear();
    Deletes(word, config_.max_distance, &keys);
    for (const std::string& key : keys) {
      deletes_.emplace_back(KeyHash(key), static_cast<int32_t>(w));
    }
  }
  std::sort(deletes_.begin(), deletes_.end());
  deletes_.shrink_to_fit();
}

std::unique_ptr<Speller> Speller::Load(const std::string& path, const SpellerConfig& config) {
  std::ifstream in(path);
  if (!in) throw TokenizerError("cannot read speller vocabulary " + path);
  std::string line;
  if (!std::getline(in, line) || line != kSpellerHeader) {
    throw TokenizerError(path + ":1: not a speller vocabulary (expected the line '" +
                         std::string(kSpellerHeader) + "')");
  }
  std::vector<std::pair<std::string, int64_t>> counts;
  for (int64_t n = 2; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const size_t tab = line.find('\t');
    int64_t count = 0;
    bool ok = tab != std::string::npos && tab > 0 && tab + 1 < line.size();
    if (ok) {
      for (size_t i = tab + 1; i < line.size() && ok; ++i) {
        const int digit = line[i] - '0';
        ok = IsDigit(line[i]) && count <= (std::numeric_limits<int64_t>::max() - digit) / 10;
        if (ok) count = count * 10 + digit;
      }
    }
    if (!ok) {
      throw TokenizerError(path + ":" + std::to_string(n) +
                           ": expected <word><TAB><count>, got '" + line.substr(0, 80) + "'");
    }
    counts.emplace_back(line.substr(0, tab), count);
  }
  try {
    return std::make_unique<Speller>(std::move(counts), config);
  } catch (const TokenizerError& e) {
    throw TokenizerError(path + ": " + e.what());
  }
}

bool Speller::Known(std::string_view word) const {
  return index_.find(std::string(word)) != index_.end();
}

int64_t Speller::CountOf(std::string_view word) const {
  auto it = index_.find(std::string(word));
  return it == index_.end() ? 0 : counts_[it->second];
}

bool Speller::Searched(std::string_view word) const {
  const int size = static_cast<int>(word.size());
  return size >= kMinSpellWord && size <= kMaxSpellWordBytes && IsAscii(word) && !Known(word);
}

std::string Speller::CorrectWord(std::string_view view) const {
  if (!Searched(view)) return "";
  const std::string word(view);
  if (AllDigits(word)) return "";
  const bool has_digit = std::any_of(word.begin(), word.end(), IsDigit);
  if (has_digit) {
    // Digit/letter runs: "6ft" -> "6 ft" when every run is a word, else a model number.
    std::string joined;
    size_t start = 0;
    for (size_t i = 1; i <= word.size(); ++i) {
      if (i == word.size() || IsDigit(word[i]) != IsDigit(word[i - 1])) {
        const std::string part = word.substr(start, i - start);
        if (!Known(part)) return "";
        if (!joined.empty()) joined += ' ';
        joined += part;
        start = i;
      }
    }
    return joined;
  }
  const int limit =
      static_cast<int>(word.size()) >= config_.long_word ? config_.max_distance : 1;
  std::unordered_set<std::string> keys;
  Deletes(word, limit, &keys);
  bool found = false;
  std::tuple<int, int64_t, std::string_view> best;
  for (const std::string& key : keys) {
    const uint64_t hash = KeyHash(key);
    auto it = std::lower_bound(deletes_.begin(), deletes_.end(),
                               std::make_pair(hash, std::numeric_limits<int32_t>::min()));
    for (; it != deletes_.end() && it->first == hash; ++it) {
      const int32_t w = it->second;
      const std::string& candidate = words_[w];
      const int d = EditDistance(word, candidate, limit);
      if (d > limit) continue;
      // A changed first letter is a rarer typo: it costs one more edit.
      const int cost = d + (candidate[0] != word[0] ? 1 : 0);
      auto rank = std::make_tuple(cost, -counts_[w], std::string_view(candidate));
      if (!found || rank < best) {
        best = rank;
        found = true;
      }
    }
  }
  if (found) return std::string(std::get<2>(best));
  return Split(word);
}

std::string Speller::Split(const std::string& word) const {
  int64_t best = 0;
  std::string out;
  for (int i = kMinSpellWord; i <= static_cast<int>(word.size()) - kMinSpellWord; ++i) {
    const int64_t left = CountOf(std::string_view(word).substr(0, i));
    const int64_t right = CountOf(std::string_view(word).substr(i));
    const int64_t rarer = std::min(left, right);
    if (rarer > best) {
      best = rarer;
      out = word.substr(0, i) + " " + word.substr(i);
    }
  }
  return out;
}

std::string Speller::Correct(std::string_view query, bool* changed) const {
  std::vector<std::string> keys;
  units_.Features(query, &keys);
  bool any = false;
  std::vector<std::pair<std::string, bool>> units;  // (unit, glued to the one before)
  int lookups = kMaxSpellWords;  // searched words; every other word costs one probe at most
  for (const std::string& key : keys) {
    if (key.rfind("cc:", 0) == 0) {  // the last two CJK characters were adjacent: keep them so
      if (!units.empty()) units.back().second = true;
      continue;
    }
    const bool cjk = key.rfind("c:", 0) == 0;
    std::string unit = key.substr(key.find(':') + 1);
    if (!cjk && lookups > 0 && Searched(unit)) {
      --lookups;
      std::string fixed = CorrectWord(unit);
      if (!fixed.empty()) {
        unit = std::move(fixed);
        any = true;
      }
    }
    units.emplace_back(std::move(unit), false);
  }
  if (changed != nullptr) *changed = any;
  if (!any) return std::string(query);
  std::string out;
  for (const auto& [unit, glued] : units) {
    if (!out.empty() && !glued) out += ' ';
    out += unit;
  }
  return out;
}

}  // namespace text
}  // namespace dpsr
