"""serving/saved_model_runner: C++ serving of a Keras 3 export, no Python.

Each export answers embeddings and a Dense head's scores. Embeddings are compared bit for bit (a
lookup is exact); scores within float32 rounding of the in-process model (tf_hps.testing), since the
runner's matmul may sum in another order (another batch shape, process or CPU). Concurrent runs of
one batch in one process must give the first run's bits (the runner's own `mismatches` count).
"""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import Served, child_env
from tf_hps import testing

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "build" / "saved_model_runner"
# The runner with //:tf_hps_ops_static linked in (scripts/bazel_build.sh); runs from bazel-bin (RUNPATH).
STATIC_RUNNER = REPO / "build" / "bazel-bin" / "saved_model_runner_static"
OP_LIBRARY = REPO / "tf_hps" / "_tf_hps_ops.so"
ENV = child_env(TF_CPP_MIN_LOG_LEVEL="1")

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def runner():
    """Builds (or refreshes) the runner with the Makefile's rule."""
    proc = subprocess.run(
        ["make", "-s", "build/saved_model_runner"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, f"make failed:\n{proc.stdout}\n{proc.stderr}"
    assert RUNNER.is_file()
    return RUNNER


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A plain Keras model exported for serving, an input and the expected output."""
    import keras

    keras.utils.set_random_seed(1234)
    ids_in = keras.Input((3,), dtype="int64", name="ids")
    embedding = keras.layers.Embedding(50, 4)
    emb = embedding(ids_in)
    flatten, head = keras.layers.Flatten(), keras.layers.Dense(2)
    model = keras.Model(ids_in, {"embeddings": emb, "scores": head(flatten(emb))})

    root = tmp_path_factory.mktemp("runner")
    model.export(str(root / "model"), verbose=False)
    ids = np.random.default_rng(0).integers(0, 50, size=(6, 3), dtype=np.int64)
    np.save(root / "ids.npy", ids)
    want_emb = embedding.embeddings.numpy()[ids]
    return root, Served(want_emb, model.predict(ids, verbose=0)["scores"],
                          testing.rounding_bound(want_emb, [flatten, head]))


def outputs_in(out_dir):
    return {p.stem: np.load(p) for p in Path(out_dir).glob("*.npy")}


def run(runner, root, out_dir, *extra, ids=None):
    ids = ids or root / "ids.npy"
    return subprocess.run(
        [str(runner), f"--saved_model={root / 'model'}",
         f"--input=ids={ids}", f"--output_dir={out_dir}", *extra],
        capture_output=True, text=True, env=ENV, timeout=300,
    )


def test_output_matches_keras_predict(runner, exported, tmp_path):
    root, expected = exported
    proc = run(runner, root, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "calls=1 errors=0 mismatches=0" in proc.stdout
    expected.check(outputs_in(tmp_path))


def test_concurrent_calls_are_bitwise_equal(runner, exported, tmp_path):
    root, expected = exported
    proc = run(runner, root, tmp_path, "--threads=4", "--iterations=20")
    assert proc.returncode == 0, proc.stderr
    summary = re.search(r"calls=(\d+) errors=(\d+) mismatches=(\d+)", proc.stdout)
    assert summary, proc.stdout
    assert summary.groups() == ("81", "0", "0")  # the first call + 4 x 20
    expected.check(outputs_in(tmp_path))


@pytest.mark.parametrize(
    "extra, exit_code, message",
    [
        (["--op_library=/nonexistent/_ops.so"], 2, "cannot load op library"),
        (["--signature=nope"], 2, "no signature 'nope'"),
        (["--threads=0"], 2, "--threads wants"),
    ],
)
def test_errors_are_clear(runner, exported, tmp_path, extra, exit_code, message):
    root, _ = exported
    proc = run(runner, root, tmp_path, *extra)
    assert proc.returncode == exit_code, proc.stderr
    assert message in proc.stderr


def test_bad_input_file_is_rejected(runner, exported, tmp_path):
    root, _ = exported
    bad = tmp_path / "ids_int32.npy"
    np.save(bad, np.zeros((6, 3), np.int32))  # the model wants int64
    proc = run(runner, root, tmp_path, ids=bad)
    assert proc.returncode == 2
    assert "input 'ids' wants int64" in proc.stderr


def test_an_npy_header_whose_size_wraps_is_rejected(runner, exported, tmp_path):
    """A shape of 2**60 x 2 int64 is 2**64 bytes, which wraps to 0: refused, not allocated."""
    root, _ = exported
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1152921504606846976, 2), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    bad = tmp_path / "huge.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    proc = run(runner, root, tmp_path, ids=bad)
    assert proc.returncode == 2, proc.stderr
    assert "holds more bytes than a file can" in proc.stderr


# ------------------------------------------------- a model with tf_hps ops ---

@pytest.fixture(scope="module")
def hps_exported(tmp_path_factory):
    """A Keras model with a tf_hps LookupLayer, exported; its L1 holds 64 rows, each call touches ~150."""
    import json

    import keras
    import tensorflow as tf

    import tf_hps as hps

    root = tmp_path_factory.mktemp("hps_runner")
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, 8)).astype(np.float32)
    hps.save_table(root / "items", np.arange(0, 3000, 3), vectors)
    config = root / "ps_config.json"
    config.write_text(json.dumps({"supportlonglong": True, "models": [{
        "model": "m", "sparse_files": [str(root / "items")], "embedding_vecsize_per_table": [8],
        "maxnum_catfeature_query_per_table_per_sample": [5], "default_value_for_each_table": [0.5],
        "deployed_device_list": [0], "max_batch_size": 64, "gpucacheper": 0.01}]}))
    keras.utils.set_random_seed(7)
    ids_in = keras.Input((5,), dtype="int64", name="ids")
    emb = hps.LookupLayer("m", 0, 8, tf.float32, str(config))(ids_in)
    flatten, head = keras.layers.Flatten(), keras.layers.Dense(3)
    model = keras.Model(ids_in, {"embeddings": emb, "scores": head(flatten(emb))})
    ids = rng.integers(-20, 3100, size=(40, 5), dtype=np.int64)  # absent keys get the default
    dense = np.full((3100, 8), 0.5, np.float32)
    dense[np.arange(0, 3000, 3)] = vectors
    want_emb = dense[np.clip(ids, 0, None)]
    want_emb[ids < 0] = 0.5
    expected = Served(want_emb, model.predict(ids, verbose=0)["scores"], testing.rounding_bound(want_emb, [flatten, head]))
    model.export(str(root / "model"), verbose=False)
    config.unlink()  # the export carries its config
    np.save(root / "ids.npy", ids)
    return root, expected


def check_concurrent_run(proc, out_dir, expected, calls):
    assert proc.returncode == 0, proc.stderr
    summary = re.search(r"calls=(\d+) errors=(\d+) mismatches=(\d+)", proc.stdout)
    assert summary and summary.groups() == (str(calls), "0", "0"), proc.stdout
    expected.check(outputs_in(out_dir))
    assert proc.stderr.count("loaded into the hash_map") == 1, proc.stderr  # one parameter server


def test_hps_export_serves_with_concurrent_session_runs(runner, hps_exported, tmp_path):
    """8 threads x 25 Session::Run calls, each evicting and inserting L1 rows while others read."""
    root, expected = hps_exported
    proc = run(runner, root, tmp_path, f"--op_library={OP_LIBRARY}", "--threads=8", "--iterations=25")
    check_concurrent_run(proc, tmp_path, expected, calls=201)


def test_without_the_op_library_the_hps_export_does_not_load(runner, hps_exported, tmp_path):
    root, _ = hps_exported
    proc = run(runner, root, tmp_path)
    assert proc.returncode == 1
    assert "Op type not registered 'TfHps" in proc.stderr


def test_runner_linked_with_the_static_op_library_serves_without_loading_it(hps_exported, tmp_path):
    """//:tf_hps_ops_static linked in by Bazel registers the ops, as in a model server built with them."""
    assert STATIC_RUNNER.is_file(), f"missing {STATIC_RUNNER}: run `make bazel` (scripts/bazel_build.sh)"
    root, expected = hps_exported
    proc = run(STATIC_RUNNER, root, tmp_path, "--threads=4", "--iterations=25")
    check_concurrent_run(proc, tmp_path, expected, calls=101)
