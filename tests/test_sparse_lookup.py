"""SparseLookupLayer answers what tf.nn.embedding_lookup_sparse answers on the same table, bit for bit.

Every combiner, with and without weights and max_norm: the fused ops sum in the order of TF's sparse
segment kernels, and with weights or max_norm in the order of TF's Eigen reductions (ops/sparse_combine.h),
so each output is compared with TF's exactly (tf_hps.testing.assert_bitwise_equal).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps._ops import ops
from tf_hps.testing import assert_bitwise_equal

DIM = 16
DEFAULT = 1.5
MAX_KEY = 1200  # the table holds keys 0..999; the others get the default
COMBINERS = ("sum", "mean", "sqrtn")


@pytest.fixture
def env(simple):
    """(layer factory, dense table for TF, config path)."""
    tables, path = simple

    def make(dtype=tf.float32):
        return hps.SparseLookupLayer("foo", 0, DIM, dtype, path)

    return make, tables.dense("t0", DEFAULT, MAX_KEY), path


def random_batch(seed, rows=40, max_len=30, key_range=MAX_KEY, empty_rows=True):
    """Row lengths, keys and weights of a random ragged batch (numpy)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0 if empty_rows else 1, max_len + 1, size=rows)
    keys = rng.integers(0, key_range, size=lengths.sum())
    weights = rng.uniform(-1.0, 2.0, size=lengths.sum()).astype(np.float32)
    return lengths, keys, weights


def as_sparse(lengths, values, dtype, width=None):
    """A canonical-order SparseTensor whose row i holds lengths[i] values at random columns."""
    rng = np.random.default_rng(len(values))
    width = width or int(max(lengths.max(initial=0), 1)) + 3
    indices = []
    for row, n in enumerate(lengths):
        columns = np.sort(rng.choice(width, size=n, replace=False))
        indices.extend([row, c] for c in columns)
    indices = np.array(indices, np.int64).reshape(-1, 2)
    return tf.SparseTensor(indices, tf.constant(values, dtype), [len(lengths), width])


def as_ragged(lengths, values, dtype):
    return tf.RaggedTensor.from_row_lengths(tf.constant(values, dtype), lengths.astype(np.int64))


def tf_reference(dense, sp_ids, sp_weights, combiner, max_norm, num_rows):
    """tf.nn.embedding_lookup_sparse, padded to num_rows: TF drops trailing empty rows."""
    want = tf.nn.embedding_lookup_sparse(dense, sp_ids, sp_weights, combiner=combiner, max_norm=max_norm).numpy()
    padded = np.zeros((num_rows, dense.shape[1]), np.float32)
    padded[: len(want)] = want
    return padded


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["sparse", "ragged"])
@pytest.mark.parametrize("key_dtype", [tf.int32, tf.int64])
def test_equals_embedding_lookup_sparse(env, combiner, weighted, kind, key_dtype):
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=COMBINERS.index(combiner) * 4 + 2 * weighted + (kind == "ragged"))
    convert = as_sparse if kind == "sparse" else as_ragged
    sp_ids = convert(lengths, keys, key_dtype)
    sp_weights = convert(lengths, weights, tf.float32) if weighted else None
    got = make()(sp_ids, sp_weights, combiner=combiner)
    assert got.dtype == tf.float32
    assert got.shape == (len(lengths), DIM)
    ref_ids = convert(lengths, keys, tf.int64)  # TF's gather takes either; keep its input canonical
    want = tf_reference(dense, ref_ids, sp_weights, combiner, None, len(lengths))
    assert_bitwise_equal(got, want)
    assert lengths.max() >= 17  # rows of every size class of TF's summation: 1, 2..9, 10..16, 17 and more


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("max_norm", [0.0, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_max_norm_clips_each_row_before_combining_like_tf(env, combiner, max_norm, weighted):
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=7, rows=30)
    sp_ids = as_ragged(lengths, keys, tf.int64)
    sp_weights = as_ragged(lengths, weights, tf.float32) if weighted else None
    got = make()(sp_ids, sp_weights, combiner=combiner, max_norm=max_norm).numpy()
    want = tf_reference(dense, sp_ids, sp_weights, combiner, max_norm, len(lengths))
    assert_bitwise_equal(got, want)
    if max_norm == 0.1:  # clipping changed something: the rows of N(0, 1) x 16 are far longer
        unclipped = make()(sp_ids, sp_weights, combiner=combiner).numpy()
        assert np.abs(unclipped - got).max() > 0.5


@pytest.mark.parametrize("weighted", [False, True])
def test_max_norm_may_be_a_tensor_or_a_variable(env, weighted):
    """As LookupLayer's and tf.nn.embedding_lookup_sparse's: also inside a traced function and a Keras model."""
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=9, rows=20, empty_rows=False)  # TF drops trailing empty rows
    ids = as_ragged(lengths, keys, tf.int64)
    w = as_ragged(lengths, weights, tf.float32) if weighted else None
    want = tf_reference(dense, ids, w, "sqrtn", 0.75, len(lengths))
    layer = make()
    norm = tf.Variable(0.75)
    assert_bitwise_equal(layer(ids, w, combiner="sqrtn", max_norm=norm), want)
    assert_bitwise_equal(layer(ids, w, combiner="sqrtn", max_norm=tf.constant(0.75)), want)
    # Traced, TF's graph optimizer rewrites x / sqrt(y) as x * rsqrt(y), in TF's lookup as in ours:
    # so the reference is traced too.
    traced = tf.function(lambda ids: layer(ids, w, combiner="sqrtn", max_norm=norm))
    traced_tf = tf.function(lambda ids: tf.nn.embedding_lookup_sparse(
        dense, ids.to_sparse(), None if w is None else w.to_sparse(), combiner="sqrtn", max_norm=norm))
    assert_bitwise_equal(traced(ids), traced_tf(ids))
    norm.assign(2.5)  # the variable is read at run time, not baked into the trace
    assert_bitwise_equal(traced(ids), traced_tf(ids))
    assert not np.array_equal(traced(ids).numpy(), want)


