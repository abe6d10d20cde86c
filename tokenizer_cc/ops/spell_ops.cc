// Op definition of Dpsr>SpellCorrect (the kernel is in kernels/spell_kernels.cc).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dpsr {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("Dpsr>SpellCorrect")
    .Input("queries: string")
    .Input("vocabulary_file: string")
    .Output("corrected: string")
    .Output("changed: bool")
    .Attr("max_distance: int = 2")
    .Attr("long_word: int = 6")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle queries;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &queries));
      ShapeHandle vocab;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &vocab));
      c->set_output(0, queries);
      c->set_output(1, queries);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Corrects the words of each query that the catalog never uses (tokenizer_cc/core/speller.h).

queries: [batch] UTF-8 strings.
vocabulary_file: scalar path of a speller vocabulary (`dpsr index` writes it). Loaded once per
  path and kept.
corrected: [batch] each query corrected, or the query itself when nothing changed.
changed: [batch] whether the query was corrected.
)doc");

}  // namespace dpsr
