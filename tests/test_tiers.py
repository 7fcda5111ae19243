"""The lookup chain L1 -> VDB -> PDB -> default: exact answers whichever tier holds a row."""

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps.storage import Storage, table_tag

ROWS, DIM = 5000, 8


def lookups_are_exact(layer, tables, rounds=20, seed=0):
    dense = tables.dense("t0", 1.5, ROWS + 500)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        ids = np.minimum(rng.zipf(1.1, size=(300,)), ROWS + 499)
        np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())


@pytest.mark.parametrize(
    "volatile_db",
    [
        {"type": "disabled"},
        {"type": "hash_map", "initial_cache_rate": 0.1},
        {"type": "hash_map", "initial_cache_rate": 0.0, "cache_missed_embeddings": True},
        {"type": "hash_map", "num_partitions": 2, "overflow_margin": 100, "cache_missed_embeddings": True},
    ],
    ids=["pdb-only", "vdb-10pct", "vdb-empty-writeback", "vdb-tiny-overflowing"],
)
def test_rocksdb_behind_any_vdb_gives_exact_rows(tables, tmp_path, volatile_db):
    tables.table("t0", ROWS, DIM)
    path = tables.config(dims=(DIM,), extra_model={"gpucacheper": 0.01},
                         extra={"volatile_db": volatile_db,
                                "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    lookups_are_exact(hps.LookupLayer("foo", 0, DIM, tf.float32, path), tables)


@pytest.mark.parametrize(
    "volatile_db",
    [
        {"type": "hash_map"},
        {"type": "hash_map", "initial_cache_rate": 0.1},
        {"type": "hash_map", "initial_cache_rate": 0.0, "cache_missed_embeddings": True},
        {"type": "hash_map", "num_partitions": 2, "overflow_margin": 100, "cache_missed_embeddings": True},
    ],
    ids=["vdb-all", "vdb-10pct", "vdb-empty-writeback", "vdb-tiny-overflowing"],
)
def test_without_l1_the_hash_map_answers_each_position_and_the_rest_goes_below(tables, tmp_path, volatile_db):
    """No L1, an in-process VDB: it is handed the batch as it is (repeats included, in shards on the
    pool for long batches, streamed into large outputs), and only the distinct keys it lacks go on to
    RocksDB and the default. Rows are exact; the counters still add up (missed_keys = positions the
    hash map answered + distinct keys of the rest); rows written back are answered by the hash map
    next time."""
    tables.table("t0", ROWS, DIM)
    model = "nol1"
    path = tables.config(dims=(DIM,), model=model, extra_model={"gpucache": False},
                         extra={"volatile_db": volatile_db,
                                "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    layer = hps.LookupLayer(model, 0, DIM, tf.float32, path)
    dense = tables.dense("t0", 1.5, ROWS + 500)
    tag = table_tag(model, "sparse_embedding0")
    names = ("keys", "missed_keys", "vdb_hits", "pdb_hits", "defaults", "l1_hits")
    layer(tf.constant([ROWS + 1]))  # loads the table
    rng = np.random.default_rng(7)
    # 600k keys of D=8: an output of 19 MiB, written with non-temporal stores.
    for size in (1, 300, 20_000, 600_000, 20_000):
        ids = np.minimum(rng.zipf(1.1, size=(size,)), ROWS + 499)
        before = hps.stats()[tag]
        np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())
        after = hps.stats()[tag]
        d = {name: after[name] - before[name] for name in names}
        assert d["keys"] == size and d["l1_hits"] == 0
        assert d["vdb_hits"] + d["pdb_hits"] + d["defaults"] == d["missed_keys"]
        assert d["defaults"] == len(np.unique(ids[ids >= ROWS]))  # each unknown key once
        rest = d["missed_keys"] - d["vdb_hits"]  # distinct keys the hash map lacked
        assert rest == d["pdb_hits"] + d["defaults"] <= len(np.unique(ids))
        if volatile_db == {"type": "hash_map"}:
            assert d["vdb_hits"] == np.count_nonzero(ids < ROWS) and d["pdb_hits"] == 0
    if volatile_db.get("cache_missed_embeddings") and "overflow_margin" not in volatile_db:
        # Every known row read so far was written back: the hash map answers all their positions.
        ids = np.minimum(rng.zipf(1.1, size=(5000,)), ROWS + 499)
        ids = ids[np.isin(ids, np.arange(ROWS))]
        layer(tf.constant(ids))  # rows first seen here move up now
        before = hps.stats()[tag]
        np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())
        after = hps.stats()[tag]
        assert after["vdb_hits"] - before["vdb_hits"] == ids.size
        assert after["pdb_hits"] == before["pdb_hits"]


def test_the_pdb_holds_every_row_after_start_up(tables, tmp_path):
    tables.table("t0", ROWS, DIM)
    path = tables.config(dims=(DIM,), extra={"persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}},
                         name="writer.json")
    hps.LookupLayer("foo", 0, DIM, tf.float32, path)(tf.constant([1]))  # loads the tables
    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb"), "read_only": True}) as db:
        keys, vectors = tables.rows["t0"]
        got, found = db.fetch(table_tag("foo", "sparse_embedding0"), keys, DIM)
    assert found.all()
    np.testing.assert_array_equal(got, vectors)


def test_a_read_only_pdb_ingested_ahead_serves_without_table_files(tables, tmp_path):
    folder = tables.table("t0", ROWS, DIM)
    keys, vectors = tables.rows["t0"]
    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb")}) as db:
        db.insert(table_tag("foo", "sparse_embedding0"), keys, vectors)
    import shutil

    shutil.rmtree(folder)  # serving nodes need no model files
    path = tables.config(dims=(DIM,), extra={
        "volatile_db": {"type": "hash_map", "initialize_after_startup": False, "cache_missed_embeddings": True},
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb"), "read_only": True}})
    lookups_are_exact(hps.LookupLayer("foo", 0, DIM, tf.float32, path), tables)


def test_a_table_missing_from_a_read_only_pdb_is_an_error(tables, tmp_path):
    tables.table("t0", 10, DIM)
    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb")}) as db:
        db.insert("hps_et.other.table", [1], np.ones((1, DIM), np.float32))
    path = tables.config(dims=(DIM,), extra={
        "volatile_db": {"type": "disabled"},
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb"), "read_only": True}})
    with pytest.raises(tf.errors.NotFoundError, match="hps_et.foo.sparse_embedding0 is not in the rocks_db"):
        hps.Init(global_batch_size=1, ps_config_file=path)


def redis_vdb(server, **extra):
    return {"type": "redis_cluster", "address": server.address, "num_partitions": 6, **extra}


@pytest.mark.parametrize("deployment", ["redis_standalone", "redis_cluster"])
def test_redis_vdb_serves_exact_rows(tables, request, deployment):
    server = request.getfixturevalue(deployment)
    tables.table("t0", ROWS, DIM)
    model = f"m_{deployment}"  # tables of other tests share the server
    path = tables.config(dims=(DIM,), model=model, extra_model={"gpucacheper": 0.01},
                         extra={"volatile_db": redis_vdb(server)})
    lookups_are_exact(hps.LookupLayer(model, 0, DIM, tf.float32, path), tables)
    # The rows live where docs/storage.md says: one hash per partition.
    lengths = sum(server.client.hlen(f"hps_et{{hps_et.{model}.sparse_embedding0/p{p}}}v") for p in range(6))
    assert lengths == ROWS


def test_rows_only_rocksdb_held_are_written_back_into_redis(tables, tmp_path, redis_cluster):
    tables.table("t0", ROWS, DIM)
    model = "writeback"
    path = tables.config(dims=(DIM,), model=model, extra_model={"gpucache": False}, extra={
        "volatile_db": redis_vdb(redis_cluster, initial_cache_rate=0.0, cache_missed_embeddings=True),
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    layer = hps.LookupLayer(model, 0, DIM, tf.float32, path)
    with Storage("volatile_db", redis_vdb(redis_cluster)) as redis_db:
        tag = table_tag(model, "sparse_embedding0")
        assert redis_db.size(tag) == 0  # initial_cache_rate 0: Redis starts empty
        ids = np.array([3, 17, 4999, 6000])
        layer(tf.constant(ids))
        got, found = redis_db.fetch(tag, ids, DIM)
    assert found.tolist() == [True, True, True, False]  # unknown keys are not written back
    np.testing.assert_array_equal(got[:3], tables.rows["t0"][1][ids[:3]])


def test_cli_ingest_fills_redis_for_nodes_that_load_nothing(tables, tmp_path, redis_cluster):
    import subprocess
    import sys

    folder = tables.table("t0", ROWS, DIM)
    model = "ingested"
    vdb = redis_vdb(redis_cluster, initialize_after_startup=False)
    path = tables.config(dims=(DIM,), model=model, extra={"volatile_db": vdb})
    out = subprocess.run([sys.executable, "-m", "tf_hps", "ingest", f"--config={path}"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "tf_hps", "verify", f"--config={path}"], capture_output=True,
                         text=True, timeout=120)
    assert f"redis_cluster hps_et.{model}.sparse_embedding0: OK: {ROWS} rows checked" in out.stdout
    import shutil

    shutil.rmtree(folder)
    lookups_are_exact(hps.LookupLayer(model, 0, DIM, tf.float32, path), tables)


def test_a_hash_map_that_cannot_keep_every_row_needs_a_persistent_db(tables, tmp_path):
    """Without a PDB, rows the hash map evicted would answer the default: refused at init. With one, served exactly."""
    tables.table("t0", 3000, 8)
    vdb = {"type": "hash_map", "overflow_margin": 500, "num_partitions": 4}
    path = tables.config(model="vdb_too_small", dims=(8,), extra={"volatile_db": vdb})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"the volatile_db keeps \d+ of its 3000 rows \(overflow_margin 500 per partition, 4 "
                             "partitions\\) and there is no persistent_db"):
        hps.Init(1, path)
    path = tables.config(model="vdb_small_pdb", dims=(8,), name="with_pdb.json", extra={
        "volatile_db": vdb, "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rocks")}})
    layer = hps.LookupLayer("vdb_small_pdb", 0, 8, tf.float32, path)
    keys, vectors = tables.rows["t0"]
    hps.testing.assert_bitwise_equal(layer(tf.constant(keys)), vectors)


def test_a_redis_restarted_empty_with_no_persistent_db_is_counted_and_logged(tables, tmp_path, capfd):
    """Redis as the only tier loses its rows (restarted without persistence): the lost rows answer the
    default, as unknown keys do, so the server counts them (vdb_rows_missing) and warns."""
    from redis_servers import RedisServer

    server = RedisServer(str(tmp_path / "redis"))
    try:
        tables.table("t0", 100, 4)
        keys, vectors = tables.rows["t0"]
        config = tables.config(dims=(4,), model="restarted", defaults=(-1.0,),
                               extra={"volatile_db": {"type": "redis_cluster", "address": server.address},
                                      "persistent_db": {"type": "disabled"}},
                               extra_model={"gpucache": False})
        layer = hps.LookupLayer("restarted", 0, 4, tf.float32, config)
        np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), vectors)
        port = server.port
        server.stop()
        server = RedisServer(str(tmp_path / "redis"), port=port)  # back, empty
        tag = table_tag("restarted", "sparse_embedding0")

        def served():
            try:
                return layer(tf.constant(keys)).numpy()
            except tf.errors.OpError:
                return None
        for _ in range(50):  # the server retries a Redis it saw go down once a second
            rows = served()
            if rows is not None and hps.stats()[tag]["vdb_rows_missing"] > 0:
                break
            import time
            time.sleep(0.1)
        np.testing.assert_array_equal(rows, np.full((100, 4), -1.0, np.float32))
        assert hps.stats()[tag]["vdb_rows_missing"] == 100
        assert "holds 0 of the 100 rows it was loaded with, and there is no persistent_db" in capfd.readouterr().err
    finally:
        server.stop()