def test_hps_call_forms(env):
    """HPS's call(sp_ids, sp_weights, name=None, combiner=None, max_norm=None) works unchanged."""
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=11, empty_rows=False)
    sp_ids, sp_weights = as_sparse(lengths, keys, tf.int64), as_sparse(lengths, weights, tf.float32)
    layer = make()
    want = tf_reference(dense, sp_ids, sp_weights, "mean", None, len(lengths))
    assert_bitwise_equal(layer(sp_ids, sp_weights, name="lookup", combiner=None), want)
    assert_bitwise_equal(layer(sp_ids, sp_weights), want)
    assert_bitwise_equal(layer(sp_ids, sp_weights=None, combiner="sum"),
                         tf_reference(dense, sp_ids, None, "sum", None, len(lengths)))
    value = tf.compat.v1.SparseTensorValue(sp_ids.indices.numpy(), sp_ids.values.numpy(), sp_ids.dense_shape.numpy())
    assert_bitwise_equal(layer(value, combiner="sum"), tf_reference(dense, sp_ids, None, "sum", None, len(lengths)))


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("kind", ["sparse", "ragged"])
def test_empty_rows_are_zeros_and_every_row_is_output(env, combiner, kind):
    make, dense, _ = env
    lengths = np.array([0, 2, 0, 0, 3, 0, 0])  # empty first, middle and trailing rows
    keys = np.array([5, 6, 7, 8, 1100])
    convert = as_sparse if kind == "sparse" else as_ragged
    sp_ids = convert(lengths, keys, tf.int64)
    got = make()(sp_ids, combiner=combiner).numpy()
    assert got.shape == (7, DIM)
    for row in (0, 2, 3, 5, 6):
        assert_bitwise_equal(got[row], np.zeros(DIM, np.float32))
    assert_bitwise_equal(got, tf_reference(dense, sp_ids, None, combiner, None, 7))


