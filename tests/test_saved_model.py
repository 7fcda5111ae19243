"""A Keras model with tf_hps layers exports as a SavedModel that serves without tf_hps's Python code.

The exported model answers its embeddings and a Dense head's scores. The served embeddings must equal
tf.nn.embedding_lookup on the same table bit for bit. The scores come from a matmul that TensorFlow
computes in another order at another batch shape, in another process or on another CPU, so they are
compared with the in-process model within float32 rounding (tf_hps.testing.rounding_bound); the CI
reruns these tests with the children on other oneDNN kernels (conftest.child_env).
"""

import os
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps import testing
from conftest import ROOT, Served, child_env, run_python

SERVE = """
import sys, threading, numpy as np, tensorflow as tf
tf.load_op_library(sys.argv[1])
serve = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
ids = np.load(sys.argv[3])
threads = int(sys.argv[5])
results = [None] * threads
barrier = threading.Barrier(threads)
def call(i):
    barrier.wait()  # all first calls race for the lazy initialisation
    results[i] = {k: v.numpy() for k, v in serve(ids=tf.constant(ids)).items()}
workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
for r in results:  # concurrent calls of one process on one batch: the same computation, the same bits
    assert all(r[k].tobytes() == results[0][k].tobytes() for k in r)
np.savez(sys.argv[4], **results[0])
"""

pytestmark = pytest.mark.serving


@pytest.fixture
def exported(simple, tmp_path):
    """Exports a small model, then moves the export and deletes the config it was built from."""
    tables, path = simple
    ids = keras.Input(shape=(4,), dtype="int64", name="ids")
    emb = hps.LookupLayer("foo", 0, 16, tf.float32, path)(ids)
    flatten, head = keras.layers.Flatten(), keras.layers.Dense(3, kernel_initializer="glorot_uniform")
    model = keras.Model(ids, {"embeddings": emb, "scores": head(flatten(emb))})
    x = np.random.default_rng(5).integers(0, 1200, size=(64, 4)).astype(np.int64)
    want_emb = tf.nn.embedding_lookup(tables.dense("t0", 1.5, 1200), x).numpy()
    want = Served(want_emb, model.predict(x, verbose=0)["scores"], testing.rounding_bound(want_emb, [flatten, head]))
    model.export(str(tmp_path / "export"), verbose=False)
    moved = str(tmp_path / "elsewhere" / "model")
    os.makedirs(os.path.dirname(moved))
    shutil.move(str(tmp_path / "export"), moved)
    os.remove(path)
    np.save(tmp_path / "ids.npy", x)
    return moved, str(tmp_path / "ids.npy"), want


def test_export_serves_in_a_fresh_process_without_tf_hps(exported, tmp_path):
    export, ids, want = exported
    proc = run_python(SERVE, hps.op_library_path(), export, ids, str(tmp_path / "out.npz"), "1")
    want.check(dict(np.load(tmp_path / "out.npz")))
    assert "tf_hps I" in proc.stderr  # it did initialise from the embedded config


def test_concurrent_first_calls_initialise_once(exported, tmp_path):
    export, ids, want = exported
    proc = run_python(SERVE, hps.op_library_path(), export, ids, str(tmp_path / "out.npz"), "8")
    want.check(dict(np.load(tmp_path / "out.npz")))
    assert proc.stderr.count("loaded into the hash_map") == 1, proc.stderr
    assert proc.stderr.count("': deployed_device_list") == 1, proc.stderr


def test_export_without_the_op_library_fails_with_a_clear_error(exported):
    export, _, _ = exported
    code = "import sys, tensorflow as tf\ntry:\n    tf.saved_model.load(sys.argv[1])\nexcept Exception as e:\n    print(e)"
    assert "Op type not registered 'TfHps" in run_python(code, export).stdout


def test_cpp_loader_serves_the_export_with_concurrent_session_runs(exported, tmp_path):
    export, ids, want = exported
    runner = os.path.join(ROOT, "build", "saved_model_runner")
    subprocess.run(["make", "-s", "-C", ROOT, "build/saved_model_runner"], check=True)
    out_dir = tmp_path / "cpp_out"
    out_dir.mkdir()
    proc = subprocess.run(
        [runner, f"--op_library={hps.op_library_path()}", f"--saved_model={export}", f"--input=ids={ids}",
         f"--output_dir={out_dir}", "--threads=4", "--iterations=10"],
        capture_output=True, text=True, timeout=300, cwd="/", env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "mismatches=0" in proc.stdout  # every concurrent Session::Run gave the first run's bits
    want.check({name[:-4]: np.load(out_dir / name) for name in os.listdir(out_dir)})
