// A kernel's objects loaded from a file on first use, one per path, shared by later calls
// (the tokenizer's vocabularies, the speller's): a SavedModel asset is read once per kernel,
// that is once per loaded servable version that runs the op.
#ifndef DPSR_TOKENIZER_CC_KERNELS_LOADED_BY_PATH_H_
#define DPSR_TOKENIZER_CC_KERNELS_LOADED_BY_PATH_H_

#include <exception>
#include <map>
#include <memory>
#include <new>
#include <string>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/mutex.h"
#include "tokenizer_cc/core/tokenizer.h"

namespace dpsr {

template <typename T>
class LoadedByPath {
 public:
  // The object of `path`, made by load(path) the first time; a TokenizerError it throws
  // becomes InvalidArgument prefixed with `op`, running out of memory ResourceExhausted, any
  // other exception Internal (and the next call tries again).
  template <typename Load>
  ::tensorflow::Status Get(const std::string& path, const char* op, Load&& load,
                           std::shared_ptr<const T>* out) {
    ::tensorflow::mutex_lock lock(mu_);
    auto it = by_path_.find(path);
    if (it == by_path_.end()) {
      try {
        it = by_path_.emplace(path, std::shared_ptr<const T>(load(path))).first;
      } catch (const text::TokenizerError& e) {
        return ::tensorflow::errors::InvalidArgument(op, ": ", e.what());
      } catch (const std::bad_alloc&) {  // an exception must not leave Compute: it aborts
        return ::tensorflow::errors::ResourceExhausted(op, ": out of memory loading ", path);
      } catch (const std::exception& e) {
        return ::tensorflow::errors::Internal(op, ": loading ", path, ": ", e.what());
      }
    }
    *out = it->second;
    return ::tensorflow::OkStatus();
  }

 private:
  ::tensorflow::mutex mu_;
  std::map<std::string, std::shared_ptr<const T>> by_path_ TF_GUARDED_BY(mu_);
};

// The inputs every op of this kind takes: a vector of texts and the scalar path of the file
// its object is loaded from; InvalidArgument naming the op and the input otherwise.
inline ::tensorflow::Status CheckTextsAndPath(const char* op, const ::tensorflow::Tensor& texts,
                                              const char* texts_name,
                                              const ::tensorflow::Tensor& path,
                                              const char* path_name) {
  if (texts.dims() != 1) {
    return ::tensorflow::errors::InvalidArgument(op, ": ", texts_name,
                                                 " must be a vector [batch], got shape ",
                                                 texts.shape().DebugString());
  }
  if (path.dims() != 0) {
    return ::tensorflow::errors::InvalidArgument(op, ": ", path_name,
                                                 " must be a scalar, got shape ",
                                                 path.shape().DebugString());
  }
  return ::tensorflow::OkStatus();
}

}  // namespace dpsr

#endif  // DPSR_TOKENIZER_CC_KERNELS_LOADED_BY_PATH_H_