@pytest.mark.parametrize("kind", ["sparse", "ragged"])
def test_batches_with_no_keys_or_no_rows(env, kind):
    make, _, _ = env
    layer = make()
    if kind == "sparse":
        no_keys = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64), [4, 3])
        no_rows = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64), [0, 3])
    else:
        no_keys = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int64), [0, 0, 0, 0])
        no_rows = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int64), tf.zeros([0], tf.int64))
    for combiner in COMBINERS:
        np.testing.assert_array_equal(layer(no_keys, combiner=combiner).numpy(), np.zeros((4, DIM), np.float32))
        assert layer(no_rows, combiner=combiner).shape == (0, DIM)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_duplicate_keys_in_a_row_count_each_time(env, combiner):
    make, dense, _ = env
    ids = tf.ragged.constant([[3, 3, 3], [5, 3, 5, 1100, 1100], [7]], tf.int64)
    weights = tf.ragged.constant([[1.0, 2.0, 0.5], [0.25, 1.0, 3.0, 1.0, -1.0], [2.0]], tf.float32)
    for w in (None, weights):
        got = make()(ids, w, combiner=combiner).numpy()
        assert_bitwise_equal(got, tf_reference(dense, ids, w, combiner, None, 3))
    # Row 0 is key 3 three times: its sum is three of key 3's row (each key counts each time).
    assert_bitwise_equal(make()(ids, combiner="sum").numpy()[0], 3 * dense[3])  # (x + x) + x rounds as 3 x


def test_unknown_keys_get_the_table_default(env):
    make, _, _ = env
    ids = tf.ragged.constant([[-1, 5000], [2**40]], tf.int64)
    got = make()(ids, combiner="mean").numpy()
    np.testing.assert_array_equal(got, np.full((2, DIM), DEFAULT, np.float32))
    got = make()(ids, combiner="sum").numpy()
    np.testing.assert_array_equal(got, np.array([[2 * DEFAULT] * DIM, [DEFAULT] * DIM], np.float32))


@pytest.mark.parametrize("combiner", ["mean", "sqrtn"])
def test_a_zero_divisor_gives_zeros_like_div_no_nan(env, combiner):
    make, dense, _ = env
    ids = tf.ragged.constant([[1, 2], [3], [4, 5]], tf.int64)
    weights = tf.ragged.constant([[1.0, -1.0], [0.0], [0.5, 0.5]], tf.float32)
    got = make()(ids, weights, combiner=combiner).numpy()
    assert_bitwise_equal(got, tf_reference(dense, ids, weights, combiner, None, 3))
    if combiner == "mean":
        np.testing.assert_array_equal(got[0], np.zeros(DIM, np.float32))
    np.testing.assert_array_equal(got[1], np.zeros(DIM, np.float32))


@pytest.mark.parametrize("combiner", COMBINERS)
def test_indices_need_not_be_in_canonical_order(env, combiner):
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=21, rows=50, max_len=8)
    canonical_ids = as_sparse(lengths, keys, tf.int64)
    canonical_weights = as_sparse(lengths, weights, tf.float32)
    order = np.random.default_rng(5).permutation(len(keys))
    shuffled_ids = tf.SparseTensor(tf.gather(canonical_ids.indices, order), tf.gather(canonical_ids.values, order),
                                   canonical_ids.dense_shape)
    shuffled_weights = tf.SparseTensor(shuffled_ids.indices, tf.gather(canonical_weights.values, order),
                                       canonical_weights.dense_shape)
    # Each row combines its keys in their order in the input: the order TF sees after a stable sort by row.
    rows = shuffled_ids.indices[:, 0].numpy()
    stable = np.argsort(rows, kind="stable")
    canonical_indices = np.stack([rows[stable], np.arange(len(keys))], axis=1)  # rows sorted, columns rising
    as_tf_sees = [tf.SparseTensor(canonical_indices, tf.gather(t.values, stable), [len(lengths), len(keys)])
                  for t in (shuffled_ids, shuffled_weights)]
    for w, tf_w in ((None, None), (shuffled_weights, as_tf_sees[1])):
        for max_norm in (None, 1.0):
            got = make()(shuffled_ids, w, combiner=combiner, max_norm=max_norm).numpy()
            assert_bitwise_equal(got, tf_reference(dense, as_tf_sees[0], tf_w, combiner, max_norm, len(lengths)))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_half_precision_outputs_are_the_float32_result_rounded_once(env, dtype, combiner):
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=31, rows=60, max_len=10)
    ids, w = as_ragged(lengths, keys, tf.int64), as_ragged(lengths, weights, tf.float32)
    full = make(tf.float32)(ids, w, combiner=combiner, max_norm=3.0)
    got = make(dtype)(ids, w, combiner=combiner, max_norm=3.0)
    assert got.dtype == dtype
    # Combined in float32, rounded to nearest even once: exactly TF's cast of TF's float32 result.
    assert_bitwise_equal(got, tf.cast(full, dtype))
    want = tf_reference(dense, ids, w, combiner, 3.0, len(lengths))
    assert_bitwise_equal(got, tf.cast(want, dtype))
    unweighted = make(dtype)(ids, combiner=combiner)  # the fused op's own rounding
    assert_bitwise_equal(unweighted, tf.cast(tf_reference(dense, ids, None, combiner, None, len(lengths)), dtype))


