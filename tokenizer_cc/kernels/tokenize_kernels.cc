// OpKernel of Dpsr>Tokenize: converts tensors and errors, all tokenization is in the core.
#include <memory>
#include <string>
#include <vector>

#include "tensorflow/core/framework/attr_value.pb.h"
#include "tensorflow/core/framework/node_def_util.h"
#include "tensorflow/core/framework/op.h"
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

// "name=value,..." of every option attr (all but `config`), from `node` where it has the attr
// and the op's default where not; and the same from the defaults alone.
::tensorflow::Status LegacyOptions(const ::tensorflow::NodeDef& node, std::string* given,
                                   std::string* defaults) {
  const ::tensorflow::OpDef* op = nullptr;
  TF_RETURN_IF_ERROR(::tensorflow::OpRegistry::Global()->LookUpOpDef(node.op(), &op));
  auto append = [](const std::string& name, const ::tensorflow::AttrValue& v, std::string* out) {
    if (!out->empty()) *out += ',';
    *out += name + "=" +
            (v.value_case() == ::tensorflow::AttrValue::kB ? (v.b() ? "true" : "false")
                                                           : std::to_string(v.i()));
  };
  for (const auto& attr : op->attr()) {
    if (attr.name() == "config") continue;
    const ::tensorflow::AttrValue* value = ::tensorflow::AttrSlice(node).Find(attr.name());
    append(attr.name(), value ? *value : attr.default_value(), given);
    append(attr.name(), attr.default_value(), defaults);
  }
  return ::tensorflow::OkStatus();
}

class TokenizeOp : public OpKernel {
 public:
  explicit TokenizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string config, legacy, legacy_defaults;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("config", &config));
    OP_REQUIRES_OK(ctx, LegacyOptions(def(), &legacy, &legacy_defaults));
    OP_REQUIRES(ctx, config.empty() || legacy == legacy_defaults,
                InvalidArgument("Dpsr>Tokenize: options are given both in `config` (", config,
                                ") and as attrs (", legacy, "); give them in `config` only"));
    try {
      config_ = TokenizerConfig::FromString(config.empty() ? legacy : config);
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
