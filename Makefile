# The README's two commands: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.DEFAULT_GOAL := demo

# tools/bootstrap.sh installs Debian packages and the pinned venv (kept outside the clone,
# keyed by a hash of requirements.txt) when missing, and prints the venv path. Here, for every
# target, only what `make build` and `make demo` need; the packages only tests use (Bazel with
# its JDK, Chromium) come with `test-packages`, which `make test` and `make bazel` run.
VENV := $(shell tools/bootstrap.sh)
ifeq ($(VENV),)
$(error tools/bootstrap.sh failed; see the messages above)
endif
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: build demo test test-packages cc-test front-end-asan bench clean bazel

# The native gRPC front end (front_end_cc/, docs/serving.md): an executable linked with the
# Debian package libgrpc++-dev.
FRONT_END := dpsr_tf/serving/dpsr_front_end
# main.cc: the process (flags, port, signals); flags.*: the command line; front_end_service.*:
# the generic service and what calls share; call_reactor.*: one call; fair_gate.h: turn order;
# drain.h: the stop at SIGTERM without cancelled calls; request_budget.h: request bytes held;
# heap_trim.h: freed pages given back;
# framed_backend.*: the framed Predict hop to the Python server; listener.*: the listening
# socket and the thread that accepts for gRPC; accept_shedding.*: new connections closed at
# accept while descriptors are out.
FRONT_END_SRCS := front_end_cc/main.cc front_end_cc/flags.cc front_end_cc/front_end_service.cc \
                  front_end_cc/call_reactor.cc front_end_cc/framed_backend.cc \
                  front_end_cc/accept_shedding.cc front_end_cc/listener.cc
FRONT_END_HDRS := front_end_cc/flags.h front_end_cc/front_end_service.h \
                  front_end_cc/call_reactor.h front_end_cc/fair_gate.h \
                  front_end_cc/framed_backend.h front_end_cc/accept_shedding.h \
                  front_end_cc/listener.h front_end_cc/drain.h front_end_cc/request_budget.h \
                  front_end_cc/heap_trim.h front_end_cc/string_limit.h \
                  front_end_cc/write_parts.h

build: $(FRONT_END)  ## compile the pybind11 tokenizer, the TF op library and the front end in place
	$(PY) setup.py -q build_ext --inplace -j 2

$(FRONT_END): $(FRONT_END_SRCS) $(FRONT_END_HDRS)
	g++ -std=c++17 -O2 -Wall -Werror -I . $(FRONT_END_SRCS) \
	    $$(pkg-config --cflags --libs grpc++) -o $@

# bench/serving_bench.py's load generator (bench/loadgen_cc/, docs/benchmarks.md), linked as the
# front end is; built by `make bench` or by the bench when missing.
LOADGEN := bench/dpsr_loadgen

$(LOADGEN): bench/loadgen_cc/loadgen.cc
	g++ -std=c++17 -O2 -Wall -Werror $< $$(pkg-config --cflags --libs grpc++) -o $@

cc-test: build  ## C++ unit tests of the tokenizer, lexical index and top-k buffer cores
	$(PY) tools/run_cc_tests.py

# Minutes, not part of `make test`: run it after changing front_end_cc/.
front-end-asan: build  ## the native front end's tests against its ASan/UBSan build, under CPU load
	$(PY) tools/front_end_sanitized.py

demo: build  ## the embedded end-to-end demo
	$(PY) -m dpsr_tf.cli demo

# Test files run on TEST_WORKERS processes (pytest-xdist), each file whole on one worker so its
# module fixtures (servers, trained models) are built once; TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2

test: build $(LOADGEN) cc-test test-packages  ## every test (pytest fails when no test ran)
	$(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile

test-packages:  ## the Debian packages only tests need (tools/apt-packages-test.txt)
	tools/bootstrap.sh --test > /dev/null

# Bazel (Debian's bazel-bootstrap) comes with test-packages; the Bazel server stops after.
bazel: test-packages  ## Bazel build of the C++ targets and their tests (docs/bazel.md)
	tools/bazel/bazel.sh test //...; status=$$?; tools/bazel/bazel.sh shutdown; exit $$status

bench: build $(LOADGEN)  ## the quick benchmark set, one table (bench/quick.py; full runs: docs/benchmarks.md)
	$(PY) bench/quick.py

clean:
	rm -rf build dpsr_tf/*.so dpsr_tf/_dpsr_ops.faiss.json $(FRONT_END) $(LOADGEN)
