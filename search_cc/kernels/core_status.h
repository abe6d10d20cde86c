// The search cores' CoreError as a TensorFlow Status: one mapping for every kernel.
#ifndef DPSR_SEARCH_CC_KERNELS_CORE_STATUS_H_
#define DPSR_SEARCH_CC_KERNELS_CORE_STATUS_H_

#include "search_cc/core/core_error.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/platform/status.h"

namespace dpsr {

inline ::tensorflow::Status ToStatus(const CoreError& e) {
  switch (e.code()) {
    case CoreError::Code::kInvalidArgument:
      return ::tensorflow::errors::InvalidArgument(e.what());
    case CoreError::Code::kNotFound:
      return ::tensorflow::errors::NotFound(e.what());
    case CoreError::Code::kFailedPrecondition:
      return ::tensorflow::errors::FailedPrecondition(e.what());
    case CoreError::Code::kInternal:
      break;
  }
  return ::tensorflow::errors::Internal(e.what());
}

}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_KERNELS_CORE_STATUS_H_
