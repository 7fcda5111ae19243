"""HPS's SOK-to-HPS DLRM demo and its table-fusion demo: many tables, one model.

SOK dumps each trained table as an HPS table folder (``key``, ``emb_vector``); the inference DLRM
(bottom MLP on dense features, one lookup per categorical feature, dot interaction, top MLP) reads
them through ``hps.LookupLayer``. Compared with the same DLRM on TF's own lookups of the same rows,
run eagerly on the same batch in this process, the lookups and so every later op are the same
computation: the predictions are equal bit for bit. ``fuse_embedding_table`` on or off (HPS's
fusion demo) must not change an answer.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps

TABLES = [(1000, 16), (300, 16), (50, 16)]  # same width: fusable
BATCH, DENSE = 128, 4


def sok_dump(folder, seed=0):
    """The folders SOK's dump writes: little-endian int64 keys, float32 rows."""
    rng = np.random.default_rng(seed)
    tables = []
    for t, (rows, dim) in enumerate(TABLES):
        keys = rng.permutation(10 * rows)[:rows].astype(np.int64)  # hashed ids, not row numbers
        values = rng.standard_normal((rows, dim)).astype(np.float32)
        (folder / f"table{t}").mkdir(parents=True)
        keys.tofile(folder / f"table{t}" / "key")
        values.tofile(folder / f"table{t}" / "emb_vector")
        tables.append((keys, values))
    return tables


def config(folder, fuse):
    path = folder / f"dlrm_fuse_{fuse}.json"
    path.write_text(json.dumps({"supportlonglong": True, "fuse_embedding_table": fuse, "models": [{
        "model": f"dlrm_{fuse}", "sparse_files": [str(folder / f"table{t}") for t in range(len(TABLES))],
        "embedding_vecsize_per_table": [d for _, d in TABLES],
        "maxnum_catfeature_query_per_table_per_sample": [1] * len(TABLES),
        "default_value_for_each_table": [0.0] * len(TABLES), "deployed_device_list": [0], "max_batch_size": BATCH,
        "gpucacheper": 0.3}]}))
    return str(path)


class DLRM(keras.Model):
    def __init__(self, lookups):
        super().__init__()
        self.lookups = lookups
        self.bottom = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(16)])
        self.top = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])

    def call(self, inputs):
        dense, cat = inputs
        vectors = [self.bottom(dense)] + [lookup(cat[:, t]) for t, lookup in enumerate(self.lookups)]
        stacked = tf.stack(vectors, axis=1)  # (batch, 1 + tables, 16)
        interactions = tf.matmul(stacked, stacked, transpose_b=True)
        upper = tf.linalg.band_part(interactions, 0, -1) - tf.linalg.band_part(interactions, 0, 0)
        flat = tf.reshape(upper, [-1, stacked.shape[1] * stacked.shape[1]])
        return self.top(tf.concat([vectors[0], flat], axis=1))


def batch(tables, seed):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((BATCH, DENSE)).astype(np.float32)
    cat = np.stack([keys[rng.integers(0, len(keys), BATCH)] for keys, _ in tables], axis=1)
    cat[0] = -12345  # a key no table holds: the default
    return dense, cat


@pytest.mark.parametrize("fuse", [False, True])
def test_dlrm_on_hps_tables_equals_dlrm_on_tf_lookups(tmp_path, fuse):
    tables = sok_dump(tmp_path)
    path = config(tmp_path, fuse)
    assert hps.Init(global_batch_size=BATCH, ps_config_file=path) == "OK"
    ours = DLRM([hps.LookupLayer(f"dlrm_{fuse}", t, d, tf.float32, path) for t, (_, d) in enumerate(TABLES)])

    def tf_lookup(t):
        keys, values = tables[t]
        order = np.argsort(keys)
        padded = np.concatenate([values[order], np.zeros((1, values.shape[1]), np.float32)])  # the default row

        def lookup(ids):
            pos = np.searchsorted(keys[order], ids.numpy())
            found = (pos < len(keys)) & (keys[order][np.minimum(pos, len(keys) - 1)] == ids.numpy())
            return tf.nn.embedding_lookup(padded, np.where(found, pos, len(keys)))
        return lookup

    theirs = DLRM([tf_lookup(t) for t in range(len(TABLES))])
    dense, cat = batch(tables, 1)
    ours((dense, cat))
    theirs((dense, cat))
    theirs.set_weights(ours.get_weights())
    for t in range(len(TABLES)):
        hps.testing.assert_bitwise_equal(ours.lookups[t](cat[:, t]), theirs.lookups[t](tf.constant(cat[:, t])))
    for seed in (2, 3):
        dense, cat = batch(tables, seed)
        # The same computation on both sides (eager, one batch, one process, equal lookups): equal bits.
        hps.testing.assert_bitwise_equal(ours((dense, cat)), theirs((dense, tf.constant(cat))), "predictions")


def test_fusion_on_and_off_answer_alike(tmp_path):
    tables = sok_dump(tmp_path, seed=5)
    answers = []
    for fuse in (False, True):
        path = config(tmp_path, fuse)
        hps.Init(global_batch_size=BATCH, ps_config_file=path)
        _, cat = batch(tables, 7)
        answers.append([hps.LookupLayer(f"dlrm_{fuse}", t, d, tf.float32, path)(cat[:, t]).numpy()
                        for t, (_, d) in enumerate(TABLES)])
    for unfused, fused in zip(*answers):
        hps.testing.assert_bitwise_equal(fused, unfused)
