"""HPS table folders: the file format, the Python helpers, and the C++ loader's checks."""

import json
import os
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps.storage import Storage


def test_save_table_writes_the_hps_byte_format(tmp_path):
    keys = np.array([7, -1, 2**40], np.int64)
    vectors = np.array([[1.0, 2.0], [3.5, -4.0], [0.25, 8.0]], np.float32)
    hps.save_table(tmp_path, keys, vectors)
    assert (tmp_path / "key").read_bytes() == struct.pack("<3q", *keys.tolist())
    assert (tmp_path / "emb_vector").read_bytes() == struct.pack("<6f", *vectors.ravel().tolist())


def test_load_table_round_trips(tmp_path):
    keys = np.arange(10, 20, dtype=np.int32)
    vectors = np.random.default_rng(0).standard_normal((10, 3))
    hps.save_table(tmp_path, keys, vectors)
    got_keys, got_vectors = hps.load_table(tmp_path, 3)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_vectors, vectors.astype(np.float32))
    assert got_keys.dtype == np.int64 and got_vectors.dtype == np.float32


@pytest.mark.parametrize(
    "keys, vectors, error",
    [
        (np.zeros((2, 2), np.int64), np.zeros((2, 3)), ValueError),
        (np.arange(3), np.zeros((2, 3)), ValueError),
        (np.arange(3.0), np.zeros((3, 3)), TypeError),
        (np.arange(0), np.zeros((0, 3)), ValueError),
    ],
)
def test_save_table_rejects_bad_arrays(tmp_path, keys, vectors, error):
    with pytest.raises(error):
        hps.save_table(tmp_path, keys, vectors)


def test_load_table_checks_sizes_against_the_dimension(tmp_path):
    hps.save_table(tmp_path, np.arange(4), np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="dimension 8"):
        hps.load_table(tmp_path, 8)
    with pytest.raises(FileNotFoundError):
        hps.load_table(tmp_path / "missing", 6)


def test_keras_embedding_weights_become_a_table_that_serves_them(tables):
    embedding = keras.layers.Embedding(50, 8)
    embedding.build((None,))
    folder = hps.save_embedding_layer(os.path.join(tables.root, "t0"), embedding)
    path = tables.config(dims=(8,))
    layer = hps.LookupLayer("foo", 0, 8, tf.float32, path)
    ids = np.array([[0, 49], [3, 3]])
    np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), embedding(ids).numpy())
    assert folder.endswith("t0")


def test_tables_larger_than_one_load_chunk_load_every_row(tables):
    tables.table("t0", 150_000, 4)  # the loader reads 65536 rows at a time
    layer = hps.LookupLayer("foo", 0, 4, tf.float32, tables.config(dims=(4,)))
    keys = np.array([0, 65535, 65536, 131071, 131072, 149_999])
    np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), tables.rows["t0"][1][keys])


def _init(path):
    return hps.Init(global_batch_size=1, ps_config_file=path)


def test_vector_file_of_the_wrong_size_names_the_likely_dimension(tables):
    tables.table("t0", 100, 8)
    path = tables.config(dims=(16,))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"emb_vector' has 3200 bytes.*vectors of 8 floats"):
        _init(path)


def test_missing_table_files_are_not_found(tables):
    folder = tables.table("t0", 10, 16)
    os.remove(os.path.join(folder, "emb_vector"))
    with pytest.raises(tf.errors.NotFoundError, match="has no 'emb_vector' file"):
        _init(tables.config())
    with pytest.raises(tf.errors.NotFoundError, match="table folder .* does not exist"):
        _init(tables.config(tables=("nowhere",), name="c2.json"))


def test_truncated_key_file_is_an_error(tables):
    folder = tables.table("t0", 10, 16)
    with open(os.path.join(folder, "key"), "ab") as f:
        f.write(b"\x00\x01\x02")
    with pytest.raises(tf.errors.InvalidArgumentError, match="83 bytes, not a multiple of 8"):
        _init(tables.config())


def test_empty_key_file_is_an_error(tables):
    folder = tables.table("t0", 10, 16)
    open(os.path.join(folder, "key"), "wb").close()
    with pytest.raises(tf.errors.InvalidArgumentError, match="is empty"):
        _init(tables.config())


