"""Online updates through Redis streams: publisher, message format, consumer, caches.

Real redis-server processes (fixtures in redis_servers.py); the publisher runs in
another process where the issue asks for it; results are checked against numpy and
against what redis-py reads from the stream and from the Redis VDB.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, run_python
from tf_hps.storage import table_tag
from tf_hps.updates import UpdatePublisher


def update_config(tables, name, address, dim=8, rows=2000, vdb=None, pdb=None, gpucacheper=0.5, extra_model=None):
    tables.table(name, rows, dim)
    extra = {"update_source": {"type": "redis_stream", "address": address, "poll_timeout_ms": 200}}
    if vdb is not None:
        extra["volatile_db"] = vdb
    if pdb is not None:
        extra["persistent_db"] = pdb
    return tables.config(tables=(name,), dims=(dim,), model=name, defaults=(0.0,), name=f"{name}.json",
                         extra=extra, extra_model={"gpucacheper": gpucacheper, **(extra_model or {})})


def lookup(layer, keys) -> np.ndarray:
    return layer(tf.constant(np.asarray(keys, np.int64))).numpy()


def wait_for(predicate, timeout=20.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_published_rows_reach_cached_and_uncached_keys(tables, redis_standalone):
    config = update_config(tables, "upd_basic", redis_standalone.address)
    keys, vectors = tables.rows["upd_basic"]
    layer = hps.LookupLayer("upd_basic", 0, 8, tf.float32, config)
    np.testing.assert_array_equal(lookup(layer, keys[:500]), vectors[:500])  # now in L1

    changed = np.array([3, 7, 499, 1500, 1999], np.int64)  # cached and not cached
    new_rows = np.arange(changed.size * 8, dtype=np.float32).reshape(-1, 8) + 1000
    with UpdatePublisher(config) as publisher:
        publisher.publish("upd_basic", "sparse_embedding0", changed, new_rows)
    expected = vectors.copy()
    expected[changed] = new_rows
    assert wait_for(lambda: np.array_equal(lookup(layer, keys), expected)), "updates did not arrive"
    stats = hps.stats()[table_tag("upd_basic", "sparse_embedding0")]
    assert stats["rows_updated"] == changed.size
    assert 0 <= stats["update_lag_ms"] < 20_000
    assert stats["updates_rejected"] == 0


def test_message_format_read_back_with_redis_py(tables, redis_standalone):
    """The documented format, decoded independently of our C++ (docs/updates.md)."""
    config = update_config(tables, "upd_format", redis_standalone.address, dim=4)
    keys = np.array([-1, 2**63 - 1, 5], np.int64)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    publisher = UpdatePublisher(config)
    publisher.publish("upd_format", 0, keys, rows)  # table by index
    publisher.flush()
    publisher.close()
    entries = redis_standalone.client.xrange(f"hps_upd{{{table_tag('upd_format', 'sparse_embedding0')}}}")
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"v"] == b"1" and fields[b"model"] == b"upd_format" and fields[b"table"] == b"sparse_embedding0"
    assert fields[b"key_type"] == b"int64" and fields[b"value_type"] == b"float32"
    assert int(fields[b"dim"]) == 4 and int(fields[b"count"]) == 3
    np.testing.assert_array_equal(np.frombuffer(fields[b"keys"], "<i8"), keys)
    np.testing.assert_array_equal(np.frombuffer(fields[b"vectors"], "<f4").reshape(3, 4), rows)


def test_publisher_splits_batches_and_checks_its_input(tables, redis_standalone):
    config = update_config(tables, "upd_checks", redis_standalone.address, dim=4)
    with open(config) as f:
        cfg = json.load(f)
    cfg["update_source"]["max_batch_size"] = 100
    with open(config, "w") as f:
        json.dump(cfg, f)
    publisher = UpdatePublisher(config)
    publisher.publish("upd_checks", "sparse_embedding0", np.arange(250), np.ones((250, 4), np.float32))
    publisher.flush()
    stream = f"hps_upd{{{table_tag('upd_checks', 'sparse_embedding0')}}}"
    counts = [int(e[1][b"count"]) for e in redis_standalone.client.xrange(stream)]
    assert counts == [100, 100, 50]
    with pytest.raises(ValueError, match="dimension 5 .* embedding_vecsize_per_table 4"):
        publisher.publish("upd_checks", "sparse_embedding0", [1], np.ones((1, 5)))
    with pytest.raises(ValueError, match="'nope' is not a table of model 'upd_checks'"):
        publisher.publish("upd_checks", "nope", [1], np.ones((1, 4)))
    with pytest.raises(ValueError, match="model 'other' is not in the config"):
        publisher.publish("other", "sparse_embedding0", [1], np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"shape \(2, dim\)"):
        publisher.publish("upd_checks", "sparse_embedding0", [1, 2], np.ones((3, 4)))
    with pytest.raises(TypeError, match="keys must be integers"):
        publisher.publish("upd_checks", "sparse_embedding0", [1.5], np.ones((1, 4)))
    publisher.close()
    with pytest.raises(ValueError, match="closed"):
        publisher.flush()


def test_publisher_needs_a_redis_stream_source(simple):
    _, config = simple
    with pytest.raises(ValueError, match='needs "redis_stream"'):
        UpdatePublisher(config)


def test_malformed_messages_are_counted_and_skipped(tables, redis_standalone):
    config = update_config(tables, "upd_bad", redis_standalone.address, dim=4)
    keys, vectors = tables.rows["upd_bad"]
    layer = hps.LookupLayer("upd_bad", 0, 4, tf.float32, config)
    lookup(layer, keys[:10])
    stream = f"hps_upd{{{table_tag('upd_bad', 'sparse_embedding0')}}}"
    client = redis_standalone.client
    client.xadd(stream, {"v": "9", "model": "upd_bad"})  # unknown version
    good = {"v": "1", "model": "upd_bad", "table": "sparse_embedding0", "key_type": "int64",
            "value_type": "float32", "count": "1", "keys": np.array([4], "<i8").tobytes()}
    client.xadd(stream, {**good, "dim": "3", "vectors": np.ones(3, "<f4").tobytes()})  # wrong dimension
    client.xadd(stream, {**good, "dim": "4", "vectors": np.ones(2, "<f4").tobytes()})  # short vectors
    client.xadd(stream, {**good, "dim": "4", "vectors": np.full(4, 9, "<f4").tobytes()})  # fine
    tag = table_tag("upd_bad", "sparse_embedding0")
    assert wait_for(lambda: hps.stats()[tag]["rows_updated"] == 1)
    assert hps.stats()[tag]["updates_rejected"] == 3
    expected = vectors[:10].copy()
    expected[4] = 9
    np.testing.assert_array_equal(lookup(layer, keys[:10]), expected)


def test_shared_redis_vdb_cluster_gets_each_update_once_and_newest_wins(tables, redis_cluster):
    vdb = {"type": "redis_cluster", "address": redis_cluster.address, "num_partitions": 4}
    config = update_config(tables, "upd_shared", redis_cluster.address, vdb=vdb)
    keys, vectors = tables.rows["upd_shared"]
    layer = hps.LookupLayer("upd_shared", 0, 8, tf.float32, config)
    lookup(layer, keys[:100])
    publisher = UpdatePublisher(config)
    rows_v1 = np.full((50, 8), 1.0, np.float32)
    rows_v2 = np.full((50, 8), 2.0, np.float32)
    publisher.publish("upd_shared", 0, keys[:50], rows_v1)
    publisher.publish("upd_shared", 0, keys[:50], rows_v2)
    publisher.flush()
    expected = vectors[:100].copy()
    expected[:50] = 2.0
    assert wait_for(lambda: np.array_equal(lookup(layer, keys[:100]), expected))
    # The VDB itself holds the newest rows (read with redis-py), and the group acknowledged everything.
    stream = f"hps_upd{{{table_tag('upd_shared', 'sparse_embedding0')}}}"
    groups = {g["name"].decode(): g for g in redis_cluster.client.xinfo_groups(stream)}
    assert groups["hps.volatile"]["pending"] == 0
    tag = table_tag("upd_shared", "sparse_embedding0")
    found = 0
    for p in range(4):
        stored = redis_cluster.client.hgetall(f"hps_et{{{tag}/p{p}}}v")
        for key in keys[:50]:
            row = stored.get(int(key).to_bytes(8, "little", signed=True))
            if row is not None:
                np.testing.assert_array_equal(np.frombuffer(row, "<f4"), rows_v2[0])
                found += 1
    assert found == 50


def test_an_older_update_applied_late_never_replaces_a_newer_row(redis_cluster):
    """Several serving processes may apply messages of one stream out of order: Redis keeps the newest."""
    from tf_hps.storage import Storage

    tag = "hps_et.upd_order.t"
    with Storage("volatile_db", {"type": "redis_cluster", "address": redis_cluster.address,
                                 "num_partitions": 3}) as db:
        db.drop(tag)
        keys = np.arange(40)
        v2 = np.full((30, 2), 2.0, np.float32)
        db.apply_update(tag, keys[:30], v2, "00000000000000000200-00000000000000000000")
        db.apply_update(tag, keys, np.full((40, 2), 1.0, np.float32), "00000000000000000100-00000000000000000005")
        rows, found = db.fetch(tag, keys, 2)
        assert found.all()
        np.testing.assert_array_equal(rows[:30], v2)  # the late, older update did not win
        np.testing.assert_array_equal(rows[30:], 1.0)  # keys it alone wrote are written
        db.apply_update(tag, keys[:5], np.full((5, 2), 3.0, np.float32), "00000000000000000200-00000000000000000001")
        np.testing.assert_array_equal(db.fetch(tag, keys[:5], 2)[0], 3.0)
        db.drop(tag)
        assert not any(redis_cluster.client.exists(f"hps_et{{{tag}/p{p}}}u") for p in range(3))


def test_consistency_one_million_row_updates_from_another_process_while_lookups_run(tables, redis_standalone):
    """Every key ends with its last published row; no lookup returns a row mixing two versions, a row of
    another key, or a row older than an update that was fully applied before the lookup started."""
    num_keys, versions, dim = 20_000, 50, 8
    config = update_config(tables, "upd_million", redis_standalone.address, dim=dim, rows=num_keys, gpucacheper=0.3)
    tag = table_tag("upd_million", "sparse_embedding0")
    layer = hps.LookupLayer("upd_million", 0, dim, tf.float32, config)
    lookup_fn = tf.function(lambda k: layer(k))
    lookup(layer, [0])  # creates the server
    stop = threading.Event()
    errors: list[str] = []
    checked = {"rows": 0}

    def reader(seed):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            # Messages are applied in order, so once rows_updated reaches (v + 1) * num_keys every
            # key holds version v or newer everywhere.
            applied = hps.stats()[tag]["rows_updated"] // num_keys - 1
            keys = rng.integers(0, num_keys, 4096)
            rows = lookup_fn(tf.constant(keys, tf.int64)).numpy()
            published = rows[:, 0] >= 1_000_000
            if applied >= 0 and not published.all():
                errors.append(f"version {applied} was applied, yet a key returned its file row")
            if published.any():
                got = rows[published]
                if (got != got[:, :1]).any():
                    errors.append(f"torn row: {got[(got != got[:, :1]).any(axis=1)][0]}")
                code = got[:, 0].astype(np.int64) - 1_000_000
                key_of, version = code // 100, code % 100
                if (key_of != keys[published]).any():
                    errors.append("a row of another key")
                if (version < applied).any():
                    errors.append(f"version {version.min()} returned after version {applied} was applied")
                checked["rows"] += int(published.sum())
            if errors:
                stop.set()

    threads = [threading.Thread(target=reader, args=(s,), daemon=True) for s in (1, 2)]
    for t in threads:
        t.start()
    publish = f"""
