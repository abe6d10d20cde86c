// pybind11 adapter of the tokenizer core: type conversion only. Exposed as dpsr_tf._tokenizer;
// the Python API (dpsr_tf.tokenization) wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "tokenizer_cc/core/speller.h"
#include "tokenizer_cc/core/tokenizer.h"

namespace py = pybind11;
using dpsr::text::Speller;
using dpsr::text::SpellerConfig;
using dpsr::text::Tokenizer;
using dpsr::text::TokenizerConfig;
using dpsr::text::Vocabulary;

namespace {

// Accepts a sequence of str or bytes; str is encoded as UTF-8, bytes are passed as they are
// (the core replaces invalid sequences).
std::vector<std::string> ToStrings(const py::sequence& texts) {
  std::vector<std::string> out;
  out.reserve(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    py::handle t = texts[i];
    if (py::isinstance<py::bytes>(t)) {
      out.push_back(t.cast<std::string>());
    } else if (py::isinstance<py::str>(t)) {
      out.push_back(t.cast<std::string>());
    } else {
      throw py::type_error("texts[" + std::to_string(i) + "] must be str or bytes, got " +
                           std::string(py::str(t.get_type())));
    }
  }
  return out;
}

std::unique_ptr<Tokenizer> Make(bool word_unigrams, bool word_bigrams, bool letter_trigrams,
                                bool cjk_unigrams, bool cjk_bigrams, int64_t num_buckets,
                                int64_t num_oov_buckets, int32_t max_tokens,
                                int32_t max_input_bytes, int32_t max_word_chars,
                                const std::string& vocab_file) {
  TokenizerConfig c;
  c.word_unigrams = word_unigrams;
  c.word_bigrams = word_bigrams;
  c.letter_trigrams = letter_trigrams;
  c.cjk_unigrams = cjk_unigrams;
  c.cjk_bigrams = cjk_bigrams;
  c.num_buckets = num_buckets;
  c.num_oov_buckets = num_oov_buckets;
  c.max_tokens = max_tokens;
  c.max_input_bytes = max_input_bytes;
  c.max_word_chars = max_word_chars;
  if (vocab_file.empty()) return std::make_unique<Tokenizer>(c);
  return std::make_unique<Tokenizer>(c, Vocabulary::Load(vocab_file));
}

py::tuple TokenizeBatch(const Tokenizer& tok, const py::sequence& texts) {
  const std::vector<std::string> strings = ToStrings(texts);
  std::vector<int64_t> ids;
  std::vector<int64_t> splits(1, 0);
  {
    py::gil_scoped_release release;
    splits.reserve(strings.size() + 1);
    for (const std::string& s : strings) {
      tok.Ids(s, &ids);
      splits.push_back(static_cast<int64_t>(ids.size()));
    }
  }
  return py::make_tuple(py::array_t<int64_t>(ids.size(), ids.data()),
                        py::array_t<int64_t>(splits.size(), splits.data()));
}

std::vector<std::vector<std::string>> FeaturesBatch(const Tokenizer& tok,
                                                    const py::sequence& texts) {
  const std::vector<std::string> strings = ToStrings(texts);
  std::vector<std::vector<std::string>> out(strings.size());
  py::gil_scoped_release release;
  for (size_t i = 0; i < strings.size(); ++i) tok.Features(strings[i], &out[i]);
  return out;
}

SpellerConfig MakeSpellerConfig(int max_distance, int long_word) {
  SpellerConfig c;
  c.max_distance = max_distance;
  c.long_word = long_word;
  return c;
}

// [(corrected, changed)] of a batch of queries.
std::vector<std::pair<std::string, bool>> CorrectBatch(const Speller& speller,
                                                       const py::sequence& queries) {
  const std::vector<std::string> strings = ToStrings(queries);
  std::vector<std::pair<std::string, bool>> out(strings.size());
  py::gil_scoped_release release;
  for (size_t i = 0; i < strings.size(); ++i) {
    out[i].first = speller.Correct(strings[i], &out[i].second);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_tokenizer, m) {
  m.doc() = "C++ DPSR tokenizer core (use dpsr_tf.tokenization instead).";
  py::register_exception<dpsr::text::TokenizerError>(m, "TokenizerError", PyExc_ValueError);

  py::class_<Tokenizer>(m, "Tokenizer")
      .def(py::init(&Make), py::arg("word_unigrams"), py::arg("word_bigrams"),
           py::arg("letter_trigrams"), py::arg("cjk_unigrams"), py::arg("cjk_bigrams"),
           py::arg("num_buckets"), py::arg("num_oov_buckets"), py::arg("max_tokens"),
           py::arg("max_input_bytes"), py::arg("max_word_chars"), py::arg("vocab_file"))
      .def("tokenize", &TokenizeBatch, py::arg("texts"))
      .def("features", &FeaturesBatch, py::arg("texts"))
      .def("id_of", [](const Tokenizer& t, const std::string& key) { return t.IdOf(key); },
           py::arg("key"))
      .def_property_readonly("id_space", &Tokenizer::id_space)
      .def_property_readonly("vocab_size", [](const Tokenizer& t) {
        return t.has_vocabulary() ? t.vocabulary().size() : int64_t{0};
      });
  py::class_<Speller>(m, "Speller")
      .def(py::init([](std::vector<std::pair<std::string, int64_t>> counts, int max_distance,
                       int long_word) {
             return std::make_unique<Speller>(std::move(counts),
                                              MakeSpellerConfig(max_distance, long_word));
           }),
           py::arg("counts"), py::arg("max_distance"), py::arg("long_word"))
      .def_static("load", [](const std::string& path, int max_distance, int long_word) {
             return Speller::Load(path, MakeSpellerConfig(max_distance, long_word));
           }, py::arg("path"), py::arg("max_distance"), py::arg("long_word"))
      .def("correct", &CorrectBatch, py::arg("queries"))
      .def("correct_word", [](const Speller& s, const std::string& w) { return s.CorrectWord(w); },
           py::arg("word"))
      .def("known", [](const Speller& s, const std::string& w) { return s.Known(w); },
           py::arg("word"))
      .def_property_readonly("size", &Speller::size);
  m.attr("SPELLER_HEADER") = dpsr::text::kSpellerHeader;
  // The core's own defaults, so a test can pin them to the Python config and the op attrs.
  m.def("default_config", [] {
    const TokenizerConfig c;
    py::dict d;
    d["word_unigrams"] = c.word_unigrams;
    d["word_bigrams"] = c.word_bigrams;
    d["letter_trigrams"] = c.letter_trigrams;
    d["cjk_unigrams"] = c.cjk_unigrams;
    d["cjk_bigrams"] = c.cjk_bigrams;
    d["num_buckets"] = c.num_buckets;
    d["num_oov_buckets"] = c.num_oov_buckets;
    d["max_tokens"] = c.max_tokens;
    d["max_input_bytes"] = c.max_input_bytes;
    d["max_word_chars"] = c.max_word_chars;
    return d;
  });
}
