// OpKernel of Dpsr>SpellCorrect: converts tensors and errors, the correction is in the core.
#include <memory>
#include <string>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tokenizer_cc/core/speller.h"
#include "tokenizer_cc/kernels/loaded_by_path.h"

namespace dpsr {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::tstring;
using ::tensorflow::errors::InvalidArgument;
using text::Speller;
using text::SpellerConfig;
using text::TokenizerError;

class SpellCorrectOp : public OpKernel {
 public:
  explicit SpellCorrectOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t max_distance, long_word;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_distance", &max_distance));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("long_word", &long_word));
    config_.max_distance = static_cast<int>(max_distance);
    config_.long_word = static_cast<int>(long_word);
    try {
      config_.Validate();
    } catch (const TokenizerError& e) {
      ctx->CtxFailure(InvalidArgument("Dpsr>SpellCorrect: ", e.what()));
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& queries = ctx->input(0);
    const Tensor& path = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckTextsAndPath("Dpsr>SpellCorrect", queries, "queries", path,
                                          "vocabulary_file"));
    std::shared_ptr<const Speller> speller;
    OP_REQUIRES_OK(ctx, Get(std::string(path.scalar<tstring>()()), &speller));
    const auto in = queries.vec<tstring>();
    Tensor* corrected = nullptr;
    Tensor* changed = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, queries.shape(), &corrected));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, queries.shape(), &changed));
    auto out = corrected->vec<tstring>();
    auto flags = changed->vec<bool>();
    for (int64_t i = 0; i < in.size(); ++i) {
      bool any = false;
      out(i) = speller->Correct(std::string_view(in(i).data(), in(i).size()), &any);
      flags(i) = any;
    }
  }

 private:
  // The speller of a vocabulary path, loaded on first use and shared by later calls.
  ::tensorflow::Status Get(const std::string& path, std::shared_ptr<const Speller>* speller) {
    return by_path_.Get(path, "Dpsr>SpellCorrect", [this](const std::string& p) {
      return Speller::Load(p, config_);
    }, speller);
  }

  SpellerConfig config_;
  LoadedByPath<Speller> by_path_;
};

REGISTER_KERNEL_BUILDER(Name("Dpsr>SpellCorrect").Device(::tensorflow::DEVICE_CPU),
                        SpellCorrectOp);

}  // namespace
}  // namespace dpsr
