"""LookupLayer answers exactly what tf.nn.embedding_lookup answers on the same table."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps


@pytest.fixture
def layer(simple):
    tables, path = simple
    return hps.LookupLayer("foo", 0, 16, tf.float32, path), tables.dense("t0", 1.5, 2000)


@pytest.mark.parametrize("shape", [(), (7,), (4, 5), (2, 3, 4), (0,), (3, 0)])
@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_lookup_equals_embedding_lookup_for_any_shape_and_key_dtype(layer, shape, dtype):
    lookup, dense = layer
    ids = np.random.default_rng(0).integers(0, 2000, size=shape)
    got = lookup(tf.constant(ids, dtype))
    assert got.shape == tuple(shape) + (16,)
    assert got.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), tf.nn.embedding_lookup(dense, ids).numpy())


@pytest.mark.parametrize("max_norm", [None, 0.0, 0.1, 10.0])
def test_max_norm_clips_like_embedding_lookup(layer, max_norm):
    lookup, dense = layer
    ids = np.random.default_rng(1).integers(0, 1000, size=(32, 3))
    got = lookup(tf.constant(ids), max_norm=max_norm).numpy()
    want = tf.nn.embedding_lookup(dense, ids, max_norm=max_norm).numpy()
    np.testing.assert_array_equal(got, want)


def test_unknown_keys_get_the_table_default_in_every_element(simple):
    tables, path = simple
    lookup = hps.LookupLayer("foo", 0, 16, tf.float32, path)
    extremes = [-1, 1000, 2**31, -(2**63), 2**63 - 1]
    got = lookup(tf.constant(extremes, tf.int64)).numpy()
    np.testing.assert_array_equal(got, np.full((5, 16), 1.5, np.float32))


def test_duplicate_keys_get_identical_rows(layer):
    lookup, dense = layer
    ids = np.array([3, 3, 3, 999, 3, 999, 1999, 1999])
    got = lookup(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(got, tf.nn.embedding_lookup(dense, ids).numpy())


@pytest.mark.parametrize("extra", [{"gpucacheper": 0.01}, {"gpucache": False}, {"gpucacheper": 1.0},
                                   {"gpucacheper": 0.01, "cache_refresh_percentage_per_iteration": 0.5}])
def test_results_never_depend_on_cache_state(tables, extra):
    tables.table("t0", 20_000, 8)
    lookup = hps.LookupLayer("foo", 0, 8, tf.float32, tables.config(dims=(8,), extra_model=extra))
    dense = tables.dense("t0", 1.5, 25_000)
    rng = np.random.default_rng(2)
    for _ in range(30):  # a 1 % cache evicts on nearly every batch
        ids = np.minimum(rng.zipf(1.1, size=(512,)), 24_999)
        np.testing.assert_array_equal(lookup(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())


def test_large_batches_are_split_over_tf_worker_threads_exactly(layer):
    lookup, dense = layer
    ids = np.random.default_rng(3).integers(0, 2001, size=(300_000,))
    np.testing.assert_array_equal(lookup(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())


def test_a_key_missed_in_several_ranges_of_a_batch_is_fetched_once(tables):
    """A batch long enough to be split over threads in ranges: a key that several ranges miss is
    read from the databases once, every position gets its row, and the next batch finds the rows
    in L1 (keys no tier holds stay misses)."""
    from tf_hps.storage import table_tag
    tables.table("t0", 5000, 4)
    path = tables.config(dims=(4,), model="ranges", extra_model={"gpucacheper": 1.0, "hit_rate_threshold": 2.0})
    lookup = hps.LookupLayer("ranges", 0, 4, tf.float32, path)
    dense = tables.dense("t0", 1.5, 6000)
    # 2,000 known keys (in sets of 64 ways holding 5,000 rows: none evicted) and 1,000 unknown ones.
    ids = np.random.default_rng(4).integers(3000, 6000, size=(200_000,)) - 3000
    ids[ids >= 2000] += 3000  # keys >= 5000: the default
    tag = table_tag("ranges", "sparse_embedding0")
    np.testing.assert_array_equal(lookup(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())
    first = hps.stats()[tag]
    assert first["missed_keys"] == len(np.unique(ids))
    assert first["defaults"] == len(np.unique(ids[ids >= 5000]))
    assert first["l1_hits"] == 0
    np.testing.assert_array_equal(lookup(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())
    second = hps.stats()[tag]
    assert second["l1_hits"] == np.count_nonzero(ids < 5000)
    assert second["missed_keys"] - first["missed_keys"] == len(np.unique(ids[ids >= 5000]))


def test_concurrent_python_threads_get_correct_results(layer):
    lookup, dense = layer
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            ids = rng.integers(0, 2000, size=(256,))
            if not np.array_equal(lookup(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy()):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_shape_function_sets_the_static_shape_in_graphs(layer):
    lookup, _ = layer

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64)])
    def f(ids):
        out = lookup(ids)
        assert out.shape.as_list() == [None, 3, 16]
        return out

    assert f(tf.constant([[1, 2, 3]], tf.int64)).shape == (1, 3, 16)


def test_init_returns_ok_and_layers_without_a_config_use_it(tables):
    tables.table("t0", 1000, 16)
    path = tables.config(model="init_default")  # a model name no other test's hps.Init loads
    assert hps.Init(global_batch_size=16, ps_config_file=path) == "OK"
    lookup = hps.LookupLayer(model_name="init_default", table_id=0, emb_vec_size=16, emb_vec_dtype=tf.float32)
    np.testing.assert_array_equal(lookup(tf.constant([4])).numpy(), tables.rows["t0"][1][[4]])


def test_several_tables_and_models_in_one_process(tables):
    tables.table("a", 100, 4)
    tables.table("b", 200, 12)
    path = tables.config(tables=("a", "b"), dims=(4, 12), defaults=(0.0, -2.0))
    lookup_a = hps.LookupLayer("foo", 0, 4, tf.float32, path)
    lookup_b = hps.LookupLayer("foo", 1, 12, tf.float32, path)
    ids = np.array([1, 150, 250])
    np.testing.assert_array_equal(lookup_a(tf.constant(ids)).numpy(),
                                  tf.nn.embedding_lookup(tables.dense("a", 0.0, 300), ids).numpy())
    np.testing.assert_array_equal(lookup_b(tf.constant(ids)).numpy(),
                                  tf.nn.embedding_lookup(tables.dense("b", -2.0, 300), ids).numpy())


def test_layer_config_round_trips_and_keras_files_reload(simple, tmp_path):
    tables, path = simple
    ids = keras.Input(shape=(3,), dtype="int64")
    out = keras.layers.Dense(2)(keras.layers.Flatten()(hps.LookupLayer("foo", 0, 16, "float32", path)(ids)))
    model = keras.Model(ids, out)
    x = np.array([[1, 2, 3], [999, 1000, 0]])
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    # The same computation on both sides (one process, one batch, the same layers): the same bits.
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), want)
    config = model.layers[1].get_config()
    assert {k: config[k] for k in ("model_name", "table_id", "emb_vec_size", "emb_vec_dtype", "ps_config_file")} == {
        "model_name": "foo", "table_id": 0, "emb_vec_size": 16, "emb_vec_dtype": "float32", "ps_config_file": path}
