"""Faults with real servers: Redis cluster nodes killed (kill -9) during lookups and during online updates,
RocksDB on a read-only mount and on a full disk, and `python -m tf_hps ingest` killed partway.

What every test here holds the system to: nothing lost (every key ends with its last row), nothing torn
(no row mixes two versions or two keys), and no call waits longer than the configured timeouts
(docs/reliability.md). Servers are real redis-server processes and real RocksDB directories; the
mount tests need mount(2) (root with CAP_SYS_ADMIN) and skip, loudly, where the kernel refuses it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import redis
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT
from redis_servers import RedisServer, _require
from tf_hps.storage import Storage, table_tag
from tf_hps.updates import UpdatePublisher

# A node marked failed after 1 s (not 5), so that an outage reaches the cluster-wide "fail" state
# (CLUSTERDOWN from the surviving nodes) within a short test, and the cluster heals 2 s after the
# node is back (Redis clears a master's FAIL flag after twice the node timeout).
NODE_TIMEOUT_MS = 1000
# The Redis client's command timeout (docs/storage.md): no call may wait longer than this plus slack.
COMMAND_TIMEOUT_S = 5.0
PARTITIONS = 12  # several partitions on every one of the 3 masters


# --- a cluster this module may kill nodes of ------------------------------------------------------

class Cluster:
    """Three cluster-enabled masters, no replicas; a killed node restarts on its port and folder."""

    def __init__(self, root: str, *extra: str):
        self.root, self.extra = root, ("--cluster-node-timeout", str(NODE_TIMEOUT_MS), *extra)
        self.servers = [RedisServer(root, *self.extra, cluster=True) for _ in range(3)]
        try:
            proc = subprocess.run([_require("redis-cli"), "--cluster", "create", *[s.address for s in self.servers],
                                   "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                                  timeout=30)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return ",".join(s.address for s in self.servers)

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Waits until every node reports cluster_state:ok; returns the seconds it took."""
        start = time.monotonic()
        while True:
            try:
                if all(s.client.cluster("info")["cluster_state"] == "ok" for s in self.servers):
                    return time.monotonic() - start
            except redis.RedisError:
                pass
            assert time.monotonic() - start < timeout, "the cluster did not return to cluster_state:ok"
            time.sleep(0.05)

    def owner(self, key: str) -> int:
        """Index of the master that holds `key`'s slot (the others answer MOVED)."""
        for i, server in enumerate(self.servers):
            try:
                server.client.execute_command("EXISTS", key)
                return i
            except redis.exceptions.MovedError:
                continue
        raise AssertionError(f"no master serves {key}")

    def kill(self, i: int) -> None:
        """kill -9 of node i."""
        server = self.servers[i]
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        server.client.close()

    def restart(self, i: int) -> None:
        """Starts node i again on the same port and folder: same node ID (nodes.conf), and with
        appendonly its data."""
        old = self.servers[i]
        self.servers[i] = RedisServer(self.root, *self.extra, cluster=True, port=old.port)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def cluster_client(cluster: Cluster) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", s.port)
                                                     for s in cluster.servers])


def value_hashes(tag: str) -> list[str]:
    return [f"hps_et{{{tag}/p{p}}}v" for p in range(PARTITIONS)]


# --- 1. a cluster node killed while lookups run ---------------------------------------------------

class Callers:
    """Threads that look random keys up through one layer and check every row against numpy."""

    def __init__(self, layer, expected: np.ndarray, num_threads: int = 4, batch: int = 256):
        self.layer, self.expected, self.batch = layer, expected, batch
        self.fn = tf.function(lambda k: layer(k))
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (start time, seconds)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(seed,), daemon=True) for seed in range(num_threads)]

    def run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop_event.is_set():
            ids = rng.integers(0, len(self.expected), self.batch)
            start = time.monotonic()
            try:
                rows = self.fn(tf.constant(ids, tf.int64)).numpy()
            except Exception as e:  # noqa: BLE001 - any failure of a lookup is what this test looks for
                rows, error = None, f"lookup raised {type(e).__name__}: {e}"
            else:
                bad = np.flatnonzero((rows != self.expected[ids]).any(axis=1))
                error = f"{bad.size} rows differ, first key {ids[bad[0]]}" if bad.size else None
            with self.lock:
                self.latencies.append((start, time.monotonic() - start))
                if error:
                    self.errors.append(error)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=3 * COMMAND_TIMEOUT_S)
        assert not any(t.is_alive() for t in self.threads), "a lookup hung"

    def calls_since(self, t0: float) -> int:
        with self.lock:
            return sum(1 for start, _ in self.latencies if start >= t0)


