"""A .keras file loads anywhere its export would serve: it carries the canonical config, secrets kept out.

``keras.saving.load_model`` in a fresh process, from another working directory, after the config
file is gone; of a layer that relied on ``hps.Init``; and with ``hps.Init`` in the loading process
winning over the carried config, as for an export (docs/config.md).
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, run_python

LOAD = """
import os, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import keras, tensorflow as tf
import tf_hps as hps
os.chdir(sys.argv[3])
if len(sys.argv) > 5:
    hps.Init(global_batch_size=1, ps_config_file=sys.argv[5])
model = keras.saving.load_model(sys.argv[2])
np.save(sys.argv[4], model.predict(np.array([[1, 2], [3, 5000]], np.int64), verbose=0))
"""


def save(tmp_path, layer):
    inputs = keras.Input((2,), dtype="int64")
    keras.Model(inputs, layer(inputs)).save(tmp_path / "m.keras")
    return str(tmp_path / "m.keras")


def load_elsewhere(tmp_path, keras_file, init=None):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    args = [ROOT, keras_file, str(elsewhere), str(tmp_path / "out.npy")] + ([init] if init else [])
    run_python(LOAD, *args)
    return np.load(tmp_path / "out.npy")


def want(tables, default):
    dense = tables.dense("t0", default, 5000)
    return tf.nn.embedding_lookup(dense, np.array([[1, 2], [3, 5000]])).numpy()


def test_a_relative_config_path_from_another_directory_after_the_file_is_gone(tables, tmp_path, monkeypatch):
    tables.table("t0", 100, 16)
    path = tables.config(model="keras_relative", defaults=(2.5,))
    monkeypatch.chdir(os.path.dirname(path))
    keras_file = save(tmp_path, hps.LookupLayer("keras_relative", 0, 16, tf.float32, os.path.basename(path)))
    os.remove(path)
    hps.testing.assert_bitwise_equal(load_elsewhere(tmp_path, keras_file), want(tables, 2.5))


def test_a_layer_that_relied_on_hps_init(tables, tmp_path):
    tables.table("t0", 100, 16)
    hps.Init(global_batch_size=1, ps_config_file=tables.config(model="keras_from_init", defaults=(-1.0,)))
    keras_file = save(tmp_path, hps.LookupLayer("keras_from_init", 0, 16, tf.float32))
    hps.testing.assert_bitwise_equal(load_elsewhere(tmp_path, keras_file), want(tables, -1.0))


def test_hps_init_in_the_loading_process_wins_over_the_carried_config(tables, tmp_path):
    tables.table("t0", 100, 16)
    keras_file = save(tmp_path, hps.LookupLayer("keras_init_wins", 0, 16, tf.float32,
                                                tables.config(model="keras_init_wins", defaults=(1.0,))))
    edited = tables.config(model="keras_init_wins", defaults=(9.0,), name="edited.json")
    hps.testing.assert_bitwise_equal(load_elsewhere(tmp_path, keras_file, init=edited), want(tables, 9.0))


@pytest.mark.parametrize("password", ["s3cret-literal", "$env:TF_HPS_TEST_KERAS_PASSWORD"])
def test_secrets_stay_out_of_the_file(tables, tmp_path, password, monkeypatch):
    monkeypatch.setenv("TF_HPS_TEST_KERAS_PASSWORD", "s3cret-from-env")
    tables.table("t0", 10, 16)
    path = tables.config(model="keras_secret", extra={"volatile_db": {
        "type": "redis_cluster", "address": "127.0.0.1:1", "password": password}})
    layer = hps.LookupLayer("keras_secret", 0, 16, tf.float32, path)
    carried = json.loads(layer.get_config()["ps_config"])["volatile_db"]["password"]
    if password.startswith("$env:"):
        assert carried == password  # the reference, read where the server is created
    else:
        assert carried.startswith("$redacted:")  # a literal: an id only this process can resolve
    inputs = keras.Input((2,), dtype="int64")
    keras.Model(inputs, layer(inputs)).save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        content = b"".join(archive.read(name) for name in archive.namelist())
    assert b"s3cret" not in content