import sys; sys.path.insert(0, {ROOT!r})
import numpy as np
from tf_hps.updates import UpdatePublisher
keys = np.arange({num_keys})
with UpdatePublisher({config!r}) as publisher:
    for version in range({versions}):
        rows = np.repeat((1_000_000 + keys * 100 + version).astype(np.float32)[:, None], {dim}, axis=1)
        publisher.publish("upd_million", "sparse_embedding0", keys, rows)
        publisher.flush()
"""
    run_python(publish, timeout=300)
    final = (1_000_000 + np.arange(num_keys) * 100 + versions - 1).astype(np.float32)
    ok = wait_for(lambda: hps.stats()[tag]["rows_updated"] == num_keys * versions, timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a reader hung"
    assert not errors, errors[:3]
    assert ok, f"{hps.stats()[tag]['rows_updated']} of {num_keys * versions} rows applied"
    rows = lookup(layer, np.arange(num_keys))
    np.testing.assert_array_equal(rows, np.repeat(final[:, None], dim, axis=1))
    assert checked["rows"] > 0


def test_keras_callback_publishes_the_rows_training_changed(tables, redis_standalone):
    import keras

    config = update_config(tables, "upd_keras", redis_standalone.address, dim=4, rows=50)
    keys, vectors = tables.rows["upd_keras"]
    serving = hps.LookupLayer("upd_keras", 0, 4, tf.float32, config)
    np.testing.assert_array_equal(lookup(serving, keys), vectors)

    embedding = keras.layers.Embedding(50, 4, embeddings_initializer=keras.initializers.Constant(vectors))
    model = keras.Sequential([keras.Input((1,), dtype="int64"), embedding, keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    trained = np.array([3, 9, 27])  # only these rows get gradients
    callback = hps.PublishChangedRows(hps.UpdatePublisher(config), "upd_keras", "sparse_embedding0", embedding,
                                      every_n_steps=2)
    model.fit(trained[:, None], np.ones((3, 1)), batch_size=1, epochs=3, verbose=0, callbacks=[callback])
    table = embedding.get_weights()[0]
    changed = np.flatnonzero((table != vectors).any(axis=1))
    assert changed.tolist() == trained.tolist()
    assert callback.rows_published >= len(trained)
    assert wait_for(lambda: np.array_equal(lookup(serving, keys), table))
    with pytest.raises(ValueError, match="every_n_steps must be a positive int"):
        hps.PublishChangedRows(callback.publisher, "upd_keras", 0, embedding, every_n_steps=0)


def test_shared_vdb_group_resumes_after_a_redis_restart(tables, tmp_path):
    """Redis with an append-only file restarts; the group, the stream and the VDB survive, and updates go on."""
    from redis_servers import RedisServer

    redis_args = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisServer(str(tmp_path), *redis_args)
    port = server.port
    try:
        vdb = {"type": "redis_cluster", "address": server.address, "num_partitions": 2}
        config = update_config(tables, "upd_restart", server.address, dim=4, rows=100, vdb=vdb)
        keys, vectors = tables.rows["upd_restart"]
        layer = hps.LookupLayer("upd_restart", 0, 4, tf.float32, config)
        lookup(layer, keys)
        publisher = UpdatePublisher(config)
        publisher.publish("upd_restart", 0, keys[:10], np.full((10, 4), 1.0, np.float32))
        publisher.flush()
        publisher.close()
        expected = vectors.copy()
        expected[:10] = 1.0
        assert wait_for(lambda: np.array_equal(lookup(layer, keys), expected))

        server.stop()  # kill -9
        server = RedisServer(str(tmp_path), *redis_args, port=port)
        stream = f"hps_upd{{{table_tag('upd_restart', 'sparse_embedding0')}}}"
        groups = {g["name"].decode(): g for g in server.client.xinfo_groups(stream)}
        assert groups["hps.volatile"]["pending"] == 0  # acknowledged before the restart, and remembered
        with UpdatePublisher(config) as publisher:
            publisher.publish("upd_restart", 0, keys[5:20], np.full((15, 4), 2.0, np.float32))
        expected[5:20] = 2.0
        assert wait_for(lambda: np.array_equal(lookup(layer, keys), expected), timeout=30)
        assert server.client.xinfo_groups(stream)[0]["pending"] == 0
    finally:
        server.stop()


SERVE_UNTIL = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np, tensorflow as tf
import tf_hps as hps
layer = hps.LookupLayer("upd_pdb", 0, 4, tf.float32, {config!r})
keys = tf.constant(np.arange(100), tf.int64)
want = {want!r}
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    rows = layer(keys).numpy()
    if all(rows[int(k), 0] == v for k, v in want.items()):
        break
    time.sleep(0.02)
print(json.dumps(rows[:, 0].tolist()))
"""