def test_int32_and_int64_keys_and_row_splits_agree(env):
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=41)
    layer = make()
    want = layer(as_ragged(lengths, keys, tf.int64), as_ragged(lengths, weights, tf.float32), combiner="sqrtn").numpy()
    ids32 = tf.RaggedTensor.from_row_lengths(tf.constant(keys, tf.int32), lengths.astype(np.int32))
    weights32 = tf.RaggedTensor.from_row_lengths(tf.constant(weights, tf.float64), lengths.astype(np.int32))
    assert ids32.row_splits.dtype == tf.int32
    np.testing.assert_array_equal(layer(ids32, weights32, combiner="sqrtn").numpy(), want)
    sparse32 = as_sparse(lengths, keys, tf.int32)
    np.testing.assert_array_equal(layer(sparse32, as_sparse(lengths, weights, tf.float32), combiner="sqrtn").numpy(),
                                  want)


def test_large_batches_are_split_over_tf_worker_threads_exactly(env):
    make, dense, _ = env
    lengths, keys, weights = random_batch(seed=51, rows=40_000, max_len=12)
    ids, w = as_ragged(lengths, keys, tf.int64), as_ragged(lengths, weights, tf.float32)
    for combiner in COMBINERS:
        for weights in (None, w):
            got = make()(ids, weights, combiner=combiner).numpy()
            assert_bitwise_equal(got, tf_reference(dense, ids, weights, combiner, None, len(lengths)))


def test_tf_function_sets_static_shapes(env):
    make, dense, _ = env
    layer = make(tf.float16)

    @tf.function(input_signature=[tf.SparseTensorSpec([None, None], tf.int64)])
    def sparse_fn(ids):
        out = layer(ids, combiner="sum")
        assert out.shape.as_list() == [None, DIM] and out.dtype == tf.float16
        return out

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                                  tf.RaggedTensorSpec([None, None], tf.float32, ragged_rank=1)])
    def ragged_fn(ids, weights):
        return layer(ids, weights, combiner="sqrtn")

    lengths, keys, weights = random_batch(seed=61)
    sp = as_sparse(lengths, keys, tf.int64)
    np.testing.assert_array_equal(sparse_fn(sp).numpy(), layer(sp, combiner="sum").numpy())
    rt, rw = as_ragged(lengths, keys, tf.int32), as_ragged(lengths, weights, tf.float32)
    np.testing.assert_array_equal(ragged_fn(rt, rw).numpy(), layer(rt, rw, combiner="sqrtn").numpy())
    # A static batch size carries through.
    assert layer(tf.ragged.constant([[1], [2, 3]], tf.int64)).shape == (2, DIM)


