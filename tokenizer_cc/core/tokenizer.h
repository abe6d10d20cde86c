// The DPSR tokenizer: text -> features -> int64 ids.
//
// One core used three ways: the pybind11 module (data preparation, vocabularies), the
// Dpsr>Tokenize TensorFlow op (training graphs and the serving SavedModel) and the C++ tests.
// It depends on nothing but the standard library; errors are reported by throwing
// TokenizerError, which the adapters convert (ValueError in Python, InvalidArgument in TF).
//
// Pipeline for one text (details and examples in docs/tokenizer.md):
//   1. Decode UTF-8 (invalid bytes -> U+FFFD), fold full-width forms and case.
//   2. Segment: CJK ideographs, kana and hangul are one token each; runs of word characters
//      (Latin/Greek/Cyrillic letters, digits, with combining marks) are words; everything else
//      separates.
//   3. Emit features as each token completes, in text order:
//        word        "w:<word>"              word unigram
//        word pair   "ww:<prev> <word>"      word bigram (two words with no CJK between them)
//        letter tri  "t:<3 chars>"           trigrams of "#<word>#" (typo tolerance)
//        CJK char    "c:<char>"              CJK character unigram
//        CJK pair    "cc:<prev><char>"       CJK bigram (adjacent characters only)
//   4. Map each feature key to an id: a vocabulary id if the key is in the vocabulary, else a
//      hashed bucket (see Tokenizer::IdOf).
// Bounded cost: at most max_input_bytes of a text are read, a word keeps at most max_word_chars
// characters, and at most max_tokens features are emitted.
//
// The options travel as one string, TokenizerConfig::ToString() / FromString(): the pybind11
// module and the op's `config` attr take it, and Python's TokenizerConfig writes it.
#ifndef DPSR_TOKENIZER_CC_CORE_TOKENIZER_H_
#define DPSR_TOKENIZER_CC_CORE_TOKENIZER_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dpsr {
namespace text {

// The one exception type of the core. Adapters translate it; they never see another.
class TokenizerError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Adding an option: a field here, a line in ForEachOption (tokenizer.cc), a field of the Python
// dataclass (dpsr_tf/tokenization/config.py). Its default must keep what older configs meant.
struct TokenizerConfig {
  bool word_unigrams = true;
  bool word_bigrams = true;
  bool letter_trigrams = true;
  bool cjk_unigrams = true;
  bool cjk_bigrams = true;
  // Hashing mode: ids are FeatureHash(key) % num_buckets. Vocabulary mode (a vocabulary is
  // given): known keys get their line number, unknown keys vocab_size + hash % num_oov_buckets.
  int64_t num_buckets = 1 << 20;
  int64_t num_oov_buckets = 1 << 14;
  int32_t max_tokens = 256;
  int32_t max_input_bytes = 16384;
  int32_t max_word_chars = 32;

  // Throws TokenizerError naming the bad field and its value.
  void Validate() const;

  // The one serialised form: every option as "name=value", sorted by name, joined by ",";
  // bools are true/false, integers decimal. E.g. "cjk_bigrams=true,...,word_unigrams=true".
  std::string ToString() const;
  // Reads ToString's form, in any order; an option left out keeps its default ("" is the
  // default config). Throws TokenizerError on an unknown or repeated option, a bad value, or
  // a config that fails Validate().
  static TokenizerConfig FromString(std::string_view text);
};

struct Vocabulary {
  std::vector<std::string> keys;                  // id -> key
  std::unordered_map<std::string, int64_t> index;  // key -> id

  // Reads a vocabulary file: one "<key>\t<count>" (or "<key>") per line, id = line number
  // among non-comment lines; '#' starts a comment line. Throws TokenizerError with the file and
  // line of a duplicate or empty key, or if the file cannot be read.
  static Vocabulary Load(const std::string& path);
  int64_t size() const { return static_cast<int64_t>(keys.size()); }
};

class Tokenizer {
 public:
  // Hashing mode.
  explicit Tokenizer(const TokenizerConfig& config);
  // Vocabulary mode.
  Tokenizer(const TokenizerConfig& config, Vocabulary vocab);

  // Feature keys of one text, in emission order.
  void Features(std::string_view text, std::vector<std::string>* keys) const;
  // Ids of one text, appended to *ids.
  void Ids(std::string_view text, std::vector<int64_t>* ids) const;
  // Id of one feature key.
  int64_t IdOf(std::string_view key) const;
  // Exclusive upper bound of the ids this tokenizer emits (embedding table size).
  int64_t id_space() const;

  const TokenizerConfig& config() const { return config_; }
  bool has_vocabulary() const { return has_vocab_; }
  const Vocabulary& vocabulary() const { return vocab_; }

 private:
  template <typename Emit>
  void Segment(std::string_view text, Emit&& emit) const;

  TokenizerConfig config_;
  Vocabulary vocab_;
  bool has_vocab_ = false;
};

}  // namespace text
}  // namespace dpsr

#endif  // DPSR_TOKENIZER_CC_CORE_TOKENIZER_H_