def test_persistent_db_resumes_after_a_process_restart(tables, redis_standalone, tmp_path):
    """A RocksDB kept across restarts (initialize_after_startup false) gets the updates published while
    its process was down, and keeps the ones applied before."""
    from tf_hps.storage import Storage

    tables.table("upd_pdb", 100, 4)
    keys, vectors = tables.rows["upd_pdb"]
    pdb = {"type": "rocks_db", "path": str(tmp_path / "rocks"), "initialize_after_startup": False}
    with Storage("persistent_db", {"type": "rocks_db", "path": pdb["path"]}) as db:
        db.insert(table_tag("upd_pdb", "sparse_embedding0"), keys, vectors)
    config = tables.config(tables=("upd_pdb",), dims=(4,), model="upd_pdb", defaults=(0.0,), name="upd_pdb.json",
                           extra={"update_source": {"type": "redis_stream", "address": redis_standalone.address},
                                  "volatile_db": {"type": "disabled"}, "persistent_db": pdb})

    first = run_python(SERVE_UNTIL.format(root=ROOT, config=config, want={}))  # creates the groups
    assert json.loads(first.stdout.strip().splitlines()[-1]) == vectors[:, 0].tolist()
    publisher = UpdatePublisher(config)
    code = SERVE_UNTIL.format(root=ROOT, config=config, want={3: 1.0})
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    time.sleep(0.5)
    publisher.publish("upd_pdb", 0, [3], np.full((1, 4), 1.0, np.float32))
    publisher.flush()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])[3] == 1.0, err

    # Published while no server runs.
    publisher.publish("upd_pdb", 0, [7, 8], np.full((2, 4), 2.0, np.float32))
    publisher.flush()
    publisher.close()
    last = run_python(SERVE_UNTIL.format(root=ROOT, config=config, want={7: 2.0, 8: 2.0}))
    served = json.loads(last.stdout.strip().splitlines()[-1])
    expected = vectors[:, 0].copy()
    expected[3], expected[7], expected[8] = 1.0, 2.0, 2.0
    np.testing.assert_array_equal(np.array(served, np.float32), expected)


