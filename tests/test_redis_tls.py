"""Redis over TLS (volatile_db and update_source ``enable_tls``) against real redis-servers.

A throwaway CA is made per session with the ``openssl`` CLI (redis_servers.make_tls_files); the
servers listen for TLS only (``--port 0 --tls-port``). What the C++ client writes is read back with
redis-py over TLS, and lookups are compared with tf.nn.embedding_lookup.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
import time

import numpy as np
import pytest
import redis_servers
import tensorflow as tf

import tf_hps as hps
from tf_hps.storage import Storage, table_tag
from tf_hps.updates import UpdatePublisher

PASSWORD = "tls-s3cret"
CONNECT_TIMEOUT_S = 1.0  # storage/redis_cluster_backend.cc: kConnectTimeoutMs


# --- servers -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    return redis_servers.make_tls_files(str(tmp_path_factory.mktemp("tls_ca")))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    """A second CA that signed nothing the servers use."""
    return redis_servers.make_tls_files(str(tmp_path_factory.mktemp("tls_other_ca")), ca_name="some other CA")


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory, tls_files):
    """Standalone, TLS only, client certificate required, requirepass."""
    server = redis_servers.RedisServer(str(tmp_path_factory.mktemp("redis_tls")), password=PASSWORD,
                                       tls=tls_files, tls_auth_clients="yes")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_server_optional_cert(tmp_path_factory, tls_files):
    """Standalone, TLS only, client certificate optional, no password."""
    server = redis_servers.RedisServer(str(tmp_path_factory.mktemp("redis_tls_opt")), tls=tls_files,
                                       tls_auth_clients="optional")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_cluster(tmp_path_factory, tls_files):
    """3 masters, TLS only for clients and the cluster bus (tls-cluster, tls-replication)."""
    deployment = redis_servers.start_cluster(str(tmp_path_factory.mktemp("redis_tls_cluster")), tls=tls_files)
    yield deployment
    deployment.stop()


def tls_options(files, **overrides):
    options = {"enable_tls": True, "tls_ca_certificate": files.ca, "tls_client_certificate": files.client_cert,
               "tls_client_key": files.client_key, "tls_server_name_identification": files.server_name}
    options.update(overrides)
    return options


def open_db(address, files, password=PASSWORD, **overrides) -> Storage:
    config = {"type": "redis_cluster", "address": address, "num_partitions": 8, **tls_options(files, **overrides)}
    if password:
        config["password"] = password
    return Storage("volatile_db", config)


def value_hash(tag: str, partition: int) -> str:
    return f"hps_et{{{tag}/p{partition}}}v"


def rows(n, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def read_all_rows(clients, tag, num_partitions, dim) -> dict[int, np.ndarray]:
    """Every row of a table, read with redis-py from the documented layout."""
    found = {}
    for client in clients:
        for p in range(num_partitions):
            for fld, raw in client.hgetall(value_hash(tag, p)).items():
                found[struct.unpack("<q", fld)[0]] = np.frombuffer(raw, "<f4").reshape(dim)
    return found


# --- round trips ---------------------------------------------------------------------------------

def test_rows_round_trip_over_tls_and_redis_py_reads_them(tls_server, tls_files):
    tag = "hps_et.tls.roundtrip"
    keys = np.random.default_rng(3).permutation(20_000).astype(np.int64) * 7919 - 10**9
    values = rows(len(keys), 32, seed=3)
    db = open_db(tls_server.address, tls_files)
    db.drop(tag)
    db.insert(tag, keys, values)
    assert db.size(tag) == len(keys)
    got, found = db.fetch(tag, np.concatenate([keys, [123456789]]), 32)
    np.testing.assert_array_equal(got[:-1], values)
    assert found[:-1].all() and not found[-1]

    # An independent reader over TLS sees exactly the rows written.
    stored = read_all_rows([tls_server.client], tag, 8, 32)
    assert len(stored) == len(keys)
    for i in (0, 1, 4999, len(keys) - 1):
        np.testing.assert_array_equal(stored[int(keys[i])], values[i])

    # And the C++ client reads what redis-py wrote.
    new_row = np.arange(32, dtype=np.float32)
    for p in range(8):
        if tls_server.client.hexists(value_hash(tag, p), struct.pack("<q", int(keys[0]))):
            tls_server.client.hset(value_hash(tag, p), struct.pack("<q", int(keys[0])), new_row.tobytes())
    np.testing.assert_array_equal(db.fetch(tag, keys[:1], 32)[0][0], new_row)
    db.drop(tag)
    db.close()


def test_large_values_and_many_connections_over_tls(tls_server, tls_files):
    """Replies far larger than a TLS record (16 KiB), from concurrent callers on pooled connections."""
    tag = "hps_et.tls.large"
    db = open_db(tls_server.address, tls_files, num_node_connections=3)
    keys = np.arange(4000, dtype=np.int64)
    values = rows(len(keys), 1024, seed=5)  # 4 KiB rows, 16 MB in all
    db.insert(tag, keys, values)

    errors = []

    def fetch_some(seed):
        try:
            order = np.random.default_rng(seed).permutation(len(keys))[:1500]
            got, found = db.fetch(tag, keys[order], 1024)
            assert found.all()
            np.testing.assert_array_equal(got, values[order])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch_some, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    db.drop(tag)
    db.close()


def test_client_certificate_is_optional_where_the_server_allows(tls_server_optional_cert, tls_files):
    db = open_db(tls_server_optional_cert.address, tls_files, password=None, tls_client_certificate="")
    db.insert("hps_et.tls.nocert", np.array([1, 2], np.int64), np.ones((2, 4), np.float32))
    assert db.size("hps_et.tls.nocert") == 2
    db.close()


def test_server_name_may_be_left_empty_to_verify_the_ip_address(tls_server, tls_files):
    """An empty tls_server_name_identification verifies the node's host (127.0.0.1 is in the SAN)."""
    db = open_db(tls_server.address, tls_files, tls_server_name_identification="")
    db.insert("hps_et.tls.ipname", np.array([9], np.int64), np.ones((1, 2), np.float32))
    db.drop("hps_et.tls.ipname")
    db.close()


