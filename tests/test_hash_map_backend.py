"""The in-process hash-map VDB, driven through the storage C ABI and checked against numpy/dict references."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from tf_hps.storage import Storage

TABLE = "hps_et.m.t"


def hash_map(**config):
    return Storage("volatile_db", {"type": "hash_map", "num_partitions": 4, **config})


@pytest.mark.parametrize("dim", [1, 16, 128])
def test_rows_round_trip_exactly(dim):
    db = hash_map()
    rng = np.random.default_rng(dim)
    keys = np.concatenate([rng.choice(2**40, 20_000, replace=False) - 2**39,
                           [-1, 0, np.iinfo(np.int64).min, np.iinfo(np.int64).max]]).astype(np.int64)
    values = rng.standard_normal((keys.size, dim)).astype(np.float32)
    for start in range(0, keys.size, 3_000):  # several inserts, as a loader does
        db.insert(TABLE, keys[start:start + 3_000], values[start:start + 3_000])
    assert db.size(TABLE) == keys.size
    order = rng.permutation(keys.size)
    got, found = db.fetch(TABLE, keys[order], dim)
    assert found.all()
    np.testing.assert_array_equal(got, values[order])


def test_missing_keys_are_reported_in_order_and_left_untouched():
    db = hash_map()
    db.insert(TABLE, [1, 2, 3], np.ones((3, 2), np.float32))
    got, found = db.fetch(TABLE, [5, 1, 6, 3, 7], 2)
    assert found.tolist() == [False, True, False, True, False]
    assert (got[~found] == 0).all()
    _, found = db.fetch("hps_et.m.unknown", [1], 2)
    assert found.tolist() == [False]


def test_insert_overwrites_existing_rows():
    db = hash_map()
    db.insert(TABLE, [7, 8], np.zeros((2, 3), np.float32))
    db.insert(TABLE, [8], np.full((1, 3), 2.5, np.float32))
    got, _ = db.fetch(TABLE, [7, 8], 3)
    np.testing.assert_array_equal(got, [[0, 0, 0], [2.5, 2.5, 2.5]])
    assert db.size(TABLE) == 2


def test_random_inserts_and_evictions_match_a_dict():
    db = hash_map(num_partitions=3)
    rng = np.random.default_rng(7)
    reference = {}
    for step in range(60):
        keys = rng.integers(0, 3000, size=200)
        if step % 3 == 2:
            removed = db.evict(TABLE, keys)
            assert removed == len({int(k) for k in keys} & reference.keys())
            for k in keys:
                reference.pop(int(k), None)
        else:
            values = rng.standard_normal((keys.size, 4)).astype(np.float32)
            db.insert(TABLE, keys, values)
            for k, v in zip(keys, values):
                reference[int(k)] = v
        assert db.size(TABLE) == len(reference)
    probe = np.arange(3000)
    got, found = db.fetch(TABLE, probe, 4)
    assert found.tolist() == [k in reference for k in range(3000)]
    for k in reference:
        np.testing.assert_array_equal(got[k], reference[k])


def test_a_table_keeps_its_dimension():
    db = hash_map()
    db.insert(TABLE, [1], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="holds rows of dimension 4, not 8"):
        db.fetch(TABLE, [1], 8)


def test_tables_are_listed_sized_and_dropped():
    db = hash_map()
    db.insert("hps_et.m.b", [1, 2], np.ones((2, 2), np.float32))
    db.insert("hps_et.m.a", [1], np.ones((1, 2), np.float32))
    assert db.tables() == ["hps_et.m.a", "hps_et.m.b"]
    db.drop("hps_et.m.b")
    assert db.tables() == ["hps_et.m.a"] and db.size("hps_et.m.b") == 0


@pytest.mark.parametrize("policy", ["evict_random", "evict_least_used", "evict_oldest"])
def test_overflow_keeps_each_partition_within_its_margin(policy):
    db = hash_map(num_partitions=2, overflow_margin=500, overflow_policy=policy, overflow_resolution_target=0.6)
    rng = np.random.default_rng(3)
    keys = rng.choice(10**9, 5000, replace=False)
    values = rng.standard_normal((keys.size, 8)).astype(np.float32)
    db.insert(TABLE, keys, values)
    assert 2 * 300 <= db.size(TABLE) <= 2 * 500
    got, found = db.fetch(TABLE, keys, 8)
    np.testing.assert_array_equal(got[found], values[found])  # survivors are intact
    assert found.sum() == db.size(TABLE)


def test_least_used_eviction_keeps_frequently_fetched_rows():
    db = hash_map(num_partitions=1, overflow_margin=1000, overflow_policy="evict_least_used")
    hot = np.arange(100)
    db.insert(TABLE, np.arange(1000), np.ones((1000, 2), np.float32))
    for _ in range(5):
        db.fetch(TABLE, hot, 2)
    db.insert(TABLE, np.arange(1000, 1300), np.ones((300, 2), np.float32))
    _, found = db.fetch(TABLE, hot, 2)
    assert found.all()
    assert db.size(TABLE) <= 1000


MEMORY = """
import resource, sys, numpy as np
from tf_hps.storage import Storage
rows, dim = int(sys.argv[1]), int(sys.argv[2])
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
db = Storage("volatile_db", {"type": "hash_map", "num_partitions": 16})
chunk = 50_000
values = np.random.default_rng(0).standard_normal((chunk, dim)).astype(np.float32)
db.insert("warm", np.arange(10), values[:10])
before = rss()
for start in range(0, rows, chunk):
    db.insert("t", np.arange(start, start + chunk), values)
