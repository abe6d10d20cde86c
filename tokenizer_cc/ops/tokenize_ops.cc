// Op definition of Dpsr>Tokenize (the kernel is in kernels/tokenize_kernels.cc).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dpsr {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("Dpsr>Tokenize")
    .Input("texts: string")
    .Input("vocab_file: string")
    .Output("ids: int64")
    .Output("row_splits: int64")
    .Attr("config: string = ''")
    // The options as attrs, as graphs exported before `config` carry them: kept, with their
    // defaults, so those graphs still load. Frozen: a new option exists only in `config`.
    .Attr("word_unigrams: bool = true")
    .Attr("word_bigrams: bool = true")
    .Attr("letter_trigrams: bool = true")
    .Attr("cjk_unigrams: bool = true")
    .Attr("cjk_bigrams: bool = true")
    .Attr("num_buckets: int = 1048576")
    .Attr("num_oov_buckets: int = 16384")
    .Attr("max_tokens: int = 256")
    .Attr("max_input_bytes: int = 16384")
    .Attr("max_word_chars: int = 32")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle texts;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &texts));
      ShapeHandle vocab;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &vocab));
      DimensionHandle splits;
      TF_RETURN_IF_ERROR(c->Add(c->Dim(texts, 0), 1, &splits));
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      c->set_output(1, c->Vector(splits));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Tokenizes a batch of UTF-8 strings into DPSR feature ids (a ragged batch).

texts: [batch] strings; invalid UTF-8 is replaced, never an error.
vocab_file: scalar path of a vocabulary file, or "" for hashing mode. Loaded once per path.
ids: [total_features] int64 feature ids, the values of the ragged result.
row_splits: [batch + 1] int64; the ids of texts[i] are ids[row_splits[i]:row_splits[i+1]].
config: the tokenizer options in the core's one serialised form (TokenizerConfig::ToString,
  e.g. "max_tokens=64,num_buckets=4096"; an option left out keeps its default). When empty, the
  other attrs give the options, as in graphs exported before this attr existed; when set,
  they must keep their defaults.
)doc");

}  // namespace dpsr
