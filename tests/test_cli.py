"""python -m tf_hps: ingest, inspect, verify and drop tables in shared databases."""

import subprocess
import sys

import numpy as np

from conftest import ROOT
from tf_hps.storage import Storage, table_tag

TAG = table_tag("foo", "sparse_embedding0")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tf_hps", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def rocks_config(tables, tmp_path, rows=70_000):
    tables.table("t0", rows, 16)
    return tables.config(extra={"persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})


def test_ingest_then_verify_then_drop_with_rocksdb(tables, tmp_path):
    path = rocks_config(tables, tmp_path)
    out = cli("ingest", f"--config={path}", "--progress")
    assert out.returncode == 0, out.stderr
    assert f"rocks_db {TAG}: ingested 70000 rows" in out.stdout
    assert "70000/70000 rows" in out.stderr  # the progress bar reached the end
    assert "volatile_db: skipped (type 'hash_map'" in out.stderr

    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb"), "read_only": True}) as db:
        keys, vectors = tables.rows["t0"]
        got, found = db.fetch(TAG, keys, 16)
    assert found.all()
    np.testing.assert_array_equal(got, vectors)

    out = cli("verify", f"--config={path}")
    assert out.returncode == 0 and f"rocks_db {TAG}: OK: 70000 rows checked, 0 missing, 0 different" in out.stdout

    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb")}) as db:
        db.insert(TAG, [5], np.zeros((1, 16), np.float32))  # a changed row
        db.evict(TAG, [6, 7])  # and two lost ones
    out = cli("verify", f"--config={path}")
    assert out.returncode == 1
    assert "FAILED: 70000 rows checked, 2 missing, 1 different" in out.stdout

    assert cli("drop", f"--config={path}").returncode != 0  # needs --yes
    out = cli("drop", f"--config={path}", "--yes")
    assert out.returncode == 0 and f"rocks_db {TAG}: dropped" in out.stdout
    assert f"rocks_db {TAG}: 0 rows stored" in cli("inspect", f"--config={path}").stdout


def test_unknown_models_and_tables_are_usage_errors(tables, tmp_path):
    path = rocks_config(tables, tmp_path, rows=10)
    out = cli("inspect", f"--config={path}", "--models=bar")
    assert out.returncode != 0 and "model 'bar' is not in the config (models: foo)" in out.stderr
    out = cli("inspect", f"--config={path}", "--tables=nope")
    assert out.returncode != 0 and "table(s) nope not in the selected models" in out.stderr
    out = cli("launch", f"--config={path}")
    assert out.returncode != 0 and "usage: python -m tf_hps {ingest|inspect|verify|drop}" in out.stderr


def test_config_errors_are_reported_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": []}')
    out = cli("inspect", f"--config={bad}")
    assert out.returncode == 2
    assert "error: config supportlonglong: required key is missing" in out.stderr
    assert "Traceback" not in out.stderr
