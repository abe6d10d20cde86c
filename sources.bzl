# The C++ sources of every native target, in one place. Read by Bazel (BUILD files `load` it)
# and by setup.py (parsed as plain Python literals), so the two builds compile exactly the same
# files and cannot drift. Keep this file to simple list assignments.

# The tokenizer core: standard C++ only, no TensorFlow or pybind11 headers.
TOKENIZER_CORE_SRCS = [
    "tokenizer_cc/core/tokenizer.cc",
    "tokenizer_cc/core/utf8.cc",
]
TOKENIZER_CORE_HDRS = [
    "tokenizer_cc/core/hash.h",
    "tokenizer_cc/core/tokenizer.h",
    "tokenizer_cc/core/utf8.h",
]

# The pybind11 module dpsr_tf._tokenizer (adapter only).
TOKENIZER_PYBIND_SRCS = [
    "tokenizer_cc/python/tokenizer_pybind.cc",
]

# The lexical (BM25) index core, with the asset snapshots that both index cores map:
# standard C++ and POSIX only.
LEXICAL_CORE_SRCS = [
    "dpsr_tf/export/cc/asset_snapshot.cc",
    "dpsr_tf/export/cc/lexical_index.cc",
]
LEXICAL_CORE_HDRS = [
    "dpsr_tf/export/cc/asset_snapshot.h",
    "dpsr_tf/export/cc/lexical_index.h",
]

# The best-k buffer of the IVF-SQ8 scan: header-only standard C++.
TOPK_CORE_SRCS = []
TOPK_CORE_HDRS = [
    "dpsr_tf/export/cc/top_k_buffer.h",
]

# The pybind11 module dpsr_tf._lexical (adapter only).
LEXICAL_PYBIND_SRCS = [
    "dpsr_tf/export/cc/python/lexical_pybind.cc",
]

# The TensorFlow op library dpsr_tf/_dpsr_ops.so: op definitions and kernels (adapters only).
OP_LIBRARY_SRCS = [
    "tokenizer_cc/ops/tokenize_ops.cc",
    "tokenizer_cc/kernels/tokenize_kernels.cc",
    # The FAISS searcher core (standard C++ + FAISS, no TensorFlow) and its ops and kernels.
    "dpsr_tf/export/cc/faiss_index.cc",
    "dpsr_tf/export/cc/ivf_sq8_scan.cc",
    "dpsr_tf/export/cc/ops/faiss_ops.cc",
    "dpsr_tf/export/cc/kernels/faiss_kernels.cc",
    # The lexical index core and its ops and kernels; the asset snapshots of both cores.
    "dpsr_tf/export/cc/asset_snapshot.cc",
    "dpsr_tf/export/cc/lexical_index.cc",
    "dpsr_tf/export/cc/ops/lexical_ops.cc",
    "dpsr_tf/export/cc/kernels/lexical_kernels.cc",
]
OP_LIBRARY_HDRS = [
    "dpsr_tf/export/cc/asset_snapshot.h",
    "dpsr_tf/export/cc/faiss_index.h",
    "dpsr_tf/export/cc/ivf_sq8_scan.h",
    "dpsr_tf/export/cc/top_k_buffer.h",
    "dpsr_tf/export/cc/kernels/index_resource.h",
    "dpsr_tf/export/cc/lexical_index.h",
]

# C++ unit tests of the core (plain executables; exit status 0 means pass), and the CHECK
# macro they share.
CC_TEST_SUPPORT_HDRS = [
    "tests/cc/check.h",
]
TOKENIZER_CORE_TESTS = [
    "tokenizer_cc/core/tokenizer_test.cc",
]
LEXICAL_CORE_TESTS = [
    "dpsr_tf/export/cc/lexical_index_test.cc",
]
TOPK_CORE_TESTS = [
    "dpsr_tf/export/cc/top_k_buffer_test.cc",
]
