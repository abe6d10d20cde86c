// Op definitions of the lexical (BM25) index resource and search (kernels in
// kernels/lexical_kernels.cc, core in lexical_index.h).
#include "search_cc/ops/index_resource_shapes.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dpsr {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("Dpsr>LexicalIndexHandle")
    .Output("handle: resource")
    .Attr("container: string = ''")
    .Attr("shared_name: string = ''")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Handle of a lexical (BM25) index resource, named by (container, shared_name).

Creates nothing: Dpsr>LexicalIndexLoad creates and loads the resource, Dpsr>LexicalSearch
reads it. An empty shared_name means the node name.
handle: scalar resource handle.
)doc");

REGISTER_OP("Dpsr>LexicalIndexLoad")
    .Input("handle: resource")
    .Input("path: string")
    .SetIsStateful()
    .SetShapeFn(ScalarInputsAndOutputs)
    .Doc(R"doc(
Memory-maps a lexical index file (written by `dpsr index --lexical`) into the resource.

The file is mapped and validated once per process; other resources loading the same file share
it. Loading the same path again is a no-op that counts one more holder for
Dpsr>LexicalIndexRelease; another path swaps the new index in. A missing file is NotFound; a
truncated, corrupt or foreign file is InvalidArgument naming the file.
handle: scalar resource handle from Dpsr>LexicalIndexHandle.
path: scalar path of the index file (a SavedModel asset path).
)doc");

REGISTER_OP("Dpsr>LexicalIndexRelease")
    .Input("handle: resource")
    .SetIsStateful()
    .SetShapeFn(ScalarInputsAndOutputs)
    .Doc(R"doc(
Drops one holder of the lexical index resource; the last one deletes it and unmaps the file.
handle: scalar resource handle.
)doc");

REGISTER_OP("Dpsr>LexicalSearch")
    .Input("handle: resource")
    .Input("query_ids: int64")
    .Input("query_row_splits: int64")
    .Input("k: int32")
    .Input("min_score: float")
    .Output("scores: float")
    .Output("labels: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
      ShapeHandle splits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &splits));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 0, &unused));
      DimensionHandle batch;
      TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &batch));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(3, &k));
      ShapeHandle out = c->Matrix(batch, k);
      c->set_output(0, out);
      c->set_output(1, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
BM25 search of a loaded lexical index: the k best documents of each query, best first.

query_ids and query_row_splits are a ragged batch of tokenizer feature ids (a RaggedTensor's
flat_values and row_splits), tokenized with the index's own tokenizer configuration.
handle: scalar resource handle of a loaded index.
query_ids: [n] int64 feature ids of all queries.
query_row_splits: [batch + 1] int64; query i is query_ids[splits[i]:splits[i+1]] (at most 4096
  ids per query).
k: int32 scalar in [1, 10000].
min_score: float scalar; only documents scoring strictly above it are returned.
scores: [batch, k] float32 BM25 scores, best first (ties by lower label); -inf pads.
labels: [batch, k] int64 document rows of the shard (lines of its id map); -1 pads.
)doc");

REGISTER_OP("Dpsr>LexicalIndexInfo")
    .Input("handle: resource")
    .Output("num_docs: int64")
    .Output("num_terms: int64")
    .Output("num_postings: int64")
    .Output("avg_doc_length: float")
    .SetShapeFn(ScalarInputsAndOutputs)
    .Doc(R"doc(
Facts about a loaded lexical index: documents, distinct terms, postings, and the catalog's
average document length (features per item).
)doc");

}  // namespace dpsr
