"""A serving node comes up while its Redis is down, and one update stream failing stops no other.

A pod restarted during a Redis outage must start, serve from RocksDB (or the default), warn, and use
Redis once it is back. One unreachable node, or a stream key holding something that is not a
stream, must not stop the online updates of tables whose streams are fine.
"""

import time

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from redis_servers import RedisServer, free_port, start_cluster
from tf_hps.storage import table_tag

ROWS, DIM = 500, 8


def stats(model, table="sparse_embedding0"):
    return hps.stats()[table_tag(model, table)]


def lookup(layer, ids):
    return layer(tf.constant(np.asarray(ids, np.int64))).numpy()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("prefilled", [False, True])
def test_a_node_starts_while_its_redis_is_down_serves_from_rocksdb_and_uses_redis_once_back(
        tables, tmp_path, capfd, prefilled):
    """prefilled: the usual shared deployment (RocksDB read-only, filled ahead; Redis not loaded at start);
    else the node loads its files at start-up, RocksDB takes them and Redis cannot."""
    tables.table("t0", ROWS, DIM)
    rocks = str(tmp_path / "rocks")
    model = f"redis_down_{prefilled}"
    if prefilled:  # a node that filled RocksDB earlier
        hps.Init(1, tables.config(model=model, dims=(DIM,), name="fill.json",
                                  extra={"persistent_db": {"type": "rocks_db", "path": rocks}}))
    port = free_port()
    vdb = {"type": "redis_cluster", "address": f"127.0.0.1:{port}", "num_partitions": 2,
           "cache_missed_embeddings": True, "initialize_after_startup": not prefilled}
    pdb = {"type": "rocks_db", "path": rocks + ("" if prefilled else "_own"), "read_only": prefilled}
    config = tables.config(model=model, dims=(DIM,), extra_model={"gpucache": False}, name="node.json",
                           extra={"volatile_db": vdb, "persistent_db": pdb})
    layer = hps.LookupLayer(model, 0, DIM, tf.float32, config)
    ids = np.arange(0, ROWS + 50, 3)
    want = tf.nn.embedding_lookup(tables.dense("t0", 1.5, ROWS + 50), ids).numpy()
    hps.testing.assert_bitwise_equal(lookup(layer, ids), want)  # started, and answered by RocksDB
    err = capfd.readouterr().err
    assert "volatile_db: starting without it: redis_cluster: no server in volatile_db.address answered" in err, err
    assert stats(model)["pdb_hits"] > 0 and stats(model)["vdb_hits"] == 0

    server = RedisServer(str(tmp_path), port=port)  # Redis is back (empty)
    try:
        time.sleep(1.1)  # the back-off
        hps.testing.assert_bitwise_equal(lookup(layer, ids), want)  # read RocksDB, wrote the rows into Redis
        assert "volatile_db: connected" in capfd.readouterr().err
        hits = stats(model)["vdb_hits"]
        hps.testing.assert_bitwise_equal(lookup(layer, ids), want)
        assert stats(model)["vdb_hits"] - hits == np.count_nonzero(ids < ROWS)  # now from Redis
    finally:
        server.stop()


def test_a_redis_only_node_starts_while_redis_is_down_and_answers_the_default(tables, capfd):
    tables.table("t0", ROWS, DIM)
    model = "redis_only_down"
    config = tables.config(model=model, dims=(DIM,), defaults=(-2.0,), extra={"volatile_db": {
        "type": "redis_cluster", "address": f"127.0.0.1:{free_port()}"}})
    assert hps.Init(1, config) == "OK"
    got = lookup(hps.LookupLayer(model, 0, DIM, tf.float32, config), [ROWS + 1])
    assert got.tolist() == [[-2.0] * DIM]
    err = capfd.readouterr().err
    assert f"table {table_tag(model, 'sparse_embedding0')}: not loaded into the redis_cluster, which does not " \
           "answer: lookups go to the default until it does" in err, err


