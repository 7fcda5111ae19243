"""The redis_cluster volatile database against real Redis servers (standalone and a 3-master cluster).

Every check reads through an independent path: redis-py reads what the C++ backend wrote using the
documented key layout (docs/storage.md), the C++ backend reads what redis-py wrote, and numpy holds
the expected rows.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import redis.crc
import redis_servers
from redis_servers import free_port

from tf_hps.storage import Storage

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max
EDGE_KEYS = np.array([0, 1, -1, -2, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1, 1 << 32, -(1 << 40)],
                     np.int64)


# --- an independent rendering of the key layout (storage/layout.h, base/key_hash.h) ----------------

def mix_key(keys: np.ndarray) -> np.ndarray:
    """The 64-bit rotate-xor-multiply mix of base/key_hash.h, on uint64 arrays."""
    v = np.asarray(keys).astype(np.uint64)

    def rotr(x, r):
        return (x >> np.uint64(r)) | (x << np.uint64(64 - r))

    with np.errstate(over="ignore"):
        v = v ^ rotr(v, 25) ^ rotr(v, 50)
        v = v * np.uint64(0xA24BAED4963EE407)
        v = v ^ rotr(v, 24) ^ rotr(v, 49)
        v = v * np.uint64(0x9FB21C651E98DF25)
    return v ^ (v >> np.uint64(28))


def partition_of(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    return (mix_key(keys) % np.uint64(num_partitions)).astype(np.int64)


def value_hash(tag: str, partition: int) -> str:
    return f"hps_et{{{tag}/p{partition}}}v"


def meta_hash(tag: str, partition: int) -> str:
    return f"hps_et{{{tag}/p{partition}}}t"


def field(key: int) -> bytes:
    return struct.pack("<q", int(key))


def open_db(deployment, **options) -> Storage:
    return Storage("volatile_db", {"type": "redis_cluster", "address": deployment.address, **options})


def rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def unique_keys(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(np.concatenate([EDGE_KEYS, rng.integers(INT64_MIN, INT64_MAX, n, dtype=np.int64)]))
    rng.shuffle(keys)
    return keys[:n]


def node_clients(deployment) -> list[redis.Redis]:
    """One plain client per server (each sees only what that server stores)."""
    return [s.client for s in deployment.servers]


def errorstats(client: redis.Redis) -> dict[str, int]:
    return {k: v["count"] for k, v in client.info("errorstats").items()}


@pytest.fixture(params=["redis_standalone", "redis_cluster"])
def deployment(request):
    return request.getfixturevalue(request.param)


# --- slots ---------------------------------------------------------------------------------------

def test_key_slots_match_redis_py_key_slot():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "tf_hps", "_tf_hps_storage.so"))
    lib.hps_redis_key_slot.restype = ctypes.c_int
    lib.hps_redis_key_slot.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

    def slot(key: bytes) -> int:
        return lib.hps_redis_key_slot(key, len(key))

    assert slot(b"123456789") == 0x31C3 % 16384  # the CRC16-XMODEM check value
    keys = [b"", b"a", b"foo", b"{}", b"{}x", b"x{}y", b"{user1000}.following", b"foo{}{bar}", b"foo{{bar}}zap",
            b"foo{bar}{zap}", b"{a", b"a}", b"hps_et{hps_et.m.t/p3}v", b"hps_et{hps_et.m.t/p3}t", bytes(range(256))]
    rng = np.random.default_rng(7)
    keys += [rng.bytes(int(n)) for n in rng.integers(0, 64, 500)]
    keys += [value_hash(f"hps_et.model{i}.table", p).encode() for i in range(20) for p in range(16)]
    assert [slot(k) for k in keys] == [redis.crc.key_slot(k) for k in keys]


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 16, 128])
def test_rows_inserted_in_batches_are_fetched_back_exactly(deployment, dim):
    tag = f"hps_et.roundtrip.d{dim}"
    keys = unique_keys(50_000, seed=dim)
    values = rows(len(keys), dim, seed=dim)
    db = open_db(deployment, num_partitions=8, max_batch_size=4096)
    db.drop(tag)
    db.insert(tag, keys, values)
    assert db.size(tag) == len(keys)
    order = np.random.default_rng(1).permutation(len(keys))
    fetched, found = db.fetch(tag, keys[order], dim)
    assert found.all()
    np.testing.assert_array_equal(fetched, values[order])
    _, found = db.fetch(tag, EDGE_KEYS, dim)
    assert found.all()
    db.drop(tag)


def test_rows_land_in_the_documented_hashes(deployment):
    tag = "hps_et.layout.t"
    num_partitions = 5
    keys = unique_keys(3000, seed=3)
    values = rows(len(keys), 4, seed=3)
    db = open_db(deployment, num_partitions=num_partitions, max_batch_size=500)
    db.drop(tag)
    db.insert(tag, keys, values)
    client = deployment.client
    parts = partition_of(keys, num_partitions)
    for p in range(num_partitions):
        stored = client.hgetall(value_hash(tag, p))
        expected = {field(k): v.tobytes() for k, v in zip(keys[parts == p], values[parts == p])}
        assert stored == expected, f"partition {p}"
    assert not client.exists(meta_hash(tag, 0)), "no metadata is written without an overflow margin"
    db.drop(tag)


def test_rows_written_by_another_client_are_fetched(deployment):
    tag = "hps_et.foreign.t"
    num_partitions = 3
    keys = unique_keys(1000, seed=4)
    values = rows(len(keys), 8, seed=4)
    client = deployment.client
    parts = partition_of(keys, num_partitions)
    for p in range(num_partitions):
        client.delete(value_hash(tag, p))
        mapping = {field(k): v.tobytes() for k, v in zip(keys[parts == p], values[parts == p])}
        client.hset(value_hash(tag, p), mapping=mapping)
    db = open_db(deployment, num_partitions=num_partitions)
    fetched, found = db.fetch(tag, keys, 8)
    assert found.all()
    np.testing.assert_array_equal(fetched, values)
    assert db.size(tag) == len(keys)
    db.drop(tag)


def test_missing_keys_are_reported_and_their_rows_left_untouched(deployment):
    tag = "hps_et.misses.t"
    db = open_db(deployment, num_partitions=4)
    db.drop(tag)
    stored = np.array([10, -10, INT64_MAX], np.int64)
    db.insert(tag, stored, rows(3, 2, seed=5))
    query = np.array([11, 10, INT64_MIN, -10, 12, INT64_MAX, 10], np.int64)
    fetched, found = db.fetch(tag, query, 2)
    assert found.tolist() == [False, True, False, True, False, True, True]
    assert (fetched[~found] == 0).all()
    _, found = db.fetch("hps_et.misses.never_written", query, 2)
    assert not found.any()
    db.drop(tag)


def test_a_row_of_another_dimension_is_rejected_naming_table_and_dimensions(deployment):
    tag = "hps_et.dims.t"
    db = open_db(deployment, num_partitions=2)
    db.insert(tag, np.arange(10), rows(10, 16))
    with pytest.raises(ValueError, match=r"hps_et\.dims\.t.*dimension 16.*dimension 8"):
        db.fetch(tag, np.arange(10), 8)
    db.drop(tag)


def test_evict_removes_exactly_the_given_keys_and_counts_them(deployment):
    tag = "hps_et.evict.t"
    db = open_db(deployment, num_partitions=4, max_batch_size=7)
    db.drop(tag)
    keys = unique_keys(200, seed=6)
    values = rows(200, 3, seed=6)
    db.insert(tag, keys, values)
    gone = keys[::3]
    assert db.evict(tag, np.concatenate([gone, [123456789012345]])) == len(gone)
    assert db.size(tag) == 200 - len(gone)
    fetched, found = db.fetch(tag, keys, 3)
    expected_found = np.ones(200, bool)
    expected_found[::3] = False
    np.testing.assert_array_equal(found, expected_found)
    np.testing.assert_array_equal(fetched[found], values[found])
    parts = partition_of(keys, 4)
    stored = sum(deployment.client.hlen(value_hash(tag, p)) for p in range(4))
    assert stored == 200 - len(gone)
    assert not any(deployment.client.hexists(value_hash(tag, parts[i]), field(keys[i])) for i in range(0, 200, 3))
    db.drop(tag)


def test_drop_table_deletes_every_partition_and_nothing_else(deployment):
    db = open_db(deployment, num_partitions=6)
    for tag in ("hps_et.drop.a", "hps_et.drop.b"):
        db.insert(tag, np.arange(500), rows(500, 2))
    db.drop("hps_et.drop.a")
    assert db.size("hps_et.drop.a") == 0
    assert db.size("hps_et.drop.b") == 500
    assert not any(deployment.client.exists(value_hash("hps_et.drop.a", p)) for p in range(6))
    assert all(deployment.client.exists(value_hash("hps_et.drop.b", p)) for p in range(6))
    db.drop("hps_et.drop.b")


def test_size_is_the_sum_of_the_partition_lengths(deployment):
    tag = "hps_et.size.t"
    db = open_db(deployment, num_partitions=7)
    db.drop(tag)
    assert db.size(tag) == 0
    db.insert(tag, np.arange(1000), rows(1000, 1))
    db.insert(tag, np.arange(500, 1500), rows(1000, 1))  # half overwrite
    assert db.size(tag) == 1500
    assert db.size(tag) == sum(deployment.client.hlen(value_hash(tag, p)) for p in range(7))
    db.drop(tag)


def test_list_tables_finds_every_table_on_every_node_sorted_once(deployment):
    db = open_db(deployment, num_partitions=9)
    tags = ["hps_et.listing.b", "hps_et.listing.a", "hps_et.listing.c-d_e"]
    for tag in tags:
        db.insert(tag, np.arange(100), rows(100, 2))
    # A table written by another client with a different partition count.
    deployment.client.hset(value_hash("hps_et.listing.z", 31), field(1), b"\0" * 8)
    listed = db.tables()
    assert listed == sorted(set(listed))
    assert [t for t in listed if t.startswith("hps_et.listing.")] == sorted(tags + ["hps_et.listing.z"])
    for tag in tags:
        db.drop(tag)
    deployment.client.delete(value_hash("hps_et.listing.z", 31))
    assert not [t for t in db.tables() if t.startswith("hps_et.listing.")]


# --- the cluster ---------------------------------------------------------------------------------

def slot_owners(deployment) -> dict[int, int]:
    """slot -> index of the server that owns it, from CLUSTER SLOTS."""
    ports = [s.port for s in deployment.servers]
    owners = {}
    for first, last, master, *_ in deployment.servers[0].client.execute_command("CLUSTER SLOTS"):
        for slot in range(first, last + 1):
            owners[slot] = ports.index(int(master[1]))
    return owners


def test_partitions_live_on_the_node_owning_their_slot_and_spread_over_all_masters(redis_cluster):
    tag = "hps_et.spread.t"
    num_partitions = 12
    clients = node_clients(redis_cluster)
    db = open_db(redis_cluster, num_partitions=num_partitions, max_batch_size=1000)
    db.drop(tag)
    for c in clients:
        c.config_resetstat()
    keys = np.arange(20_000, dtype=np.int64)
    values = rows(len(keys), 4)
    db.insert(tag, keys, values)
    fetched, found = db.fetch(tag, keys, 4)
    assert found.all()
    np.testing.assert_array_equal(fetched, values)
    owners = slot_owners(redis_cluster)
    holders = set()
    for p in range(num_partitions):
        name = value_hash(tag, p)
        slot = redis.crc.key_slot(name.encode())
        owner = owners[slot]
        assert clients[owner].hlen(name) == int((partition_of(keys, num_partitions) == p).sum())
        assert all(c.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
                   for i, c in enumerate(clients) if i != owner)
        holders.add(owner)
    assert holders == {0, 1, 2}
    # Routed by the right slot from the start: no node answered MOVED or ASK.
    for c in clients:
        assert not {"errorstat_MOVED", "errorstat_ASK"} & errorstats(c).keys()
    db.drop(tag)


def test_fetch_follows_ask_and_moved_while_a_partition_migrates(redis_cluster):
    tag = "hps_et.migrate.t"
    num_partitions = 4
    clients = node_clients(redis_cluster)
    db = open_db(redis_cluster, num_partitions=num_partitions, max_batch_size=300)
    db.drop(tag)
    keys = np.arange(-2000, 2000, dtype=np.int64)
    values = rows(len(keys), 8, seed=9)
    db.insert(tag, keys, values)  # db now caches the slot map

    name = value_hash(tag, 0)
    slot = redis.crc.key_slot(name.encode())
    source = slot_owners(redis_cluster)[slot]
    target = (source + 1) % 3
    src, dst = clients[source], clients[target]
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    src.execute_command("MIGRATE", "127.0.0.1", redis_cluster.servers[target].port, "", 0, 5000, "KEYS", name)
    assert src.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
    assert dst.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 1
    for c in clients:
        c.config_resetstat()

    # Mid-migration: the source answers ASK for the moved hash.
    fetched, found = db.fetch(tag, keys, 8)
    assert found.all()
    np.testing.assert_array_equal(fetched, values)
    assert errorstats(src).get("errorstat_ASK", 0) >= 1

    for c in (dst, src, *[c for i, c in enumerate(clients) if i not in (source, target)]):
        c.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)

    # Migrated: the source answers MOVED; the client re-reads the slot map and goes to the target.
    fetched, found = db.fetch(tag, keys, 8)
    assert found.all()
    np.testing.assert_array_equal(fetched, values)
    assert errorstats(src).get("errorstat_MOVED", 0) >= 1
    # Writes follow too, and land on the new owner.
    db.insert(tag, np.array([7_000_000]), np.full((1, 8), 2.5, np.float32))
    assert db.size(tag) == len(keys) + 1
    moves_before = errorstats(src).get("errorstat_MOVED", 0)
    fetched, found = db.fetch(tag, keys, 8)
    assert found.all() and errorstats(src).get("errorstat_MOVED", 0) == moves_before, "slot map was refreshed"
    assert dst.hlen(name) == int((partition_of(np.append(keys, 7_000_000), num_partitions) == 0).sum())
    db.drop(tag)


def test_concurrent_callers_share_a_small_connection_pool(redis_cluster):
    tag = "hps_et.threads.t"
    db = open_db(redis_cluster, num_partitions=6, num_node_connections=2, max_batch_size=200)
    keys = np.arange(5000, dtype=np.int64)
    values = rows(len(keys), 16, seed=11)
    db.insert(tag, keys, values)

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            pick = rng.choice(keys, 700)
            fetched, found = db.fetch(tag, pick, 16)
            assert found.all()
            np.testing.assert_array_equal(fetched, values[pick])

    with ThreadPoolExecutor(max_workers=8) as pool:
        for result in [pool.submit(worker, seed) for seed in range(8)]:
            result.result()  # re-raises a worker's failure
    db.drop(tag)


# --- overflow ------------------------------------------------------------------------------------

def partition_lengths(deployment, tag: str, num_partitions: int) -> list[int]:
    return [deployment.client.hlen(value_hash(tag, p)) for p in range(num_partitions)]


@pytest.mark.parametrize("policy", ["evict_random", "evict_least_used", "evict_oldest"])
def test_overflowing_partitions_are_cut_back_to_the_resolution_target(deployment, policy):
    tag = f"hps_et.overflow.{policy}"
    db = open_db(deployment, num_partitions=3, max_batch_size=64, overflow_margin=100,
                 overflow_policy=policy, overflow_resolution_target=0.5)
    db.drop(tag)
    keys = np.arange(3000, dtype=np.int64)
    values = rows(len(keys), 4)
    for begin in range(0, len(keys), 250):
        db.insert(tag, keys[begin:begin + 250], values[begin:begin + 250])
        assert max(partition_lengths(deployment, tag, 3)) <= 100
    lengths = partition_lengths(deployment, tag, 3)
    assert all(50 <= n <= 100 for n in lengths), lengths
    assert db.size(tag) == sum(lengths)
    fetched, found = db.fetch(tag, keys, 4)
    np.testing.assert_array_equal(fetched[found], values[found])
    if policy != "evict_random":  # metadata is kept for exactly the rows stored
        for p in range(3):
            assert (set(deployment.client.hkeys(meta_hash(tag, p)))
                    == set(deployment.client.hkeys(value_hash(tag, p))))
    db.drop(tag)


def test_least_used_eviction_keeps_the_frequently_fetched_rows(deployment):
    tag = "hps_et.lfu.t"
    db = open_db(deployment, num_partitions=1, overflow_margin=100, overflow_policy="evict_least_used",
                 overflow_resolution_target=0.51)
    db.drop(tag)
    old = np.arange(60, dtype=np.int64)
    db.insert(tag, old, rows(60, 4))
    hot = old[::6]
    for _ in range(3):
        assert db.fetch(tag, hot, 4)[1].all()
    assert all(int(c) == 3 for c in deployment.client.hmget(meta_hash(tag, 0), [field(k) for k in hot]))
    db.insert(tag, np.arange(1000, 1041), rows(41, 4, seed=1))  # 101 rows > 100: cut to 51
    assert db.size(tag) == 51
    assert db.fetch(tag, hot, 4)[1].all()
    db.drop(tag)


def test_oldest_eviction_removes_the_rows_untouched_for_longest(deployment):
    tag = "hps_et.lru.t"
    db = open_db(deployment, num_partitions=1, overflow_margin=100, overflow_policy="evict_oldest",
                 overflow_resolution_target=0.51)
    db.drop(tag)
    old = np.arange(60, dtype=np.int64)
    db.insert(tag, old, rows(60, 4))
    time.sleep(0.01)
    touched = old[::6]
    assert db.fetch(tag, touched, 4)[1].all()
    time.sleep(0.01)
    new = np.arange(1000, 1041, dtype=np.int64)
    db.insert(tag, new, rows(41, 4, seed=1))  # 101 rows > 100: the 50 untouched old rows go
    _, found = db.fetch(tag, np.concatenate([old, new]), 4)
    expected = np.concatenate([np.isin(old, touched), np.ones(len(new), bool)])
    np.testing.assert_array_equal(found, expected)
    db.drop(tag)


# --- connections, credentials, failures ----------------------------------------------------------

def test_password_protected_server_accepts_the_configured_credentials(redis_with_password):
    server = redis_with_password
    for credentials in ({"password": "s3cret"}, {"user_name": "default", "password": "s3cret"},
                        {"user_name": "alice", "password": "alice-pw"}):
        db = open_db(server, num_partitions=2, **credentials)
        db.insert("hps_et.auth.t", np.arange(10), rows(10, 2))
        assert db.fetch("hps_et.auth.t", np.arange(10), 2)[1].all()
        db.drop("hps_et.auth.t")
        db.close()


@pytest.mark.parametrize("credentials, message", [
    ({"password": "wrong"}, r"authentication as user 'default' failed"),
    ({"user_name": "alice", "password": "s3cret"}, r"authentication as user 'alice' failed"),
    ({}, r"requires a password"),
])
def test_wrong_or_missing_credentials_fail_with_a_clear_error(redis_with_password, credentials, message):
    with pytest.raises(ValueError, match=message) as info:
        open_db(redis_with_password, **credentials)
    assert redis_with_password.address in str(info.value)


def test_an_unreachable_server_fails_fast_naming_its_address():
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=address):
        Storage("volatile_db", {"type": "redis_cluster", "address": address})
    assert time.monotonic() - start < 3


def test_a_server_that_never_answers_times_out_naming_its_address():
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=rf"{address}.*no answer within 5000 ms"):
            Storage("volatile_db", {"type": "redis_cluster", "address": address})
        assert 4 < time.monotonic() - start < 8


def test_seeds_are_tried_in_order_until_one_answers(redis_cluster):
    dead = f"127.0.0.1:{free_port()}"
    db = Storage("volatile_db", {"type": "redis_cluster", "address": f"{dead}, {redis_cluster.servers[1].address}"})
    db.insert("hps_et.seeds.t", np.arange(50), rows(50, 2))
    assert db.size("hps_et.seeds.t") == 50
    db.drop("hps_et.seeds.t")


def test_killed_connections_are_reopened_transparently(redis_standalone):
    db = open_db(redis_standalone, num_partitions=4)
    keys = np.arange(300)
    values = rows(300, 8)
    db.insert("hps_et.reconnect.t", keys, values)
    killed = redis_standalone.client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    fetched, found = db.fetch("hps_et.reconnect.t", keys, 8)
    assert found.all()
    np.testing.assert_array_equal(fetched, values)
    db.drop("hps_et.reconnect.t")


def test_a_server_that_goes_away_fails_calls_naming_its_address(tmp_path):
    server = redis_servers.start_standalone(str(tmp_path))
    try:
        db = open_db(server, num_partitions=2)
        db.insert("hps_et.gone.t", np.arange(10), rows(10, 2))
    finally:
        server.stop()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"redis node {server.address}: cannot connect"):
        db.fetch("hps_et.gone.t", np.arange(10), 2)
    assert time.monotonic() - start < 3


def test_tls_with_the_default_ca_file_missing_names_the_file_and_key(redis_standalone):
    """TLS is built (tests/test_redis_tls.py); HPS's default CA path does not exist here."""
    with pytest.raises(FileNotFoundError, match=r"volatile_db\.tls_ca_certificate: cannot read 'cacertbundle\.crt'"):
        open_db(redis_standalone, enable_tls=True)


@pytest.mark.parametrize("address", ["127.0.0.1:notaport", "127.0.0.1:70000", " , "])
def test_a_malformed_address_is_an_invalid_argument(address):
    with pytest.raises(ValueError, match="volatile_db.address"):
        Storage("volatile_db", {"type": "redis_cluster", "address": address})