def test_keras_models_with_sparse_and_ragged_inputs_save_and_reload(env, tmp_path):
    make, dense, path = env
    sp_in = keras.Input(shape=(None,), sparse=True, dtype="int64")
    w_in = keras.Input(shape=(None,), sparse=True, dtype="float32")
    rt_in = keras.Input(shape=(None,), ragged=True, dtype="int32")
    a = hps.SparseLookupLayer("foo", 0, DIM, "float32", path)(sp_in, w_in, combiner="sum", max_norm=2.0)
    b = hps.SparseLookupLayer("foo", 0, DIM, "bfloat16", path)(rt_in, combiner="sqrtn")
    assert b.dtype == "bfloat16"
    out = keras.layers.Concatenate()([a, keras.layers.Activation("linear", dtype="float32")(b)])
    model = keras.Model([sp_in, w_in, rt_in], out)

    lengths, keys, weights = random_batch(seed=71, rows=12)
    sp, sw = as_sparse(lengths, keys, tf.int64), as_sparse(lengths, weights, tf.float32)
    rt = as_ragged(lengths, keys, tf.int32)
    got = model([sp, sw, rt]).numpy()
    assert_bitwise_equal(got[:, :DIM], tf_reference(dense, sp, sw, "sum", 2.0, 12))
    # The bfloat16 output, cast up by the float32 Activation exactly.
    want_b = tf.cast(tf.cast(tf_reference(dense, rt, None, "sqrtn", None, 12), tf.bfloat16), tf.float32)
    assert_bitwise_equal(got[:, DIM:], want_b)

    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(reloaded([sp, sw, rt]).numpy(), got)
    layer = [x for x in model.layers if isinstance(x, hps.SparseLookupLayer)][0]
    config = layer.get_config()
    assert {k: config[k] for k in ("model_name", "table_id", "emb_vec_size", "ps_config_file",
                                   "global_batch_size")} == {
        "model_name": "foo", "table_id": 0, "emb_vec_size": DIM, "ps_config_file": path, "global_batch_size": 1}
    clone = hps.SparseLookupLayer.from_config(config)
    assert clone.emb_vec_dtype == layer.emb_vec_dtype
    assert keras.saving.get_registered_object("tf_hps>SparseLookupLayer") is hps.SparseLookupLayer


def test_saved_model_with_sparse_and_ragged_signatures(env, tmp_path):
    make, dense, _ = env
    layer = make(tf.float16)
    rt_in = keras.Input(shape=(None,), ragged=True, dtype="int64")
    model = keras.Model(rt_in, layer(rt_in, combiner="mean", max_norm=1.0))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", tf.function(
        model.__call__, input_signature=[tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1)]))
    archive.add_endpoint("serve_sparse", tf.function(
        lambda ids, weights: layer(ids, weights, combiner="sum"),
        input_signature=[tf.SparseTensorSpec([None, None], tf.int64), tf.SparseTensorSpec([None, None], tf.float32)]))
    archive.write_out(str(tmp_path / "export"), verbose=False)

    loaded = tf.saved_model.load(str(tmp_path / "export"))
    lengths, keys, weights = random_batch(seed=81)
    rt = as_ragged(lengths, keys, tf.int64)
    served = loaded.serve(rt)
    assert served.dtype == tf.float16
    np.testing.assert_array_equal(served.numpy(), model(rt).numpy())
    sp, sw = as_sparse(lengths, keys, tf.int64), as_sparse(lengths, weights, tf.float32)
    np.testing.assert_array_equal(loaded.serve_sparse(sp, sw).numpy(), layer(sp, sw, combiner="sum").numpy())
    reloaded_layer = keras.layers.TFSMLayer(str(tmp_path / "export"), call_endpoint="serve")
    np.testing.assert_array_equal(reloaded_layer(rt).numpy(), served.numpy())


# --- bad inputs -------------------------------------------------------------------------------------------------


def raw_sparse_lookup(path, keys, segment_ids, num_rows, **attrs):
    """The op without the layer's Python-side checks, as a SavedModel would run it."""
    handle = ops().tf_hps_init(ps_config=hps.load_config(path).canonical_json)
    attrs = {"model_name": "foo", "table_id": 0, "emb_vec_size": DIM, **attrs}
    return ops().tf_hps_sparse_lookup(keys=keys, segment_ids=segment_ids, num_rows=num_rows, ps_handle=handle, **attrs)


def test_raw_op_equals_the_layer(env):
    make, dense, path = env
    got = raw_sparse_lookup(path, tf.constant([1, 2, 3], tf.int64), tf.constant([2, 0, 2], tf.int32),
                            tf.constant(4, tf.int64), combiner="sum").numpy()
    table = dense
    assert_bitwise_equal(got, np.stack([table[2], np.zeros(DIM, np.float32), table[1] + table[3],
                                        np.zeros(DIM, np.float32)]))