def test_wrong_password_over_tls_is_an_authentication_error(tls_server, tls_files):
    with pytest.raises(ValueError, match="authentication as user 'default' failed"):
        open_db(tls_server.address, tls_files, password="wrong")


# --- errors --------------------------------------------------------------------------------------

def timed(fn):
    start = time.monotonic()
    try:
        fn()
    finally:
        timed.elapsed = time.monotonic() - start


def test_a_server_certificate_from_another_ca_is_rejected_clearly(tls_server, tls_files, other_ca):
    with pytest.raises(ValueError, match=r"certificate does not verify .*volatile_db\.tls_ca_certificate") as info:
        timed(lambda: open_db(tls_server.address, tls_files, tls_ca_certificate=other_ca.ca))
    assert other_ca.ca in str(info.value) and tls_server.address in str(info.value)
    assert timed.elapsed < 3 * CONNECT_TIMEOUT_S


def test_a_server_name_not_in_the_certificate_is_rejected(tls_server, tls_files):
    with pytest.raises(ValueError, match=r"not issued for 'db\.example\.com'.*tls_server_name_identification"):
        open_db(tls_server.address, tls_files, tls_server_name_identification="db.example.com")


@pytest.mark.parametrize("key", ["tls_ca_certificate", "tls_client_certificate", "tls_client_key"])
def test_a_missing_certificate_or_key_file_names_the_file_and_the_key(tls_server, tls_files, tmp_path, key):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(FileNotFoundError, match=rf"volatile_db\.{key}: cannot read '{missing}'"):
        open_db(tls_server.address, tls_files, **{key: missing})


def test_files_that_are_not_pem_name_the_file_and_the_key(tls_server, tls_files, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"volatile_db\.tls_ca_certificate: '.*junk\.pem' holds no PEM certificate"):
        open_db(tls_server.address, tls_files, tls_ca_certificate=str(junk))
    with pytest.raises(ValueError, match=r"volatile_db\.tls_client_key: '.*junk\.pem' holds no unencrypted PEM"):
        open_db(tls_server.address, tls_files, tls_client_key=str(junk))
    with pytest.raises(ValueError, match=r"volatile_db\.tls_client_key: .* is not the private key of"):
        open_db(tls_server.address, tls_files, tls_client_key=tls_files.server_key)


def test_no_client_certificate_where_one_is_required_says_so(tls_server, tls_files):
    with pytest.raises(ConnectionError, match="client certificate"):
        timed(lambda: open_db(tls_server.address, tls_files, tls_client_certificate=""))
    assert timed.elapsed < 3 * CONNECT_TIMEOUT_S


def test_a_plain_client_against_a_tls_port_fails_quickly_and_clearly(tls_server):
    with pytest.raises(ConnectionError, match="TLS") as info:
        timed(lambda: Storage("volatile_db", {"type": "redis_cluster", "address": tls_server.address,
                                              "password": PASSWORD}))
    assert tls_server.address in str(info.value)
    assert timed.elapsed < 3 * CONNECT_TIMEOUT_S


