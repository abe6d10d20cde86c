// A read-only index held in a TensorFlow resource, shared by the FAISS and lexical kernels:
// the handle op, the load bookkeeping (holders, hot swap, the core's errors and load warning)
// and the release op. Each kind only supplies how to open its file.
#ifndef DPSR_SEARCH_CC_KERNELS_INDEX_RESOURCE_H_
#define DPSR_SEARCH_CC_KERNELS_INDEX_RESOURCE_H_

#include <functional>
#include <memory>
#include <string>

#include "search_cc/kernels/core_status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/logging.h"
#include "tensorflow/core/platform/mutex.h"

namespace dpsr {

// Kind::kName (e.g. "FAISS index") names the resource in messages; Kind::Index is the core's
// immutable index type.
template <typename Kind>
class IndexResource : public ::tensorflow::ResourceBase {
 public:
  using Index = typename Kind::Index;
  using Loader = std::function<::tensorflow::Status(std::shared_ptr<const Index>*)>;

  std::string DebugString() const override {
    ::tensorflow::tf_shared_lock lock(mu_);
    return std::string(Kind::kName) + (index_ == nullptr ? "(uninitialized)" : "(" + key_ + ")");
  }

  // Loads what `key` names (a path and its options) with `load`. Loading the key already held
  // only counts one more holder; another key swaps the new index in (searches in flight
  // finish on the old one, which they hold).
  ::tensorflow::Status Load(const std::string& key, const Loader& load) {
    {
      ::tensorflow::mutex_lock lock(mu_);
      if (index_ != nullptr && key_ == key) {
        ++holders_;
        return ::tensorflow::OkStatus();
      }
    }
    std::shared_ptr<const Index> loaded;
    TF_RETURN_IF_ERROR(load(&loaded));  // outside the lock: searches go on while a file loads
    ::tensorflow::mutex_lock lock(mu_);
    index_ = std::move(loaded);
    key_ = key;
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

  ::tensorflow::Status Get(std::shared_ptr<const Index>* index) const {
    ::tensorflow::tf_shared_lock lock(mu_);
    if (index_ == nullptr) {
      return ::tensorflow::errors::FailedPrecondition(
          Kind::kName, " resource is not initialized: run its initializer first "
          "(tf.compat.v1.tables_initializer() in a TF1 graph)");
    }
    *index = index_;
    return ::tensorflow::OkStatus();
  }

 private:
  mutable ::tensorflow::mutex mu_;
  std::shared_ptr<const Index> index_ TF_GUARDED_BY(mu_);
  std::string key_ TF_GUARDED_BY(mu_);
  int64_t holders_ TF_GUARDED_BY(mu_) = 0;
};

// The index of the resource named by input 0 of a kernel.
template <typename Kind>
::tensorflow::Status LookupIndex(::tensorflow::OpKernelContext* ctx,
                                 std::shared_ptr<const typename Kind::Index>* index) {
  ::tensorflow::core::RefCountPtr<IndexResource<Kind>> resource;
  ::tensorflow::Status s =
      ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 0), &resource);
  if (!s.ok()) {
    if (::tensorflow::errors::IsNotFound(s)) {
      return ::tensorflow::errors::FailedPrecondition(
          Kind::kName, " resource is not initialized (or was released): run its initializer "
          "first (tf.compat.v1.tables_initializer() in a TF1 graph); ", s.message());
    }
    return s;
  }
  return resource->Get(index);
}

// Loads into the resource named by input 0, creating it if needed. `open` is the core's load
// (it returns the index or throws CoreError, reported as its Status); a core's load warning
// (e.g. why a memory map fell back to reading) is logged.
template <typename Kind>
::tensorflow::Status LoadIndex(
    ::tensorflow::OpKernelContext* ctx, const std::string& key,
    const std::function<std::shared_ptr<const typename Kind::Index>()>& open) {
  ::tensorflow::core::RefCountPtr<IndexResource<Kind>> resource;
  TF_RETURN_IF_ERROR(::tensorflow::LookupOrCreateResource<IndexResource<Kind>>(
      ctx, ::tensorflow::HandleFromInput(ctx, 0), &resource, [](IndexResource<Kind>** r) {
        *r = new IndexResource<Kind>();
        return ::tensorflow::OkStatus();
      }));
  return resource->Load(key, [&open](std::shared_ptr<const typename Kind::Index>* index) {
    try {
      *index = open();
    } catch (const CoreError& e) {
      return ToStatus(e);
    }
    if (!(*index)->load_warning().empty()) LOG(WARNING) << (*index)->load_warning();
    return ::tensorflow::OkStatus();
  });
}

// The handle op: a scalar resource handle named by (container, shared_name).
template <typename Kind>
class IndexHandleOp : public ::tensorflow::OpKernel {
 public:
  explicit IndexHandleOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("container", &container_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shared_name", &name_));
    if (name_.empty()) name_ = name();
  }

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    const std::string container =
        container_.empty() ? ctx->resource_manager()->default_container() : container_;
    ::tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ::tensorflow::TensorShape({}), &out));
    out->scalar<::tensorflow::ResourceHandle>()() =
        ::tensorflow::MakeResourceHandle<IndexResource<Kind>>(ctx, container, name_);
  }

 private:
  std::string container_;
  std::string name_;
};

// The release op: drops one holder; the last one deletes the resource.
template <typename Kind>
class IndexReleaseOp : public ::tensorflow::OpKernel {
 public:
  explicit IndexReleaseOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    const ::tensorflow::ResourceHandle& handle = ::tensorflow::HandleFromInput(ctx, 0);
    ::tensorflow::core::RefCountPtr<IndexResource<Kind>> resource;
    if (!::tensorflow::LookupResource(ctx, handle, &resource).ok()) return;  // already gone
    if (resource->Release()) {
      ::tensorflow::Status s = ::tensorflow::DeleteResource<IndexResource<Kind>>(ctx, handle);
      if (!s.ok() && !::tensorflow::errors::IsNotFound(s)) ctx->SetStatus(s);
    }
  }
};

// The scalar string path input (input 1) of a load op.
inline ::tensorflow::Status ScalarPath(::tensorflow::OpKernelContext* ctx, const char* op,
                                       std::string* path) {
  const ::tensorflow::Tensor& t = ctx->input(1);
  if (!::tensorflow::TensorShapeUtils::IsScalar(t.shape())) {
    return ::tensorflow::errors::InvalidArgument(op, ": path must be a scalar, got shape ",
                                                 t.shape().DebugString());
  }
  *path = std::string(t.scalar<::tensorflow::tstring>()());
  return ::tensorflow::OkStatus();
}

}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_KERNELS_INDEX_RESOURCE_H_