def cluster_layer(tables, tmp_path, cluster, model: str, rows: int, dim: int):
    """A LookupLayer over a VDB on `cluster` with every row in a RocksDB behind it, and no L1."""
    tables.table("t0", rows, dim)
    config = tables.config(dims=(dim,), model=model, extra_model={"gpucache": False}, extra={
        "volatile_db": {"type": "redis_cluster", "address": cluster.address, "num_partitions": PARTITIONS},
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    return hps.LookupLayer(model, 0, dim, tf.float32, config)


def test_cluster_node_killed_during_lookups_rocksdb_answers_exact_rows(tables, tmp_path):
    rows, dim, model = 4000, 8, "kill_lookup"
    cluster = Cluster(str(tmp_path / "cluster"))
    try:
        layer = cluster_layer(tables, tmp_path, cluster, model, rows, dim)
        expected = tables.dense("t0", 1.5, rows + 499)  # keys past the table get the default
        tag = table_tag(model, "sparse_embedding0")
        victim = 1
        assert any(cluster.owner(h) == victim for h in value_hashes(tag)), "the victim holds no partition"

        with Callers(layer, expected) as callers:
            time.sleep(1.0)
            vdb_hits_before = hps.stats()[tag]["vdb_hits"]
            assert vdb_hits_before > 0
            killed_at = time.monotonic()
            cluster.kill(victim)
            # Long enough for the survivors to mark it failed and answer CLUSTERDOWN.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if cluster.servers[0].client.cluster("info")["cluster_state"] == "fail":
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the surviving nodes never reported cluster_state:fail")
            time.sleep(1.5)
            calls_while_down = callers.calls_since(killed_at)
            restarted_at = time.monotonic()
            cluster.restart(victim)  # without appendonly: back empty
            healed = cluster.wait_healthy()
            time.sleep(2.5)  # past the VDB back-off, with the cluster answering again
            after = hps.stats()[tag]

        assert not callers.errors, callers.errors[:5]
        assert calls_while_down > 20, f"only {calls_while_down} lookups ran while the node was down"
        worst = max(seconds for _, seconds in callers.latencies)
        assert worst < COMMAND_TIMEOUT_S + 1, f"a lookup took {worst:.2f} s"
        assert after["vdb_errors"] >= 1 and after["vdb_skipped"] >= 1
        assert after["pdb_hits"] > 0
        # The VDB serves again once the cluster is healthy (the restarted node's partitions are empty
        # and their keys come from RocksDB).
        assert after["vdb_hits"] > vdb_hits_before
        print(f"worst lookup {worst * 1000:.0f} ms; cluster healthy {healed:.1f} s after the restart "
              f"({restarted_at - killed_at:.1f} s after the kill); {len(callers.latencies)} lookups")
    finally:
        cluster.stop()


def test_cluster_node_hung_lookups_wait_at_most_the_command_timeout(tables, tmp_path):
    """A node that stops answering (SIGSTOP) without closing its connections: lookups go on exactly, and
    none waits longer than the command timeout."""
    rows, dim, model = 4000, 8, "hung_lookup"
    cluster = Cluster(str(tmp_path / "cluster"))
    try:
        layer = cluster_layer(tables, tmp_path, cluster, model, rows, dim)
        tag = table_tag(model, "sparse_embedding0")
        with Callers(layer, tables.dense("t0", 1.5, rows + 499)) as callers:
            time.sleep(1.0)
            stopped_at = time.monotonic()
            cluster.servers[1].process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(8.0)
            finally:
                cluster.servers[1].process.send_signal(signal.SIGCONT)
            calls_while_hung = callers.calls_since(stopped_at)
            cluster.wait_healthy()
            time.sleep(2.5)
            after = hps.stats()[tag]
        assert not callers.errors, callers.errors[:5]
        worst = max(seconds for _, seconds in callers.latencies)
        assert worst < COMMAND_TIMEOUT_S + 1, f"a lookup took {worst:.2f} s"
        assert calls_while_hung > 20, f"only {calls_while_hung} lookups ran while the node was hung"
        assert after["vdb_errors"] >= 1 and after["pdb_hits"] > 0
        slow = sum(1 for _, seconds in callers.latencies if seconds > 1.0)
        print(f"worst lookup {worst * 1000:.0f} ms; {slow} of {calls_while_hung} lookups during the hang took over 1 s")
    finally:
        cluster.stop()


# --- 2. a cluster node killed while online updates stream --------------------------------------

def encode(keys: np.ndarray, version: int, dim: int) -> np.ndarray:
    """Row of `key` at `version`: [1e6 + key, version, version, ...] (exact in float32)."""
    rows = np.full((len(keys), dim), version, np.float32)
    rows[:, 0] = 1_000_000 + np.asarray(keys)
    return rows


class Publisher(threading.Thread):
    """Publishes every key at versions 0, 1, 2, ... until told to stop, redoing a version whose flush
    failed (a failed flush drops what it held: core/update_stream.cc)."""

    def __init__(self, config: str, model: str, keys: np.ndarray, dim: int):
        super().__init__(daemon=True)
        self.config, self.model, self.keys, self.dim = config, model, keys, dim
        self.stop_event = threading.Event()
        self.published = -1  # last version Redis acknowledged
        self.failures = 0
        self.worst_call = 0.0

    def run(self) -> None:
        publisher = None
        version = 0
        while not self.stop_event.is_set():
            start = time.monotonic()
            try:
                if publisher is None:
                    publisher = UpdatePublisher(self.config)
                publisher.publish(self.model, 0, self.keys, encode(self.keys, version, self.dim))
                publisher.flush()
                self.published = version
                version += 1
                time.sleep(0.05)
            except (ConnectionError, RuntimeError):
                self.failures += 1
                time.sleep(0.1)
            self.worst_call = max(self.worst_call, time.monotonic() - start)
        if publisher is not None:
            publisher.close()


def check_versions(rows: np.ndarray, keys: np.ndarray, file_rows: np.ndarray) -> str | None:
    """None if each row is its key's file row or a whole published row of that key."""
    published = rows[:, 0] >= 1_000_000
    if not np.array_equal(rows[~published], file_rows[keys[~published]]):
        return "a row that is neither the file row nor a published row"
    got = rows[published]
    if (got[:, 1:] != got[:, 1:2]).any():
        return f"torn row: {got[(got[:, 1:] != got[:, 1:2]).any(axis=1)][0]}"
    if (got[:, 0].astype(np.int64) - 1_000_000 != keys[published]).any():
        return "a row of another key"
    return None


@pytest.mark.parametrize("victim_role", ["stream_node", "other_node"])
def test_cluster_node_killed_during_online_updates_every_key_ends_with_its_last_row(tables, tmp_path, victim_role):
    rows, dim, model = 2000, 4, f"kill_upd_{victim_role}"
    # appendfsync always: a node killed with -9 comes back with every write it acknowledged.
    cluster = Cluster(str(tmp_path / "cluster"), "--appendonly", "yes", "--appendfsync", "always")
    publisher = None
    try:
        tables.table(model, rows, dim)
        keys, file_rows = tables.rows[model]
        config = tables.config(tables=(model,), dims=(dim,), model=model, defaults=(0.0,), name=f"{model}.json",
                               extra_model={"gpucacheper": 0.5}, extra={
            "volatile_db": {"type": "redis_cluster", "address": cluster.address, "num_partitions": PARTITIONS},
            "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")},
            "update_source": {"type": "redis_stream", "address": cluster.address, "poll_timeout_ms": 200,
                              "node_id": "serving-1"}})
        tag = table_tag(model, "sparse_embedding0")
        stream = f"hps_upd{{{tag}}}"
        layer = hps.LookupLayer(model, 0, dim, tf.float32, config)
        lookup = tf.function(lambda k: layer(k))
        np.testing.assert_array_equal(lookup(tf.constant(keys)).numpy(), file_rows)  # L1 holds half
        stream_node = cluster.owner(stream)
        if victim_role == "stream_node":
            victim = stream_node
        else:
            victim = next(cluster.owner(h) for h in value_hashes(tag) if cluster.owner(h) != stream_node)

        errors: list[str] = []
        worst_lookup = [0.0]
        stop_readers = threading.Event()

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop_readers.is_set():
                ids = rng.integers(0, rows, 512)
                start = time.monotonic()
                try:
                    got = lookup(tf.constant(ids, tf.int64)).numpy()
                except Exception as e:  # noqa: BLE001
                    errors.append(f"lookup raised {type(e).__name__}: {e}")
                    return
                worst_lookup[0] = max(worst_lookup[0], time.monotonic() - start)
                problem = check_versions(got, ids, file_rows)
                if problem:
                    errors.append(problem)
                    return

        readers = [threading.Thread(target=reader, args=(s,), daemon=True) for s in range(2)]
        for t in readers:
            t.start()
        publisher = Publisher(config, model, keys, dim)
        publisher.start()
        time.sleep(1.5)
        assert publisher.published >= 3, "updates did not flow before the fault"
        cluster.kill(victim)
        time.sleep(3.0)  # the node stays down past the node timeout: the cluster is "fail"
        cluster.restart(victim)
        restarted_at = time.monotonic()
        cluster.wait_healthy()
        time.sleep(1.0)
        publisher.stop_event.set()
        publisher.join(timeout=30)
        assert not publisher.is_alive(), "the publisher hung"
        last = publisher.published

        final = encode(keys, last, dim)

        def converged() -> bool:
            return np.array_equal(lookup(tf.constant(keys)).numpy(), final)

        def groups() -> list:
            return [(g["name"], g["pending"], g["last-delivered-id"])
                    for g in cluster_client(cluster).xinfo_groups(stream)]

        # Well under the 30 s after which a consumer claims messages another one left pending.
        deadline = time.monotonic() + 20
        while not converged():
            assert time.monotonic() < deadline, (
                f"keys did not all reach version {last} within 20 s of the restart; stats {hps.stats()[tag]}; "
                f"groups {groups()}")
            time.sleep(0.1)
        converged_after = time.monotonic() - restarted_at
        stop_readers.set()
        for t in readers:
            t.join(timeout=3 * COMMAND_TIMEOUT_S)
        assert not any(t.is_alive() for t in readers), "a lookup hung"
        assert not errors, errors[:3]
        assert worst_lookup[0] < COMMAND_TIMEOUT_S + 1, f"a lookup took {worst_lookup[0]:.2f} s"
        assert publisher.worst_call < 2 * COMMAND_TIMEOUT_S + 1, f"a publish took {publisher.worst_call:.2f} s"
        if victim_role == "stream_node":
            assert publisher.failures > 0, "publishing never failed: the fault did not reach the stream"

        # Every tier holds the last rows: the Redis VDB (read with redis-py), RocksDB (opened
        # read-only beside the server), and both groups have acknowledged everything.
        client = cluster_client(cluster)
        stored = {}
        for h in value_hashes(tag):
            stored.update(client.hgetall(h))
        assert len(stored) == rows
        vdb_rows = np.stack([np.frombuffer(stored[int(k).to_bytes(8, "little", signed=True)], "<f4") for k in keys])
        np.testing.assert_array_equal(vdb_rows, final)
        with Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb"), "read_only": True}) as db:
            pdb_rows, found = db.fetch(tag, keys, dim)
        assert found.all()
        np.testing.assert_array_equal(pdb_rows, final)
        last_id = client.xrevrange(stream, count=1)[0][0]
        # Nothing left pending: a message this process took and failed to apply or acknowledge during the
        # outage is retried by it, not left for another process to claim 30 s later.
        deadline = time.monotonic() + 10
        while any(pending for _, pending, _ in groups()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for name, pending, delivered in groups():
            assert pending == 0, (name, pending, client.xpending_range(stream, name, "-", "+", 5))
            assert delivered == last_id, (name, delivered, last_id)
        print(f"victim {victim_role}: {last + 1} versions published ({publisher.failures} failed flushes), "
              f"all keys at the last one {converged_after:.1f} s after the restart; worst lookup "
              f"{worst_lookup[0] * 1000:.0f} ms")
    finally:
        if publisher is not None:
            publisher.stop_event.set()
        cluster.stop()


# --- 3. RocksDB on a read-only mount and on a full disk ------------------------------------------

class Mounts:
    """mount(2) for one test: a read-only bind mount or a small tmpfs; everything unmounted after."""

    def __init__(self):
        self.points: list[str] = []

    def _run(self, *args: str) -> None:
        proc = subprocess.run(["mount", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            message = (f"MOUNT UNAVAILABLE: `mount {' '.join(args)}` failed ({proc.stderr.strip()}); this test needs "
                       f"root with CAP_SYS_ADMIN, and its fault is NOT tested on this machine")
            print("\n" + "!" * 100 + "\n" + message + "\n" + "!" * 100, file=sys.stderr)
            if os.environ.get("CI") == "true":  # CI runs as root on a machine that allows mount
                pytest.fail(message)
            warnings.warn(pytest.PytestWarning(message))  # listed in the run's warnings summary
            pytest.skip(message)

    def tmpfs(self, path: str, size: str) -> None:
        os.makedirs(path, exist_ok=True)
        self._run("-t", "tmpfs", "-o", f"size={size}", "tmpfs", path)
        self.points.append(path)

    def read_only_bind(self, path: str) -> None:
        self._run("--bind", path, path)
        self.points.append(path)
        self._run("-o", "remount,ro,bind", path)

    def unmount_all(self) -> None:
        for path in reversed(self.points):
            subprocess.run(["umount", "-l", path], capture_output=True)
        self.points.clear()


@pytest.fixture
def mounts():
    m = Mounts()
    yield m
    m.unmount_all()


def pdb_config(tables, model: str, path, dim: int, **pdb) -> str:
    return tables.config(tables=(model,), dims=(dim,), model=model, name=f"{model}.json",
                         extra_model={"gpucache": False},
                         extra={"volatile_db": {"type": "disabled"},
                                "persistent_db": {"type": "rocks_db", "path": str(path), **pdb}})


def test_rocksdb_on_a_read_only_mount(tables, tmp_path, mounts):
    """A read-only filesystem: read_only: true serves every row; a writable open is a clear error."""
    rows, dim = 3000, 8
    tables.table("ro_serve", rows, dim)
    tables.table("ro_write", rows, dim)
    keys, vectors = tables.rows["ro_serve"]
    path = tmp_path / "rdb"
    with Storage("persistent_db", {"type": "rocks_db", "path": str(path)}) as db:
        db.insert(table_tag("ro_serve", "sparse_embedding0"), keys, vectors)
    mounts.read_only_bind(str(path))
    with pytest.raises(OSError):
        open(path / "probe", "w")  # the mount does refuse writes, root or not

    serve = pdb_config(tables, "ro_serve", path, dim, read_only=True)
    layer = hps.LookupLayer("ro_serve", 0, dim, tf.float32, serve)
    ids = np.arange(0, rows + 200, 3)
    expected = np.where((ids < rows)[:, None], vectors[np.minimum(ids, rows - 1)], np.float32(1.5))
    np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), expected)

    write = pdb_config(tables, "ro_write", path, dim)
    with pytest.raises(tf.errors.OpError) as error:
        hps.Init(global_batch_size=1, ps_config_file=write)
    message = str(error.value)
    assert str(path) in message and "Read-only file system" in message, message
    assert "locked by another writer" not in message, f"a read-only filesystem reported as a lock: {message}"


def fill_disk(folder: str) -> str:
    """Fills the filesystem of `folder` with one file; returns its path."""
    filler = os.path.join(folder, "filler")
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 16)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


