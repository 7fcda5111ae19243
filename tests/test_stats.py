"""hps.stats(): per-table counters, deferred cache insertion, latency histogram, periodic log."""

import glob
import time

import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, run_python
from tf_hps.storage import table_tag


def layer_with(tables, model, **extra_model):
    tables.table("t0", 3000, 8)
    path = tables.config(dims=(8,), model=model, extra_model={"gpucacheper": 0.5, **extra_model})
    return hps.LookupLayer(model, 0, 8, tf.float32, path), table_tag(model, "sparse_embedding0")


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_counters_add_up(tables):
    layer, tag = layer_with(tables, "counted")
    ids = np.array([1, 1, 2, 3, 5000])  # 4 distinct, one unknown
    layer(tf.constant(ids))
    layer(tf.constant(ids))
    s = hps.stats()[tag]
    assert s["lookups"] == 2 and s["keys"] == 10
    assert s["l1_hits"] == 4  # the second lookup found 1, 1, 2, 3 in L1
    assert s["missed_keys"] == 4 + 1  # below L1 each distinct key once: 1, 2, 3, 5000, then 5000 again
    assert s["vdb_hits"] + s["pdb_hits"] + s["defaults"] == s["missed_keys"]
    assert s["defaults"] == 2  # the unknown key, once per lookup
    assert sum(s["latency_counts"]) == 2 and len(s["latency_counts"]) == len(s["latency_us_bounds"]) + 1


def test_warm_batches_defer_their_insertions_and_stay_exact(tables):
    layer, tag = layer_with(tables, "deferred", hit_rate_threshold=0.0)  # every batch counts as warm
    dense = tables.dense("t0", 1.5, 3000)
    ids = np.arange(0, 3000, 3)
    np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())
    s = hps.stats()[tag]
    assert s["insert_deferred"] + s["insert_dropped"] == ids.size
    wait_for(lambda: hps.stats()[tag]["cache_inserted"] == hps.stats()[tag]["insert_deferred"])
    assert hps.stats()[tag]["cache_rows"] > 0
    np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())


@pytest.mark.parametrize("threshold", [1.0, 2.0])
def test_cold_batches_insert_before_returning(tables, threshold):
    layer, tag = layer_with(tables, f"inline{int(threshold)}", hit_rate_threshold=threshold)
    layer(tf.constant(np.arange(100)))
    s = hps.stats()[tag]
    assert s["insert_deferred"] == 0 and s["cache_inserted"] == 100 and s["cache_rows"] == 100


LOGGING = """
import json, sys, time, numpy as np, tensorflow as tf
lib = tf.load_op_library(sys.argv[1])
canonical, _ = lib.tf_hps_parse_config(config_file=sys.argv[2])
handle = lib.tf_hps_init(ps_config=canonical.numpy().decode())
lib.tf_hps_lookup(keys=tf.constant([1, 2], tf.int64), ps_handle=handle, model_name="foo", table_id=0, emb_vec_size=16)
time.sleep(0.7)
"""


def test_counters_are_logged_at_the_configured_interval(simple):
    tables, _ = simple
    path = tables.config(extra={"stats_log_interval_seconds": 0.2}, name="logging.json")
    err = run_python(LOGGING, hps.op_library_path(), path).stderr
    lines = [line for line in err.splitlines() if "stats hps_et.foo.sparse_embedding0: 1 lookups, 2 keys" in line]
    assert len(lines) >= 2, err  # every 0.2 s while the process lived


def test_evictions_are_counted(tables):
    layer, tag = layer_with(tables, "evicting", gpucacheper=0.0, hit_rate_threshold=2.0)  # one set of 64 ways
    for start in range(0, 3000, 500):
        layer(tf.constant(np.arange(start, start + 500)))
    s = hps.stats()[tag]
    assert s["cache_rows"] == 64
    assert s["cache_inserted"] == 3000
    assert s["cache_evicted"] == s["cache_inserted"] - s["cache_rows"]


def test_rocksdb_memory_is_reported(tables):
    """The RocksDB figures track the rows held in memory. A load leaves the table's rows in a table
    file, with its bloom filter and index, not in the memtable (a skip list, slower to read)."""
    tables.table("t0", 20_000, 16)
    rocks = str(tables.root) + "/rocksdb"
    path = tables.config(dims=(16,), model="rocksmem",
                         extra={"persistent_db": {"type": "rocks_db", "path": rocks}})
    layer = hps.LookupLayer("rocksmem", 0, 16, tf.float32, path)
    layer(tf.constant([1, 2, 3], tf.int64))
    s = hps.stats()[table_tag("rocksmem", "sparse_embedding0")]
    # Flushed: the memtable holds none of the 20,000 rows of 72 bytes (an empty one is a few KiB).
    assert s["pdb_memtable_bytes"] < 20_000 * 72 // 20, s
    # 20,000 keys at 10 bloom bits each, and an index entry per 16 KiB data block of the 1.4 MB file.
    assert s["pdb_index_filter_bytes"] >= 20_000 * 10 // 8, s
    assert s["pdb_block_cache_bytes"] > 0, s  # the lookup read a data block
    assert glob.glob(rocks + "/*.sst"), "no table file after the load"
    assert "vdb_memtable_bytes" not in s  # the hash map reports none
