"""tf_hps's log follows one level (TF_HPS_LOG_LEVEL, else TF_CPP_MIN_LOG_LEVEL), says where L1 lives, and
Python warnings point at the user's line."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT

LOOKUP = """
import sys
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
from tf_hps._ops import ops
lib = ops()
canonical, _ = lib.tf_hps_parse_config(config_file=sys.argv[2])
handle = lib.tf_hps_init(ps_config=canonical.numpy().decode())
for _ in range(3):  # a call above max_batch_size x maxnum (a warning), three times
    lib.tf_hps_lookup(keys=tf.range(9000, dtype=tf.int64), ps_handle=handle, model_name="foo", table_id=0,
                      emb_vec_size=16)
"""


def log_of(path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("TF_HPS_LOG_LEVEL", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-c", LOOKUP, ROOT, path], capture_output=True, text=True, timeout=300,
                          env={**base, **env})
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("[tf_hps ")]


@pytest.mark.parametrize("env, info, warning", [
    ({}, True, True),
    ({"TF_CPP_MIN_LOG_LEVEL": "1"}, False, True),     # TensorFlow's level silences ours too
    ({"TF_CPP_MIN_LOG_LEVEL": "2"}, False, False),
    ({"TF_HPS_LOG_LEVEL": "warning"}, False, True),
    ({"TF_HPS_LOG_LEVEL": "none"}, False, False),
    ({"TF_HPS_LOG_LEVEL": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}, True, True),  # ours wins over TensorFlow's
])
def test_one_level_controls_the_log(simple, env, info, warning):
    _, path = simple
    lines = log_of(path, **env)
    assert any(line.startswith("[tf_hps I]") for line in lines) == info, lines
    assert any(line.startswith("[tf_hps W]") for line in lines) == warning, lines


def test_a_gpu_config_served_on_cpu_says_so_once_per_table(tables):
    tables.table("a", 100, 16)
    tables.table("b", 100, 16)
    path = tables.config(tables=("a", "b"), dims=(16, 16), defaults=(0.0, 0.0))  # gpucache true, device 0
    code = LOOKUP.replace('table_id=0,', 'table_id=t,').replace("for _ in range(3):", "for t in (0, 1, 0, 1):")
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    err = subprocess.run([sys.executable, "-c", code, ROOT, path], capture_output=True, text=True, timeout=300,
                         env={**base, "TF_HPS_LOG_LEVEL": "0"}).stderr
    for table in ("sparse_embedding0", "sparse_embedding1"):
        assert err.count(f"table hps_et.foo.{table}: no GPU: L1 on CPU") == 1, err
    assert "L1: CPU cache of 64 rows" in err


def test_tables_found_in_a_database_get_their_l1_line(tables, tmp_path, capfd):
    tables.table("t0", 200, 16)
    rocks = str(tmp_path / "rocks")
    hps.Init(1, tables.config(model="prefilled", extra={"persistent_db": {"type": "rocks_db", "path": rocks}}))
    path = tables.config(model="prefilled", name="read_only.json", extra={
        "persistent_db": {"type": "rocks_db", "path": rocks, "read_only": True}, "volatile_db": {"type": "hash_map",
                                                                                             "initialize_after_startup": False}})
    code = LOOKUP.replace('model_name="foo"', 'model_name="prefilled"').replace("tf.range(9000", "tf.range(10")
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    err = subprocess.run([sys.executable, "-c", code, ROOT, path], capture_output=True, text=True, timeout=300,
                         env={**base, "TF_HPS_LOG_LEVEL": "0"}).stderr
    assert "rows found in the" in err and "(not loaded from files); L1: CPU cache of" in err, err


def test_python_warnings_point_at_the_users_line(tables):
    tables.table("t0", 10, 16)
    path = tables.config(model="warned", extra={"colour": "blue"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hps.LookupLayer("warned", 0, 16, tf.float32, path)  # reads the config: an unknown key
    (warning,) = [w for w in caught if "colour" in str(w.message)]
    assert warning.filename == __file__, warning.filename
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hps.load_config(path)
    assert [w.filename for w in caught if "colour" in str(w.message)] == [__file__]
