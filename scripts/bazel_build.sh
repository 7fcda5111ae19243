#!/usr/bin/env bash
# Builds with Bazel, offline, and copies the results to build/bazel/:
#   _tf_hps_ops.so, _tf_hps_storage.so   the op and storage libraries
#   libtf_hps_ops_static.a                the ops as a static alwayslink archive
#                                         (//:tf_hps_ops_static, for linking into a
#                                         model server; docs/serving.md)
# and builds build/bazel-bin/saved_model_runner_static, the C++ runner with that
# archive linked in (run it from build/bazel-bin: its RUNPATH finds TensorFlow
# relative to itself). Bazel's state lives in build/bazel-root, so `rm -rf build`
# (or `bazel clean --expunge`) starts from scratch.
#
# Usage: scripts/bazel_build.sh [extra bazel build args / targets]
#   PYTHON=/path/to/python  interpreter with TensorFlow (default: .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The Bazel server outlives this script (up to .bazelrc's max_idle_secs) and
# would keep every file descriptor it inherits open: a lock held by a caller,
# as in `flock LOCKFILE scripts/bazel_build.sh`, would stay held until the
# server exits. Close everything above stderr first.
for fd in /proc/self/fd/*; do
    fd="${fd##*/}"
    if (( fd > 2 )); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
done

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
    //:_tf_hps_ops.so //:_tf_hps_storage.so //:tf_hps_ops_static //:saved_model_runner_static "$@"

# Replace rather than overwrite: Bazel's outputs are read-only.
for lib in _tf_hps_ops.so _tf_hps_storage.so; do
    install -m 0755 "build/bazel-bin/$lib" "build/bazel/$lib"
done
# An alwayslink cc_library's archive is named .lo; it is an ordinary ar archive.
install -m 0644 build/bazel-bin/libtf_hps_ops_static.lo build/bazel/libtf_hps_ops_static.a
echo "bazel_build.sh: wrote build/bazel/_tf_hps_ops.so, build/bazel/_tf_hps_storage.so," \
     "build/bazel/libtf_hps_ops_static.a and build/bazel-bin/saved_model_runner_static"

# In CI nothing builds again: stop the server rather than leave it idling.
if [[ -n "${CI:-}" ]]; then
    bazel --output_user_root="$ROOT/build/bazel-root" shutdown
fi
