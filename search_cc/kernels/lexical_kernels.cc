// OpKernels of the lexical (BM25) index resource and search: they convert tensors and errors;
// loading and scoring are in the core (search_cc/core/lexical_index.h).
#include <memory>
#include <string>

#include "search_cc/kernels/core_status.h"
#include "search_cc/kernels/index_resource.h"
#include "search_cc/core/lexical_index.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace dpsr {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::errors::InvalidArgument;
using lexical::LexicalIndex;
using lexical::LexicalIndexError;

struct LexicalKind {
  using Index = LexicalIndex;
  static constexpr const char* kName = "lexical index";
};

class LexicalIndexLoadOp : public OpKernel {
 public:
  explicit LexicalIndexLoadOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    std::string path;
    OP_REQUIRES_OK(ctx, ScalarPath(ctx, "Dpsr>LexicalIndexLoad", &path));
    OP_REQUIRES_OK(ctx, LoadIndex<LexicalKind>(ctx, path, [&path] {
                          return LexicalIndex::Load(path);
                        }));
  }
};

class LexicalSearchOp : public OpKernel {
 public:
  explicit LexicalSearchOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids = ctx->input(1);
    const Tensor& splits = ctx->input(2);
    const Tensor& k_t = ctx->input(3);
    const Tensor& min_score_t = ctx->input(4);
    OP_REQUIRES(ctx, ids.dims() == 1 && splits.dims() == 1 && splits.NumElements() >= 1,
                InvalidArgument("Dpsr>LexicalSearch: query_ids must be a vector and "
                                "query_row_splits a non-empty vector, got shapes ",
                                ids.shape().DebugString(), " and ",
                                splits.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(k_t.shape()) &&
                         TensorShapeUtils::IsScalar(min_score_t.shape()),
                InvalidArgument("Dpsr>LexicalSearch: k and min_score must be scalars"));
    const int64_t k = k_t.scalar<int32_t>()();
    OP_REQUIRES(ctx, k >= 1 && k <= LexicalIndex::kMaxK,
                InvalidArgument("Dpsr>LexicalSearch: k must be in [1, ", LexicalIndex::kMaxK,
                                "], got ", k));
    std::shared_ptr<const LexicalIndex> index;
    OP_REQUIRES_OK(ctx, LookupIndex<LexicalKind>(ctx, &index));

    lexical::RaggedIds queries;
    queries.values = ids.flat<int64_t>().data();
    queries.num_values = ids.NumElements();
    queries.row_splits = splits.flat<int64_t>().data();
    queries.num_rows = splits.NumElements() - 1;
    lexical::SearchParams params;
    params.k = k;
    params.min_score = min_score_t.scalar<float>()();
    Tensor* scores = nullptr;
    Tensor* labels = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({queries.num_rows, k}), &scores));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({queries.num_rows, k}), &labels));
    try {
      index->Search(queries, params, scores->flat<float>().data(),
                    labels->flat<int64_t>().data());
    } catch (const LexicalIndexError& e) {
      ctx->SetStatus(ToStatus(e));
    }
  }
};

class LexicalIndexInfoOp : public OpKernel {
 public:
  explicit LexicalIndexInfoOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    std::shared_ptr<const LexicalIndex> index;
    OP_REQUIRES_OK(ctx, LookupIndex<LexicalKind>(ctx, &index));
    const int64_t values[3] = {index->num_docs(), index->num_terms(), index->num_postings()};
    Tensor* out = nullptr;
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({}), &out));
      out->scalar<int64_t>()() = values[i];
    }
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({}), &out));
    out->scalar<float>()() = static_cast<float>(index->avg_doc_length());
  }
};

#define DPSR_CPU_KERNEL(name, op) \
  REGISTER_KERNEL_BUILDER(Name(name).Device(::tensorflow::DEVICE_CPU), op)

DPSR_CPU_KERNEL("Dpsr>LexicalIndexHandle", IndexHandleOp<LexicalKind>);
DPSR_CPU_KERNEL("Dpsr>LexicalIndexLoad", LexicalIndexLoadOp);
DPSR_CPU_KERNEL("Dpsr>LexicalIndexRelease", IndexReleaseOp<LexicalKind>);
DPSR_CPU_KERNEL("Dpsr>LexicalSearch", LexicalSearchOp);
DPSR_CPU_KERNEL("Dpsr>LexicalIndexInfo", LexicalIndexInfoOp);

#undef DPSR_CPU_KERNEL

}  // namespace
}  // namespace dpsr
