#!/usr/bin/env bash
# Creates build/tfra-venv: TensorFlow Recommenders-Addons 0.8.1 in its own TF 2.16.2 venv, for the peer
# benchmark (benchmarks/peers_tfra.py). TFRA 0.8.1 needs tensorflow <= 2.16.2 and the full (CUDA) tensorflow
# wheel, so it cannot live in the project's TF 2.21 venv (shared/reference/toolchain.md §10).
# Idempotent: does nothing when build/tfra-venv/.ok exists. Exits non-zero, saying why, when pip cannot
# install it (no network and no wheel under PIP_FIND_LINKS); `make bench` then reports the TFRA part as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/tfra-venv
if [[ -f $VENV/.ok ]]; then
  echo "$VENV: ready"
  exit 0
fi
rm -rf "$VENV"
mkdir -p build
python3 -m venv "$VENV"
# The same pins as the toolchain check: the full tensorflow wheel (TFRA's .so files need its CUDA symbols).
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "tensorflow==2.16.2" "tensorflow-recommenders-addons==0.8.1" "numpy<2"; then
  echo "$VENV: pip could not install tensorflow==2.16.2 + tensorflow-recommenders-addons==0.8.1" >&2
  rm -rf "$VENV"
  exit 1
fi
# Proof that the ops load: a cuckoo hashtable lookup.
"$VENV/bin/python" - <<'PY'
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
from tensorflow_recommenders_addons import dynamic_embedding as de
v = de.get_variable("probe", key_dtype=tf.int64, value_dtype=tf.float32, dim=4, devices=["/CPU:0"])
v.upsert(tf.constant([1, 2], tf.int64), tf.ones((2, 4)))
assert float(tf.reduce_sum(v.lookup(tf.constant([1, 3], tf.int64)))) == 4.0
print("TFRA", __import__("tensorflow_recommenders_addons").__version__, "on TF", tf.__version__, ": ok")
PY
touch "$VENV/.ok"
