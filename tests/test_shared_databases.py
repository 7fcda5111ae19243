"""Rows that may be older than online updates never replace them: start-up loads and write-backs.

docs/updates.md, "Shared databases". Each race is forced by doing its steps in the losing order,
not by waiting for luck: the rows a lookup read from RocksDB before an update are written back after
it, a second node loads its table files after the first one's updates. Real redis-server processes
(standalone and a 3-master cluster) and real RocksDB; redis-py reads what Redis holds.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, run_python
from tf_hps.storage import Storage, table_tag
from tf_hps.updates import UpdatePublisher
from test_updates import lookup, wait_for


@pytest.fixture(params=["redis_standalone", "redis_cluster"])
def deployment(request):
    return request.getfixturevalue(request.param)


def field(key: int) -> bytes:
    return struct.pack("<q", int(key))


def redis_rows(deployment, tag: str, keys, num_partitions: int) -> dict[int, np.ndarray | None]:
    """Each key's row as redis-py finds it in the documented hashes (None: no row)."""
    found: dict[int, np.ndarray | None] = {int(k): None for k in keys}
    for p in range(num_partitions):
        stored = deployment.client.hgetall(f"hps_et{{{tag}/p{p}}}v")
        for k in found:
            row = stored.get(field(k))
            if row is not None:
                assert found[k] is None, f"key {k} in two partitions"
                found[k] = np.frombuffer(row, "<f4")
    return found


# --- the backend: InsertUnlessUpdated against ApplyUpdate, in the losing order ---------------------

def test_rows_older_than_an_update_never_replace_it_in_redis(deployment):
    tag = f"hps_et.shared{len(deployment.servers)}.t0"
    keys = np.arange(100, dtype=np.int64)
    files = np.full((100, 4), 1.0, np.float32)
    updated = np.full((30, 4), 2.0, np.float32)
    with Storage("volatile_db", {"type": "redis_cluster", "address": deployment.address,
                                 "num_partitions": 3}) as db:
        db.drop(tag)
        db.insert(tag, keys, files, keep_updated=True)  # the first node's start-up load
        # A lookup reads keys 0..99 from RocksDB (the files' rows), then an update of keys 0..29 lands
        # in Redis, then the lookup writes back what it read.
        db.evict(tag, keys)
        db.apply_update(tag, keys[:30], updated, "00000000000000000005-00000000000000000000")
        db.insert(tag, keys, files, keep_updated=True, only_absent=True)
        rows = redis_rows(deployment, tag, keys, 3)
        assert all(np.array_equal(rows[k], updated[0]) for k in range(30))
        assert all(np.array_equal(rows[k], files[0]) for k in range(30, 100))

        # Overflow evicts updated rows; a write-back of older rows must not bring them back.
        db.evict(tag, keys[:10])
        db.insert(tag, keys, files, keep_updated=True, only_absent=True)
        rows = redis_rows(deployment, tag, keys, 3)
        assert all(rows[k] is None for k in range(10)), "a write-back restored rows older than an update"
        assert all(np.array_equal(rows[k], updated[0]) for k in range(10, 30))

        # A second node's start-up load of new files: rows no update wrote take the files' rows.
        new_files = np.full((100, 4), 3.0, np.float32)
        db.insert(tag, keys, new_files, keep_updated=True)
        rows = redis_rows(deployment, tag, keys, 3)
        assert all(rows[k] is None for k in range(10))
        assert all(np.array_equal(rows[k], updated[0]) for k in range(10, 30))
        assert all(np.array_equal(rows[k], new_files[0]) for k in range(30, 100))

        # The same steps with a plain insert lose the update: what the checks above guard against.
        db.insert(tag, keys, files)
        rows = redis_rows(deployment, tag, keys, 3)
        assert all(np.array_equal(rows[k], files[0]) for k in range(100))
        db.drop(tag)


def test_keep_updated_is_a_plain_insert_for_backends_one_process_writes(tmp_path):
    with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "db")}) as db:
        db.insert("hps_et.m.t0", [1, 2], np.ones((2, 4), np.float32))
        db.insert("hps_et.m.t0", [2, 3], np.full((2, 4), 5.0, np.float32), keep_updated=True)
        rows, found = db.fetch("hps_et.m.t0", [1, 2, 3], 4)
        assert found.all() and rows[:, 0].tolist() == [1.0, 5.0, 5.0]
        with pytest.raises(ValueError, match="only_absent needs keep_updated"):
            db.insert("hps_et.m.t0", [1], np.ones((1, 4), np.float32), only_absent=True)


# --- a serving process ----------------------------------------------------------------------------

def shared_config(tables, name, deployment, tmp_path, pdb_filters=None, rows=200, initial_cache_rate=0.0):
    tables.table(name, rows, 4)
    vdb = {"type": "redis_cluster", "address": deployment.address, "num_partitions": 3,
           "initial_cache_rate": initial_cache_rate, "cache_missed_embeddings": True}
    pdb = {"type": "rocks_db", "path": str(tmp_path / f"{name}_rocks")}
    if pdb_filters is not None:
        pdb["update_filters"] = pdb_filters
    extra = {"update_source": {"type": "redis_stream", "address": deployment.address, "poll_timeout_ms": 200},
             "volatile_db": vdb, "persistent_db": pdb}
    return tables.config(tables=(name,), dims=(4,), model=name, defaults=(-1.0,), name=f"{name}.json",
                         extra=extra, extra_model={"gpucache": False})


