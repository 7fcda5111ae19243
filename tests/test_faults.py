"""Databases failing: a Redis VDB going down is passed over, RocksDB problems are clear errors at init."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from redis_servers import RedisServer
from tf_hps.storage import Storage, table_tag

ROWS, DIM = 2000, 8


def exact(layer, tables, ids):
    dense = tables.dense("t0", 1.5, ROWS + 100)
    np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())


def counters(model):
    return hps.stats()[table_tag(model, "sparse_embedding0")]


def test_redis_going_down_and_coming_back(tables, tmp_path, capfd):
    server = RedisServer(str(tmp_path))
    port = server.port
    tables.table("t0", ROWS, DIM)
    model = "flaky"
    path = tables.config(dims=(DIM,), model=model, extra_model={"gpucache": False}, extra={
        "volatile_db": {"type": "redis_cluster", "address": server.address, "num_partitions": 4,
                        "cache_missed_embeddings": True},
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    layer = hps.LookupLayer(model, 0, DIM, tf.float32, path)
    ids = np.arange(0, ROWS + 100, 7)
    try:
        exact(layer, tables, ids)
        assert counters(model)["vdb_hits"] == np.count_nonzero(ids < ROWS)

        server.process.kill()  # kill -9
        server.process.wait()
        start = time.monotonic()
        for _ in range(5):
            exact(layer, tables, ids)  # answered by RocksDB
        assert time.monotonic() - start < 5.0, "lookups must not wait on the dead server"
        after_outage = counters(model)
        assert after_outage["vdb_errors"] >= 1 and after_outage["vdb_skipped"] >= 1
        assert "volatile_db is unavailable; lookups go to the next tier" in capfd.readouterr().err

        server = RedisServer(str(tmp_path), port=port)  # back, empty
        time.sleep(1.1)  # the back-off period
        exact(layer, tables, ids)
        assert counters(model)["vdb_errors"] == after_outage["vdb_errors"]
        # It is used again: cache_missed_embeddings refilled it from RocksDB.
        assert sum(server.client.hlen(f"hps_et{{{table_tag(model, 'sparse_embedding0')}/p{p}}}v")
                   for p in range(4)) == np.count_nonzero(ids < ROWS)
        assert "volatile_db answers again" in capfd.readouterr().err
    finally:
        server.stop()


def test_redis_down_without_a_pdb_answers_the_default(tables, tmp_path):
    server = RedisServer(str(tmp_path))
    tables.table("t0", ROWS, DIM)
    model = "nopdb"
    path = tables.config(dims=(DIM,), model=model, extra_model={"gpucache": False},
                         extra={"volatile_db": {"type": "redis_cluster", "address": server.address}})
    layer = hps.LookupLayer(model, 0, DIM, tf.float32, path)
    layer(tf.constant([1]))
    server.stop()
    got = layer(tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(got, np.full((2, DIM), 1.5, np.float32))
    assert counters(model)["defaults"] == 2


def rocks_path_config(tables, path, **pdb):
    tables.table("t0", 10, DIM)
    return tables.config(dims=(DIM,), extra={"volatile_db": {"type": "disabled"},
                                             "persistent_db": {"type": "rocks_db", "path": str(path), **pdb}})


def test_rocksdb_locked_by_another_writer_is_a_clear_error(tables, tmp_path):
    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb")}):
        path = rocks_path_config(tables, tmp_path / "rdb")
        with pytest.raises(tf.errors.UnavailableError, match="rdb"):
            hps.Init(global_batch_size=1, ps_config_file=path)


def test_rocksdb_read_only_on_a_missing_path_is_a_clear_error(tables, tmp_path):
    path = rocks_path_config(tables, tmp_path / "nowhere", read_only=True)
    with pytest.raises(tf.errors.NotFoundError, match="nowhere"):
        hps.Init(global_batch_size=1, ps_config_file=path)


def test_rocksdb_path_that_is_not_a_database_is_a_clear_error(tables, tmp_path):
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "CURRENT").write_text("garbage\n")
    path = rocks_path_config(tables, tmp_path / "junk")
    with pytest.raises((tf.errors.InternalError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError),
                       match="junk"):
        hps.Init(global_batch_size=1, ps_config_file=path)
