#include "tokenizer_cc/core/tokenizer.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>
#include <type_traits>
#include <utility>

#include "tokenizer_cc/core/hash.h"
#include "tokenizer_cc/core/utf8.h"

namespace dpsr {
namespace text {
namespace {

void Require(bool ok, const std::string& field, int64_t value, const char* rule) {
  if (!ok) {
    throw TokenizerError("tokenizer config: " + field + " must be " + rule + ", got " +
                         std::to_string(value));
  }
}

// Calls visit(name, field) for every option: the one list ToString and FromString walk.
template <typename Config, typename Visit>
void ForEachOption(Config& c, Visit&& visit) {
  visit("word_unigrams", c.word_unigrams);
  visit("word_bigrams", c.word_bigrams);
  visit("letter_trigrams", c.letter_trigrams);
  visit("cjk_unigrams", c.cjk_unigrams);
  visit("cjk_bigrams", c.cjk_bigrams);
  visit("num_buckets", c.num_buckets);
  visit("num_oov_buckets", c.num_oov_buckets);
  visit("max_tokens", c.max_tokens);
  visit("max_input_bytes", c.max_input_bytes);
  visit("max_word_chars", c.max_word_chars);
}

[[noreturn]] void BadValue(const std::string& name, std::string_view value, const char* want) {
  throw TokenizerError("tokenizer config: " + name + " must be " + want + ", got '" +
                       std::string(value) + "'");
}

void Parse(const std::string& name, std::string_view value, bool* out) {
  if (value == "true") {
    *out = true;
  } else if (value == "false") {
    *out = false;
  } else {
    BadValue(name, value, "true or false");
  }
}

template <typename Int>
void Parse(const std::string& name, std::string_view value, Int* out) {
  static_assert(std::is_integral_v<Int>);
  Int v = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, v);
  if (value.empty() || ec != std::errc() || ptr != end) {
    BadValue(name, value, sizeof(Int) == 4 ? "a decimal int32" : "a decimal int64");
  }
  *out = v;
}

}  // namespace

std::string TokenizerConfig::ToString() const {
  std::vector<std::pair<std::string, std::string>> items;
  ForEachOption(*this, [&](const char* name, const auto& field) {
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, bool>) {
      items.emplace_back(name, field ? "true" : "false");
    } else {
      items.emplace_back(name, std::to_string(field));
    }
  });
  std::sort(items.begin(), items.end());
  std::string out;
  for (const auto& [name, value] : items) {
    if (!out.empty()) out += ',';
    out += name + "=" + value;
  }
  return out;
}

TokenizerConfig TokenizerConfig::FromString(std::string_view text) {
  std::map<std::string, std::string_view> given;
  for (size_t start = 0; !text.empty();) {
    const size_t comma = text.find(',', start);
    const std::string_view item =
        text.substr(start, comma == std::string_view::npos ? comma : comma - start);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      throw TokenizerError("tokenizer config: expected name=value, got '" + std::string(item) +
                           "' in '" + std::string(text) + "'");
    }
    const std::string name(item.substr(0, eq));
    if (!given.emplace(name, item.substr(eq + 1)).second) {
      throw TokenizerError("tokenizer config: " + name + " is given twice in '" +
                           std::string(text) + "'");
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  TokenizerConfig c;
  std::string known;
  ForEachOption(c, [&](const char* name, auto& field) {
    known += known.empty() ? name : std::string(", ") + name;
    const auto it = given.find(name);
    if (it == given.end()) return;
    Parse(it->first, it->second, &field);
    given.erase(it);
  });
  if (!given.empty()) {
    throw TokenizerError("tokenizer config: unknown option '" + given.begin()->first +
                         "'; the options are " + known);
  }
  c.Validate();
  return c;
}

void TokenizerConfig::Validate() const {
  Require(num_buckets >= 1, "num_buckets", num_buckets, ">= 1");
  Require(num_oov_buckets >= 1, "num_oov_buckets", num_oov_buckets, ">= 1");
  Require(max_tokens >= 1, "max_tokens", max_tokens, ">= 1");
  Require(max_input_bytes >= 1, "max_input_bytes", max_input_bytes, ">= 1");
  Require(max_word_chars >= 1, "max_word_chars", max_word_chars, ">= 1");
  if (!(word_unigrams || word_bigrams || letter_trigrams || cjk_unigrams || cjk_bigrams)) {
    throw TokenizerError(
        "tokenizer config: every feature kind is disabled; enable at least one of "
        "word_unigrams, word_bigrams, letter_trigrams, cjk_unigrams, cjk_bigrams");
  }
}

Vocabulary Vocabulary::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError("cannot open vocabulary file " + path);
  Vocabulary vocab;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty() && line[0] == '#') continue;
    const std::string key = line.substr(0, line.find('\t'));
    const std::string where = path + ":" + std::to_string(line_no);
    if (key.empty()) throw TokenizerError(where + ": empty feature key");
    if (!vocab.index.emplace(key, vocab.size()).second) {
      throw TokenizerError(where + ": duplicate feature key '" + key + "'");
    }
    vocab.keys.push_back(key);
  }
  if (in.bad()) throw TokenizerError("error while reading vocabulary file " + path);
  return vocab;
}

