"""Rows changed in the databases reach the L1 cache through a refresh: on demand or on a timer."""

import time

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from tf_hps.storage import Storage, table_tag

DIM = 8


def redis_served_layer(tables, redis_standalone, model, **extra_model):
    tables.table("t0", 1000, DIM)
    vdb = {"type": "redis_cluster", "address": redis_standalone.address, "num_partitions": 4}
    path = tables.config(dims=(DIM,), model=model, extra_model={"gpucacheper": 1.0, **extra_model},
                         extra={"volatile_db": vdb})
    return hps.LookupLayer(model, 0, DIM, tf.float32, path), Storage("volatile_db", vdb)


def test_refresh_cache_brings_database_changes_into_l1(tables, redis_standalone):
    layer, redis_db = redis_served_layer(tables, redis_standalone, "refreshed")
    keys = np.arange(0, 1000, 10)
    old = tables.rows["t0"][1][keys]
    np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), old)  # now cached
    new = old + 100.0
    redis_db.insert(table_tag("refreshed", "sparse_embedding0"), keys, new)  # a training job's update
    np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), old)  # L1 still answers
    assert hps.refresh_cache("refreshed") >= keys.size
    np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), new)
    assert hps.stats()[table_tag("refreshed", "sparse_embedding0")]["cache_refreshed"] >= keys.size
    with pytest.raises(tf.errors.InvalidArgumentError, match="serves model 'no_such_model'"):
        hps.refresh_cache("no_such_model")  # a typo is an error, not 0 rows


def test_refresh_interval_refreshes_on_a_timer(tables, redis_standalone):
    layer, redis_db = redis_served_layer(tables, redis_standalone, "timed", refresh_delay=0.1, refresh_interval=1,
                                         cache_refresh_percentage_per_iteration=0.3)
    keys = np.arange(5, 1000, 10)
    layer(tf.constant(keys))
    new = tables.rows["t0"][1][keys] - 7.0
    redis_db.insert(table_tag("timed", "sparse_embedding0"), keys, new)
    deadline = time.monotonic() + 5.0
    while not np.array_equal(layer(tf.constant(keys)).numpy(), new):
        assert time.monotonic() < deadline, "the timer never refreshed the cache"
        time.sleep(0.1)