def test_a_tls_client_against_a_plain_port_fails_within_the_connect_timeout(redis_standalone, tls_files):
    with pytest.raises(ConnectionError, match=r"TLS handshake.*TLS port") as info:
        timed(lambda: open_db(redis_standalone.address, tls_files, password=None))
    assert redis_standalone.address in str(info.value)
    assert timed.elapsed < CONNECT_TIMEOUT_S + 2


def test_a_tls_client_against_a_silent_port_fails_within_the_connect_timeout(tls_files):
    """A listener that accepts and never answers: the handshake gives up after the connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ConnectionError, match=r"TLS handshake: no answer within 1000 ms"):
            timed(lambda: open_db(address, tls_files, password=None))
    assert CONNECT_TIMEOUT_S * 0.9 < timed.elapsed < CONNECT_TIMEOUT_S + 2


def test_a_tls_server_going_away_is_unavailable_not_a_hang(tmp_path, tls_files):
    server = redis_servers.RedisServer(str(tmp_path), tls=tls_files)
    db = open_db(server.address, tls_files, password=None)
    db.insert("hps_et.tls.gone", np.array([1], np.int64), np.ones((1, 2), np.float32))
    server.stop()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=server.address):
        db.fetch("hps_et.tls.gone", np.array([1], np.int64), 2)
    assert time.monotonic() - start < 3 * CONNECT_TIMEOUT_S
    db.close()


def test_tls_keys_are_ignored_while_tls_is_off(redis_standalone, tmp_path):
    """The HPS defaults name files that need not exist; nothing is opened unless enable_tls is true."""
    db = Storage("volatile_db", {"type": "redis_cluster", "address": redis_standalone.address,
                                 "enable_tls": False, "tls_ca_certificate": str(tmp_path / "absent.crt")})
    db.insert("hps_et.tls.off", np.array([1], np.int64), np.ones((1, 2), np.float32))
    db.drop("hps_et.tls.off")
    db.close()


# --- cluster -------------------------------------------------------------------------------------

def test_cluster_over_tls_from_one_seed(tls_cluster, tls_files):
    """The slot map (CLUSTER SLOTS over TLS announces the TLS ports) is found from one seed, and rows
    spread over all three masters, read back with redis-py's cluster client over TLS."""
    tag = "hps_et.tls.cluster"
    first_seed = tls_cluster.address.split(",")[1]
    db = open_db(first_seed, tls_files, password=None, num_partitions=24)
    keys = np.arange(30_000, dtype=np.int64) * 31 + 5
    values = rows(len(keys), 16, seed=11)
    db.drop(tag)
    db.insert(tag, keys, values)
    got, found = db.fetch(tag, keys[::-1], 16)
    assert found.all()
    np.testing.assert_array_equal(got, values[::-1])
    stored = read_all_rows([tls_cluster.client], tag, 24, 16)
    assert len(stored) == len(keys)
    np.testing.assert_array_equal(stored[int(keys[123])], values[123])
    assert all(s.client.dbsize() > 0 for s in tls_cluster.servers)
    assert db.tables().count(tag) == 1
    db.drop(tag)
    db.close()


def test_cluster_over_tls_follows_moved_after_a_slot_migration(tls_cluster, tls_files):
    """A partition's slot moves to another master (MIGRATE over TLS); the client follows MOVED."""
    tag = "hps_et.tls.moved"
    db = open_db(tls_cluster.address, tls_files, password=None, num_partitions=1)
    keys = np.arange(100, dtype=np.int64)
    values = rows(100, 4, seed=2)
    db.insert(tag, keys, values)
    hash_key = value_hash(tag, 0)
    client = tls_cluster.client
    slot = client.keyslot(hash_key)

    def keys_in_slot(server):
        return server.client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)

    source = next(s for s in tls_cluster.servers if keys_in_slot(s) == 1)
    target = next(s for s in tls_cluster.servers if s is not source)
    source_id = source.client.execute_command("CLUSTER", "MYID").decode()
    target_id = target.client.execute_command("CLUSTER", "MYID").decode()
    target.client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    source.client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", hash_key)
    for server in tls_cluster.servers:
        server.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    got, found = db.fetch(tag, keys, 4)
    assert found.all()
    np.testing.assert_array_equal(got, values)
    assert keys_in_slot(target) == 1 and keys_in_slot(source) == 0
    assert client.hlen(hash_key) == 100
    db.drop(tag)
    db.close()