def test_a_lookup_never_writes_back_a_row_older_than_an_update(tables, deployment, tmp_path):
    """The race of a write-back, forced: RocksDB still holds the rows of the files when the lookup reads
    it (its update_filters take no updates: it stands for a RocksDB whose group has not applied the
    update yet), the update is in Redis, and overflow evicted it there."""
    name = f"wb_{len(deployment.servers)}"
    config = shared_config(tables, name, deployment, tmp_path, pdb_filters=["^none$"])
    keys, vectors = tables.rows[name]
    tag = table_tag(name, "sparse_embedding0")
    layer = hps.LookupLayer(name, 0, 4, tf.float32, config)
    np.testing.assert_array_equal(lookup(layer, keys[:20]), vectors[:20])  # the server starts at its first call
    new_rows = np.full((20, 4), 7.0, np.float32)
    with UpdatePublisher(config) as publisher:
        publisher.publish(name, 0, keys[:20], new_rows)
    assert wait_for(lambda: np.array_equal(lookup(layer, keys[:20]), new_rows)), "the update did not arrive"
    with Storage("volatile_db", {"type": "redis_cluster", "address": deployment.address,
                                 "num_partitions": 3}) as vdb:
        vdb.evict(tag, keys[:20])  # what overflow does
    # Redis misses, RocksDB answers with its rows: the write-back must leave the updated keys out, and
    # bring the others up.
    np.testing.assert_array_equal(lookup(layer, keys[:40]), vectors[:40])
    rows = redis_rows(deployment, tag, keys[:40], 3)
    assert [k for k in range(20) if rows[k] is not None] == [], "RocksDB's older rows went into Redis"
    assert all(np.array_equal(rows[k], vectors[k]) for k in range(20, 40))


def test_a_second_node_starting_keeps_the_updates_of_the_first(tables, deployment, tmp_path):
    """Node B starts with the default initialize_after_startup and loads the same files into the Redis
    node A serves from, after A applied 1,000 updates: A still serves every updated row."""
    name = f"second_{len(deployment.servers)}"
    config = shared_config(tables, name, deployment, tmp_path, rows=3000, initial_cache_rate=1.0)
    keys, vectors = tables.rows[name]
    layer = hps.LookupLayer(name, 0, 4, tf.float32, config)
    np.testing.assert_array_equal(lookup(layer, keys), vectors)  # the server starts at its first call
    new_rows = np.arange(4000, dtype=np.float32).reshape(1000, 4) + 0.5
    with UpdatePublisher(config) as publisher:
        publisher.publish(name, 0, keys[:1000], new_rows)
    expected = vectors.copy()
    expected[:1000] = new_rows
    assert wait_for(lambda: np.array_equal(lookup(layer, keys), expected)), "the updates did not arrive"

    # Node B: another process, its own RocksDB, the same Redis and table files.
    with open(config) as f:
        config_b = json.load(f)
    config_b["persistent_db"]["path"] = str(tmp_path / f"{name}_rocks_b")
    path_b = os.path.join(os.path.dirname(config), f"{name}_b.json")
    with open(path_b, "w") as f:
        json.dump(config_b, f)
    run_python(f"""
import sys
sys.path.insert(0, {ROOT!r})
import tensorflow as tf
import tf_hps as hps
layer = hps.LookupLayer({name!r}, 0, 4, tf.float32, {path_b!r})
layer(tf.constant([0], tf.int64))
""")
    np.testing.assert_array_equal(lookup(layer, keys), expected)
    rows = redis_rows(deployment, table_tag(name, "sparse_embedding0"), keys[:1000], 3)
    assert all(rows[k] is None or np.array_equal(rows[k], new_rows[k]) for k in range(1000))
    assert sum(rows[k] is not None for k in range(1000)) == 1000


# --- a start-up load over an earlier one ----------------------------------------------------------

def test_a_reload_removes_the_keys_the_table_files_no_longer_hold(tables, tmp_path):
    db_path = str(tmp_path / "rocks")
    tag = table_tag("reload", "sparse_embedding0")
    earlier = np.random.default_rng(5).standard_normal((1000, 4)).astype(np.float32)
    with Storage("persistent_db", {"type": "rocks_db", "path": db_path}) as db:
        db.insert(tag, np.arange(1000), earlier)  # an earlier load: keys 0..999
    tables.table("reload", 500, 4)  # the new files: keys 0..499
    keys, vectors = tables.rows["reload"]
    config = tables.config(tables=("reload",), dims=(4,), model="reload", defaults=(-1.0,), name="reload.json",
                           extra={"volatile_db": {"type": "disabled"},
                                  "persistent_db": {"type": "rocks_db", "path": db_path}},
                           extra_model={"gpucache": False})
    served = run_python(f"""
import json, sys
sys.path.insert(0, {ROOT!r})
import numpy as np, tensorflow as tf
import tf_hps as hps
layer = hps.LookupLayer("reload", 0, 4, tf.float32, {config!r})
print(json.dumps(layer(tf.constant(np.arange(1000), tf.int64)).numpy().tolist()))
""")
    rows = np.array(json.loads(served.stdout.strip().splitlines()[-1]), np.float32)
    np.testing.assert_array_equal(rows[:500], vectors)
    np.testing.assert_array_equal(rows[500:], np.full((500, 4), -1.0, np.float32))
    with Storage("persistent_db", {"type": "rocks_db", "path": db_path, "read_only": True}) as db:
        assert db.size(tag) == 500
        _, found = db.fetch(tag, [700, 999, 499], 4)
        assert found.tolist() == [False, False, True]