# Debian's librocksdb 7.8 is built with assertions on: a write that meets a full disk aborts the
# process (writable_file_writer.h:312). storage/rocksdb_backend.cc checks the free space before each
# write batch and refuses with "No space left on device" instead (docs/reliability.md).

# Serves a table whose RocksDB is on a small filesystem, in its own process (a crash of the server
# fails the test, not the test run). Prints "ready", then every 0.1 s checks all keys, until every
# key has its row of the version given on stdin, or 60 s pass.
SERVE_ON_A_SMALL_DISK = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import numpy as np, tensorflow as tf
import tf_hps as hps
from test_faults_more import check_versions, encode
keys, file_rows = np.arange({rows}), np.load({file_rows!r})
layer = hps.LookupLayer({model!r}, 0, {dim}, tf.float32, {config!r})
assert np.array_equal(layer(tf.constant(keys)).numpy(), file_rows)
print("ready", flush=True)
final = encode(keys, int(sys.stdin.readline()), {dim})
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    got = layer(tf.constant(keys)).numpy()
    problem = check_versions(got, keys, file_rows)
    if problem:
        print(json.dumps({{"error": problem}})); sys.exit(1)
    if np.array_equal(got, final):
        print(json.dumps({{"converged": True, "stats": hps.stats()}})); sys.exit(0)
    time.sleep(0.1)