Tokenizer::Tokenizer(const TokenizerConfig& config) : config_(config) { config_.Validate(); }

Tokenizer::Tokenizer(const TokenizerConfig& config, Vocabulary vocab)
    : config_(config), vocab_(std::move(vocab)), has_vocab_(true) {
  config_.Validate();
}

int64_t Tokenizer::IdOf(std::string_view key) const {
  if (has_vocab_) {
    const auto it = vocab_.index.find(std::string(key));
    if (it != vocab_.index.end()) return it->second;
    return vocab_.size() +
           static_cast<int64_t>(FeatureHash(key) % static_cast<uint64_t>(config_.num_oov_buckets));
  }
  return static_cast<int64_t>(FeatureHash(key) % static_cast<uint64_t>(config_.num_buckets));
}

int64_t Tokenizer::id_space() const {
  return has_vocab_ ? vocab_.size() + config_.num_oov_buckets : config_.num_buckets;
}

// Calls emit(key) for each feature in text order; emit returns false to stop early.
template <typename Emit>
void Tokenizer::Segment(std::string_view text, Emit&& emit) const {
  const char* data = text.data();
  size_t size = text.size();
  if (size > static_cast<size_t>(config_.max_input_bytes)) {
    // Cut at a character boundary so the cap never manufactures an invalid sequence.
    size = static_cast<size_t>(config_.max_input_bytes);
    while (size > 0 && (static_cast<unsigned char>(data[size]) & 0xC0) == 0x80) --size;
  }

  std::string key;
  std::u32string word;          // the word being read
  std::string prev_word;        // last completed word, for bigrams
  bool have_prev_word = false;
  std::string prev_cjk;         // last CJK character, for CJK bigrams
  bool have_prev_cjk = false;
  bool stopped = false;

  auto put = [&](std::string_view prefix, std::string_view body) {
    key.assign(prefix);
    key.append(body);
    if (!emit(key)) stopped = true;
    return !stopped;
  };

  auto finish_word = [&]() {
    if (word.empty()) return;
    std::string utf8;
    for (char32_t c : word) AppendUtf8(c, &utf8);
    if (config_.word_unigrams && !put("w:", utf8)) return;
    if (config_.word_bigrams && have_prev_word) {
      if (!put("ww:", prev_word + " " + utf8)) return;
    }
    if (config_.letter_trigrams) {
      std::u32string marked;
      marked.reserve(word.size() + 2);
      marked.push_back(U'#');
      marked += word;
      marked.push_back(U'#');
      for (size_t i = 0; i + 3 <= marked.size(); ++i) {
        std::string tri;
        for (size_t k = i; k < i + 3; ++k) AppendUtf8(marked[k], &tri);
        if (!put("t:", tri)) return;
      }
    }
    prev_word = std::move(utf8);
    have_prev_word = true;
    word.clear();
  };

  size_t pos = 0;
  while (pos < size && !stopped) {
    const char32_t c = FoldCase(FoldWidth(DecodeUtf8(data, size, &pos)));
    switch (Classify(c)) {
      case CharClass::kWord:
        if (word.size() < static_cast<size_t>(config_.max_word_chars)) word.push_back(c);
        have_prev_cjk = false;
        break;
      case CharClass::kMark:
        if (!word.empty()) {
          if (word.size() < static_cast<size_t>(config_.max_word_chars)) word.push_back(c);
        } else {
          have_prev_cjk = false;
        }
        break;
      case CharClass::kCjk: {
        finish_word();
        if (stopped) break;
        have_prev_word = false;  // a CJK character separates two Latin words for bigrams
        std::string ch;
        AppendUtf8(c, &ch);
        if (config_.cjk_unigrams && !put("c:", ch)) break;
        if (config_.cjk_bigrams && have_prev_cjk && !put("cc:", prev_cjk + ch)) break;
        prev_cjk = std::move(ch);
        have_prev_cjk = true;
        break;
      }
      case CharClass::kSeparator:
        finish_word();
        have_prev_cjk = false;
        break;
    }
  }
  if (!stopped) finish_word();
}

void Tokenizer::Features(std::string_view text, std::vector<std::string>* keys) const {
  int32_t n = 0;
  Segment(text, [&](const std::string& key) {
    keys->push_back(key);
    return ++n < config_.max_tokens;
  });
}

void Tokenizer::Ids(std::string_view text, std::vector<int64_t>* ids) const {
  int32_t n = 0;
  Segment(text, [&](const std::string& key) {
    ids->push_back(IdOf(key));
    return ++n < config_.max_tokens;
  });
}

}  // namespace text
}  // namespace dpsr
