"""Redis AUTH with an ACL user that holds only the commands and keys tf_hps needs.

The user below is the least-privilege setup docs/security.md describes: every lookup, ingest,
online-update and fault path must work with it, and anything else must be refused by Redis.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
import tensorflow as tf

import tf_hps as hps
from redis_servers import RedisServer
from tf_hps.storage import Storage, table_tag
from tf_hps.updates import UpdatePublisher

# Keys: tables (hps_et{...}v|t|u) and update streams (hps_upd{...}). Commands: what storage/ and core/
# send, plus what the update script calls (HGET, HSET).
HPS_ACL = ["hps", "on", ">hps-pw", "~hps_*", "resetchannels",
           "+ping", "+hset", "+hget", "+hmget", "+hdel", "+hlen", "+hkeys", "+hgetall", "+hincrby", "+hrandfield",
           "+del", "+scan", "+eval", "+asking", "+cluster|slots",
           "+xadd", "+xread", "+xreadgroup", "+xack", "+xgroup|create", "+xinfo|groups", "+xpending",
           "+xautoclaim", "+xinfo|stream", "+hexists", "+exists"]


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    server = RedisServer(str(tmp_path_factory.mktemp("redis_acl")), "--user", *HPS_ACL)
    yield server
    server.stop()


def test_least_privilege_acl_user_serves_ingests_and_updates(tables, acl_server):
    tables.table("acl", 300, 8)
    keys, vectors = tables.rows["acl"]
    section = {"type": "redis_cluster", "address": acl_server.address, "user_name": "hps", "password": "hps-pw",
               "num_partitions": 3, "overflow_margin": 250, "overflow_policy": "evict_least_used"}
    config = tables.config(tables=("acl",), dims=(8,), model="acl", defaults=(0.0,), name="acl.json",
                           extra={"volatile_db": section,
                                  "update_source": {"type": "redis_stream", "address": acl_server.address,
                                                    "user_name": "hps", "password": "hps-pw"}},
                           extra_model={"gpucacheper": 0.2})
    layer = hps.LookupLayer("acl", 0, 8, tf.float32, config)
    out = layer(tf.constant(keys[:200], tf.int64)).numpy()
    np.testing.assert_array_equal(out, vectors[:200])  # about 100 rows a partition: below the margin
    with UpdatePublisher(config) as publisher:
        publisher.publish("acl", 0, keys[:5], np.full((5, 8), 7.0, np.float32))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (layer(tf.constant(keys[:5], tf.int64)).numpy() == 7.0).all():
            break
        time.sleep(0.02)
    np.testing.assert_array_equal(layer(tf.constant(keys[:5], tf.int64)).numpy(), 7.0)
    assert hps.stats()[table_tag("acl", "sparse_embedding0")]["vdb_errors"] == 0

    with Storage("volatile_db", section) as db:  # the tools' paths: list, size, drop
        assert table_tag("acl", "sparse_embedding0") in db.tables()
        assert 0 < db.size(table_tag("acl", "sparse_embedding0")) <= 300

    user = redis.Redis(host="127.0.0.1", port=acl_server.port, username="hps", password="hps-pw")
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SET", "hps_x", "1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*command)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.hset("other_key", "f", "v")  # keys outside hps_*
    user.close()


def test_a_user_without_a_needed_command_gets_a_clear_error(tables, tmp_path):
    server = RedisServer(str(tmp_path), "--user", "weak", "on", ">weak-pw", "~*", "+ping", "+cluster|slots")
    try:
        with pytest.raises(RuntimeError, match="NOPERM|permission"):
            with Storage("volatile_db", {"type": "redis_cluster", "address": server.address, "user_name": "weak",
                                         "password": "weak-pw"}) as db:
                db.insert("hps_et.m.t", np.arange(2), np.ones((2, 4), np.float32))
    finally:
        server.stop()
