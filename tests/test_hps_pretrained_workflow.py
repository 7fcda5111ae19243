"""HPS's pretrained-model training demo: frozen embeddings served by HPS inside a training job.

A Keras model trains its Dense layers under ``tf.distribute.MirroredStrategy`` (two logical CPUs
here, GPUs in HPS's demo) while its embeddings come, frozen, from ``hps.LookupLayer``; ``hps.Init``
runs under the strategy's scope. Training must lower the loss, leave the served rows as the table
files hold them, and the trained model must export and serve.
"""

import json

import numpy as np

from conftest import ROOT, run_python

TRAIN = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import tf_hps as hps
config, rows_file, export_dir = sys.argv[2:5]
rows = np.load(rows_file)
VOCAB, SLOTS, DIM, BATCH = rows.shape[0], 4, rows.shape[1], 64
rng = np.random.default_rng(0)
ids = rng.integers(0, VOCAB, size=(2048, SLOTS)).astype(np.int64)
labels = (rows[ids].sum(axis=(1, 2)) > 0).astype(np.float32)[:, None]  # learnable from the frozen rows
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    assert hps.Init(global_batch_size=BATCH, ps_config_file=config) == "OK"
    inputs = keras.Input((SLOTS,), dtype="int64")
    lookup = hps.LookupLayer(model_name="pretrained", table_id=0, emb_vec_size=DIM, emb_vec_dtype=tf.float32,
                             ps_config_file=config, global_batch_size=BATCH)
    x = keras.layers.Flatten()(lookup(inputs))
    x = keras.layers.Dense(16, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
dataset = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(BATCH)
history = model.fit(dataset, epochs=3, verbose=0)
served = lookup(tf.constant(ids[:100])).numpy()
model.export(export_dir, verbose=False)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"],
                  "rows_unchanged": bool(np.array_equal(served, rows[ids[:100]])),
                  "trainable": [w.name for w in model.trainable_weights]}))
"""


def test_frozen_hps_embeddings_in_a_mirrored_training_job(tmp_path):
    import tf_hps as hps

    rows = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    hps.save_table(tmp_path / "pretrained", np.arange(300), rows)
    np.save(tmp_path / "rows.npy", rows)
    config = tmp_path / "pretrained.json"
    config.write_text(json.dumps({"supportlonglong": True, "models": [{
        "model": "pretrained", "sparse_files": [str(tmp_path / "pretrained")], "embedding_vecsize_per_table": [8],
        "maxnum_catfeature_query_per_table_per_sample": [4], "default_value_for_each_table": [0.0],
        "deployed_device_list": [0], "max_batch_size": 64}]}))
    proc = run_python(TRAIN, ROOT, str(config), str(tmp_path / "rows.npy"), str(tmp_path / "export"), timeout=600)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["loss"][-1] < report["loss"][0] * 0.9, report["loss"]
    assert report["rows_unchanged"]
    assert len(report["trainable"]) == 4  # two kernels, two biases: the embeddings are not trained

    import tensorflow as tf
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    ids = np.array([[0, 1, 2, 3], [299, 298, 5, 6]], np.int64)
    scores = loaded.serve(tf.constant(ids)).numpy()
    assert scores.shape == (2, 1) and ((scores > 0) & (scores < 1)).all()
