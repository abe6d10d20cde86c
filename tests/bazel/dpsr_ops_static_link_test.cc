// Links //:dpsr_ops statically, as tensorflow_model_server does (docs/bazel.md), and checks
// that alwayslink kept the op and kernel registrations although nothing here names them.
//
// Prints one line per registered Dpsr> op: "<op name>\t<number of kernels>"; exits 1 when
// Dpsr>Tokenize is missing or an op has no kernel. tests/bazel/test_bazel_build.py compares
// the printed ops with those of the setup.py-built library.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_def.pb.h"
#include "tensorflow/core/framework/op_kernel.h"

int main() {
  std::vector<tensorflow::OpDef> all;
  tensorflow::OpRegistry::Global()->GetRegisteredOps(&all);
  std::vector<std::string> ours;
  for (const tensorflow::OpDef& op : all) {
    if (op.name().rfind("Dpsr>", 0) == 0) ours.push_back(op.name());
  }
  std::sort(ours.begin(), ours.end());
  int failures = 0;
  bool has_tokenize = false;
  for (const std::string& name : ours) {
    // One "  device='CPU'; ..." line per registered kernel.
    const std::string kernels = tensorflow::KernelsRegisteredForOp(name);
    const long count = std::count(kernels.begin(), kernels.end(), '\n') -
                       (kernels.find("<no registered kernels>") != std::string::npos);
    std::printf("%s\t%ld\n", name.c_str(), count);
    if (count < 1) {
      std::fprintf(stderr, "FAIL: op %s has no kernel in the statically linked library\n",
                   name.c_str());
      ++failures;
    }
    has_tokenize |= name == "Dpsr>Tokenize";
  }
  if (!has_tokenize) {
    std::fprintf(stderr, "FAIL: Dpsr>Tokenize is not registered: the op library was linked "
                         "without alwayslink, or its sources are missing\n");
    ++failures;
  }
  return failures == 0 ? 0 : 1;
}
