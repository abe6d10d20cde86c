// The one error type of the search cores (FAISS searcher, lexical index, asset snapshots):
// code() tells an adapter which status to report (search_cc/kernels/core_status.h for the TF
// kernels, search_cc/python/lexical_pybind.cc for Python). Standard C++ only.
#ifndef DPSR_SEARCH_CC_CORE_CORE_ERROR_H_
#define DPSR_SEARCH_CC_CORE_CORE_ERROR_H_

#include <stdexcept>
#include <string>

namespace dpsr {

class CoreError : public std::runtime_error {
 public:
  enum class Code {
    kInvalidArgument,     // bad request or build input, a corrupt or truncated file
    kNotFound,            // the file does not exist
    kFailedPrecondition,  // a valid request the loaded index cannot take (e.g. a per-call knob)
    kInternal,            // the library or the OS failed on a valid request
  };
  CoreError(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const { return code_; }

 private:
  Code code_;
};

// Throws CoreError(code, message): the cores' one way to fail.
[[noreturn]] inline void Fail(CoreError::Code code, const std::string& message) {
  throw CoreError(code, message);
}

}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_CORE_CORE_ERROR_H_
