// pybind11 adapter of the lexical index core: type and error conversion only. Exposed as
// dpsr_tf._lexical; the Python API (dpsr_tf/indexing/lexical_index.py) wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "search_cc/core/lexical_index.h"

namespace py = pybind11;
using dpsr::lexical::Bm25Params;
using dpsr::lexical::CorpusStats;
using dpsr::lexical::LexicalIndex;
using dpsr::lexical::LexicalIndexError;
using dpsr::lexical::RaggedIds;
using dpsr::lexical::SearchParams;

namespace {

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

RaggedIds Ragged(const Int64Array& values, const Int64Array& row_splits) {
  if (values.ndim() != 1 || row_splits.ndim() != 1 || row_splits.size() < 1) {
    throw py::value_error("values and row_splits must be 1-D, row_splits non-empty");
  }
  RaggedIds r;
  r.values = values.data();
  r.num_values = values.size();
  r.row_splits = row_splits.data();
  r.num_rows = row_splits.size() - 1;
  return r;
}

// LexicalIndexError -> FileNotFoundError (kNotFound), ValueError (kInvalidArgument),
// RuntimeError (kFailedPrecondition), OSError (kInternal).
void Translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const LexicalIndexError& e) {
    switch (e.code()) {
      case LexicalIndexError::Code::kNotFound:
        PyErr_SetString(PyExc_FileNotFoundError, e.what());
        return;
      case LexicalIndexError::Code::kInvalidArgument:
        PyErr_SetString(PyExc_ValueError, e.what());
        return;
      case LexicalIndexError::Code::kFailedPrecondition:
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return;
      case LexicalIndexError::Code::kInternal:
        PyErr_SetString(PyExc_OSError, e.what());
        return;
    }
  }
}

}  // namespace

PYBIND11_MODULE(_lexical, m) {
  m.doc() = "C++ DPSR lexical (BM25) index core (use dpsr_tf.indexing.lexical_index instead).";
  py::register_exception_translator(&Translate);

  py::class_<CorpusStats>(m, "CorpusStats")
      .def_static("compute", [](const Int64Array& values, const Int64Array& row_splits) {
        RaggedIds docs = Ragged(values, row_splits);
        py::gil_scoped_release release;
        return CorpusStats::Compute(docs);
      }, py::arg("values"), py::arg("row_splits"))
      .def_readonly("num_docs", &CorpusStats::num_docs)
      .def_readonly("total_length", &CorpusStats::total_length)
      .def_property_readonly("num_terms", [](const CorpusStats& s) {
        return static_cast<int64_t>(s.terms.size());
      })
      .def_property_readonly("avg_doc_length", &CorpusStats::avg_doc_length)
      .def("doc_freq", &CorpusStats::DocFreq, py::arg("term"));

  m.def("write_index", [](const std::string& path, const Int64Array& values,
                          const Int64Array& row_splits, const CorpusStats& stats, float k1,
                          float b) {
    RaggedIds docs = Ragged(values, row_splits);
    py::gil_scoped_release release;
    dpsr::lexical::WriteIndex(path, docs, stats, Bm25Params{k1, b});
  }, py::arg("path"), py::arg("values"), py::arg("row_splits"), py::arg("stats"),
        py::arg("k1"), py::arg("b"));

  py::class_<LexicalIndex, std::shared_ptr<LexicalIndex>>(m, "LexicalIndex")
      .def(py::init([](const std::string& path) {
        return std::const_pointer_cast<LexicalIndex>(LexicalIndex::Load(path));
      }), py::arg("path"))
      .def("search", [](const LexicalIndex& index, const Int64Array& values,
                        const Int64Array& row_splits, int64_t k, float min_score) {
        RaggedIds queries = Ragged(values, row_splits);
        SearchParams params;
        params.k = k;
        params.min_score = min_score;
        if (k < 1 || k > LexicalIndex::kMaxK) {
          throw py::value_error("k must be in [1, " + std::to_string(LexicalIndex::kMaxK) +
                                "], got " + std::to_string(k));
        }
        py::array_t<float> scores({queries.num_rows, k});
        py::array_t<int64_t> labels({queries.num_rows, k});
        float* s = scores.mutable_data();
        int64_t* l = labels.mutable_data();
        {
          py::gil_scoped_release release;
          index.Search(queries, params, s, l);
        }
        return py::make_tuple(scores, labels);
      }, py::arg("values"), py::arg("row_splits"), py::arg("k"), py::arg("min_score") = 0.0f)
      .def("score_all", [](const LexicalIndex& index, const Int64Array& values,
                           const Int64Array& row_splits) {
        RaggedIds queries = Ragged(values, row_splits);
        py::array_t<float> scores({queries.num_rows, index.num_docs()});
        float* s = scores.mutable_data();
        {
          py::gil_scoped_release release;
          index.ScoreAll(queries, s);
        }
        return scores;
      }, py::arg("values"), py::arg("row_splits"))
      .def_property_readonly("path", &LexicalIndex::path)
      .def_property_readonly("num_docs", &LexicalIndex::num_docs)
      .def_property_readonly("num_terms", &LexicalIndex::num_terms)
      .def_property_readonly("num_postings", &LexicalIndex::num_postings)
      .def_property_readonly("file_bytes", &LexicalIndex::file_bytes)
      .def_property_readonly("corpus_docs", &LexicalIndex::corpus_docs)
      .def_property_readonly("avg_doc_length", &LexicalIndex::avg_doc_length)
      .def_property_readonly("k1", [](const LexicalIndex& i) { return i.params().k1; })
      .def_property_readonly("b", [](const LexicalIndex& i) { return i.params().b; });
  m.attr("MAX_K") = LexicalIndex::kMaxK;
  m.attr("MAX_QUERY_TERMS") = LexicalIndex::kMaxQueryTerms;
}
