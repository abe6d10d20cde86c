// OpKernels of the FAISS index resource and search: they convert tensors and errors; loading
// and searching are in the core (search_cc/core/faiss_index.h).
#include <memory>
#include <string>

#include "search_cc/core/faiss_index.h"
#include "search_cc/kernels/core_status.h"
#include "search_cc/kernels/index_resource.h"
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
using ::tensorflow::tstring;
using ::tensorflow::errors::InvalidArgument;
using search::FaissIndex;
using search::FaissIndexError;

struct FaissKind {
  using Index = FaissIndex;
  static constexpr const char* kName = "FAISS index";
};

class FaissIndexLoadOp : public OpKernel {
 public:
  explicit FaissIndexLoadOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mmap", &mmap_));
  }

  void Compute(OpKernelContext* ctx) override {
    std::string path;
    OP_REQUIRES_OK(ctx, ScalarPath(ctx, "Dpsr>FaissIndexLoad", &path));
    const bool mmap = mmap_;
    OP_REQUIRES_OK(ctx, LoadIndex<FaissKind>(ctx, path + (mmap ? "\n(mmap)" : ""),
                                             [&path, mmap] {
                                               search::LoadOptions options;
                                               options.mmap = mmap;
                                               return FaissIndex::Load(path, options);
                                             }));
  }

 private:
  bool mmap_ = false;
};

class FaissSearchOp : public OpKernel {
 public:
  explicit FaissSearchOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& queries = ctx->input(1);
    OP_REQUIRES(ctx, queries.dims() == 2,
                InvalidArgument("Dpsr>FaissSearch: queries must be a matrix [batch, dim], got "
                                "shape ",
                                queries.shape().DebugString()));
    int32_t knobs[3];  // k, nprobe, ef_search
    const char* names[3] = {"k", "nprobe", "ef_search"};
    for (int i = 0; i < 3; ++i) {
      const Tensor& t = ctx->input(2 + i);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(t.shape()),
                  InvalidArgument("Dpsr>FaissSearch: ", names[i], " must be a scalar, got shape ",
                                  t.shape().DebugString()));
      knobs[i] = t.scalar<int32_t>()();
    }
    const int64_t k = knobs[0];
    OP_REQUIRES(ctx, k >= 1 && k <= FaissIndex::kMaxK,
                InvalidArgument("Dpsr>FaissSearch: k must be in [1, ", FaissIndex::kMaxK,
                                "], got ", k));
    std::shared_ptr<const FaissIndex> index;
    OP_REQUIRES_OK(ctx, LookupIndex<FaissKind>(ctx, &index));

    const int64_t batch = queries.dim_size(0);
    Tensor* scores = nullptr;
    Tensor* labels = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, k}), &scores));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch, k}), &labels));
    search::SearchParams params;
    params.k = k;
    params.nprobe = knobs[1];
    params.ef_search = knobs[2];
    try {
      index->Search(batch, queries.dim_size(1), queries.flat<float>().data(), params,
                    scores->flat<float>().data(), labels->flat<int64_t>().data());
    } catch (const FaissIndexError& e) {
      ctx->SetStatus(ToStatus(e));
    }
  }
};

class FaissIndexInfoOp : public OpKernel {
 public:
  explicit FaissIndexInfoOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    std::shared_ptr<const FaissIndex> index;
    OP_REQUIRES_OK(ctx, LookupIndex<FaissKind>(ctx, &index));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<int64_t>()() = index->size();
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &out));
    out->scalar<int64_t>()() = index->dimension();
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &out));
    out->scalar<tstring>()() = index->metric();
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({}), &out));
    out->scalar<tstring>()() = index->description();
  }
};

#define DPSR_CPU_KERNEL(name, op) \
  REGISTER_KERNEL_BUILDER(Name(name).Device(::tensorflow::DEVICE_CPU), op)

DPSR_CPU_KERNEL("Dpsr>FaissIndexHandle", IndexHandleOp<FaissKind>);
DPSR_CPU_KERNEL("Dpsr>FaissIndexLoad", FaissIndexLoadOp);
DPSR_CPU_KERNEL("Dpsr>FaissIndexRelease", IndexReleaseOp<FaissKind>);
DPSR_CPU_KERNEL("Dpsr>FaissSearch", FaissSearchOp);
DPSR_CPU_KERNEL("Dpsr>FaissIndexInfo", FaissIndexInfoOp);

#undef DPSR_CPU_KERNEL

}  // namespace
}  // namespace dpsr
