"""HPS's multi-table sparse-input demo: a dense-id table and a sparse-id table in one model.

The model looks up table 0 with ``hps.LookupLayer`` on dense ids (batch, 5) and table 1 with
``hps.SparseLookupLayer`` on a SparseTensor of a variable number of ids per sample (weighted, mean),
concatenates, and scores with a Dense head. The same model with TF's own lookups on the same rows is
the reference: the lookups must agree bit for bit, the head within float32 rounding. The model is
exported with a SparseTensorSpec signature and served by a fresh process that imports tf_hps.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import run_python

BATCH, DENSE_SLOTS, MAX_SPARSE = 32, 5, 12
ROWS = (1000, 400)
DIMS = (16, 8)


def build(tmp_path):
    rng = np.random.default_rng(9)
    tables = [rng.standard_normal((r, d)).astype(np.float32) for r, d in zip(ROWS, DIMS)]
    for t, rows in enumerate(tables):
        hps.save_table(tmp_path / f"table{t}", np.arange(len(rows)), rows)
    config = tmp_path / "multi_table.json"
    config.write_text(json.dumps({"supportlonglong": True, "models": [{
        "model": "multi_table_sparse_input", "sparse_files": [str(tmp_path / "table0"), str(tmp_path / "table1")],
        "embedding_table_names": ["sparse_embedding0", "sparse_embedding1"], "embedding_vecsize_per_table": list(DIMS),
        "maxnum_catfeature_query_per_table_per_sample": [DENSE_SLOTS, MAX_SPARSE],
        "default_value_for_each_table": [1.0, 1.0], "deployed_device_list": [0], "max_batch_size": BATCH,
        "gpucacheper": 0.5}]}))
    return tables, str(config)


def sparse_batch(seed):
    rng = np.random.default_rng(seed)
    dense_ids = rng.integers(0, ROWS[0], size=(BATCH, DENSE_SLOTS)).astype(np.int64)
    lengths = rng.integers(1, MAX_SPARSE + 1, size=BATCH)
    indices = np.array([[r, c] for r, n in enumerate(lengths) for c in range(n)], np.int64)
    values = rng.integers(0, ROWS[1], size=len(indices)).astype(np.int64)
    weights = rng.uniform(0.5, 2.0, size=len(indices)).astype(np.float32)
    shape = [BATCH, MAX_SPARSE]
    return dense_ids, tf.SparseTensor(indices, values, shape), tf.SparseTensor(indices, weights, shape)


@pytest.mark.serving
def test_multi_table_sparse_input_model_matches_tf_and_serves(tmp_path):
    tables, config = build(tmp_path)
    assert hps.Init(global_batch_size=BATCH, ps_config_file=config) == "OK"
    dense_lookup = hps.LookupLayer(model_name="multi_table_sparse_input", table_id=0, emb_vec_size=DIMS[0],
                                   emb_vec_dtype=tf.float32, ps_config_file=config, global_batch_size=BATCH)
    sparse_lookup = hps.SparseLookupLayer(model_name="multi_table_sparse_input", table_id=1, emb_vec_size=DIMS[1],
                                          emb_vec_dtype=tf.float32, ps_config_file=config, global_batch_size=BATCH)
    flatten = keras.layers.Flatten()
    head = keras.layers.Dense(1, name="head")

    def features(dense_ids, sp_ids, sp_weights, hps_lookups):
        if hps_lookups:
            a, b = dense_lookup(dense_ids), sparse_lookup(sp_ids, sp_weights, combiner="mean")
        else:
            a = tf.nn.embedding_lookup(tables[0], dense_ids)
            b = tf.nn.embedding_lookup_sparse(tables[1], sp_ids, sp_weights, combiner="mean")
        return tf.concat([flatten(a), b], axis=1)

    dense_ids, sp_ids, sp_weights = sparse_batch(1)
    ours = features(dense_ids, sp_ids, sp_weights, True)
    hps.testing.assert_bitwise_equal(ours, features(dense_ids, sp_ids, sp_weights, False), "looked-up features")
    scores = head(ours).numpy()
    bound = hps.testing.rounding_bound(ours, [head])

    # Keras 3's model.export writes dense input specs only: sparse inputs go out through an ExportArchive.
    archive = keras.export.ExportArchive()
    for layer in (dense_lookup, sparse_lookup, head):
        archive.track(layer)
    archive.add_endpoint("serve", tf.function(
        lambda dense_ids, sp_ids, sp_weights: head(features(dense_ids, sp_ids, sp_weights, True)),
        input_signature=[tf.TensorSpec([None, DENSE_SLOTS], tf.int64), tf.SparseTensorSpec([None, None], tf.int64),
                         tf.SparseTensorSpec([None, None], tf.float32)]))
    archive.write_out(str(tmp_path / "export"), verbose=False)
    np.savez(tmp_path / "in.npz", dense_ids=dense_ids, indices=sp_ids.indices.numpy(), values=sp_ids.values.numpy(),
             weights=sp_weights.values.numpy())
    code = """
import sys
import numpy as np
import tensorflow as tf, tf_hps
d = np.load(sys.argv[2])
sp = lambda v: tf.SparseTensor(d["indices"], v, [len(d["dense_ids"]), %d])
loaded = tf.saved_model.load(sys.argv[1])  # kept: its variables live as long as it does
out = loaded.serve(tf.constant(d["dense_ids"]), sp(d["values"]), sp(d["weights"]))
np.save(sys.argv[3], out.numpy())
""" % MAX_SPARSE
    run_python(code, str(tmp_path / "export"), str(tmp_path / "in.npz"), str(tmp_path / "out.npy"))
    hps.testing.assert_within_rounding(np.load(tmp_path / "out.npy"), scores, bound, "served scores")
