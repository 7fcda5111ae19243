"""python -m tf_hps: ingest, inspect, verify and drop tables in shared databases."""

import json
import re
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
    assert out.returncode == 2 and "invalid choice: 'launch' (choose from 'ingest', 'inspect'" in out.stderr


def test_config_errors_are_reported_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": []}')
    out = cli("inspect", f"--config={bad}")
    assert out.returncode == 2
    assert "error: config supportlonglong: required key is missing" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_prints_a_table_and_json(tables, tmp_path):
    tables.table("t0", 1000, 16)
    path = tables.config(extra={"persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    out = cli("plan", path)
    assert out.returncode == 0, out.stderr
    assert "foo / sparse_embedding0: 1,000 rows x 16 floats" in out.stdout
    assert re.search(r"L1 cache \(dynamic\) +GPU 0 +\d+\.\d KiB +512 rows", out.stdout), out.stdout
    assert "host RAM, each serving process" in out.stdout and "disk (RocksDB)" in out.stdout
    assert not (tmp_path / "rdb").exists()  # planning opens no database

    out = cli("plan", f"--config={path}", "--json", "--l1=cpu", "--concurrent_calls=2")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    tiers = {t["tier"]: t for t in result["tables"][0]["tiers"]}
    # gpucacheper 0.5 of 1000 rows: 8 sets of 64; CPU arrays 64-byte aligned (keys, stamps, tags, rows),
    # a 4-byte sequence word per set.
    assert tiers["l1"]["where"] == "host" and tiers["l1"]["bytes"] == 4096 + 4096 + 512 + 32768 + 8 * 4
    assert result["totals"]["gpu"] == {} and result["concurrent_calls"] == 2
    assert result["totals"]["disk"] == 1000 * (64 + 8 + 16)


def test_plan_errors_are_clear(tables, tmp_path):
    out = cli("plan")
    assert out.returncode != 0 and "--config is required (or: python -m tf_hps plan ps.json)" in out.stderr
    out = cli("plan", str(tmp_path / "nope.json"))
    assert out.returncode == 2 and "error: config file" in out.stderr and "nope.json' does not exist" in out.stderr
    path = tables.config(tables=("absent",))
    out = cli("plan", path)
    assert out.returncode == 2 and "table folder" in out.stderr and "absent' does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    out = cli("plan", path, "--rows=foo")
    assert out.returncode != 0 and "--rows wants model/table=N, got 'foo'" in out.stderr
    out = cli("inspect", path, "extra")
    assert out.returncode == 2 and "unrecognized arguments: " in out.stderr


def test_plan_takes_row_counts_for_tables_without_files(tables, tmp_path):
    path = tables.config(tables=("absent",), extra={
        "volatile_db": {"type": "redis_cluster", "initialize_after_startup": False},
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb"), "read_only": True}})
    out = cli("plan", path)
    assert out.returncode == 0, out.stderr
    assert "rows unknown" in out.stdout and "pass --rows=foo/sparse_embedding0=N" in out.stdout
    out = cli("plan", path, "--rows=foo/sparse_embedding0=5000000", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tables"][0]["rows"] == 5_000_000 and result["unknown_rows"] == []
    assert result["totals"]["redis"] > 5_000_000 * 72


def test_each_command_has_its_own_help_with_its_flags_and_examples():
    overview = cli("--help")
    assert overview.returncode == 0
    for command in ("ingest", "inspect", "verify", "drop", "plan"):
        assert command in overview.stdout
    flags = {"ingest": ["--config", "--models", "--tables", "--tiers", "--progress"],
             "inspect": ["--config", "--models", "--tables", "--tiers"],
             "verify": ["--config", "--models", "--tables", "--tiers", "--progress"],
             "drop": ["--config", "--models", "--tables", "--tiers", "--yes"],
             "plan": ["--config", "--json", "--l1", "--concurrent_calls", "--rows"]}
    texts = {}
    for command, names in flags.items():
        out = cli(command, "--help")
        assert out.returncode == 0, out.stderr
        texts[command] = out.stdout
        assert out.stdout.startswith(f"usage: python -m tf_hps {command} ")
        for name in names:
            assert name in out.stdout, (command, name)
        assert f"examples:\n  python -m tf_hps {command} " in out.stdout
    assert len(set(texts.values())) == len(texts)  # no two alike
    assert "--yes" not in texts["inspect"] and "--l1" not in texts["ingest"]


def test_usage_errors_are_one_line():
    for args, message in [((), "a command is required: ingest, inspect, verify, drop, plan"),
                          (("inspect",), "python -m tf_hps inspect: --config is required"),
                          (("plan", "--l1=tpu"), "argument --l1: invalid choice: 'tpu'"),
                          (("plan", "x.json", "--concurrent_calls=0"), "--concurrent_calls must be at least 1"),
                          (("verify", "--config=x.json", "--bogus"), "unrecognized arguments: --bogus")]:
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and message in out.stderr, (args, out.stderr)
        assert out.stdout == ""


def test_read_only_commands_never_create_a_database_and_a_folder_is_no_config(tables, tmp_path):
    tables.table("t0", 10, 16)
    mistyped = tmp_path / "rdbb"  # the database is at rdb; the config names rdbb
    path = tables.config(extra={"persistent_db": {"type": "rocks_db", "path": str(mistyped)}})
    for command in ("inspect", "verify"):
        out = cli(command, f"--config={path}", "--tiers=persistent_db")
        assert out.returncode == 2, out.stdout + out.stderr
        assert "holds no RocksDB database" in out.stderr and "rows stored" not in out.stdout
        assert not mistyped.exists()
    out = cli("plan", str(tmp_path))
    assert out.returncode == 2 and f"config file '{tmp_path}' is a directory, not a JSON file" in out.stderr
