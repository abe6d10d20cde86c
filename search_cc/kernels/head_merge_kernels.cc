// OpKernel of Dpsr>MergeHeads: checks the tensors and runs the core (search_cc/core/head_merge.h)
// once per query.
#include <cstdint>
#include <limits>

#include "search_cc/core/head_merge.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace dpsr {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::errors::InvalidArgument;

class MergeHeadsOp : public OpKernel {
 public:
  explicit MergeHeadsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& scores = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& k_tensor = ctx->input(2);
    OP_REQUIRES(ctx, scores.dims() == 3 && scores.shape() == labels.shape(),
                InvalidArgument("Dpsr>MergeHeads: scores and labels must both be [batch, heads, "
                                "n], got shapes ",
                                scores.shape().DebugString(), " and ",
                                labels.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(k_tensor.shape()),
                InvalidArgument("Dpsr>MergeHeads: k must be a scalar, got shape ",
                                k_tensor.shape().DebugString()));
    const int64_t batch = scores.dim_size(0);
    const int64_t m = scores.dim_size(1);
    const int64_t n = scores.dim_size(2);
    const int64_t width = m * n;
    const int64_t k = k_tensor.scalar<int32_t>()();
    OP_REQUIRES(ctx, width < std::numeric_limits<int32_t>::max(),
                InvalidArgument("Dpsr>MergeHeads: heads * n = ", width, " is too large"));
    OP_REQUIRES(ctx, k >= 1 && k <= width,
                InvalidArgument("Dpsr>MergeHeads: k must be in [1, heads * n] = [1, ", width,
                                "], got ", k));
    Tensor* out_scores = nullptr;
    Tensor* out_labels = nullptr;
    Tensor* out_heads = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, k}), &out_scores));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch, k}), &out_labels));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({batch, k}), &out_heads));
    // Per thread, so concurrent runs of this kernel share nothing and reuse their buffers.
    thread_local search::HeadMergeScratch scratch;
    const float* s = scores.flat<float>().data();
    const int64_t* l = labels.flat<int64_t>().data();
    float* os = out_scores->flat<float>().data();
    int64_t* ol = out_labels->flat<int64_t>().data();
    int32_t* oh = out_heads->flat<int32_t>().data();
    for (int64_t b = 0; b < batch; ++b) {
      search::MergeHeadLists(s + b * width, l + b * width, m, n, k, os + b * k, ol + b * k,
                             oh + b * k, &scratch);
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("Dpsr>MergeHeads").Device(::tensorflow::DEVICE_CPU), MergeHeadsOp);

}  // namespace
}  // namespace dpsr
