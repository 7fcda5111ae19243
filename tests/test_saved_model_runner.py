"""serving/saved_model_runner: C++ serving of a Keras 3 export, no Python."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "build" / "saved_model_runner"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"}


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
    x = keras.layers.Embedding(50, 4)(ids_in)
    x = keras.layers.Flatten()(x)
    model = keras.Model(ids_in, keras.layers.Dense(2)(x))

    root = tmp_path_factory.mktemp("runner")
    model.export(str(root / "model"), verbose=False)
    ids = np.random.default_rng(0).integers(0, 50, size=(6, 3), dtype=np.int64)
    np.save(root / "ids.npy", ids)
    return root, model.predict(ids, verbose=0)


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

    outputs = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert outputs == ["output_0.npy"]
    got = np.load(tmp_path / "output_0.npy")
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_concurrent_calls_are_bitwise_equal(runner, exported, tmp_path):
    root, expected = exported
    proc = run(runner, root, tmp_path, "--threads=4", "--iterations=20")
    assert proc.returncode == 0, proc.stderr
    summary = re.search(r"calls=(\d+) errors=(\d+) mismatches=(\d+)", proc.stdout)
    assert summary, proc.stdout
    assert summary.groups() == ("81", "0", "0")  # the first call + 4 x 20
    np.testing.assert_allclose(np.load(tmp_path / "output_0.npy"), expected,
                               rtol=0, atol=1e-6)


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
