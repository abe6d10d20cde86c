// Op definition of the per-head merge (kernel in kernels/head_merge_kernels.cc).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dpsr {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("Dpsr>MergeHeads")
    .Input("scores: float")
    .Input("labels: int64")
    .Input("k: int32")
    .Output("merged_scores: float")
    .Output("merged_labels: int64")
    .Output("merged_heads: int32")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle scores;
      ShapeHandle labels;
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &scores));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &labels));
      TF_RETURN_IF_ERROR(c->Merge(scores, labels, &scores));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &k));  // known when k is a constant
      ShapeHandle out = c->Matrix(c->Dim(scores, 0), k);
      for (int i = 0; i < 3; ++i) c->set_output(i, out);
      return Status();
    })
    .Doc(R"doc(
Merges the m per-head result lists of each query into one list of k (DPSR section 4.3).

All m * n hits of a query sorted by score (equal scores: head-major position order), an item
found by several heads kept once with its best score and the head of that hit, the first k
returned; rows with fewer than k distinct items are padded with score -inf, label -1, head -1.
The same output as dpsr_tf/search/head_merge.py's merge_heads_np (the reference in its tests).
scores: [batch, m, n] inner products of each head's hits (any value where the label is < 0).
labels: [batch, m, n] index labels; -1 marks padding.
k: scalar, 1 <= k <= m * n.
merged_scores: [batch, k] descending.
merged_labels: [batch, k].
merged_heads: [batch, k] the head (0..m-1) whose hit gave the item its score.
)doc");

}  // namespace dpsr
