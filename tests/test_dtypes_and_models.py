"""Output dtypes, key dtypes against supportlonglong, and many models and tables in one process.

Every lookup is compared with TensorFlow's own lookup on the same table bit for bit: float16 and
bfloat16 outputs with TF's float32 result cast once.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps.testing import assert_bitwise_equal

HALF_DTYPES = [tf.float16, tf.bfloat16]
LAYERS = [hps.LookupLayer, hps.SparseLookupLayer]


def lookup(layer, ids):
    """Calls either layer on a dense batch of ids (the sparse one on its rows, summed)."""
    if isinstance(layer, hps.SparseLookupLayer):
        return layer(tf.RaggedTensor.from_tensor(ids), combiner="sum")
    return layer(ids)


def dense_reference(dense, ids, sparse, dtype=tf.float32):
    """tf.nn.embedding_lookup, or tf.nn.embedding_lookup_sparse's sum of each row for the sparse layer, as dtype."""
    if sparse:
        rows = tf.nn.embedding_lookup_sparse(dense, tf.RaggedTensor.from_tensor(ids).to_sparse(), None, combiner="sum")
    else:
        rows = tf.nn.embedding_lookup(dense, ids)
    return tf.cast(rows, dtype)


# --- output dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_lookup_layer_half_outputs_are_embedding_lookup_rounded(simple, dtype, max_norm):
    tables, path = simple
    dense = tables.dense("t0", 1.5, 1200)
    ids = np.random.default_rng(0).integers(0, 1200, size=(6, 5))
    got = hps.LookupLayer("foo", 0, 16, dtype, path)(tf.constant(ids), max_norm=max_norm)
    assert got.dtype == dtype and got.shape == (6, 5, 16)
    want = tf.cast(tf.nn.embedding_lookup(dense, ids, max_norm=max_norm), dtype)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("layer_cls", LAYERS)
@pytest.mark.parametrize("spelling", ["float16", tf.float16, np.float16, "bfloat16", tf.bfloat16, "float32",
                                      tf.float32, np.float32])
def test_every_spelling_of_a_supported_dtype(simple, layer_cls, spelling):
    tables, path = simple
    layer = layer_cls("foo", 0, 16, spelling, path)
    dtype = tf.as_dtype(spelling)
    assert layer.emb_vec_dtype == dtype
    assert layer.get_config()["emb_vec_dtype"] == dtype.name
    ids = tf.constant([[1, 2], [3, 1100]], tf.int64)
    got = lookup(layer, ids)
    assert got.dtype == dtype
    assert_bitwise_equal(got, dense_reference(tables.dense("t0", 1.5, 1200), ids, layer_cls is hps.SparseLookupLayer,
                                              dtype))


@pytest.mark.parametrize("layer_cls", LAYERS)
@pytest.mark.parametrize("bad", [tf.int32, tf.float64, "int64", "string", "nonsense"])
def test_unsupported_output_dtypes(simple, layer_cls, bad):
    _, path = simple
    with pytest.raises(ValueError, match="emb_vec_dtype must be float32, float16 or bfloat16"):
        layer_cls("foo", 0, 16, bad, path)


