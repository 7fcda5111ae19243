"""FusedLookupLayer: several tables of a model in one op, equal to a LookupLayer of each, fused or not."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps.storage import table_tag

DIMS = (4, 16, 16, 7)
ROWS = (3000, 20_000, 500, 9000)
DEFAULTS = (1.5, -2.0, 0.0, 7.0)


def _config(tables, model, *, top=True, per_model=None, extra_model=None):
    """Four tables of widths DIMS; the same keys 0..rows-1 in each (keys overlap across tables)."""
    for t, (rows, dim) in enumerate(zip(ROWS, DIMS)):
        if f"t{t}" not in tables.rows:
            tables.table(f"t{t}", rows, dim)
    model_extra = {"gpucacheper": 0.05, "max_batch_size": 65536}
    if per_model is not None:
        model_extra["fuse_embedding_table"] = per_model
    model_extra.update(extra_model or {})
    return tables.config(tables=[f"t{t}" for t in range(4)], dims=DIMS, defaults=DEFAULTS, model=model,
                         extra_model=model_extra, extra={"fuse_embedding_table": top}, name=f"{model}.json")


def _want(tables, t, ids):
    return tf.nn.embedding_lookup(tables.dense(f"t{t}", DEFAULTS[t], 40_000), ids).numpy()


def _ids(rng, t, shape):
    # Keys past the table's rows too: they get the default.
    return rng.integers(0, int(ROWS[t] * 1.2), size=shape)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_fused_lookups_equal_embedding_lookup_of_each_table(tables, fused, dtype):
    path = _config(tables, f"fuse{int(fused)}{dtype.name}", top=fused)
    layer = hps.FusedLookupLayer(f"fuse{int(fused)}{dtype.name}", [0, 1, 2, 3], list(DIMS), tf.float32, path)
    rng = np.random.default_rng(0)
    shapes = [(7,), (40, 26), (), (3, 0)], [(0,), (5000,), (2, 3, 4), (9000,)], [(20_000,), (1,), (11, 3), (64,)]
    for round_shapes in shapes * 3:  # repeated: first misses, then L1 hits
        ids = [_ids(rng, t, s) for t, s in enumerate(round_shapes)]
        got = layer([tf.constant(i, dtype) for i in ids])
        assert len(got) == 4
        for t, (g, i) in enumerate(zip(got, ids)):
            assert g.shape == i.shape + (DIMS[t],) and g.dtype == tf.float32
            np.testing.assert_array_equal(g.numpy(), _want(tables, t, i))


def test_fused_equals_unfused_and_a_lookup_layer_of_each_table_traced(tables):
    """Three ways of the same lookups: LookupLayers, the fused op with fusion off, and with it on; large
    batches whose positions split into ranges that span tables; a 5 % cache, so every batch misses."""
    on, off = _config(tables, "on", top=True), _config(tables, "off", top=True, per_model=False)
    fused = hps.FusedLookupLayer("on", [0, 1, 2, 3], list(DIMS), tf.float32, on)
    unfused = hps.FusedLookupLayer("off", [0, 1, 2, 3], list(DIMS), tf.float32, off)
    single = [hps.LookupLayer("on", t, DIMS[t], tf.float32, on) for t in range(4)]

    @tf.function
    def run(ids):
        return fused(ids), unfused(ids), [layer(i) for layer, i in zip(single, ids)]

    rng = np.random.default_rng(1)
    for n in (1, 700, 9000, 30_000):
        ids = [tf.constant(np.minimum(rng.zipf(1.2, size=(n,)), int(ROWS[t] * 1.2))) for t in range(4)]
        a, b, c = run(ids)
        for t in range(4):
            want = _want(tables, t, ids[t].numpy())
            for got in (a[t], b[t], c[t]):
                np.testing.assert_array_equal(got.numpy(), want)
    stats = hps.stats()
    for t in range(4):
        on_t, off_t = stats[table_tag("on", f"sparse_embedding{t}")], stats[table_tag("off", f"sparse_embedding{t}")]
        # The fused layer's calls were one pass (the LookupLayers' were not); the opted-out model's were not.
        assert on_t["fused_lookups"] == 4 and on_t["lookups"] == 8
        assert off_t["fused_lookups"] == 0 and off_t["lookups"] == 4
        assert on_t["keys"] == 2 * off_t["keys"]
        for s in (on_t, off_t):  # every key was counted once: an L1 hit, or a distinct miss of a tier below
            assert 0 < s["l1_hits"] < s["keys"]
            assert s["missed_keys"] == s["vdb_hits"] + s["pdb_hits"] + s["defaults"] > 0


def test_fusion_is_off_unless_the_top_level_switch_is_on(tables):
    path = _config(tables, "top_off", top=False, per_model=True)
    layer = hps.FusedLookupLayer("top_off", [0, 1], [4, 16], tf.float32, path)
    ids = [tf.constant([1, 2, 3], tf.int64), tf.constant([4, 5], tf.int64)]
    for t, got in enumerate(layer(ids)):
        np.testing.assert_array_equal(got.numpy(), _want(tables, t, ids[t].numpy()))
    assert hps.stats()[table_tag("top_off", "sparse_embedding0")]["fused_lookups"] == 0
    assert hps.stats()[table_tag("top_off", "sparse_embedding0")]["lookups"] == 1


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_one_tensor_with_a_column_per_table(tables, dtype):
    """A (batch, N) categorical input, as DLRM models take theirs: column i is table i's keys; eager, traced,
    and in a Keras model."""
    path = _config(tables, f"columns{dtype.name}")
    layer = hps.FusedLookupLayer(f"columns{dtype.name}", [0, 1, 2, 3], list(DIMS), tf.float32, path)
    rng = np.random.default_rng(5)
    ids = np.stack([_ids(rng, t, (6, 5)) for t in range(4)], axis=-1)  # (6, 5, 4)
    want = [_want(tables, t, ids[..., t]) for t in range(4)]
    for got in (layer(tf.constant(ids, dtype)), tf.function(layer)(tf.constant(ids, dtype))):
        for t in range(4):
            assert got[t].shape == (6, 5, DIMS[t])
            np.testing.assert_array_equal(got[t].numpy(), want[t])
    inp = keras.Input(shape=(5, 4), dtype=dtype.name)
    model = keras.Model(inp, layer(inp))
    for t, got in enumerate(model(tf.constant(ids, dtype))):
        np.testing.assert_array_equal(got.numpy(), want[t])
    # A last dimension unknown when traced: checked when it runs.
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None], dtype)])
    with pytest.raises(tf.errors.InvalidArgumentError):
        traced(tf.constant([[1, 2, 3]], dtype))


def test_a_table_twice_and_tables_in_any_order(tables):
    path = _config(tables, "order")
    layer = hps.FusedLookupLayer("order", [3, 1, 3, 0], [7, 16, 7, 4], tf.float32, path)
    rng = np.random.default_rng(2)
    ids = [_ids(rng, t, (500,)) for t in (3, 1, 3, 0)]
    got = layer([tf.constant(i) for i in ids])
    for g, t, i in zip(got, (3, 1, 3, 0), ids):
        np.testing.assert_array_equal(g.numpy(), _want(tables, t, i))


def test_fused_lookups_without_l1(tables):
    path = _config(tables, "nol1", extra_model={"gpucache": False})
    layer = hps.FusedLookupLayer("nol1", [0, 1, 2, 3], list(DIMS), tf.float32, path)
    rng = np.random.default_rng(3)
    ids = [_ids(rng, t, (n,)) for t, n in enumerate((9000, 4, 0, 12_000))]
    for g, t, i in zip(layer([tf.constant(i) for i in ids]), range(4), ids):
        np.testing.assert_array_equal(g.numpy(), _want(tables, t, i))


def test_output_dtype_rounds_like_a_cast(tables):
    path = _config(tables, "half")
    layer = hps.FusedLookupLayer("half", [0, 1], [4, 16], tf.float16, path)
    ids = [tf.constant([[1, 2], [3, 2999]], tf.int64), tf.constant([19_999, 5], tf.int64)]
    got = layer(ids)
    for t, g in enumerate(got):
        assert g.dtype == tf.float16
        np.testing.assert_array_equal(g.numpy(), tf.cast(_want(tables, t, ids[t].numpy()), tf.float16).numpy())


def test_bad_arguments_name_the_problem(tables):
    path = _config(tables, "bad")
    with pytest.raises(ValueError, match="table_ids must be a list"):
        hps.FusedLookupLayer("bad", 0, 4, tf.float32, path)
    with pytest.raises(ValueError, match="at least one table"):
        hps.FusedLookupLayer("bad", [], 4, tf.float32, path)
    with pytest.raises(ValueError, match="emb_vec_sizes has 1 entries for 2 table_ids"):
        hps.FusedLookupLayer("bad", [0, 1], [4], tf.float32, path)
    with pytest.raises(ValueError, match="emb_vec_size 16 does not match table 0"):
        hps.FusedLookupLayer("bad", [0, 1], 16, tf.float32, path)
    with pytest.raises(ValueError, match="table_id 9 is out of range"):
        hps.FusedLookupLayer("bad", [0, 9], [4, 16], tf.float32, path)
    layer = hps.FusedLookupLayer("bad", [0, 1], [4, 16], tf.float32, path)
    with pytest.raises(ValueError, match="got 1 key tensors for 2 tables"):
        layer([tf.constant([1])])
    with pytest.raises(ValueError, match=r"one column per table \(2"):
        layer(tf.constant([[1, 2, 3]]))
    with pytest.raises(ValueError, match="needs rank >= 2"):
        layer(tf.constant(1))
    with pytest.raises(ValueError, match="needs rank >= 2"):  # (2,): two keys or one sample? Refused.
        layer(tf.constant([1, 2]))
    # The same checks when Keras builds a model on symbolic inputs, not only when it runs.
    with pytest.raises(ValueError, match=r"one column per table \(2"):
        layer(keras.Input(shape=(3,), dtype="int64"))
    with pytest.raises(ValueError, match="got 1 key tensors for 2 tables"):
        layer([keras.Input(shape=(1,), dtype="int64")])
    with pytest.raises(TypeError, match="must be int32 or int64"):
        layer(keras.Input(shape=(2,), dtype="float32"))
    assert layer.compute_output_shape((None, 2)) == [(None, 4), (None, 16)]
    assert layer.compute_output_shape([(None, 3), (5,)]) == [(None, 3, 4), (5, 16)]
    assert layer.compute_output_shape([tf.TensorShape([None, 3]), tf.TensorShape([5])]) == [(None, 3, 4), (5, 16)]
    with pytest.raises(TypeError, match="takes a list of 2 key tensors"):
        layer({"a": tf.constant([1])})
    with pytest.raises(TypeError, match="must all have one dtype"):
        layer([tf.constant([1], tf.int32), tf.constant([1], tf.int64)])
    with pytest.raises(TypeError, match=r"ids\[1\] must be int32 or int64"):
        layer([tf.constant([1]), tf.constant([1.0])])


def test_attrs_that_do_not_match_the_config_fail_in_the_op(tables):
    """A layer made before its config exists (HPS's export-first workflow) checks its tables when it runs."""
    path = os.path.join(tables.root, "later.json")
    layer = hps.FusedLookupLayer("later", [0, 1], [4, 4], tf.float32, path)
    _config(tables, "later")
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="emb_vec_size 4 does not match table 1"):
        layer([tf.constant([1], tf.int64), tf.constant([1], tf.int64)])
    raw = hps.FusedLookupLayer("later", [0, 1], [4, 16], tf.float32, path)
    from tf_hps._ops import ops
    with pytest.raises(tf.errors.InvalidArgumentError, match="emb_vec_size 4 does not match table 1"):
        ops().tf_hps_fused_lookup(keys=[tf.constant([1], tf.int64)] * 2, ps_handle=raw._handle(),
                                  model_name="later", table_ids=[0, 1], emb_vec_sizes=[4, 4])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="one entry per keys tensor"):
        ops().tf_hps_fused_lookup(keys=[tf.constant([1], tf.int64)] * 2, ps_handle=raw._handle(),
                                  model_name="later", table_ids=[0], emb_vec_sizes=[4])


