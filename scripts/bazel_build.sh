#!/usr/bin/env bash
# Builds the op library and the storage library with Bazel, offline, and
# copies them to build/bazel/. Bazel's state lives in build/bazel-root, so
# `rm -rf build` (or `bazel clean --expunge`) starts from scratch.
#
# Usage: scripts/bazel_build.sh [extra bazel build args / targets]
#   PYTHON=/path/to/python  interpreter with TensorFlow (default: .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    echo "bazel_build.sh: no Python at $PYTHON (set PYTHON=...)" >&2
    exit 2
fi
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # absolute

mkdir -p build/bazel build/bazel-root
bazel --output_user_root="$ROOT/build/bazel-root" build \
    --repo_env=PYTHON_BIN_PATH="$PYTHON" \
    --action_env=PYTHON_BIN_PATH="$PYTHON" \
    //:_tf_hps_ops.so //:_tf_hps_storage.so "$@"

# Replace rather than overwrite: Bazel's outputs are read-only.
for lib in _tf_hps_ops.so _tf_hps_storage.so; do
    install -m 0755 "build/bazel-bin/$lib" "build/bazel/$lib"
done
echo "bazel_build.sh: wrote build/bazel/_tf_hps_ops.so and build/bazel/_tf_hps_storage.so"

# In CI nothing builds again: stop the server rather than leave it idling.
if [[ -n "${CI:-}" ]]; then
    bazel --output_user_root="$ROOT/build/bazel-root" shutdown
fi
