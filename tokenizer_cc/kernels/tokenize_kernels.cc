// OpKernel of Dpsr>Tokenize: converts tensors and errors, all tokenization is in the core.
#include <memory>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tokenizer_cc/core/tokenizer.h"
#include "tokenizer_cc/kernels/loaded_by_path.h"

namespace dpsr {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::tstring;
using ::tensorflow::errors::InvalidArgument;
using text::Tokenizer;
using text::TokenizerConfig;
using text::TokenizerError;

class TokenizeOp : public OpKernel {
 public:
  explicit TokenizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t max_tokens, max_input_bytes, max_word_chars;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("word_unigrams", &config_.word_unigrams));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("word_bigrams", &config_.word_bigrams));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("letter_trigrams", &config_.letter_trigrams));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("cjk_unigrams", &config_.cjk_unigrams));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("cjk_bigrams", &config_.cjk_bigrams));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_buckets", &config_.num_buckets));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_oov_buckets", &config_.num_oov_buckets));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_tokens", &max_tokens));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_input_bytes", &max_input_bytes));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_word_chars", &max_word_chars));
    for (int64_t v : {max_tokens, max_input_bytes, max_word_chars}) {
      OP_REQUIRES(ctx, v >= 1 && v <= (int64_t{1} << 30),
                  InvalidArgument("Dpsr>Tokenize: limits must be in [1, 2^30], got ", v));
    }
    config_.max_tokens = static_cast<int32_t>(max_tokens);
    config_.max_input_bytes = static_cast<int32_t>(max_input_bytes);
    config_.max_word_chars = static_cast<int32_t>(max_word_chars);
    try {
      hashing_ = std::make_shared<const Tokenizer>(config_);
    } catch (const TokenizerError& e) {
      ctx->CtxFailure(InvalidArgument("Dpsr>Tokenize: ", e.what()));
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& texts = ctx->input(0);
    const Tensor& vocab_file = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckTextsAndPath("Dpsr>Tokenize", texts, "texts", vocab_file,
                                          "vocab_file"));
    std::shared_ptr<const Tokenizer> tok;
    OP_REQUIRES_OK(ctx, Get(std::string(vocab_file.scalar<tstring>()()), &tok));

    const auto in = texts.vec<tstring>();
    const int64_t batch = in.size();
    std::vector<int64_t> ids;
    ids.reserve(batch * 16);
    Tensor* splits = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch + 1}), &splits));
    auto split_vec = splits->vec<int64_t>();
    split_vec(0) = 0;
    for (int64_t i = 0; i < batch; ++i) {
      tok->Ids(std::string_view(in(i).data(), in(i).size()), &ids);
      split_vec(i + 1) = static_cast<int64_t>(ids.size());
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({static_cast<int64_t>(ids.size())}), &out));
    std::copy(ids.begin(), ids.end(), out->vec<int64_t>().data());
  }

 private:
  // The tokenizer for a vocabulary path, loaded on first use and shared by later calls.
  ::tensorflow::Status Get(const std::string& path, std::shared_ptr<const Tokenizer>* tok) {
    if (path.empty()) {
      *tok = hashing_;
      return ::tensorflow::OkStatus();
    }
    return by_vocab_.Get(path, "Dpsr>Tokenize", [this](const std::string& p) {
      return std::make_unique<const Tokenizer>(config_, text::Vocabulary::Load(p));
    }, tok);
  }

  TokenizerConfig config_;
  std::shared_ptr<const Tokenizer> hashing_;
  LoadedByPath<Tokenizer> by_vocab_;
};

REGISTER_KERNEL_BUILDER(Name("Dpsr>Tokenize").Device(::tensorflow::DEVICE_CPU), TokenizeOp);

}  // namespace
}  // namespace dpsr