def update_setup(tables, model, address, tables_named=("t0", "t1")):
    for t in tables_named:
        tables.table(t, ROWS, DIM)
    return tables.config(tables=tables_named, dims=(DIM,) * len(tables_named), model=model,
                         defaults=(0.0,) * len(tables_named), name=f"{model}.json",
                         extra={"update_source": {"type": "redis_stream", "address": address, "poll_timeout_ms": 50,
                                                  "failure_backoff_ms": 200}})


def publish(config, model, table, key, value):
    publisher = hps.UpdatePublisher(config)
    publisher.publish(model, table, np.array([key]), np.full((1, DIM), value, np.float32))
    publisher.flush()
    publisher.close()


def test_a_stream_that_is_no_stream_stops_only_its_table(tables, tmp_path):
    server = RedisServer(str(tmp_path))
    try:
        model = "bad_stream"
        config = update_setup(tables, model, server.address)
        server.client.set(f"hps_upd{{{table_tag(model, 'sparse_embedding0')}}}", "not a stream")  # WRONGTYPE
        hps.Init(1, config)
        layer1 = hps.LookupLayer(model, 1, DIM, tf.float32, config)
        publish(config, model, "sparse_embedding1", 7, 4.0)
        assert wait_for(lambda: lookup(layer1, [7]).tolist() == [[4.0] * DIM]), stats(model, "sparse_embedding1")
        assert stats(model, "sparse_embedding0")["update_failures"] >= 1
        assert stats(model, "sparse_embedding1")["update_failures"] == 0
        # Repaired, the stream is set up and its updates flow too.
        server.client.delete(f"hps_upd{{{table_tag(model, 'sparse_embedding0')}}}")
        layer0 = hps.LookupLayer(model, 0, DIM, tf.float32, config)
        publish(config, model, "sparse_embedding0", 3, 5.0)
        assert wait_for(lambda: lookup(layer0, [3]).tolist() == [[5.0] * DIM]), stats(model)
    finally:
        server.stop()


def test_the_update_source_down_at_start_up_is_read_once_it_answers(tables, tmp_path, capfd):
    port = free_port()
    model = "source_down"
    config = update_setup(tables, model, f"127.0.0.1:{port}", tables_named=("t0",))
    assert hps.Init(1, config) == "OK"  # the source does not answer: the server starts anyway
    assert "online updates: starting without the update_source" in capfd.readouterr().err
    server = RedisServer(str(tmp_path), port=port)
    try:
        # Published before the consumer reconnects: it starts from where the streams stood at its start.
        publish(config, model, "sparse_embedding0", 11, 6.0)
        layer = hps.LookupLayer(model, 0, DIM, tf.float32, config)
        assert wait_for(lambda: lookup(layer, [11]).tolist() == [[6.0] * DIM]), stats(model)
    finally:
        server.stop()


def test_a_dead_cluster_node_stops_only_the_streams_it_holds(tables, tmp_path):
    cluster = start_cluster(str(tmp_path))
    try:
        model = "node_down"
        names = [f"t{i}" for i in range(6)]
        config = update_setup(tables, model, cluster.address, tables_named=tuple(names))
        hps.Init(1, config)
        owners = {}  # which node holds each table's stream
        for i in range(6):
            key = f"hps_upd{{{table_tag(model, f'sparse_embedding{i}')}}}"
            slot = cluster.client.keyslot(key)
            owners[i] = cluster.client.nodes_manager.get_node_from_slot(slot).port
        victim = owners[0]
        alive = [i for i in range(6) if owners[i] != victim]
        assert alive, owners
        next(s for s in cluster.servers if s.port == victim).process.kill()
        time.sleep(0.3)
        live = alive[0]
        layer = hps.LookupLayer(model, live, DIM, tf.float32, config)
        publisher = hps.UpdatePublisher(config)
        publisher.publish(model, f"sparse_embedding{live}", np.array([5]), np.full((1, DIM), 9.0, np.float32))
        publisher.flush()
        assert wait_for(lambda: lookup(layer, [5]).tolist() == [[9.0] * DIM]), stats(model, f"sparse_embedding{live}")
        assert wait_for(lambda: stats(model)["update_failures"] >= 1)
    finally:
        cluster.stop()
