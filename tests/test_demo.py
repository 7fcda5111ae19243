"""The README's demo (`./run demo` runs `python -m tf_hps.demo`) passes, also served on other float kernels."""

import os
import subprocess
import sys

import pytest

from conftest import CHILD_ENV, ROOT

pytestmark = pytest.mark.serving


def test_demo_passes_with_its_serving_process_on_the_child_kernels(tmp_path):
    serve_env = [f"--serve-env={word}" for word in os.environ.get(CHILD_ENV, "").split()]
    proc = subprocess.run(
        [sys.executable, "-m", "tf_hps.demo", "--rows", "20000", "--workdir", str(tmp_path), *serve_env],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "rows identical, predictions within float32 rounding" in proc.stdout
    assert proc.stdout.rstrip().endswith("demo OK"), proc.stdout


def test_demo_refuses_a_malformed_serve_env(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tf_hps.demo", "--serve-env", "NOEQUALS"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and "--serve-env wants KEY=VALUE, got 'NOEQUALS'" in proc.stderr