def test_publisher_sends_by_itself_when_its_queue_is_full(tables, redis_standalone):
    """Back-pressure: past max_pending_bytes, publish sends what is queued before it returns."""
    config = update_config(tables, "upd_pressure", redis_standalone.address, dim=4)
    stream = f"hps_upd{{{table_tag('upd_pressure', 'sparse_embedding0')}}}"
    row_bytes = 8 + 4 * 4
    publisher = UpdatePublisher(config, max_pending_bytes=100 * row_bytes)
    publisher.publish("upd_pressure", 0, np.arange(50), np.ones((50, 4), np.float32))
    assert redis_standalone.client.xlen(stream) == 0  # queued
    publisher.publish("upd_pressure", 0, np.arange(60), np.ones((60, 4), np.float32))
    assert redis_standalone.client.xlen(stream) == 2  # 110 rows queued > 100: both messages sent
    publisher.publish("upd_pressure", 0, np.arange(10), np.ones((10, 4), np.float32))
    assert redis_standalone.client.xlen(stream) == 2
    publisher.flush()
    assert redis_standalone.client.xlen(stream) == 3
    publisher.close()


def test_a_key_twice_in_one_publish_serves_its_last_row_everywhere(tables, redis_standalone):
    """The last row of a batch wins, in L1, in the databases and after refresh_cache()."""
    config = update_config(tables, "upd_twice", redis_standalone.address, dim=4)
    layer = hps.LookupLayer("upd_twice", 0, 4, tf.float32, config)
    tag = table_tag("upd_twice", "sparse_embedding0")
    lookup(layer, [150])  # cached
    publisher = UpdatePublisher(config)
    publisher.publish("upd_twice", "sparse_embedding0", [150, 7, 150], np.array([[1.0] * 4, [3.0] * 4, [2.0] * 4]))
    publisher.flush()
    stream = f"hps_upd{{{tag}}}"
    (entry,) = redis_standalone.client.xrange(stream)[-1:]
    assert int(entry[1][b"count"]) == 2  # one row per key
    assert wait_for(lambda: lookup(layer, [150]).tolist() == [[2.0] * 4])
    hps.refresh_cache("upd_twice")
    assert lookup(layer, [150, 7]).tolist() == [[2.0] * 4, [3.0] * 4]