print(json.dumps({{"converged": False, "stats": hps.stats()}})); sys.exit(1)
"""


def test_rocksdb_full_disk_at_start_up_is_a_clear_error(tables, tmp_path, mounts):
    rows, dim = 20000, 32  # 2.6 MB of rows for a 1 MiB filesystem
    tables.table("full_init", rows, dim)
    mounts.tmpfs(str(tmp_path / "small"), "1m")
    config = pdb_config(tables, "full_init", tmp_path / "small" / "rdb", dim)
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import tf_hps as hps\n"
            f"hps.Init(global_batch_size=1, ps_config_file={config!r})\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert time.monotonic() - start < 60
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert "No space left on device" in proc.stderr and str(tmp_path / "small" / "rdb") in proc.stderr, \
        proc.stderr[-3000:]


def test_rocksdb_full_disk_during_online_updates_pauses_them_until_space_returns(tables, tmp_path, mounts,
                                                                                 redis_standalone):
    """Updates to a RocksDB on a full disk are not acknowledged (so not lost), lookups go on exactly
    from what the tiers hold, and once space returns every key reaches its last row."""
    rows, dim, model, versions = 2000, 8, "full_upd", 20
    tables.table(model, rows, dim)
    keys, file_rows = tables.rows[model]
    np.save(tmp_path / "file_rows.npy", file_rows)
    mounts.tmpfs(str(tmp_path / "small"), "8m")
    rdb = tmp_path / "small" / "rdb"
    config = tables.config(tables=(model,), dims=(dim,), model=model, defaults=(0.0,), name=f"{model}.json",
                           extra_model={"gpucacheper": 0.5}, extra={
        "volatile_db": {"type": "disabled"},
        "persistent_db": {"type": "rocks_db", "path": str(rdb)},
        "update_source": {"type": "redis_stream", "address": redis_standalone.address, "poll_timeout_ms": 200,
                          "node_id": "full-disk"}})
    tag = table_tag(model, "sparse_embedding0")
    stream = f"hps_upd{{{tag}}}"
    code = SERVE_ON_A_SMALL_DISK.format(root=ROOT, tests=os.path.join(ROOT, "tests"), rows=rows, dim=dim,
                                        model=model, config=config, file_rows=str(tmp_path / "file_rows.npy"))
    server = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        assert server.stdout.readline().strip() == "ready", server.communicate(timeout=60)
        filler = fill_disk(str(tmp_path / "small"))
        with UpdatePublisher(config) as publisher:
            for version in range(versions):  # 20 x 64 KB of rows: well past what the disk had left
                publisher.publish(model, 0, keys, encode(keys, version, dim))
                publisher.flush()
        time.sleep(2.0)
        assert server.poll() is None, f"the server died (exit {server.returncode}): {server.stderr.read()[-3000:]}"
        groups = redis_standalone.client.xinfo_groups(stream)
        assert any(g["pending"] > 0 or g.get("lag") for g in groups), \
            f"the updates were acknowledged although RocksDB could not write them: {groups}"
        os.remove(filler)
        out, err = server.communicate(f"{versions - 1}\n", timeout=90)
        assert server.returncode == 0, f"exit {server.returncode}: {out[-2000:]} {err[-3000:]}"
        assert json.loads(out.strip().splitlines()[-1])["converged"]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    with Storage("persistent_db", {"type": "rocks_db", "path": str(rdb), "read_only": True}) as db:
        stored, found = db.fetch(tag, keys, dim)
    assert found.all()
    np.testing.assert_array_equal(stored, encode(keys, versions - 1, dim))


# --- 4. `python -m tf_hps ingest` killed partway -----------------------------------------------

def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf_hps", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("tier", ["persistent_db", "volatile_db"])
def test_ingest_killed_partway_then_rerun_verifies(tables, tmp_path, redis_standalone, tier):
    rows, dim, model = 1_000_000, 32, f"ingest_kill_{tier}"
    folder = tables.table(model, rows, dim)
    config = tables.config(tables=(model,), dims=(dim,), model=model, name=f"{model}.json", extra={
        "volatile_db": {"type": "redis_cluster", "address": redis_standalone.address, "num_partitions": 8},
        "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rdb")}})
    args = [f"--config={config}", f"--tiers={tier}"]
    proc = subprocess.Popen([sys.executable, "-m", "tf_hps", "ingest", *args, "--progress"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    # Progress lines: "... [###...] <done>/<total> rows ...", redrawn with \r.
    done, buffer = 0, b""
    deadline = time.monotonic() + 120
    while done < rows // 5:
        chunk = proc.stderr.read1(4096)
        assert chunk, f"ingest ended before it was killed: {buffer.decode(errors='replace')[-2000:]}"
        buffer = (buffer + chunk)[-4096:]
        counts = re.findall(rb"(\d+)/(\d+) rows", buffer)
        if counts:
            done = int(counts[-1][0])
        assert time.monotonic() < deadline, "no progress from ingest"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert done < rows, "ingest finished before it was killed: the table is too small for this machine"

    # What the killed run left: some rows missing, but none torn or wrong.
    partial = cli("verify", *args)
    assert partial.returncode == 1, partial.stdout + partial.stderr
    found = re.search(r"(\d+) rows checked, (\d+) missing, (\d+) different", partial.stdout)
    assert found, partial.stdout
    checked, missing, different = map(int, found.groups())
    assert checked == rows and 0 < missing < rows - done + 65536 and different == 0, partial.stdout

    print(f"{tier}: killed at {done} of {rows} rows reported; the killed run left {missing} missing, 0 different")
    again = cli("ingest", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    verified = cli("verify", *args)
    assert verified.returncode == 0 and "OK" in verified.stdout and f"{rows} rows checked, 0 missing, 0 different" \
        in verified.stdout, verified.stdout + verified.stderr
    if tier == "volatile_db":
        tag = table_tag(model, "sparse_embedding0")
        assert sum(redis_standalone.client.hlen(f"hps_et{{{tag}/p{p}}}v") for p in range(8)) == rows
        cli("drop", *args, "--yes")  # the session's Redis is shared with other tests