def test_32_bit_models_reject_file_keys_that_do_not_fit(tables):
    tables.table("t0", 3, 16, keys=np.array([1, 2, 2**33]))
    path = tables.config(extra={"supportlonglong": False})
    with pytest.raises(tf.errors.InvalidArgumentError, match="key 8589934592 at row 2 does not fit 32 bits"):
        _init(path)


def test_32_bit_models_read_unsigned_file_keys_as_int32_bits(tables):
    # HPS 32-bit models store int32 keys as uint32; -1 arrives from TF as 0xFFFFFFFF.
    tables.table("t0", 3, 16, keys=np.array([0, 5, 2**32 - 1]))
    layer = hps.LookupLayer("foo", 0, 16, tf.float32, tables.config(extra={"supportlonglong": False}))
    got = layer(tf.constant([-1, 5, 0], tf.int32)).numpy()
    np.testing.assert_array_equal(got, tables.rows["t0"][1][[2, 1, 0]])


def test_save_table_refuses_a_key_in_two_rows(tmp_path):
    keys = np.array([1, 4, 7, 9, 11, 7])
    with pytest.raises(ValueError, match=r"key 7 is in rows 2 and 5: each key must be in one row \(1 repeated"):
        hps.save_table(tmp_path / "t", keys, np.zeros((6, 2), np.float32))
    assert not (tmp_path / "t").exists()  # nothing written


def _raw_table(folder, keys, dim) -> np.ndarray:
    """A table folder written byte by byte (hps.save_table would refuse these keys)."""
    os.makedirs(folder, exist_ok=True)
    vectors = np.arange(len(keys) * dim, dtype=np.float32).reshape(len(keys), dim)
    np.asarray(keys, "<i8").tofile(os.path.join(folder, "key"))
    vectors.astype("<f4").tofile(os.path.join(folder, "emb_vector"))
    return vectors


@pytest.mark.parametrize("tiers", [{}, {"persistent_db": {"type": "rocks_db", "path": "PDB"}}])
def test_a_key_twice_in_the_table_files_is_refused_at_load_naming_both_rows(tables, tiers):
    _raw_table(os.path.join(tables.root, "t0"), [3, 8, 5, 8, 1], 16)
    extra = json.loads(json.dumps(tiers).replace("PDB", os.path.join(tables.root, "rocks")))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"key 8 is at row 1 and again at row 3; which row would serve is undefined"):
        _init(tables.config(extra=extra))
    if tiers:  # refused before anything was written
        with Storage("persistent_db", {"type": "rocks_db", "path": os.path.join(tables.root, "rocks"),
                                       "read_only": True}) as db:
            assert db.size("hps_et.foo.sparse_embedding0") == 0 and db.tables() == []


def test_two_file_keys_that_are_one_32_bit_key_are_refused(tables):
    # -1 and 4294967295 are both the int32 key -1 in a supportlonglong: false model: one row would be lost.
    _raw_table(os.path.join(tables.root, "t0"), [0, -1, 7, 4294967295], 16)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"key -1 is at row 1 and again at row 3 \(the file holds -1 and 4294967295, one "
                             r"32-bit key, as supportlonglong is false\)"):
        _init(tables.config(extra={"supportlonglong": False}))


def test_ingest_refuses_a_key_twice_and_writes_nothing(tables):
    folder = os.path.join(tables.root, "t0")
    _raw_table(folder, [3, 8, 5, 8, 1], 4)
    with Storage("persistent_db", {"type": "rocks_db", "path": os.path.join(tables.root, "rocks")}) as db:
        with pytest.raises(ValueError, match="key 8 is at row 1 and again at row 3"):
            db.ingest("hps_et.foo.t0", folder, 4)
        assert db.size("hps_et.foo.t0") == 0


def test_ingest_over_an_earlier_table_leaves_the_files_keys_alone(tables):
    folder = os.path.join(tables.root, "t0")
    vectors = _raw_table(folder, [1, 2, 3], 4)
    with Storage("persistent_db", {"type": "rocks_db", "path": os.path.join(tables.root, "rocks")}) as db:
        db.insert("hps_et.foo.t0", np.arange(10), np.ones((10, 4), np.float32))
        db.ingest("hps_et.foo.t0", folder, 4)
        rows, found = db.fetch("hps_et.foo.t0", np.arange(10), 4)
        assert found.tolist() == [False, True, True, True] + [False] * 6
        np.testing.assert_array_equal(rows[1:4], vectors)