def test_a_model_with_a_fused_layer_exports_and_saves(tables, tmp_path):
    path = _config(tables, "export")
    ids_in = [keras.Input(shape=(3,), dtype="int64", name=f"ids{t}") for t in range(4)]
    outs = hps.FusedLookupLayer("export", [0, 1, 2, 3], list(DIMS), tf.float32, path, name="fused")(ids_in)
    flat = keras.layers.Concatenate()([keras.layers.Flatten()(o) for o in outs])
    model = keras.Model(ids_in, flat)
    rng = np.random.default_rng(4)
    feed = [_ids(rng, t, (5, 3)) for t in range(4)]
    want = np.concatenate([_want(tables, t, feed[t]).reshape(5, -1) for t in range(4)], axis=1)
    np.testing.assert_array_equal(model(feed).numpy(), want)

    export = str(tmp_path / "exported")
    model.export(export, verbose=False)
    loaded = tf.saved_model.load(export)
    got = loaded.serve([tf.constant(f) for f in feed])
    np.testing.assert_array_equal(got.numpy(), want)

    keras_file = str(tmp_path / "model.keras")
    model.save(keras_file)
    restored = keras.saving.load_model(keras_file)
    layer = restored.get_layer("fused")
    assert isinstance(layer, hps.FusedLookupLayer)
    assert layer.table_ids == [0, 1, 2, 3] and layer.emb_vec_sizes == list(DIMS)
    np.testing.assert_array_equal(restored(feed).numpy(), want)
    assert json.loads(layer.get_config()["ps_config"])["fuse_embedding_table"] is True
