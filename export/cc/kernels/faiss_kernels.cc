// OpKernels of the FAISS index resource and search: they convert tensors and errors; loading
// and searching are in the core (export/cc/faiss_index.h).
#include <memory>
#include <string>

#include "export/cc/faiss_index.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/mutex.h"

namespace dpsr {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::ResourceHandle;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::tstring;
using ::tensorflow::errors::InvalidArgument;
using search::FaissIndex;
using search::FaissIndexError;

Status ToStatus(const FaissIndexError& e) {
  switch (e.code()) {
    case FaissIndexError::Code::kInvalidArgument:
      return InvalidArgument(e.what());
    case FaissIndexError::Code::kNotFound:
      return ::tensorflow::errors::NotFound(e.what());
    case FaissIndexError::Code::kFailedPrecondition:
      return ::tensorflow::errors::FailedPrecondition(e.what());
    case FaissIndexError::Code::kInternal:
      break;
  }
  return ::tensorflow::errors::Internal(e.what());
}

// The index of one resource name: set by Dpsr>FaissIndexLoad, read by searches. Holds a
// shared pointer, so a search keeps its index alive even if a reload swaps in another.
class FaissIndexResource : public ::tensorflow::ResourceBase {
 public:
  std::string DebugString() const override {
    ::tensorflow::tf_shared_lock lock(mu_);
    return index_ == nullptr ? "FaissIndex(uninitialized)"
                             : "FaissIndex(" + index_->path() + ", " + index_->description() + ")";
  }

  Status Load(const std::string& path, bool mmap) {
    {
      ::tensorflow::mutex_lock lock(mu_);
      if (index_ != nullptr && index_->path() == path && index_->mmap() == mmap) {
        ++holders_;
        return ::tensorflow::OkStatus();
      }
    }
    std::shared_ptr<const FaissIndex> loaded;
    try {  // outside the lock: searches go on while a new file loads
      search::LoadOptions options;
      options.mmap = mmap;
      loaded = FaissIndex::Load(path, options);
    } catch (const FaissIndexError& e) {
      return ToStatus(e);
    }
    ::tensorflow::mutex_lock lock(mu_);
    index_ = std::move(loaded);
    ++holders_;
    return ::tensorflow::OkStatus();
  }

  // Drops one holder; true when none is left.
  bool Release() {
    ::tensorflow::mutex_lock lock(mu_);
    if (holders_ > 0) --holders_;
    if (holders_ == 0) index_.reset();
    return holders_ == 0;
  }

  Status Get(std::shared_ptr<const FaissIndex>* index) const {
    ::tensorflow::tf_shared_lock lock(mu_);
    if (index_ == nullptr) {
      return ::tensorflow::errors::FailedPrecondition(
          "FAISS index resource is not initialized: run its initializer first "
          "(tf.compat.v1.tables_initializer() in a TF1 graph)");
    }
    *index = index_;
    return ::tensorflow::OkStatus();
  }

 private:
  mutable ::tensorflow::mutex mu_;
  std::shared_ptr<const FaissIndex> index_ TF_GUARDED_BY(mu_);
  int64_t holders_ TF_GUARDED_BY(mu_) = 0;
};

Status LookupIndex(OpKernelContext* ctx, std::shared_ptr<const FaissIndex>* index) {
  ::tensorflow::core::RefCountPtr<FaissIndexResource> resource;
  Status s = ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 0), &resource);
  if (!s.ok()) {
    if (::tensorflow::errors::IsNotFound(s)) {
      return ::tensorflow::errors::FailedPrecondition(
          "FAISS index resource is not initialized (or was released): run its initializer "
          "first (tf.compat.v1.tables_initializer() in a TF1 graph); ",
          s.message());
    }
    return s;
  }
  return resource->Get(index);
}

class FaissIndexHandleOp : public OpKernel {
 public:
  explicit FaissIndexHandleOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("container", &container_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shared_name", &name_));
    if (name_.empty()) name_ = name();
  }

  void Compute(OpKernelContext* ctx) override {
    const std::string container =
        container_.empty() ? ctx->resource_manager()->default_container() : container_;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<ResourceHandle>()() =
        ::tensorflow::MakeResourceHandle<FaissIndexResource>(ctx, container, name_);
  }

 private:
  std::string container_;
  std::string name_;
};

class FaissIndexLoadOp : public OpKernel {
 public:
  explicit FaissIndexLoadOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mmap", &mmap_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& path = ctx->input(1);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(path.shape()),
                InvalidArgument("Dpsr>FaissIndexLoad: path must be a scalar, got shape ",
                                path.shape().DebugString()));
    ::tensorflow::core::RefCountPtr<FaissIndexResource> resource;
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupOrCreateResource<FaissIndexResource>(
                            ctx, ::tensorflow::HandleFromInput(ctx, 0), &resource,
                            [](FaissIndexResource** r) {
                              *r = new FaissIndexResource();
                              return ::tensorflow::OkStatus();
                            }));
    OP_REQUIRES_OK(ctx, resource->Load(std::string(path.scalar<tstring>()()), mmap_));
  }

 private:
  bool mmap_ = false;
};

class FaissIndexReleaseOp : public OpKernel {
 public:
  explicit FaissIndexReleaseOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const ResourceHandle& handle = ::tensorflow::HandleFromInput(ctx, 0);
    ::tensorflow::core::RefCountPtr<FaissIndexResource> resource;
    if (!::tensorflow::LookupResource(ctx, handle, &resource).ok()) return;  // already gone
    if (resource->Release()) {
      Status s = ::tensorflow::DeleteResource<FaissIndexResource>(ctx, handle);
      if (!s.ok() && !::tensorflow::errors::IsNotFound(s)) ctx->SetStatus(s);
    }
  }
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
    OP_REQUIRES_OK(ctx, LookupIndex(ctx, &index));

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
    OP_REQUIRES_OK(ctx, LookupIndex(ctx, &index));
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

DPSR_CPU_KERNEL("Dpsr>FaissIndexHandle", FaissIndexHandleOp);
DPSR_CPU_KERNEL("Dpsr>FaissIndexLoad", FaissIndexLoadOp);
DPSR_CPU_KERNEL("Dpsr>FaissIndexRelease", FaissIndexReleaseOp);
DPSR_CPU_KERNEL("Dpsr>FaissSearch", FaissSearchOp);
DPSR_CPU_KERNEL("Dpsr>FaissIndexInfo", FaissIndexInfoOp);

#undef DPSR_CPU_KERNEL

}  // namespace
}  // namespace dpsr