@pytest.mark.parametrize("layer_cls", LAYERS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_keras_symbolic_outputs_carry_the_dtype_and_reload(simple, tmp_path, layer_cls, dtype):
    tables, path = simple
    sparse = layer_cls is hps.SparseLookupLayer
    ids = keras.Input(shape=(None,), ragged=True, dtype="int64") if sparse else keras.Input(shape=(3,), dtype="int64")
    layer = layer_cls("foo", 0, 16, dtype, path)
    out = layer(ids, combiner="sum") if sparse else layer(ids)
    assert out.dtype == dtype
    assert out.shape == ((None, 16) if sparse else (None, 3, 16))
    model = keras.Model(ids, out)
    x = tf.constant([[1, 2, 3], [999, 1000, 0]], tf.int64)
    x_in = tf.RaggedTensor.from_tensor(x) if sparse else x
    want = model(x_in)
    assert want.dtype == dtype
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    got = reloaded(x_in)
    assert got.dtype == dtype
    assert_bitwise_equal(got, want)
    assert_bitwise_equal(want, dense_reference(tables.dense("t0", 1.5, 1200), x, sparse, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_lookup_layer_half_precision_export(simple, tmp_path, dtype):
    tables, path = simple
    ids = keras.Input(shape=(4,), dtype="int64")
    model = keras.Model(ids, hps.LookupLayer("foo", 0, 16, dtype, path)(ids))
    model.export(str(tmp_path / "export"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    x = tf.constant([[5, 6, 7, 2000]], tf.int64)
    served = loaded.serve(x)
    assert served.dtype == dtype
    want = tf.cast(tf.nn.embedding_lookup(tables.dense("t0", 1.5, 2000), x), dtype)
    np.testing.assert_array_equal(served.numpy(), want.numpy())


# --- keys and supportlonglong -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_cls", LAYERS)
def test_int32_keys_on_a_64_bit_model_are_the_same_keys(tables, layer_cls):
    tables.table("t0", 6, 4, keys=np.array([-7, -1, 0, 3, 2**31 - 1, 2**40]))
    layer = layer_cls("foo", 0, 4, tf.float32, tables.config(dims=(4,), defaults=(9.0,)))
    ids32 = tf.constant([[-7, -1], [3, 2**31 - 1], [5, 0]], tf.int32)
    got32 = lookup(layer, ids32).numpy()
    got64 = lookup(layer, tf.cast(ids32, tf.int64)).numpy()
    np.testing.assert_array_equal(got32, got64)
    _, vectors = tables.rows["t0"]
    expected_rows = np.stack([vectors[0], vectors[1], vectors[3], vectors[4], np.full(4, 9.0, np.float32), vectors[2]])
    want = expected_rows.reshape(3, 2, 4)
    # A sparse row of two keys is one float32 addition: numpy's sum of the pair gives the same bits.
    assert_bitwise_equal(got32, want.sum(axis=1) if layer_cls is hps.SparseLookupLayer else want)


@pytest.mark.parametrize("layer_cls", LAYERS)
def test_32_bit_models_take_int32_keys_and_refuse_int64(tables, layer_cls):
    # HPS's 32-bit models store keys as uint32: -1 from TF int32 is 0xFFFFFFFF in the file.
    tables.table("t0", 4, 8, keys=np.array([0, 5, 2**31, 2**32 - 1]))
    path = tables.config(dims=(8,), extra={"supportlonglong": False})
    layer = layer_cls("foo", 0, 8, tf.float32, path)
    ids = tf.constant([[-1, 5], [-(2**31), 0]], tf.int32)
    _, vectors = tables.rows["t0"]
    want = vectors[[3, 1, 2, 0]].reshape(2, 2, 8)
    got = lookup(layer, ids).numpy()
    assert_bitwise_equal(got, want.sum(axis=1) if layer_cls is hps.SparseLookupLayer else want)  # pairs: one addition
    with pytest.raises(tf.errors.InvalidArgumentError, match="keys are int64 but the config sets supportlonglong"):
        lookup(layer, tf.cast(ids, tf.int64))


@pytest.mark.parametrize("layer_cls", LAYERS)
@pytest.mark.parametrize("dtype", [tf.float32, tf.uint8, tf.uint64, tf.string])
def test_keys_that_are_not_int32_or_int64_are_type_errors(simple, layer_cls, dtype):
    _, path = simple
    layer = layer_cls("foo", 0, 16, tf.float32, path)
    keys = tf.constant([["a"]]) if dtype == tf.string else tf.constant([[1]], dtype)
    with pytest.raises(TypeError, match="must be int32 or int64"):
        lookup(layer, keys)


# --- many models and tables -------------------------------------------------------------------------------------

# Two models, five tables of different sizes, dimensions, key sets and defaults.
MODELS = {
    "foo": [("foo_a", 300, 4, 0.0), ("foo_b", 50, 12, -2.0), ("foo_c", 700, 8, 0.25)],
    "bar": [("bar_a", 400, 16, 1.0), ("bar_b", 120, 3, 5.0)],
}


def write_two_model_config(tables, name="two_models.json", supportlonglong=True):
    """Writes every table of MODELS with keys 0..n-1 scaled by the table's position, and one config naming them."""
    models = []
    for model, specs in MODELS.items():
        for i, (table, rows, dim, _) in enumerate(specs):
            tables.table(table, rows, dim, keys=np.arange(rows, dtype=np.int64) * (i + 1))
        models.append({
            "model": model,
            "sparse_files": [os.path.join(tables.root, t[0]) for t in specs],
            "embedding_table_names": [t[0] for t in specs],
            "embedding_vecsize_per_table": [t[2] for t in specs],
            "maxnum_catfeature_query_per_table_per_sample": [8] * len(specs),
            "default_value_for_each_table": [t[3] for t in specs],
            "deployed_device_list": [0],
            "max_batch_size": 1024,
            "gpucacheper": 0.3,
        })
    path = os.path.join(tables.root, name)
    with open(path, "w") as f:
        json.dump({"supportlonglong": supportlonglong, "models": models}, f)
    return path


def table_dense(tables, model, table_id, max_key):
    table, _, _, default = MODELS[model][table_id]
    return tables.dense(table, default, max_key)


def test_every_table_of_every_model_by_id(tables):
    path = write_two_model_config(tables)
    rng = np.random.default_rng(3)
    for model, specs in MODELS.items():
        for table_id, (_, rows, dim, _) in enumerate(specs):
            max_key = rows * len(specs) + 10
            dense = table_dense(tables, model, table_id, max_key)
            ids = rng.integers(0, max_key + 1, size=(64, 3))
            got = hps.LookupLayer(model, table_id, dim, tf.float32, path)(tf.constant(ids)).numpy()
            np.testing.assert_array_equal(got, tf.nn.embedding_lookup(dense, ids).numpy())
            ragged = tf.RaggedTensor.from_tensor(tf.constant(ids))
            got = hps.SparseLookupLayer(model, table_id, dim, tf.float32, path)(ragged, combiner="mean").numpy()
            want = tf.nn.embedding_lookup_sparse(dense, ragged, None, combiner="mean").numpy()
            assert_bitwise_equal(got, want)
    stats = hps.stats()
    for model, specs in MODELS.items():
        for table, *_ in specs:
            assert stats[f"hps_et.{model}.{table}"]["lookups"] >= 2


def test_one_keras_model_uses_tables_of_both_models(tables, tmp_path):
    path = write_two_model_config(tables)
    dense_ids = keras.Input(shape=(5,), dtype="int64", name="dense_ids")
    ragged_ids = keras.Input(shape=(None,), ragged=True, dtype="int64", name="ragged_ids")
    ragged_weights = keras.Input(shape=(None,), ragged=True, dtype="float32", name="ragged_weights")
    outputs = [
        keras.layers.Flatten()(hps.LookupLayer("foo", 0, 4, "float32", path)(dense_ids)),            # 20
        keras.layers.Flatten()(hps.LookupLayer("bar", 1, 3, "float32", path)(dense_ids)),            # 15
        hps.SparseLookupLayer("foo", 2, 8, "float32", path)(ragged_ids, ragged_weights, combiner="sqrtn"),  # 8
        hps.SparseLookupLayer("bar", 0, 16, "float32", path)(ragged_ids, combiner="sum", max_norm=2.0),     # 16
        hps.SparseLookupLayer("foo", 1, 12, "float32", path)(ragged_ids, ragged_weights, combiner="mean"),  # 12
    ]
    model = keras.Model([dense_ids, ragged_ids, ragged_weights], keras.layers.Concatenate()(outputs))
    assert model.output_shape == (None, 20 + 15 + 8 + 16 + 12)

    rng = np.random.default_rng(4)
    x_dense = rng.integers(0, 1000, size=(9, 5))
    lengths = rng.integers(0, 6, size=9)
    x_ragged = tf.RaggedTensor.from_row_lengths(rng.integers(0, 2200, size=lengths.sum()), lengths)
    x_weights = tf.RaggedTensor.from_row_lengths(rng.uniform(0.1, 2.0, size=lengths.sum()).astype(np.float32), lengths)
    got = model([tf.constant(x_dense), x_ragged, x_weights]).numpy()

    def pad(rows):  # TF drops trailing empty rows
        out = np.zeros((9, rows.shape[1]), np.float32)
        out[: len(rows)] = rows
        return out

    d = {(m, t): table_dense(tables, m, t, 2200) for m, t in [("foo", 0), ("bar", 1), ("foo", 2), ("bar", 0),
                                                               ("foo", 1)]}
    want = np.concatenate([
        tf.nn.embedding_lookup(d["foo", 0], x_dense).numpy().reshape(9, -1),
        tf.nn.embedding_lookup(d["bar", 1], x_dense).numpy().reshape(9, -1),
        pad(tf.nn.embedding_lookup_sparse(d["foo", 2], x_ragged, x_weights, combiner="sqrtn").numpy()),
        pad(tf.nn.embedding_lookup_sparse(d["bar", 0], x_ragged, None, combiner="sum", max_norm=2.0).numpy()),
        pad(tf.nn.embedding_lookup_sparse(d["foo", 1], x_ragged, x_weights, combiner="mean").numpy()),
    ], axis=1)
    assert_bitwise_equal(got, want)

    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(reloaded([tf.constant(x_dense), x_ragged, x_weights]).numpy(), got)

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.int64),
                                  tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1),
                                  tf.RaggedTensorSpec([None, None], tf.float32, ragged_rank=1)])
    def serve(a, b, c):
        return model([a, b, c])

    np.testing.assert_array_equal(serve(tf.constant(x_dense), x_ragged, x_weights).numpy(), got)


def test_layers_of_two_configs_in_one_keras_model_and_export(tables, tmp_path):
    two = write_two_model_config(tables)
    tables.table("solo", 30, 6)
    solo = tables.config(tables=(os.path.join(tables.root, "solo"),), dims=(6,), model="solo", defaults=(-1.0,),
                         name="solo.json")
    ids = keras.Input(shape=(2,), dtype="int32")
    a = keras.layers.Flatten()(hps.LookupLayer("solo", 0, 6, "float16", solo)(ids))
    b = keras.layers.Flatten()(hps.LookupLayer("bar", 0, 16, "float16", two)(ids))
    model = keras.Model(ids, keras.layers.Concatenate()([a, b]))
    x = tf.constant([[1, 29], [30, 399]], tf.int32)
    want = np.concatenate([
        tf.nn.embedding_lookup(tables.dense("solo", -1.0, 400), x).numpy().reshape(2, -1),
        tf.nn.embedding_lookup(table_dense(tables, "bar", 0, 400), x).numpy().reshape(2, -1)], axis=1)
    got = model(x)  # Keras's float32 layers cast the float16 rows up, exactly
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float16).astype(np.float32))
    model.export(str(tmp_path / "export"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export")).serve(x)
    np.testing.assert_array_equal(served.numpy(), got.numpy())


@pytest.mark.parametrize("layer_cls", LAYERS)
def test_tables_and_models_that_do_not_exist(tables, layer_cls):
    path = write_two_model_config(tables)
    with pytest.raises(ValueError, match="table_id 3 is out of range: model 'foo' has 3 table"):
        layer_cls("foo", 3, 4, tf.float32, path)
    with pytest.raises(ValueError, match="emb_vec_size 4 does not match table 1 of model 'bar'"):
        layer_cls("bar", 1, 4, tf.float32, path)
    with pytest.raises(ValueError, match="model 'baz' is not in"):
        layer_cls("baz", 0, 4, tf.float32, path)


def test_32_bit_config_with_many_models(tables):
    path = write_two_model_config(tables, supportlonglong=False)
    ids = np.array([[0, 3, 6], [9, 1000, -1]])
    absent = np.where(ids < 0, 2200, ids)  # -1 is in no table: the row past the end holds the default
    got = hps.LookupLayer("foo", 2, 8, tf.float32, path)(tf.constant(ids, tf.int32)).numpy()
    np.testing.assert_array_equal(got, tf.nn.embedding_lookup(table_dense(tables, "foo", 2, 2200), absent).numpy())
    ragged = tf.RaggedTensor.from_tensor(tf.constant(ids, tf.int32))
    got = hps.SparseLookupLayer("bar", 1, 3, tf.float32, path)(ragged, combiner="sum")
    want = tf.nn.embedding_lookup_sparse(table_dense(tables, "bar", 1, 2200),
                                         tf.RaggedTensor.from_tensor(absent), None, combiner="sum")
    assert_bitwise_equal(got, want)
    with pytest.raises(tf.errors.InvalidArgumentError, match="supportlonglong"):
        hps.SparseLookupLayer("bar", 1, 3, tf.float32, path)(tf.RaggedTensor.from_tensor(tf.constant(ids, tf.int64)))


def test_import_registers_both_layers_with_keras_in_a_process_that_has_keras():
    from conftest import ROOT, run_python

    out = run_python(
        "import sys; sys.path.insert(0, sys.argv[1]); import keras; import tf_hps\n"
        "print([keras.saving.get_registered_object(f'tf_hps>{n}').__name__ for n in ('LookupLayer', "
        "'SparseLookupLayer')])", ROOT)
    assert out.stdout.strip().endswith("['LookupLayer', 'SparseLookupLayer']")
    out = run_python("import sys; sys.path.insert(0, sys.argv[1]); import tf_hps; print('tensorflow' in sys.modules)",
                     ROOT)
    assert out.stdout.strip().endswith("False")  # the storage tools still start without TensorFlow
