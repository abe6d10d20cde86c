// CHECK for the C++ unit tests, which are plain executables (exit status 0 = pass) built by
// tools/run_cc_tests.py (make cc-test) and by Bazel as cc_tests: a failed check prints its file,
// line and condition and is counted; main returns dpsr_test::Report(its name).
#ifndef DPSR_TESTS_CC_CHECK_H_
#define DPSR_TESTS_CC_CHECK_H_

#include <cstdio>

namespace dpsr_test {

inline int& Failures() {
  static int failures = 0;
  return failures;
}

// main's exit status: 0 when no check failed; says which test passed or how many checks failed.
inline int Report(const char* test) {
  if (Failures()) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", test, Failures());
    return 1;
  }
  std::printf("%s: all passed\n", test);
  return 0;
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
