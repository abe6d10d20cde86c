#!/usr/bin/env bash
# Runs Bazel (Debian's bazel-bootstrap, 4.2.3) on this workspace with the project's settings.
#
#   tools/bazel/bazel.sh build //...          # everything
#   tools/bazel/bazel.sh test //...           # + the C++ unit tests
#   tools/bazel/bazel.sh shutdown             # stop the server (tests do this when done)
#
# - Bazel's output root and disk cache live OUTSIDE the clone, in $DPSR_BAZEL_CACHE
#   (default ~/.cache/dpsr-tf/bazel), so repeated clones and CI runs reuse compiled actions.
# - TensorFlow comes from the project venv (tools/bootstrap.sh) through tf.sysconfig:
#   --repo_env=DPSR_PYTHON is passed to every command that builds.
# - The server exits by itself after $DPSR_BAZEL_IDLE_SECS (default 300) idle seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

if ! command -v bazel >/dev/null; then
  echo "bazel.sh: no bazel on PATH; run tools/bootstrap.sh --test (installs Debian's bazel-bootstrap)" >&2
  exit 1
fi
if (($# == 0)); then
  echo "usage: tools/bazel/bazel.sh COMMAND [ARGS...]   (e.g. build //..., test //...)" >&2
  exit 2
fi
cache="${DPSR_BAZEL_CACHE:-$HOME/.cache/dpsr-tf/bazel}"
mkdir -p "$cache"
startup=(--output_user_root="$cache/root" --max_idle_secs="${DPSR_BAZEL_IDLE_SECS:-300}")
command="$1"
shift
venv_opt=()
case "$command" in
  build|test|run|coverage|cquery|aquery|info|sync|fetch|query)
    venv_opt=(--repo_env=DPSR_PYTHON="$(tools/bootstrap.sh)/bin/python")
    ;;
esac
build_opts=()
case "$command" in
  build|test|run|coverage|cquery|aquery|info)
    # Bazel counts the host's CPUs, not the container's share: use what nproc grants.
    build_opts=(--disk_cache="$cache/disk" --local_cpu_resources="$(nproc)")
    ;;
esac
exec bazel "${startup[@]}" "$command" "${venv_opt[@]}" "${build_opts[@]}" "$@"
