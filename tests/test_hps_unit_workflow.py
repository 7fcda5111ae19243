"""HPS's plugin unit test, as its API documents it: two models, 32-bit keys, exact equality with TF.

Model foo has one table (3,000 x 16), model bar two (5,000 x 64 and 200 x 32); ``supportlonglong`` is
false, so keys are int32. ``hps.Init`` answers "OK". Then, for ten batches of 1,024 samples,
``LookupLayer`` must equal ``tf.nn.embedding_lookup`` and ``SparseLookupLayer`` (combiners sum and
mean) ``tf.nn.embedding_lookup_sparse``, for max_norm None, 0.0, 0.1 and 10.0, bit for bit. Both
values of ``use_context_stream`` serve alike on the CPU.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps

BATCH, SLOTS, ITERATIONS = 1024, 10, 10
TABLES = {"foo": [(3000, 16)], "bar": [(5000, 64), (200, 32)]}
MAX_NORMS = [None, 0.0, 0.1, 10.0]


@pytest.fixture(scope="module")
def hps_unit(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps_unit")
    rng = np.random.default_rng(0)
    dense, models = {}, []
    for model, tables in TABLES.items():
        files = []
        for t, (rows, dim) in enumerate(tables):
            folder = root / f"{model}_{t}"
            values = rng.standard_normal((rows, dim)).astype(np.float32)
            hps.save_table(folder, np.arange(rows), values)
            dense[model, t] = values
            files.append(str(folder))
        models.append({"model": model, "sparse_files": files,
                       "embedding_vecsize_per_table": [d for _, d in tables],
                       "maxnum_catfeature_query_per_table_per_sample": [SLOTS] * len(tables),
                       "default_value_for_each_table": [1.0] * len(tables), "deployed_device_list": [0],
                       "max_batch_size": BATCH, "hit_rate_threshold": 0.9, "gpucacheper": 0.1, "gpucache": True,
                       "use_context_stream": model == "foo"})
    config = root / "hps_unit.json"
    config.write_text(json.dumps({"supportlonglong": False, "models": models}))
    return str(config), dense


def batches(rows, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, rows, size=(BATCH, SLOTS)).astype(np.int32) for _ in range(ITERATIONS)]


def test_init(hps_unit):
    config, _ = hps_unit
    assert hps.Init(global_batch_size=BATCH, ps_config_file=config) == "OK"


@pytest.mark.parametrize("max_norm", MAX_NORMS)
@pytest.mark.parametrize("model,table_id", [("foo", 0), ("bar", 0), ("bar", 1)])
def test_lookup_layer(hps_unit, model, table_id, max_norm):
    config, dense = hps_unit
    hps.Init(global_batch_size=BATCH, ps_config_file=config)
    rows, dim = TABLES[model][table_id]
    layer = hps.LookupLayer(model_name=model, table_id=table_id, emb_vec_size=dim, emb_vec_dtype=tf.float32,
                            ps_config_file=config, global_batch_size=BATCH)
    lookup = tf.function(lambda ids: layer(ids, max_norm=max_norm))
    reference = tf.function(lambda ids: tf.nn.embedding_lookup(dense[model, table_id], ids, max_norm=max_norm))
    for ids in batches(rows, seed=table_id):
        hps.testing.assert_bitwise_equal(lookup(ids), reference(ids), f"{model}/{table_id} max_norm={max_norm}")


@pytest.mark.parametrize("max_norm", MAX_NORMS)
@pytest.mark.parametrize("combiner", ["sum", "mean"])
@pytest.mark.parametrize("model,table_id", [("foo", 0), ("bar", 1)])
def test_sparse_lookup_layer(hps_unit, model, table_id, combiner, max_norm):
    config, dense = hps_unit
    hps.Init(global_batch_size=BATCH, ps_config_file=config)
    rows, dim = TABLES[model][table_id]
    layer = hps.SparseLookupLayer(model_name=model, table_id=table_id, emb_vec_size=dim, emb_vec_dtype=tf.float32,
                                  ps_config_file=config, global_batch_size=BATCH)
    for i, ids in enumerate(batches(rows, seed=10 + table_id)):
        keep = np.random.default_rng(i).random(ids.shape) < 0.7
        keep[:, 0] = True  # HPS's sp_ids have no empty rows
        sp_ids = tf.SparseTensor(np.argwhere(keep), ids[keep], ids.shape)
        got = layer(sp_ids=sp_ids, sp_weights=None, combiner=combiner, max_norm=max_norm)
        want = tf.nn.embedding_lookup_sparse(dense[model, table_id], sp_ids, None, combiner=combiner,
                                             max_norm=max_norm)
        hps.testing.assert_bitwise_equal(got, want, f"{model}/{table_id} {combiner} max_norm={max_norm}")


def test_inside_a_keras_model_exported_and_reloaded(hps_unit, tmp_path):
    config, dense = hps_unit
    inputs = keras.Input((SLOTS,), dtype="int32")
    model = keras.Model(inputs, hps.LookupLayer("bar", 0, 64, tf.float32, config)(inputs))
    model.export(str(tmp_path / "export"), verbose=False)
    ids = batches(5000, seed=3)[0]
    got = tf.saved_model.load(str(tmp_path / "export")).serve(tf.constant(ids))
    hps.testing.assert_bitwise_equal(got, tf.nn.embedding_lookup(dense["bar", 0], ids))
    assert os.path.exists(config)
