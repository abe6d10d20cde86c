# The C++ sources of every native target, in one place. Read by Bazel (BUILD files `load` it)
# and by setup.py (parsed as plain Python literals), so the two builds compile exactly the same
# files and cannot drift. Keep this file to simple list assignments.

# The tokenizer core: standard C++ only, no TensorFlow or pybind11 headers.
TOKENIZER_CORE_SRCS = [
    "tokenizer_cc/core/speller.cc",
    "tokenizer_cc/core/tokenizer.cc",
    "tokenizer_cc/core/utf8.cc",
]
TOKENIZER_CORE_HDRS = [
    "tokenizer_cc/core/hash.h",
    "tokenizer_cc/core/speller.h",
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
    "search_cc/core/asset_snapshot.cc",
    "search_cc/core/lexical_index.cc",
]
LEXICAL_CORE_HDRS = [
    "search_cc/core/asset_snapshot.h",
    "search_cc/core/core_error.h",
    "search_cc/core/lexical_index.h",
]

# The best-k buffer of the IVF-SQ8 scan and the merge of the heads' lists: header-only
# standard C++.
TOPK_CORE_SRCS = []
TOPK_CORE_HDRS = [
    "search_cc/core/head_merge.h",
    "search_cc/core/top_k_buffer.h",
]

# The pybind11 module dpsr_tf._lexical (adapter only).
LEXICAL_PYBIND_SRCS = [
    "search_cc/python/lexical_pybind.cc",
]

# The TensorFlow op library dpsr_tf/_dpsr_ops.so: op definitions and kernels (adapters only).
OP_LIBRARY_SRCS = [
    "tokenizer_cc/ops/spell_ops.cc",
    "tokenizer_cc/ops/tokenize_ops.cc",
    "tokenizer_cc/kernels/spell_kernels.cc",
    "tokenizer_cc/kernels/tokenize_kernels.cc",
    # The FAISS searcher core (standard C++ + FAISS, no TensorFlow) and its ops and kernels.
    "search_cc/core/faiss_index.cc",
    "search_cc/core/ivf_sq8_scan.cc",
    "search_cc/ops/faiss_ops.cc",
    "search_cc/kernels/faiss_kernels.cc",
    # The lexical index core and its ops and kernels; the asset snapshots of both cores.
    "search_cc/core/asset_snapshot.cc",
    "search_cc/core/lexical_index.cc",
    "search_cc/ops/lexical_ops.cc",
    "search_cc/kernels/lexical_kernels.cc",
    # The merge of the query heads' lists (header-only core).
    "search_cc/ops/head_merge_ops.cc",
    "search_cc/kernels/head_merge_kernels.cc",
]
OP_LIBRARY_HDRS = [
    "search_cc/core/asset_snapshot.h",
    "search_cc/core/core_error.h",
    "search_cc/kernels/core_status.h",
    "search_cc/core/faiss_index.h",
    "search_cc/core/head_merge.h",
    "search_cc/core/ivf_sq8_scan.h",
    "search_cc/core/top_k_buffer.h",
    "search_cc/kernels/index_resource.h",
    "search_cc/ops/index_resource_shapes.h",
    "search_cc/core/lexical_index.h",
    "tokenizer_cc/kernels/loaded_by_path.h",
]

# C++ unit tests of the core (plain executables; exit status 0 means pass), and the CHECK
# macro they share.
CC_TEST_SUPPORT_HDRS = [
    "tests/cc/check.h",
]
TOKENIZER_CORE_TESTS = [
    "tokenizer_cc/core/speller_test.cc",
    "tokenizer_cc/core/tokenizer_test.cc",
]
LEXICAL_CORE_TESTS = [
    "search_cc/core/lexical_index_test.cc",
]
# The native gRPC front end's fair gate, drain, request budget, heap trim rule, string limit and
# scattered writes: header-only C++ with no gRPC (the front end itself links gRPC and is built
# by the Makefile, not here).
FAIR_GATE_CORE_SRCS = []
FAIR_GATE_CORE_HDRS = [
    "front_end_cc/drain.h",
    "front_end_cc/fair_gate.h",
    "front_end_cc/heap_trim.h",
    "front_end_cc/request_budget.h",
    "front_end_cc/string_limit.h",
    "front_end_cc/write_parts.h",
]
FAIR_GATE_CORE_TESTS = [
    "front_end_cc/drain_test.cc",
    "front_end_cc/fair_gate_test.cc",
    "front_end_cc/heap_trim_test.cc",
    "front_end_cc/request_budget_test.cc",
    "front_end_cc/string_limit_test.cc",
    "front_end_cc/write_parts_test.cc",
]
TOPK_CORE_TESTS = [
    "search_cc/core/head_merge_test.cc",
    "search_cc/core/top_k_buffer_test.cc",
]
