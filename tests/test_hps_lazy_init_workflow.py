"""HPS's lazy initialisation and Triton deployment: export before any config exists, configure at serving.

HPS users build the inference model with layers that carry ``ps_config_file`` (and
``global_batch_size``), export it, and only then, on the serving host, write the JSON; the serving
process either calls ``hps.Init`` or lets the first request read the recorded path (Triton's
TensorFlow backend, which loads the op library and nothing else). An explicit ``hps.Init`` in the
serving process wins over a config the export carries, so editing the JSON after the export takes
effect. docs/config.md states the rule.
"""

import json
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, child_env, run_python

DIM = 8

SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
{setup}
loaded = tf.saved_model.load(sys.argv[1])
ids = tf.constant(np.load(sys.argv[2]))
np.save(sys.argv[3], loaded.serve(ids).numpy())
"""
ONLY_THE_OP_LIBRARY = "tf.load_op_library(sys.argv[4])"
WITH_INIT = "import tf_hps as hps\nassert hps.Init(global_batch_size=16, ps_config_file=sys.argv[4]) == 'OK'"


def write_config(path, table, default, model="lazy"):
    with open(path, "w") as f:
        json.dump({"supportlonglong": True, "models": [{
            "model": model, "sparse_files": [table], "embedding_vecsize_per_table": [DIM],
            "maxnum_catfeature_query_per_table_per_sample": [3], "default_value_for_each_table": [default],
            "deployed_device_list": [0], "max_batch_size": 16}]}, f)


@pytest.fixture
def exported_before_config(tmp_path):
    """A model exported while its config file does not exist; then the table and config are written."""
    config = tmp_path / "serving_host" / "lazy.json"
    inputs = keras.Input((3,), dtype="int64", name="ids")
    layer = hps.LookupLayer(model_name="lazy", table_id=0, emb_vec_size=DIM, emb_vec_dtype=tf.float32,
                            ps_config_file=str(config), global_batch_size=16)
    keras.Model(inputs, layer(inputs)).export(str(tmp_path / "export"), verbose=False)
    rows = np.random.default_rng(2).standard_normal((100, DIM)).astype(np.float32)
    hps.save_table(tmp_path / "serving_host" / "table", np.arange(100), rows)
    write_config(config, str(tmp_path / "serving_host" / "table"), default=-1.0)
    ids = np.array([[1, 2, 3], [99, 100, 5000]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    want = np.where((ids < 100)[..., None], rows[np.minimum(ids, 99)], np.float32(-1.0)).astype(np.float32)
    return tmp_path, config, want


def serve(tmp_path, setup, extra):
    run_python(SERVE.format(setup=setup), str(tmp_path / "export"), str(tmp_path / "ids.npy"),
               str(tmp_path / "out.npy"), extra)
    return np.load(tmp_path / "out.npy")


def test_a_layer_traces_and_exports_without_any_config(tmp_path):
    layer = hps.LookupLayer(model_name="nowhere_yet", table_id=0, emb_vec_size=DIM, emb_vec_dtype=tf.float32)
    fn = tf.function(layer).get_concrete_function(tf.TensorSpec([None], tf.int64))
    assert fn.structured_outputs.shape.as_list() == [None, DIM]
    missing = hps.LookupLayer("nowhere_yet", 0, DIM, tf.float32, ps_config_file=str(tmp_path / "not/yet/there.json"))
    tf.function(missing).get_concrete_function(tf.TensorSpec([None, 2], tf.int64))
    with pytest.raises(tf.errors.FailedPreconditionError, match="model 'nowhere_yet' has no config in this process"):
        layer(tf.constant([1], tf.int64))
    with pytest.raises(tf.errors.NotFoundError, match="its layer's ps_config_file: config file .*there.json"):
        missing(tf.constant([1], tf.int64))


def test_the_first_request_reads_the_recorded_config_with_only_the_op_library(exported_before_config):
    tmp_path, _, want = exported_before_config
    hps.testing.assert_bitwise_equal(serve(tmp_path, ONLY_THE_OP_LIBRARY, hps.op_library_path()), want)


def test_hps_init_in_the_serving_process(exported_before_config):
    tmp_path, config, want = exported_before_config
    hps.testing.assert_bitwise_equal(serve(tmp_path, WITH_INIT, str(config)), want)


def test_the_cpp_loader_serves_it_as_triton_would(exported_before_config):
    """Triton's TensorFlow backend: LoadSavedModel in a process that preloaded only the op library."""
    tmp_path, _, want = exported_before_config
    subprocess.run(["make", "-s", "-C", ROOT, "build/saved_model_runner"], check=True)
    out = tmp_path / "cpp"
    out.mkdir()
    proc = subprocess.run(
        [os.path.join(ROOT, "build", "saved_model_runner"), f"--op_library={hps.op_library_path()}",
         f"--saved_model={tmp_path / 'export'}", f"--input=ids={tmp_path / 'ids.npy'}", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=300, cwd="/", env=child_env(TF_CPP_MIN_LOG_LEVEL="1"))
    assert proc.returncode == 0, proc.stderr
    (name,) = os.listdir(out)
    hps.testing.assert_bitwise_equal(np.load(out / name), want)


def test_an_explicit_init_wins_over_the_config_an_export_carries(tmp_path):
    """HPS's fusion demo edits the JSON after exporting; the serving process's hps.Init must see the edit."""
    rows = np.random.default_rng(4).standard_normal((50, DIM)).astype(np.float32)
    hps.save_table(tmp_path / "table", np.arange(50), rows)
    config = tmp_path / "edited.json"
    write_config(config, str(tmp_path / "table"), default=2.0, model="edited")
    inputs = keras.Input((3,), dtype="int64", name="ids")
    layer = hps.LookupLayer("edited", 0, DIM, tf.float32, ps_config_file=str(config))
    keras.Model(inputs, layer(inputs)).export(str(tmp_path / "export"), verbose=False)  # carries default 2.0
    write_config(config, str(tmp_path / "table"), default=-5.0, model="edited")  # edited after the export
    np.save(tmp_path / "ids.npy", np.array([[1, 999, 2]], np.int64))

    carried = serve(tmp_path, ONLY_THE_OP_LIBRARY, hps.op_library_path())  # no Init: the carried config
    assert carried[0, 1].tolist() == [2.0] * DIM
    edited = serve(tmp_path, WITH_INIT, str(config))  # Init of the edited file wins
    assert edited[0, 1].tolist() == [-5.0] * DIM
    hps.testing.assert_bitwise_equal(edited[0, [0, 2]], rows[[1, 2]])

    # Another file naming the model wins too; two of them are an error naming both.
    other = tmp_path / "other.json"
    write_config(other, str(tmp_path / "table"), default=7.0, model="edited")
    assert serve(tmp_path, WITH_INIT, str(other))[0, 1].tolist() == [7.0] * DIM
    both = WITH_INIT + "\nassert hps.Init(global_batch_size=16, ps_config_file=sys.argv[5]) == 'OK'"
    code = SERVE.format(setup=both).replace("np.save(", "try:\n    np.save(") \
        .replace("loaded.serve(ids).numpy())", "loaded.serve(ids).numpy())\nexcept tf.errors.OpError as e:\n"
                 "    print(type(e).__name__, e.message)")
    out = run_python(code, str(tmp_path / "export"), str(tmp_path / "ids.npy"), str(tmp_path / "out.npy"),
                     str(config), str(other)).stdout
    assert "FailedPreconditionError" in out and "model 'edited' is in two configs loaded by hps.Init" in out, out
    assert str(config) in out and str(other) in out


def test_in_the_building_process_a_layer_keeps_to_its_own_file(tmp_path):
    """hps.Init of another file naming the same model does not redirect a layer given its ps_config_file."""
    rows = np.random.default_rng(6).standard_normal((20, DIM)).astype(np.float32)
    hps.save_table(tmp_path / "table", np.arange(20), rows)
    mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
    write_config(mine, str(tmp_path / "table"), default=3.0, model="own_file")
    write_config(theirs, str(tmp_path / "table"), default=-3.0, model="own_file")
    hps.Init(global_batch_size=16, ps_config_file=str(theirs))
    got = hps.LookupLayer("own_file", 0, DIM, tf.float32, ps_config_file=str(mine))(tf.constant([1000], tf.int64))
    assert got.numpy().tolist() == [[3.0] * DIM]
    # A layer without a file takes the Init'ed one.
    got = hps.LookupLayer("own_file", 0, DIM, tf.float32)(tf.constant([1000], tf.int64))
    assert got.numpy().tolist() == [[-3.0] * DIM]