# --- a model served from a TLS Redis, configured with relative paths ------------------------------

def copy_tls_files(files, folder):
    os.makedirs(folder, exist_ok=True)
    for path in (files.ca, files.client_cert, files.client_key):
        shutil.copy(path, folder)
    return {"enable_tls": True, "tls_ca_certificate": "certs/ca.crt", "tls_client_certificate": "certs/client.crt",
            "tls_client_key": "certs/client.key", "tls_server_name_identification": files.server_name}


def test_lookup_layer_over_a_tls_redis_equals_embedding_lookup(tables, tls_server, tls_files):
    """Relative tls_* paths resolve against the config file's folder, like sparse_files."""
    tls = copy_tls_files(tls_files, os.path.join(tables.root, "certs"))
    tables.table("tls_t0", 3000, 16)
    config = tables.config(tables=("tls_t0",), dims=(16,), model="tls_model", defaults=(0.5,),
                           name="tls_config.json",
                           extra={"volatile_db": {"type": "redis_cluster", "address": tls_server.address,
                                                  "password": PASSWORD, "num_partitions": 4, **tls}},
                           extra_model={"gpucacheper": 0.1})
    canonical = json.loads(hps.load_config(config).canonical_json)
    assert canonical["volatile_db"]["tls_ca_certificate"] == os.path.join(tables.root, "certs", "ca.crt")
    layer = hps.LookupLayer("tls_model", 0, 16, tf.float32, config)
    ids = np.random.default_rng(4).integers(0, 3200, (64, 8)).astype(np.int64)  # some keys are missing
    dense = tables.dense("tls_t0", 0.5, 3200)
    for _ in range(2):  # cold, then warm
        np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), tf.nn.embedding_lookup(dense, ids).numpy())
    # The rows are in the TLS Redis, under the documented layout.
    stored = read_all_rows([tls_server.client], table_tag("tls_model", "sparse_embedding0"), 4, 16)
    assert len(stored) == 3000


# --- online updates over TLS -----------------------------------------------------------------------

def test_online_updates_over_tls_reach_the_lookups(tables, tls_server, tls_server_optional_cert, tls_files):
    """Model rows in one TLS Redis (the VDB), update streams in another (update_source with TLS)."""
    tables.table("tls_upd", 2000, 8)
    stream_tls = tls_options(tls_files)
    config = tables.config(
        tables=("tls_upd",), dims=(8,), model="tls_upd", defaults=(0.0,), name="tls_upd.json",
        extra={"update_source": {"type": "redis_stream", "address": tls_server_optional_cert.address,
                                 "poll_timeout_ms": 200, **stream_tls},
               "volatile_db": {"type": "redis_cluster", "address": tls_server.address, "password": PASSWORD,
                               "num_partitions": 4, **tls_options(tls_files)}},
        extra_model={"gpucacheper": 0.5})
    keys, vectors = tables.rows["tls_upd"]
    layer = hps.LookupLayer("tls_upd", 0, 8, tf.float32, config)
    np.testing.assert_array_equal(layer(tf.constant(keys[:500])).numpy(), vectors[:500])

    changed = np.array([3, 7, 499, 1500, 1999], np.int64)
    new_rows = np.arange(changed.size * 8, dtype=np.float32).reshape(-1, 8) + 1000
    with UpdatePublisher(config) as publisher:
        publisher.publish("tls_upd", "sparse_embedding0", changed, new_rows)
    stream = f"hps_upd{{{table_tag('tls_upd', 'sparse_embedding0')}}}"
    assert tls_server_optional_cert.client.xlen(stream) == 1  # read back over TLS with redis-py
    expected = vectors.copy()
    expected[changed] = new_rows
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if np.array_equal(layer(tf.constant(keys)).numpy(), expected):
            break
        time.sleep(0.05)
    np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), expected)
    assert hps.stats()[table_tag("tls_upd", "sparse_embedding0")]["rows_updated"] == changed.size


def test_update_source_tls_errors_name_update_source(tables, tls_server_optional_cert, tls_files, tmp_path):
    tables.table("tls_upd_err", 10, 4)
    config = tables.config(
        tables=("tls_upd_err",), dims=(4,), model="tls_upd_err", defaults=(0.0,), name="tls_upd_err.json",
        extra={"update_source": {"type": "redis_stream", "address": tls_server_optional_cert.address,
                                 **tls_options(tls_files, tls_ca_certificate=str(tmp_path / "missing.crt"))}})
    with pytest.raises(FileNotFoundError, match=r"update_source\.tls_ca_certificate: cannot read"):
        UpdatePublisher(config)