def test_a_message_naming_another_table_is_refused_and_counted(tables, redis_standalone, capfd):
    config = update_config(tables, "upd_other", redis_standalone.address, dim=4)
    keys, vectors = tables.rows["upd_other"]
    layer = hps.LookupLayer("upd_other", 0, 4, tf.float32, config)
    lookup(layer, keys[:5])
    tag = table_tag("upd_other", "sparse_embedding0")
    message = {"v": "1", "model": "other", "table": "t9", "key_type": "int64", "value_type": "float32",
               "count": "1", "dim": "4", "keys": np.array([3], "<i8").tobytes(),
               "vectors": np.full(4, 8, "<f4").tobytes()}
    redis_standalone.client.xadd(f"hps_upd{{{tag}}}", message)
    assert wait_for(lambda: hps.stats()[tag]["updates_rejected"] == 1)
    np.testing.assert_array_equal(lookup(layer, keys[:5]), vectors[:5])  # key 3 kept its row
    assert "the message names model 'other', table 't9', but" in capfd.readouterr().err


def test_fields_of_update_messages_reach_the_log_escaped(tables, redis_standalone, capfd):
    config = update_config(tables, "upd_forged", redis_standalone.address, dim=4)
    hps.LookupLayer("upd_forged", 0, 4, tf.float32, config)(tf.constant([1], tf.int64))
    tag = table_tag("upd_forged", "sparse_embedding0")
    redis_standalone.client.xadd(f"hps_upd{{{tag}}}", {"v": "1\n[tf_hps W] forged\x1b[31m red"})
    assert wait_for(lambda: hps.stats()[tag]["updates_rejected"] == 1)
    err = capfd.readouterr().err
    assert not any(line.startswith("[tf_hps W] forged") for line in err.splitlines()), err
    assert "\x1b" not in err and "1\\x0a[tf_hps W] forged\\x1b[31m red" in err


