// The shape function of the index resource ops that every search kind registers alike (load,
// release, info): their inputs (a handle, a path) are scalars and so are their outputs.
#ifndef DPSR_SEARCH_CC_OPS_INDEX_RESOURCE_SHAPES_H_
#define DPSR_SEARCH_CC_OPS_INDEX_RESOURCE_SHAPES_H_

#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/status.h"

namespace dpsr {

// Every input must have rank 0; every output is a scalar.
inline ::tensorflow::Status ScalarInputsAndOutputs(
    ::tensorflow::shape_inference::InferenceContext* c) {
  ::tensorflow::shape_inference::ShapeHandle unused;
  for (int i = 0; i < c->num_inputs(); ++i) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  }
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->Scalar());
  return ::tensorflow::OkStatus();
}

}  // namespace dpsr

#endif  // DPSR_SEARCH_CC_OPS_INDEX_RESOURCE_SHAPES_H_
