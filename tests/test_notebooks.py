"""The notebooks under notebooks/ run headless, top to bottom, without a cell error.

Each runs in a fresh IPython kernel of the interpreter running the tests (the .venv's python: a
kernelspec written for this session names it, ahead of any other `python3` kernelspec), from a
copy of the notebook, with a temporary folder as the working directory. Committed notebooks carry
no outputs, and use tf_hps only through its public API.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "tf_hps_tests"
CELL_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec that starts this interpreter, found first (JUPYTER_PATH), and the kernels' environment."""
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_dir / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tf_hps tests)",
        "language": "python",
    }))
    saved = {name: os.environ.get(name) for name in ("JUPYTER_PATH", "PYTHONPATH")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_dir), saved["JUPYTER_PATH"]]))
    # The package imports from this checkout even where it is not installed in the venv.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def execute(nb, cwd: Path) -> None:
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(cwd)}}).execute()


def test_kernel_runs_this_interpreter(kernel_env, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os, sys; print(sys.executable); print(os.getcwd())")])
    execute(nb, tmp_path)
    printed = nb.cells[0].outputs[0]["text"].split()
    assert os.path.realpath(printed[0]) == os.path.realpath(sys.executable)
    assert os.path.realpath(printed[1]) == os.path.realpath(tmp_path)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env, tmp_path, capsys):
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "cwd"
    work.mkdir()
    start = time.monotonic()
    try:
        execute(nb, work)
    finally:
        elapsed = time.monotonic() - start
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, outputs included, for a look after a failure
        with capsys.disabled():
            print(f"\n[notebook] {path.name}: {elapsed:.1f} s")
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts in git; tf_hps used through its public API only; nothing from tests/."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert any(cell.cell_type == "markdown" for cell in nb.cells)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"cell {index} has outputs: strip them before committing"
        assert cell.execution_count is None, f"cell {index} has an execution_count: strip it before committing"
        assert not re.search(r"^\s*(from|import)\s+tf_hps\.", cell.source, re.M), \
            f"cell {index} imports a tf_hps module: use the public API (import tf_hps as hps)"
        assert not re.search(r"^\s*(from|import)\s+(tests|conftest|redis_servers)\b", cell.source, re.M), \
            f"cell {index} imports from tests/: notebooks are self-contained"
