"""HPS's config conventions: relative table folders, and several hps.Init calls in one process.

HPS resolved relative ``sparse_files`` against the working directory; tf_hps resolves them against the
config file's folder. Both must work: the config's folder first, then the working directory, and an
error naming both places when the folder is in neither. Layers without a config find their model in
any config hps.Init loaded, not only the last; two loaded configs naming one model are an error
naming both files. docs/config.md states the rules.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import run_python

DIM = 4


def write_config(path, model, folders, default=0.0):
    path.write_text(json.dumps({"supportlonglong": True, "models": [{
        "model": model, "sparse_files": list(folders), "embedding_vecsize_per_table": [DIM] * len(folders),
        "maxnum_catfeature_query_per_table_per_sample": [2] * len(folders),
        "default_value_for_each_table": [default] * len(folders), "deployed_device_list": [0]}]}))
    return str(path)


def test_relative_table_folders_resolve_against_the_config_folder_then_the_working_directory(tmp_path, monkeypatch):
    in_config_folder = np.full((5, DIM), 1.0, np.float32)
    in_working_dir = np.full((5, DIM), 2.0, np.float32)
    hps.save_table(tmp_path / "configs" / "tables" / "both", np.arange(5), in_config_folder)
    hps.save_table(tmp_path / "cwd" / "tables" / "both", np.arange(5), in_working_dir)
    hps.save_table(tmp_path / "cwd" / "tables" / "cwd_only", np.arange(5), in_working_dir)
    monkeypatch.chdir(tmp_path / "cwd")
    path = write_config(tmp_path / "configs" / "rel.json", "relative", ["tables/both", "tables/cwd_only"])
    assert hps.load_config(path).data["models"][0]["sparse_files"] == [
        str(tmp_path / "configs" / "tables" / "both"), str(tmp_path / "cwd" / "tables" / "cwd_only")]
    hps.Init(global_batch_size=1, ps_config_file=path)
    for table, want in ((0, 1.0), (1, 2.0)):
        got = hps.LookupLayer("relative", table, DIM, tf.float32, path)(tf.constant([3], tf.int64))
        assert got.numpy().tolist() == [[want] * DIM]


def test_a_table_folder_in_neither_place_names_both_in_the_error(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    path = write_config(tmp_path / "missing.json", "missing_rel", ["tables/items"])
    expected = (f"table folder '{tmp_path}/tables/items' does not exist (the config names 'tables/items': looked in the "
                f"config file's folder, {tmp_path}/tables/items, then in the working directory, "
                f"{tmp_path}/cwd/tables/items)")
    with pytest.raises(tf.errors.NotFoundError) as raised:
        hps.Init(global_batch_size=1, ps_config_file=path)
    assert expected in raised.value.message


INITS = """
import sys
import tensorflow as tf
import tf_hps as hps
first, second, clash = sys.argv[1:4]
hps.Init(global_batch_size=1, ps_config_file=first)    # models a
hps.Init(global_batch_size=1, ps_config_file=second)   # models b
a = hps.LookupLayer("model_a", 0, 4, tf.float32)       # no config: found in the first Init's
b = hps.LookupLayer("model_b", 0, 4, tf.float32)
print("a", a(tf.constant([99], tf.int64)).numpy()[0, 0], "b", b(tf.constant([99], tf.int64)).numpy()[0, 0])
hps.Init(global_batch_size=1, ps_config_file=clash)    # names model_a too
try:
    hps.LookupLayer("model_a", 0, 4, tf.float32)(tf.constant([1], tf.int64))
except ValueError as e:
    print("ValueError", e)
hps.Init(global_batch_size=1, ps_config_file=first)    # the same file again: no new clash
"""


def test_layers_find_their_model_in_any_config_and_a_clash_names_both_files(tmp_path):
    hps.save_table(tmp_path / "t", np.arange(10), np.ones((10, DIM), np.float32))
    first = write_config(tmp_path / "first.json", "model_a", [str(tmp_path / "t")], default=5.0)
    second = write_config(tmp_path / "second.json", "model_b", [str(tmp_path / "t")], default=6.0)
    clash = write_config(tmp_path / "clash.json", "model_a", [str(tmp_path / "t")], default=7.0)
    out = run_python(INITS, first, second, clash).stdout
    assert "a 5.0 b 6.0" in out, out
    assert "ValueError" in out, out
    assert (f"model 'model_a' is in two configs loaded by hps.Init: {first} and {clash}; rename one, "
            "or give the layer its ps_config_file") in out, out


def test_the_same_file_initialised_again_is_read_again(tmp_path):
    hps.save_table(tmp_path / "t", np.arange(10), np.ones((10, DIM), np.float32))
    path = write_config(tmp_path / "again.json", "model_again", [str(tmp_path / "t")], default=1.0)
    hps.Init(global_batch_size=1, ps_config_file=path)
    assert hps.LookupLayer("model_again", 0, DIM, tf.float32)(tf.constant([50], tf.int64)).numpy()[0, 0] == 1.0
    write_config(tmp_path / "again.json", "model_again", [str(tmp_path / "t")], default=4.0)
    hps.Init(global_batch_size=1, ps_config_file=path)
    assert hps.LookupLayer("model_again", 0, DIM, tf.float32)(tf.constant([50], tf.int64)).numpy()[0, 0] == 4.0
    assert os.path.exists(path)