@pytest.mark.parametrize("row", [-1, 3, 2**40])
def test_rows_out_of_range_are_errors(env, row):
    _, _, path = env
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"segment_ids\[1\] = .* is out of range \[0, 3\)"):
        raw_sparse_lookup(path, tf.constant([1, 2], tf.int64), tf.constant([0, row], tf.int64), tf.constant(3, tf.int64))
    make, _, _ = env
    bad = tf.SparseTensor(tf.constant([[0, 0], [row, 0]], tf.int64), tf.constant([1, 2], tf.int64), [3, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
        make()(bad)


def test_weights_that_do_not_match_the_keys(env):
    make, _, path = env
    ids = tf.ragged.constant([[1, 2], [3]], tf.int64)
    with pytest.raises(ValueError, match="sp_weights has 2 values but sp_ids has 3"):
        make()(ids, tf.ragged.constant([[1.0], [2.0]]))
    with pytest.raises(TypeError, match="sp_weights must be None or a RaggedTensor"):
        make()(ids, tf.SparseTensor([[0, 0]], [1.0], [2, 2]))
    with pytest.raises(TypeError, match="sp_weights must hold numbers"):
        make()(ids, tf.ragged.constant([["a", "b"], ["c"]]))

    layer = make()

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1),
                                  tf.RaggedTensorSpec([None, None], tf.float32, ragged_rank=1)])
    def dynamic(ids, weights):
        return layer(ids, weights)

    with pytest.raises(tf.errors.InvalidArgumentError, match="sp_weights must have as many values as sp_ids"):
        dynamic(ids, tf.ragged.constant([[1.0], [2.0]]))


