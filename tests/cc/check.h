// CHECK for the C++ unit tests, which are plain executables (exit status 0 = pass) built by
// tools/run_cc_tests.py (make cc-test) and by Bazel as cc_tests: a failed check prints its file,
// line and condition and is counted; main returns dpsr_test::Failures() != 0.
#ifndef DPSR_TESTS_CC_CHECK_H_
#define DPSR_TESTS_CC_CHECK_H_

#include <cstdio>

namespace dpsr_test {

inline int& Failures() {
  static int failures = 0;
  return failures;
}

}  // namespace dpsr_test

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++dpsr_test::Failures();                                                      \
    }                                                                               \
  } while (0)

#endif  // DPSR_TESTS_CC_CHECK_H_
