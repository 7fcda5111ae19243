"""Bad input raises a Python exception that names the problem: never a crash or garbage."""

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps._ops import ops


def raw_lookup(path, keys, model="foo", table_id=0, emb_vec_size=16):
    """The op without the layer's Python-side checks, as a SavedModel would run it."""
    handle = ops().tf_hps_init(ps_config=hps.load_config(path).canonical_json)
    return ops().tf_hps_lookup(keys=keys, ps_handle=handle, model_name=model, table_id=table_id,
                               emb_vec_size=emb_vec_size)


def test_nonexistent_config_file(tmp_path):
    """HPS's way: the layer records the path; the file must exist when the op first runs."""
    layer = hps.LookupLayer("foo", 0, 16, tf.float32, str(tmp_path / "nope.json"))
    with pytest.raises(tf.errors.NotFoundError,
                       match="model 'foo': its layer's ps_config_file: config file '.*nope.json' cannot be opened"):
        layer(tf.constant([1]))


def test_malformed_config_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{supportlonglong: true}")
    with pytest.raises(tf.errors.InvalidArgumentError, match="not valid JSON"):
        hps.LookupLayer("foo", 0, 16, tf.float32, str(path))


def test_unknown_model_name(simple):
    _, path = simple
    with pytest.raises(ValueError, match="model 'bar' is not in .* \\(models: 'foo'\\)"):
        hps.LookupLayer("bar", 0, 16, tf.float32, path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="model 'bar' is not in the config"):
        raw_lookup(path, tf.constant([1], tf.int64), model="bar")


def test_table_id_out_of_range(simple):
    _, path = simple
    with pytest.raises(ValueError, match="table_id 1 is out of range: model 'foo' has 1 table"):
        hps.LookupLayer("foo", 1, 16, tf.float32, path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="table_id 3 is out of range"):
        raw_lookup(path, tf.constant([1], tf.int64), table_id=3)


def test_emb_vec_size_not_matching_the_config(simple):
    _, path = simple
    with pytest.raises(ValueError, match="emb_vec_size 8 does not match .* embedding_vecsize_per_table is 16"):
        hps.LookupLayer("foo", 0, 8, tf.float32, path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="emb_vec_size 8 does not match"):
        raw_lookup(path, tf.constant([1], tf.int64), emb_vec_size=8)


@pytest.mark.parametrize("dtype", [tf.float32, tf.string, tf.uint8])
def test_keys_that_are_not_int32_or_int64(simple, dtype):
    _, path = simple
    layer = hps.LookupLayer("foo", 0, 16, tf.float32, path)
    keys = tf.constant(["a"]) if dtype == tf.string else tf.constant([1], dtype)
    with pytest.raises(TypeError, match="ids must be int32 or int64"):
        layer(keys)
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.NotFoundError, TypeError), match="Tkeys"):
        raw_lookup(path, keys)


def test_int64_keys_for_a_32_bit_model(simple):
    tables, _ = simple
    path = tables.config(extra={"supportlonglong": False}, name="c32.json")
    with pytest.raises(tf.errors.InvalidArgumentError, match="keys are int64 but the config sets supportlonglong"):
        raw_lookup(path, tf.constant([1], tf.int64))


def test_unsupported_output_dtype(simple):
    _, path = simple
    with pytest.raises(ValueError, match="emb_vec_dtype must be float32"):
        hps.LookupLayer("foo", 0, 16, tf.int32, path)


@pytest.mark.parametrize("kwargs", [dict(table_id=-1), dict(emb_vec_size=0), dict(model_name=""),
                                    dict(global_batch_size=0)])
def test_invalid_layer_arguments(simple, kwargs):
    _, path = simple
    args = dict(model_name="foo", table_id=0, emb_vec_size=16, emb_vec_dtype=tf.float32, ps_config_file=path)
    args.update(kwargs)
    with pytest.raises(ValueError):
        hps.LookupLayer(**args)


def test_missing_or_inconsistent_table_files_fail_the_first_lookup(simple):
    tables, path = simple
    import os

    os.truncate(os.path.join(tables.root, "t0", "emb_vector"), 100)
    layer = hps.LookupLayer("foo", 0, 16, tf.float32, path)  # the config itself is fine
    with pytest.raises(tf.errors.InvalidArgumentError, match="emb_vector' has 100 bytes"):
        layer(tf.constant([1]))
    # Fixing the files makes the next call succeed: failed loads are not remembered.
    tables.table("t0", 1000, 16)
    np.testing.assert_array_equal(layer(tf.constant([1])).numpy(), tables.rows["t0"][1][[1]])


def test_layer_without_config_and_without_init(tmp_path):
    from conftest import run_python

    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import tensorflow as tf, tf_hps as hps\n"
        "layer = hps.LookupLayer('foo', 0, 16, tf.float32)\n"
        "fn = tf.function(layer).get_concrete_function(tf.TensorSpec([None], tf.int64))  # traces: HPS's export\n"
        "try:\n    layer(tf.constant([1]))\nexcept tf.errors.FailedPreconditionError as e:\n"
        "    print('FailedPreconditionError:', e.message)\n"
    ) % (__import__("conftest").ROOT,)
    out = run_python(code).stdout
    assert out.startswith("FailedPreconditionError:")
    assert ("model 'foo' has no config in this process: call hps.Init(ps_config_file=...) naming it before the "
            "first lookup, or give the layer a ps_config_file") in out


def test_global_batch_size_above_max_batch_size_warns(simple):
    _, path = simple  # max_batch_size 1024
    with pytest.warns(UserWarning, match="global_batch_size 4096 is above model 'foo''s max_batch_size 1024") as seen:
        assert hps.Init(global_batch_size=4096, ps_config_file=path) == "OK"
    assert seen[0].filename == __file__  # the warning points at the caller's line


def test_refresh_of_a_model_nobody_serves(simple):
    _, path = simple
    hps.Init(global_batch_size=8, ps_config_file=path)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"refresh_cache: no parameter server in this process serves model 'typo' \(served: .*'foo'"):
        hps.refresh_cache("typo")
    assert hps.refresh_cache("foo") >= 0


def test_a_lookup_above_the_configured_batch_is_served_and_logged_once(tables):
    from conftest import ROOT, run_python

    tables.table("t0", 1000, 16)
    path = tables.config(model="oversized")  # max_batch_size 1024 x 8 keys per sample = 8192 keys per call
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import numpy as np, tensorflow as tf, tf_hps as hps\n"
        "layer = hps.LookupLayer('oversized', 0, 16, tf.float32, sys.argv[1])\n"
        "for n in (8192, 20000, 30000):\n"
        "    assert layer(tf.range(n, dtype=tf.int64)).shape == (n, 16)\n"
    ) % (ROOT,)
    err = run_python(code, path).stderr
    assert err.count("a lookup of") == 1, err
    assert ("table hps_et.oversized.sparse_embedding0: a lookup of 20000 keys, more than max_batch_size x "
            "maxnum_catfeature_query_per_table_per_sample = 8192; served in full") in err