def test_raw_op_shape_and_attr_errors(env):
    _, _, path = env
    keys = tf.constant([1, 2], tf.int64)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="segment_ids has 1 values|Dimensions must"):
        raw_sparse_lookup(path, keys, tf.constant([0], tf.int64), tf.constant(3, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_rows must be >= 0"):
        raw_sparse_lookup(path, tf.zeros([0], tf.int64), tf.zeros([0], tf.int64), tf.constant(-1, tf.int64))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="combiner"):
        raw_sparse_lookup(path, keys, tf.constant([0, 0], tf.int64), tf.constant(1, tf.int64), combiner="max")
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError), match="Tkeys|float"):
        raw_sparse_lookup(path, tf.constant([1.0, 2.0]), tf.constant([0, 0], tf.int64), tf.constant(1, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="emb_vec_size 8 does not match"):
        raw_sparse_lookup(path, keys, tf.constant([0, 0], tf.int64), tf.constant(1, tf.int64), emb_vec_size=8)


def test_bad_layer_arguments(env):
    make, _, _ = env
    layer = make()
    ids = tf.ragged.constant([[1, 2], [3]], tf.int64)
    with pytest.raises(TypeError, match="sp_ids must be a tf.SparseTensor or tf.RaggedTensor, got .*dense tensor"):
        layer(tf.constant([[1, 2]], tf.int64))
    with pytest.raises(TypeError, match="sp_ids must be a tf.SparseTensor or tf.RaggedTensor, got .*dense tensor"):
        layer(np.array([[1, 2]]))
    with pytest.raises(TypeError, match="sp_ids must be int32 or int64, got float32"):
        layer(tf.ragged.constant([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="combiner must be one of 'sum', 'mean' or 'sqrtn', got 'max'"):
        layer(ids, combiner="max")
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        layer(ids, max_norm=-1.0)
    with pytest.raises(TypeError, match="max_norm must be None, a number or a float tensor, got str"):
        layer(ids, max_norm="1")
    with pytest.raises(TypeError, match="max_norm must be a float tensor, got int32"):
        layer(ids, max_norm=tf.constant(1))
    with pytest.raises(ValueError, match="max_norm must be a scalar"):
        layer(ids, max_norm=tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match="must have rank 2, got a SparseTensor of rank 3"):
        layer(tf.SparseTensor([[0, 0, 0]], tf.constant([1], tf.int64), [1, 1, 1]))
    with pytest.raises(ValueError, match="must have rank 2"):
        layer(tf.ragged.constant([[[1], [2]], [[3]]], tf.int64))
    with pytest.raises(ValueError, match="emb_vec_size 8 does not match table 0"):
        hps.SparseLookupLayer("foo", 0, 8, tf.float32, env[2])
    with pytest.raises(ValueError, match="emb_vec_dtype must be float32, float16 or bfloat16, got float64"):
        hps.SparseLookupLayer("foo", 0, DIM, tf.float64, env[2])


def test_config_from_init_and_missing_config(tables, monkeypatch):
    tables.table("t0", 1000, DIM)
    path = tables.config(model="sparse_from_init")
    from tf_hps import api
    monkeypatch.setattr(api, "_loaded", {})
    layer = hps.SparseLookupLayer("sparse_from_init", 0, DIM, tf.float32)
    with pytest.raises(tf.errors.FailedPreconditionError, match="model 'sparse_from_init' has no config"):
        layer(tf.ragged.constant([[1]], tf.int64))
    hps.Init(global_batch_size=8, ps_config_file=path)
    got = layer(tf.ragged.constant([[4, 5]], tf.int64), combiner="sum").numpy()
    assert_bitwise_equal(got[0], tables.rows["t0"][1][4] + tables.rows["t0"][1][5])  # one float32 addition
    assert os.path.samefile(layer._config().path, path)


@pytest.mark.parametrize("dim", [5, 45, 200])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_weights_and_max_norm_match_tf_at_widths_with_tails(tables, dim, combiner):
    """Widths that leave columns outside whole packets and rows long enough for every unrolled
    accumulator (40 keys a row), in eager and traced calls."""
    tables.table("wide", 300, dim)
    path = tables.config(tables=("wide",), dims=(dim,))
    dense = tables.dense("wide", DEFAULT, 400)
    layer = hps.SparseLookupLayer("foo", 0, dim, tf.float32, path)
    lengths, keys, weights = random_batch(seed=dim, rows=25, max_len=40, key_range=400)
    sp_ids = as_ragged(lengths, keys, tf.int64)
    sp_weights = as_ragged(lengths, weights * 30.0, tf.float32)
    for max_norm in (None, 0.3):
        want = tf_reference(dense, sp_ids, sp_weights, combiner, max_norm, len(lengths))
        assert_bitwise_equal(layer(sp_ids, sp_weights, combiner=combiner, max_norm=max_norm).numpy(), want)
        traced = tf.function(lambda i, w, m=max_norm: layer(i, w, combiner=combiner, max_norm=m))
        want_traced = tf.function(
            lambda i, w, m=max_norm: tf.nn.embedding_lookup_sparse(dense, i, w, combiner=combiner, max_norm=m))
        got = traced(sp_ids, sp_weights).numpy()
        assert_bitwise_equal(got[: len(want_traced(sp_ids, sp_weights))], want_traced(sp_ids, sp_weights).numpy())


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_the_weighted_op_follows_the_reduction_order_of_each_packet_width(tables, lanes):
    """TF builds with other packet widths (SSE, AVX-512) sum in another order: the op at each width
    against the numpy model of that order (tf_hps._tf_order, checked against this TF at its width)."""
    from tf_hps import _tf_order

    dim = 45
    tables.table("w", 300, dim)
    path = tables.config(tables=("w",), dims=(dim,))
    layer = hps.SparseLookupLayer("foo", 0, dim, tf.float32, path)
    layer(tf.ragged.constant([[1]], tf.int64))  # starts the server
    keys_of_rows = [np.arange(n, dtype=np.int64) * 7 % 300 for n in (1, 2, 15, 16, 17, 40)]
    keys = np.concatenate(keys_of_rows)
    segments = np.repeat(np.arange(len(keys_of_rows)), [len(k) for k in keys_of_rows])
    weights = np.random.default_rng(lanes).uniform(-30, 30, len(keys)).astype(np.float32)
    stored_keys, vectors = tables.rows["w"]
    table = dict(zip(stored_keys.tolist(), vectors))
    for clip in (False, True):
        got = ops().tf_hps_weighted_sparse_lookup(
            keys=keys, segment_ids=segments, num_rows=len(keys_of_rows), ps_handle=layer._handle(),
            weights=weights, divisor_weights=weights, max_norm=np.float32(0.3), model_name="foo", table_id=0,
            emb_vec_size=dim, combiner="sum", weighted=True, clip=clip, lanes=lanes).numpy()
        for r, row_keys in enumerate(keys_of_rows):
            rows = np.stack([table[k] for k in row_keys.tolist()])
            if clip:
                rows = _tf_order.clip_by_norm_of(rows, 0.3, lanes)
            w = weights[segments == r][:, None]
            assert_bitwise_equal(got[r], _tf_order.segment_sum_of(rows * w, lanes))
    with pytest.raises(tf.errors.InvalidArgumentError, match="lanes must be 4, 8 or 16"):
        ops().tf_hps_weighted_sparse_lookup(
            keys=keys, segment_ids=segments, num_rows=len(keys_of_rows), ps_handle=layer._handle(),
            weights=weights, divisor_weights=weights, max_norm=np.float32(0.3), model_name="foo", table_id=0,
            emb_vec_size=dim, combiner="sum", weighted=True, clip=False, lanes=5)


# --- the numpy model of the combine order, the reference of the GPU combine ---------------------------------------


@pytest.mark.parametrize("combiner", COMBINERS)
def test_the_numpy_model_of_the_combine_is_tf_and_the_op_bit_for_bit(env, combiner):
    """tests/slab_model.combine_rows_model (what tests/test_gpu_lookup.py holds the GPU combine to, on a
    machine without TensorFlow) gives TF's tf.sparse.segment_* bits and this op's, for every row length
    from 0 to 41 (the first group's sizes, the scale below 10 keys and the divisor from 10), with keys
    given out of row order."""
    from slab_model import combine_rows_model, group_by_segment, round_to
    make, dense, path = env
    rng = np.random.default_rng(11)
    lengths = np.arange(42)
    segment_ids = rng.permutation(np.repeat(np.arange(len(lengths)), lengths))  # unsorted
    keys = rng.integers(0, 1000, size=segment_ids.size)
    rows = dense[keys]
    offsets, order = group_by_segment(segment_ids, len(lengths))
    model = combine_rows_model(rows, offsets, order, combiner)
    segment_op = {"sum": tf.sparse.segment_sum, "mean": tf.sparse.segment_mean, "sqrtn": tf.sparse.segment_sqrt_n}
    theirs = segment_op[combiner](rows, order, np.sort(segment_ids), num_segments=len(lengths)).numpy()
    assert_bitwise_equal(model, theirs)
    ours = raw_sparse_lookup(path, tf.constant(keys, tf.int64), tf.constant(segment_ids, tf.int64),
                             tf.constant(len(lengths), tf.int64), combiner=combiner).numpy()
    assert_bitwise_equal(model, ours)
    # Subnormal rows, and small normal ones whose sums land below the normal range: TF's CPU kernels
    # flush them (FTZ and DAZ), and so does the model (and the GPU combine).
    tiny = rows.copy()
    pick = rng.random(tiny.shape)
    tiny[pick < 0.15] = rng.uniform(-1e-38, 1e-38, size=int((pick < 0.15).sum()))
    tiny[pick > 0.85] = rng.choice([-1, 1], size=int((pick > 0.85).sum())) * rng.uniform(1.2e-38, 2e-38,
                                                                                        size=int((pick > 0.85).sum()))
    assert_bitwise_equal(combine_rows_model(tiny, offsets, order, combiner),
                         segment_op[combiner](tiny, order, np.sort(segment_ids), num_segments=len(lengths)).numpy())
    # The model's rounding to the 16-bit output types is TF's cast (and this op's output), bit for bit.
    for name, dtype in (("float16", tf.float16), ("bfloat16", tf.bfloat16)):
        want = tf.bitcast(tf.cast(model, dtype), tf.uint16).numpy()
        np.testing.assert_array_equal(round_to(model, name), want, err_msg=name)
        op = raw_sparse_lookup(path, tf.constant(keys, tf.int64), tf.constant(segment_ids, tf.int64),
                               tf.constant(len(lengths), tf.int64), combiner=combiner, dtype=dtype)
        np.testing.assert_array_equal(round_to(model, name), tf.bitcast(op, tf.uint16).numpy(), err_msg=name)
