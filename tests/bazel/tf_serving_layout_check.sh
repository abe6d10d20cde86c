#!/usr/bin/env bash
# Checks the TF Serving recipe of docs/bazel.md without a TF Serving checkout (which is
# gigabytes of downloads): a scratch workspace laid out like one consumes this repository as
# @dpsr_tf exactly as the recipe says,
#   local_repository(name = "dpsr_tf", ...)
#   dpsr_tf_dependencies(tensorflow = "@org_tensorflow")
#   SUPPORTED_TENSORFLOW_OPS += ["@dpsr_tf//:dpsr_ops"]
# with @org_tensorflow//tensorflow/core:framework played by the pip TensorFlow, links a stand-in
# tensorflow_model_server statically and runs it: it must list every Dpsr> op with a kernel.
# Then it builds and tests @dpsr_tf//... there (the pybind11 targets are skipped).
#
#   tests/bazel/tf_serving_layout_check.sh      # manual; several minutes on 2 cores
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${DPSR_BAZEL_CACHE:-$HOME/.cache/dpsr-tf/bazel}"
venv="$("$root/tools/bootstrap.sh")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/org_tensorflow/tensorflow/core" "$work/tensorflow_serving/model_servers"
touch "$work/org_tensorflow/WORKSPACE"
cat > "$work/org_tensorflow/tensorflow/core/BUILD" <<'BUILD'
# Plays @org_tensorflow//tensorflow/core:framework with the pip TensorFlow.
package(default_visibility = ["//visibility:public"])

alias(
    name = "framework",
    actual = "@pip_tensorflow//:framework",
)
BUILD
cat > "$work/WORKSPACE" <<WORKSPACE
workspace(name = "tf_serving")

# A TF Serving tree has the real rules_cc/rules_java; this Bazel 4.2.3 uses the stand-ins.
local_repository(name = "rules_cc", path = "$root/third_party/bazel/rules_cc")
local_repository(name = "rules_java", path = "$root/third_party/bazel/rules_java")
local_repository(name = "remote_coverage_tools", path = "$root/third_party/bazel/remote_coverage_tools")
local_repository(name = "org_tensorflow", path = "org_tensorflow")

# --- the lines docs/bazel.md adds to TF Serving's WORKSPACE ---
local_repository(name = "dpsr_tf", path = "$root")
load("@dpsr_tf//tools/bazel:repositories.bzl", "dpsr_tensorflow_repository", "dpsr_tf_dependencies")
dpsr_tf_dependencies(tensorflow = "@org_tensorflow")
# ---

dpsr_tensorflow_repository(name = "pip_tensorflow")
WORKSPACE
cat > "$work/tensorflow_serving/model_servers/BUILD" <<'BUILD'
SUPPORTED_TENSORFLOW_OPS = ["@dpsr_tf//:dpsr_ops"]

cc_binary(
    name = "tensorflow_model_server",
    srcs = ["@dpsr_tf//tests/bazel:dpsr_ops_static_link_test.cc"],
    deps = ["@org_tensorflow//tensorflow/core:framework"] + SUPPORTED_TENSORFLOW_OPS,
)
BUILD
cat > "$work/.bazelrc" <<'RC'
build --compilation_mode=opt --force_pic --nosandbox_debug --symlink_prefix=/
build --cxxopt=-std=c++17
RC

bazel_() {
  (cd "$work" && bazel --output_user_root="$cache/sim-root" --max_idle_secs=60 "$@")
}
opts=(--repo_env=DPSR_PYTHON="$venv/bin/python" --disk_cache="$cache/disk"
      --local_cpu_resources="$(nproc)")
status=0
{
  bazel_ build "${opts[@]}" //tensorflow_serving/model_servers:tensorflow_model_server &&
  "$(bazel_ info "${opts[@]}" bazel-bin 2>/dev/null)/tensorflow_serving/model_servers/tensorflow_model_server" &&
  bazel_ test "${opts[@]}" @dpsr_tf//...
} || status=$?
bazel_ shutdown || true
if ((status)); then echo "tf_serving_layout_check: FAILED" >&2; else echo "tf_serving_layout_check: OK"; fi
exit $status