print((rss() - before) / (rows * (8 + 4 * dim)))
"""


@pytest.mark.parametrize("rows, dim", [(2_000_000, 16), (400_000, 128)])
def test_resident_memory_stays_within_1_3x_the_raw_table(rows, dim):
    out = subprocess.run([sys.executable, "-c", MEMORY, str(rows), str(dim)], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"PYTHONPATH": ROOT})
    ratio = float(out.stdout.strip())
    assert ratio <= 1.3, f"resident memory is {ratio:.2f}x the raw size at dim {dim}"


def test_a_write_gets_in_while_threads_fetch_without_pause():
    """A fetch holds every partition's read lock for a chunk of keys; with several threads fetching
    back to back, some thread holds each partition almost all the time. A write (an online update,
    a write-back) must still get in promptly instead of waiting for a gap between readers: a waiting
    writer goes before new readers. Readers here call in a loop with big batches, so they overlap
    throughout; each write must complete while they do, every time, and fetches see every write."""
    import threading
    import time

    db = hash_map(num_partitions=2)
    dim, rows = 8, 200_000
    keys = np.arange(rows, dtype=np.int64)
    db.insert(TABLE, keys, np.zeros((rows, dim), np.float32))
    stop = threading.Event()
    fetches = [0, 0, 0]

    def reader(slot: int):
        batch = np.random.default_rng(slot).integers(0, rows, 400_000)  # about 100 chunks a call
        while not stop.is_set():
            _, found = db.fetch(TABLE, batch, dim)
            assert found.all()
            fetches[slot] += 1

    threads = [threading.Thread(target=reader, args=(slot,)) for slot in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while min(fetches) == 0:  # every reader is under way
            assert time.monotonic() < deadline and all(t.is_alive() for t in threads), "a reader did not start"
            time.sleep(0.01)
        waits = []
        for version in range(1, 21):
            start = time.perf_counter()
            db.insert(TABLE, [7], np.full((1, dim), version, np.float32))
            waits.append(time.perf_counter() - start)
            got, _ = db.fetch(TABLE, [7], dim)
            assert got[0, 0] == version
        still_reading = [t.is_alive() for t in threads]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(still_reading)
    # One fetch call of the readers takes tens of milliseconds; a write waits at most for the chunks
    # under way (well under a millisecond each), never for a reader's whole stream of calls.
    assert max(waits) < 0.25, f"writes waited {sorted(waits)[-3:]} s while readers fetched"