def test_publish_refuses_keys_that_do_not_fit_int64(tables, redis_standalone):
    publisher = UpdatePublisher(update_config(tables, "upd_uint", redis_standalone.address, dim=4))
    with pytest.raises(ValueError, match="keys must fit int64: 18446744073709551615 does not"):
        publisher.publish("upd_uint", "sparse_embedding0", np.array([2**64 - 1], np.uint64), np.ones((1, 4)))
    publisher.close()


TRIM_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np, tensorflow as tf
import tf_hps as hps
layer = hps.LookupLayer("upd_trim", 0, 4, tf.float32, {config!r})
layer(tf.constant(np.arange(1000), tf.int64))  # the server starts, and every row is in L1
print("ready", flush=True)
sys.stdin.readline()  # stopped, then continued, by the parent
tag = "hps_et.upd_trim.sparse_embedding0"
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    stats = hps.stats()[tag]
    if stats["rows_updated"] + stats["updates_trimmed"] >= 1000:
        break
    time.sleep(0.05)
rows = layer(tf.constant(np.arange(1000), tf.int64)).numpy()
print(json.dumps({{"stats": stats, "first": rows[:, 0].tolist()}}))
"""


def test_messages_trimmed_before_the_process_read_them_are_counted_and_logged(tables, redis_standalone):
    """The race forced: the serving process is stopped (SIGSTOP) while 1,000 one-row messages go into a
    stream trimmed to about 100. Once it runs again, every message is either applied or counted in
    updates_trimmed, and the loss is logged."""
    import signal
    import subprocess
    import sys

    tables.table("upd_trim", 1000, 4)
    config = tables.config(tables=("upd_trim",), dims=(4,), model="upd_trim", defaults=(0.0,), name="upd_trim.json",
                           extra={"update_source": {"type": "redis_stream", "address": redis_standalone.address,
                                                    "poll_timeout_ms": 200, "max_stream_entries": 100,
                                                    "max_batch_size": 1}},
                           extra_model={"gpucacheper": 1.0})
    child = subprocess.Popen([sys.executable, "-c", TRIM_CHILD.format(root=ROOT, config=config)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"})
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGSTOP)
        with UpdatePublisher(config) as publisher:
            publisher.publish("upd_trim", 0, np.arange(1000), np.full((1000, 4), 9.0, np.float32))
        stream = f"hps_upd{{{table_tag('upd_trim', 'sparse_embedding0')}}}"
        left = redis_streams_len = redis_standalone.client.xlen(stream)
        assert 100 <= redis_streams_len < 1000
        child.send_signal(signal.SIGCONT)
        out, err = child.communicate("go\n", timeout=120)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    stats = result["stats"]
    assert stats["rows_updated"] == left
    assert stats["updates_trimmed"] == 1000 - left
    # The messages left were the last ones: their keys serve the new rows, the trimmed keys their old ones.
    _, vectors = tables.rows["upd_trim"]
    served = np.array(result["first"], np.float32)
    np.testing.assert_array_equal(served[1000 - left:], 9.0)
    np.testing.assert_array_equal(served[:1000 - left], vectors[:1000 - left, 0])
    assert f"{1000 - left} message(s) of {stream} were trimmed from the stream before this process read them" in err
