#!/bin/sh
# Stand-in for Bazel's downloaded coverage tools (third_party/bazel/README.md).
echo "bazel coverage is not available in the offline build of DPSR-TF: the coverage tools" \
     "are a download; use gcov/lcov on the setup.py build instead" >&2
exit 1
