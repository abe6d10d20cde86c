// Op definitions of the FAISS index resource and search (kernels in kernels/faiss_kernels.cc).
#include "search_cc/ops/index_resource_shapes.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace dpsr {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("Dpsr>FaissIndexHandle")
    .Output("handle: resource")
    .Attr("container: string = ''")
    .Attr("shared_name: string = ''")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Handle of a FAISS index resource, named by (container, shared_name).

Creates nothing: Dpsr>FaissIndexLoad creates and loads the resource, Dpsr>FaissSearch reads
it. Every handle op with the same name in one resource manager (one session, or one eager
context) refers to the same index. An empty shared_name means the node name.
handle: scalar resource handle.
)doc");

REGISTER_OP("Dpsr>FaissIndexLoad")
    .Input("handle: resource")
    .Input("path: string")
    .Attr("mmap: bool = false")
    .SetIsStateful()
    .SetShapeFn(ScalarInputsAndOutputs)
    .Doc(R"doc(
Loads a FAISS 1.7.3 index file into the resource (creating the resource if needed).

The file is read once per process: other resources loading the same file with the same mmap
setting share it. Loading an initialized resource again from the same path is a no-op; from
another path it swaps the new index in (searches in flight finish on the old one). Each load
counts one holder for Dpsr>FaissIndexRelease.
handle: scalar resource handle from Dpsr>FaissIndexHandle.
path: scalar path of the index file (a SavedModel asset path).
mmap: memory-map the inverted lists of IVF indexes read-only instead of reading them.
)doc");

REGISTER_OP("Dpsr>FaissIndexRelease")
    .Input("handle: resource")
    .SetIsStateful()
    .SetShapeFn(ScalarInputsAndOutputs)
    .Doc(R"doc(
Drops one holder of the index resource; the last one deletes the resource and frees the
index. A handle that names no resource is a no-op.
handle: scalar resource handle.
)doc");

REGISTER_OP("Dpsr>FaissSearch")
    .Input("handle: resource")
    .Input("queries: float")
    .Input("k: int32")
    .Input("nprobe: int32")
    .Input("ef_search: int32")
    .Output("scores: float")
    .Output("labels: int64")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      ShapeHandle queries;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &queries));
      for (int i = 2; i <= 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &k));  // known when k is a constant
      ShapeHandle out = c->Matrix(c->Dim(queries, 0), k);
      c->set_output(0, out);
      c->set_output(1, out);
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Searches a loaded FAISS index: the k best items of each query, best first.

handle: scalar resource handle of a loaded index.
queries: [batch, dim] float32 query embeddings; dim must equal the index dimension and every
  value must be finite.
k: int32 scalar in [1, 10000]; k may exceed the number of indexed items (see padding).
nprobe: int32 scalar; IVF indexes visit this many inverted lists (clamped to nlist); 0 = the
  index's own nprobe. Ignored by indexes without inverted lists.
ef_search: int32 scalar; HNSW efSearch (HNSW index or HNSW coarse quantizer) for this call;
  0 = the index's own. Ignored by other indexes. FAISS 1.7.3 reads it from the index, so the
  kernel switches the stored value behind a gate: only while no search runs on that index,
  with searches of equal value running concurrently.
scores: [batch, k] float32 inner products (or L2 distances for an L2 index), best first;
  padding is -inf (inner product) or +inf (L2).
labels: [batch, k] int64 FAISS labels (rows of the id map), best first; -1 pads rows with
  fewer than k results.
)doc");

REGISTER_OP("Dpsr>FaissIndexInfo")
    .Input("handle: resource")
    .Output("size: int64")
    .Output("dimension: int64")
    .Output("metric: string")
    .Output("description: string")
    .SetShapeFn(ScalarInputsAndOutputs)
    .Doc(R"doc(
Facts about a loaded FAISS index.

handle: scalar resource handle of a loaded index.
size: number of indexed vectors.
dimension: vector dimension.
metric: "inner_product" or "l2".
description: index structure, e.g. "IndexIVFPQFastScan(nlist=1024, nprobe=16, ...)".
)doc");

}  // namespace dpsr
