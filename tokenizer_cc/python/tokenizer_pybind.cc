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

std::unique_ptr<Tokenizer> Make(const std::string& config, const std::string& vocab_file) {
  const TokenizerConfig c = TokenizerConfig::FromString(config);
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
      .def(py::init(&Make), py::arg("config"), py::arg("vocab_file"))
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
  // The core's reading of a config string, written back: a test round-trips Python's form.
  m.def("canonical_config",
        [](const std::string& config) { return TokenizerConfig::FromString(config).ToString(); },
        py::arg("config"));
}
