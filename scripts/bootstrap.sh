#!/usr/bin/env bash
# Installs what building and testing tf_hps needs, idempotently:
#   scripts/bootstrap.sh system   Debian packages (compiler, libraries, servers, Bazel)
#   scripts/bootstrap.sh venv     .venv/ at the repo root with the pinned Python packages
#   scripts/bootstrap.sh cuda     prints the nvcc to build with, installing one if there is none
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(g++ make python3-venv nlohmann-json3-dev librocksdb-dev libhiredis-dev libssl-dev redis-server bazel-bootstrap)

system() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

venv() {
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $($python --version)"
    "$python" -m venv .venv
  fi
  local stamp=.venv/.requirements.stamp
  if [ ! -f "$stamp" ] || ! cmp -s "$stamp" <(cat requirements.txt requirements-dev.txt); then
    echo "bootstrap: installing Python packages into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    # The package itself, editable: `import tf_hps` and the tf-hps command work from anywhere.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    cat requirements.txt requirements-dev.txt > "$stamp"
  fi
}

# A CUDA 13.0 toolkit (nvcc, headers, static runtime) from PyPI wheels, for
# machines without one; nothing here needs a GPU or a driver.
CUDA_WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
             nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
CUDA_ROOT=build/cuda

# Prints the nvcc to use: $NVCC if set, else nvcc on PATH, else
# $CUDA_HOME/bin/nvcc (default /usr/local/cuda), else $CUDA_ROOT/bin/nvcc,
# installed from CUDA_WHEELS when missing or of other versions. Messages go to stderr.
cuda() {
  if [ -n "${NVCC:-}" ]; then echo "$NVCC"; return 0; fi
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return 0; fi
  if [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; return 0; fi
  local stamp="$CUDA_ROOT/.wheels"
  if [ ! -x "$CUDA_ROOT/bin/nvcc" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${CUDA_WHEELS[*]}" ]; then
    echo "bootstrap: installing a CUDA toolkit into $CUDA_ROOT: ${CUDA_WHEELS[*]}" >&2
    local python=.venv/bin/python
    [ -x "$python" ] || python="${PYTHON:-python3}"
    local tmp="$CUDA_ROOT.tmp"
    rm -rf "$tmp" "$CUDA_ROOT"
    "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$tmp" "${CUDA_WHEELS[@]}" >&2
    # The wheels hold the toolkit in nvidia/cu13; nvcc.profile looks for the
    # headers and libraries under targets/<arch>-linux.
    local target
    case "$(uname -m)" in aarch64) target=sbsa-linux ;; *) target="$(uname -m)-linux" ;; esac
    mkdir -p "$tmp/nvidia/cu13/targets/$target"
    ln -sfn ../../include "$tmp/nvidia/cu13/targets/$target/include"
    ln -sfn ../../lib "$tmp/nvidia/cu13/targets/$target/lib"
    ln -sfn lib "$tmp/nvidia/cu13/lib64"
    mv "$tmp/nvidia/cu13" "$CUDA_ROOT"
    rm -rf "$tmp"
    echo "${CUDA_WHEELS[*]}" > "$stamp"
  fi
  echo "$CUDA_ROOT/bin/nvcc"
}

case "${1:-}" in
  system) system ;;
  venv) venv ;;
  cuda) cuda ;;
  *) echo "usage: $0 system|venv|cuda" >&2; exit 2 ;;
esac
