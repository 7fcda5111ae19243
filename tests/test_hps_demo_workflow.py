"""HPS's own demo, as its users run it with ``import tf_hps as hps``.

Train a model with a native Keras embedding, write its weights as an HPS table (``key``,
``emb_vector``), write the JSON config, build the inference model with ``hps.LookupLayer``, call
``hps.Init``, predict; export, and serve the export in a fresh process that only imports tensorflow
and tf_hps (HPS's import loads its op library, and so must ours). Lookups are compared bit for bit;
the Dense layers within float32 rounding (tf_hps.testing).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import run_python

VOCAB, SLOTS, DIM, BATCH = 500, 6, 8, 64


def train_native(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(512, SLOTS)).astype(np.int64)
    labels = (ids.sum(axis=1) % 2).astype(np.float32)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SLOTS,), dtype="int64")
    embedding = keras.layers.Embedding(VOCAB, DIM, name="embedding")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")
    score = keras.layers.Dense(1, activation="sigmoid", name="score")
    model = keras.Model(inputs, score(hidden(keras.layers.Flatten()(embedding(inputs)))))
    model.compile("adam", "binary_crossentropy")
    model.fit(ids, labels, batch_size=BATCH, epochs=1, verbose=0)
    return model, embedding, [keras.layers.Flatten(), hidden, score]


def write_hps_files(folder, embedding):
    """As HPS's demo does by hand: key (int64) and emb_vector (float32) files, and the JSON config."""
    table = os.path.join(folder, "demo_sparse_files", "embedding0")
    os.makedirs(table)
    weights = embedding.get_weights()[0]
    np.arange(VOCAB, dtype=np.int64).tofile(os.path.join(table, "key"))
    weights.astype(np.float32).tofile(os.path.join(table, "emb_vector"))
    config = os.path.join(folder, "demo.json")
    with open(config, "w") as f:
        json.dump({"supportlonglong": True, "models": [{
            "model": "demo_model", "sparse_files": [table], "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": ["sparse_embedding0"], "embedding_vecsize_per_table": [DIM],
            "maxnum_catfeature_query_per_table_per_sample": [SLOTS], "default_value_for_each_table": [1.0],
            "deployed_device_list": [0], "max_batch_size": BATCH, "cache_refresh_percentage_per_iteration": 0.2,
            "hit_rate_threshold": 1.0, "gpucacheper": 1.0, "gpucache": True}]}, f)
    return config


def inference_model(config, trained):
    inputs = keras.Input((SLOTS,), dtype="int64", name="inputs")
    lookup = hps.LookupLayer(model_name="demo_model", table_id=0, emb_vec_size=DIM, emb_vec_dtype=tf.float32,
                             ps_config_file=config, global_batch_size=BATCH, name="lookup")
    x = keras.layers.Flatten()(lookup(inputs))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")
    score = keras.layers.Dense(1, activation="sigmoid", name="score")
    model = keras.Model(inputs, score(hidden(x)))
    for name in ("hidden", "score"):
        model.get_layer(name).set_weights(trained.get_layer(name).get_weights())
    return model, lookup


SERVE_WITH_IMPORT = """
import sys
import numpy as np
import tensorflow as tf, tf_hps  # HPS's way: importing the package registers the ops
exported, ids_file, out_file = sys.argv[1:4]
loaded = tf.saved_model.load(exported)
np.save(out_file, loaded.serve(tf.constant(np.load(ids_file))).numpy())
"""

SERVE_IMPORT_FIRST = SERVE_WITH_IMPORT.replace("import tensorflow as tf, tf_hps", "import tf_hps\nimport tensorflow as tf")


@pytest.mark.serving
def test_hps_demo_trains_converts_serves_and_exports(tmp_path):
    trained, embedding, dense_layers = train_native()
    config = write_hps_files(str(tmp_path), embedding)
    assert hps.Init(global_batch_size=BATCH, ps_config_file=config) == "OK"
    model, lookup = inference_model(config, trained)
    ids = np.random.default_rng(1).integers(0, VOCAB + 20, size=(BATCH, SLOTS)).astype(np.int64)
    ids[0, 0] = VOCAB + 7  # unknown: the default row (1.0)
    rows = lookup(ids).numpy()
    want_rows = np.where((ids < VOCAB)[..., None], embedding.get_weights()[0][np.minimum(ids, VOCAB - 1)], 1.0)
    hps.testing.assert_bitwise_equal(rows, want_rows.astype(np.float32), "rows")
    predictions = model.predict(ids, batch_size=16, verbose=0)
    bound = hps.testing.rounding_bound(rows, dense_layers)
    in_vocab = (ids < VOCAB).all(axis=1)
    hps.testing.assert_within_rounding(predictions[in_vocab], trained.predict(ids[in_vocab], verbose=0),
                                       bound[in_vocab], "predictions")

    model.export(str(tmp_path / "demo_tf_saved_model"), verbose=False)
    np.save(tmp_path / "ids.npy", ids)
    for script in (SERVE_WITH_IMPORT, SERVE_IMPORT_FIRST):
        run_python(script, str(tmp_path / "demo_tf_saved_model"), str(tmp_path / "ids.npy"), str(tmp_path / "out.npy"))
        hps.testing.assert_within_rounding(np.load(tmp_path / "out.npy"), predictions, bound, "served predictions")


def test_import_tf_hps_registers_the_ops_in_either_order_and_stays_light_alone():
    for order in ("import tensorflow as tf, tf_hps", "import tf_hps\nimport tensorflow as tf"):
        code = (f"{order}\nfrom tensorflow.python.framework import op_def_registry\n"
                "print(all(op_def_registry.get(n) is not None for n in ('TfHpsInit', 'TfHpsLookup', "
                "'TfHpsSparseLookup')))")
        assert run_python(code).stdout.split()[-1] == "True", order
    # Alone (the CLI, the storage tools) it imports no TensorFlow.
    assert run_python("import sys, tf_hps; print('tensorflow' in sys.modules)").stdout.split()[-1] == "False"


@pytest.mark.parametrize("first", ["keras", "tf_hps"])
def test_keras_files_load_without_custom_objects_in_either_import_order(simple, tmp_path, first):
    tables, path = simple
    inputs = keras.Input((2,), dtype="int64")
    keras.Model(inputs, hps.LookupLayer("foo", 0, 16, tf.float32, path)(inputs)).save(tmp_path / "m.keras")
    imports = "import keras\nimport tf_hps" if first == "keras" else "import tf_hps\nimport keras"
    code = f"{imports}\nimport sys\nm = keras.saving.load_model(sys.argv[1])\nprint(type(m.layers[1]).__name__)"
    assert run_python(code, str(tmp_path / "m.keras")).stdout.split()[-1] == "LookupLayer"
