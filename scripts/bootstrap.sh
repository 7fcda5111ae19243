#!/usr/bin/env bash
# Installs what building and testing tf_hps needs, idempotently:
#   scripts/bootstrap.sh system   Debian packages (compiler, libraries, servers, Bazel)
#   scripts/bootstrap.sh venv     .venv/ at the repo root with the pinned Python packages
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(g++ make python3-venv nlohmann-json3-dev librocksdb-dev libhiredis-dev redis-server bazel-bootstrap)

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

case "${1:-}" in
  system) system ;;
  venv) venv ;;
  *) echo "usage: $0 system|venv" >&2; exit 2 ;;
esac
