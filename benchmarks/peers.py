"""Lookups of one table against peers and physical limits, same keys, same rows, one run.

    python benchmarks/peers.py [--quick] [--out DIR] [--rows 1000000] [--dim 32] [--alpha 1.2]
                               [--batches 1024,16384,65536] [--repeats 9] [--min-time 0.1] [--no-tfra]

One table (random int64 keys, float32 rows) and zipf(alpha) key batches (hot rows repeat within a batch).
Every implementation returns the (batch, dim) float32 rows of the batch's keys in batch order; its first
answer is compared with the table before it is timed. Repeats of the implementations of a group take turns
(storage_tiers.time_interleaved); each number is the median.

In memory
  - limit: numpy gather ``table[rows]`` of a dense array (memory bound; knows the row of every key)
  - TF: ``tf.nn.embedding_lookup`` on a ``tf.Variable`` (row ids, no hashing)
  - ours: ``hps.LookupLayer`` in a tf.function, hash-map VDB holding every row, L1 of 20 % of the rows
  - TFRA 0.8.1: ``de.Variable.lookup`` on its CPU cuckoo hash table (own TF 2.16.2 venv, another process)
Redis (one standalone redis-server on loopback, started here)
  - limit: raw C hiredis (benchmarks/hiredis_hmget.c) HMGET of the batch's *distinct* keys from our layout
  - ours: ``hps.LookupLayer``, Redis VDB holding every row, without L1 and with an L1 of 20 %; and the
    Redis backend alone (``tf_hps.storage.Storage.fetch``, no TF op), to show what the op path adds
  - naive Python PS: redis-py + hiredis, np.unique, one pipelined HMGET per 4,096 distinct keys, numpy
  - TFRA 0.8.1: ``de.Variable.lookup`` with ``RedisTableCreator`` (standalone mode, its defaults)
RocksDB (written once, then opened read-only)
  - limit: rocksdict ``multi_get`` of the batch's distinct keys (raw mode): the ceiling of a Python client;
    every key and row is a Python object, so a C++ MultiGet (ours) can beat it at large batches
  - ours: ``hps.LookupLayer``, no VDB, no L1, RocksDB PDB (read_only); and the backend alone (Storage.fetch)
  - naive Python PS: rocksdict ``multi_get`` of the distinct keys, numpy scatter

TFRA runs in build/tfra-venv (benchmarks/tfra_venv.sh); without it its rows are reported as not run.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import subprocess
import sys
import tempfile
import shutil
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import storage_tiers as st  # noqa: E402
from machine import describe  # noqa: E402

TFRA_PYTHON = os.path.join(REPO, "build", "tfra-venv", "bin", "python")


# --------------------------------------------------------------------------- the naive parameter server


class NaivePS:
    """What a user would write by hand: Redis first (redis-py), RocksDB for the rest (rocksdict), numpy."""

    def __init__(self, dim: int, redis_client=None, redis_hash: str = "naive:t0", rocks_cf=None, chunk: int = 4096):
        self.dim, self.redis, self.hash, self.rocks, self.chunk = dim, redis_client, redis_hash, rocks_cf, chunk

    def load_redis(self, keys: np.ndarray, values: np.ndarray) -> None:
        raw_keys = keys.astype("<i8").tobytes()
        rows = values.astype("<f4")
        pipe = self.redis.pipeline(transaction=False)
        for lo in range(0, keys.size, 10_000):
            hi = min(lo + 10_000, keys.size)
            pipe.hset(self.hash, mapping={raw_keys[8 * i:8 * i + 8]: rows[i].tobytes() for i in range(lo, hi)})
        pipe.execute()

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(keys, return_inverse=True)
        raw = unique.astype("<i8").tobytes()
        fields = [raw[i:i + 8] for i in range(0, len(raw), 8)]
        rows: list = [None] * len(fields)
        if self.redis is not None:
            pipe = self.redis.pipeline(transaction=False)
            for lo in range(0, len(fields), self.chunk):
                pipe.hmget(self.hash, fields[lo:lo + self.chunk])
            rows = [r for reply in pipe.execute() for r in reply]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing and self.rocks is not None:
            got = self.rocks[[fields[i] for i in missing]]
            for i, r in zip(missing, got):
                rows[i] = r
        zero = bytes(4 * self.dim)
        values = np.frombuffer(b"".join(r if r is not None else zero for r in rows), "<f4").reshape(-1, self.dim)
        return values[inverse]


def rocksdict_distinct(cf, keys: np.ndarray) -> list:
    """The least a RocksDB client must do: one multi_get of the distinct keys (no scatter)."""
    raw = np.unique(keys).astype("<i8").tobytes()
    return cf[[raw[i:i + 8] for i in range(0, len(raw), 8)]]


# --------------------------------------------------------------------------- TFRA in its own process


class TfraWorker:
    def __init__(self, work: str):
        self.work = work
        self.proc = subprocess.Popen([TFRA_PYTHON, os.path.join(HERE, "peers_tfra.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(os.path.join(work, "tfra.log"), "w"),
                                     text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""})
        self.batches: dict[int, int] = {}

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            log_tail = open(os.path.join(self.work, "tfra.log")).read()[-3000:]
            raise RuntimeError(f"the TFRA worker exited ({self.proc.poll()}):\n{log_tail}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def batch_id(self, keys: np.ndarray) -> int:
        key = id(keys)
        if key not in self.batches:
            path = os.path.join(self.work, f"tfra_batch{len(self.batches)}.npy")
            np.save(path, keys)
            self.batches[key] = len(self.batches)
            self.ask(cmd="batch", id=self.batches[key], keys=path)
        return self.batches[key]

    def lookup(self, name: str, keys: np.ndarray) -> np.ndarray:
        path = os.path.join(self.work, "tfra_out.npy")
        self.ask(cmd="dump", name=name, id=self.batch_id(keys), out=path)
        return np.load(path)

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TfraCalls:
    """A TFRA lookup timed inside the worker: each repeat is back-to-back calls for at least min_time."""

    def __init__(self, worker: TfraWorker, name: str, keys: np.ndarray, min_time: float):
        self.worker, self.name, self.min_time = worker, name, min_time
        self.id = worker.batch_id(keys)
        self.inner = 0

    def repeat(self) -> float:
        out = self.worker.ask(cmd="time", name=self.name, id=self.id, min_time=self.min_time)
        self.inner = out["inner"]
        return out["seconds_per_call"]


def tfra_available() -> tuple[bool, str]:
    if not os.path.exists(TFRA_PYTHON) or not os.path.exists(os.path.join(REPO, "build", "tfra-venv", ".ok")):
        return False, "build/tfra-venv is missing: run benchmarks/tfra_venv.sh (needs PyPI or the wheels offline)"
    return True, ""


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(REPO, "build", "bench-peers"))
    parser.add_argument("--rows", type=int, help="default 1000000, quick 100000")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.2)
    parser.add_argument("--batches", help="default 1024,16384,65536; quick 1024,16384")
    parser.add_argument("--repeats", type=int, help="default 9, quick 5")
    parser.add_argument("--min-time", type=float, help="default 0.1, quick 0.02")
    parser.add_argument("--gpucacheper", type=float, default=0.2)
    parser.add_argument("--no-tfra", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    q = args.quick
    rows_n = args.rows or (100_000 if q else 1_000_000)
    batch_sizes = [int(b) for b in (args.batches or ("1024,16384" if q else "1024,16384,65536")).split(",")]
    repeats = args.repeats or (5 if q else 9)
    min_time = args.min_time if args.min_time is not None else (0.02 if q else 0.1)
    dim = args.dim

    import redis
    import tensorflow as tf
    from rocksdict import AccessType, Options, Rdict

    import tf_hps as hps
    from tf_hps.storage import Storage, table_tag

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    w = st.make_workload(rows_n, [dim], batch_sizes, args.alpha, args.seed)
    keys, table = w.keys, w.tables[dim]
    work = tempfile.mkdtemp(prefix="tf_hps_peers_")
    hps.save_table(os.path.join(work, "t0"), keys, table)
    tfra_ok, tfra_note = tfra_available()
    if args.no_tfra:
        tfra_ok, tfra_note = False, "skipped (--no-tfra)"
    if not tfra_ok:
        log(f"!!! TFRA not run: {tfra_note}")

    results, versions = [], {"tensorflow": tf.__version__, **st.versions()}
    deployment = worker = None
    try:
        deployment = st.redis_servers.start_standalone(os.path.join(work, "redis"))
        port = deployment.servers[0].port
        if tfra_ok:
            worker = TfraWorker(work)
            versions.update({f"TFRA venv {k}": v for k, v in worker.ask(cmd="versions").items()})
            np.save(os.path.join(work, "keys.npy"), keys)
            np.save(os.path.join(work, "values.npy"), table)
            redis_json = os.path.join(work, "tfra_redis.json")
            with open(redis_json, "w") as f:
                json.dump({"redis_connection_mode": 2, "redis_master_name": "master",
                           "redis_host_ip": ["127.0.0.1"], "redis_host_port": [port]}, f)
            for name, kind in (("tfra_cuckoo", "cuckoo"), ("tfra_redis", "redis")):
                out = worker.ask(cmd="load", name=name, kind=kind, keys=os.path.join(work, "keys.npy"),
                                 values=os.path.join(work, "values.npy"), redis_config=redis_json)
                log(f"TFRA {kind}: upserted {out['size']:,} rows in {out['seconds']:.1f} s")

        def config(name, **kw):
            return _config(work, name, dim, **kw)

        # Ours: three parameter servers over the same rows.
        ram_cfg = config("ram", gpucacheper=args.gpucacheper)
        redis_vdb = {"type": "redis_cluster", "address": deployment.address, "num_partitions": 16}
        redis_cfg = config("redis", volatile_db=redis_vdb, gpucache=False)
        redis_l1_cfg = config("redisl1", volatile_db=redis_vdb, gpucacheper=args.gpucacheper)
        rocks_path = os.path.join(work, "rocksdb")
        with Storage("persistent_db", {"type": "rocks_db", "path": rocks_path}) as writer:
            writer.ingest(table_tag("rocks", "t0"), os.path.join(work, "t0"), dim)
        rocks_cfg = config("rocks", volatile_db={"type": "disabled"}, gpucache=False,
                           persistent_db={"type": "rocks_db", "path": rocks_path, "read_only": True})
        layers = {name: hps.LookupLayer(name, 0, dim, tf.float32, cfg) for name, cfg in
                  (("ram", ram_cfg), ("redis", redis_cfg), ("redisl1", redis_l1_cfg), ("rocks", rocks_cfg))}
        spec = [tf.TensorSpec([None], tf.int64)]
        fns = {name: tf.function(lambda k, layer=layer: layer(k), input_signature=spec) for name, layer in layers.items()}
        dense = tf.Variable(table)
        tf_gather = tf.function(lambda k: tf.nn.embedding_lookup(dense, k), input_signature=spec)
        rd = Rdict(rocks_path, options=Options(raw_mode=True),
                   column_families={table_tag("rocks", "t0"): Options(raw_mode=True)},
                   access_type=AccessType.read_only())
        cf = rd.get_column_family(table_tag("rocks", "t0"))
        client = redis.Redis(host="127.0.0.1", port=port)
        naive_redis = NaivePS(dim, redis_client=client)
        t0 = time.perf_counter()
        naive_redis.load_redis(keys, table)
        log(f"naive PS: wrote {rows_n:,} rows to Redis in {time.perf_counter() - t0:.1f} s")
        naive_rocks = NaivePS(dim, rocks_cf=cf)
        # The backends alone, through the TF-free storage library (what storage_tiers.py times).
        redis_db = Storage("volatile_db", redis_vdb)
        rocks_db = Storage("persistent_db", {"type": "rocks_db", "path": rocks_path, "read_only": True})
        binary = st.ensure_hiredis_binary()
        settings = st.Settings(repeats, min_time, work, log)

        # A warm-up pass over every batch size fills the L1 caches with the hot rows first.
        for size, (_, batch_keys) in w.batches.items():
            for name in fns:
                fns[name](tf.constant(batch_keys)).numpy()

        for size, (positions, batch_keys) in w.batches.items():
            expected = table[positions]
            ids = tf.constant(batch_keys)
            pos_t = tf.constant(positions)
            distinct = int(np.unique(batch_keys).size)

            def tf_fn(fn, k):
                return fn(k).numpy()

            groups = {
                "in memory": [
                    ("numpy gather (limit)", True, st.Calls(functools.partial(np.take, table, positions, axis=0),
                                                            min_time), None),
                    ("tf.nn.embedding_lookup", False, st.Calls(functools.partial(tf_fn, tf_gather, pos_t), min_time),
                     lambda: tf_gather(pos_t).numpy()),
                    ("ours: LookupLayer, hash map + L1 20%", False,
                     st.Calls(functools.partial(tf_fn, fns["ram"], ids), min_time), lambda: fns["ram"](ids).numpy()),
                ],
                "redis": [
                    ("ours: LookupLayer, Redis VDB, no L1", False,
                     st.Calls(functools.partial(tf_fn, fns["redis"], ids), min_time),
                     lambda: fns["redis"](ids).numpy()),
                    ("ours: LookupLayer, Redis VDB + L1 20%", False,
                     st.Calls(functools.partial(tf_fn, fns["redisl1"], ids), min_time),
                     lambda: fns["redisl1"](ids).numpy()),
                    ("ours: Storage.fetch, Redis backend alone (no TF op, no L1)", False,
                     st.Calls(functools.partial(redis_db.fetch, table_tag("redis", "t0"), batch_keys, dim), min_time),
                     lambda: redis_db.fetch(table_tag("redis", "t0"), batch_keys, dim)[0]),
                    ("naive Python PS (redis-py + numpy)", False,
                     st.Calls(functools.partial(naive_redis.lookup, batch_keys), min_time),
                     lambda: naive_redis.lookup(batch_keys)),
                ],
                "rocksdb": [
                    ("rocksdict multi_get of distinct keys (limit of a Python client)", True,
                     st.Calls(functools.partial(rocksdict_distinct, cf, batch_keys), min_time), None),
                    ("ours: LookupLayer, RocksDB (read_only), no VDB, no L1", False,
                     st.Calls(functools.partial(tf_fn, fns["rocks"], ids), min_time),
                     lambda: fns["rocks"](ids).numpy()),
                    ("ours: Storage.fetch, RocksDB backend alone (no TF op)", False,
                     st.Calls(functools.partial(rocks_db.fetch, table_tag("rocks", "t0"), batch_keys, dim), min_time),
                     lambda: rocks_db.fetch(table_tag("rocks", "t0"), batch_keys, dim)[0]),
                    ("naive Python PS (rocksdict + numpy)", False,
                     st.Calls(functools.partial(naive_rocks.lookup, batch_keys), min_time),
                     lambda: naive_rocks.lookup(batch_keys)),
                ],
            }
            # raw hiredis reads our Redis layout: the distinct keys of the batch, each once.
            hiredis_runs = st.HiredisRuns(binary, [deployment.address], [0] * 16, table_tag("redis", "t0"), dim,
                                          np.unique(batch_keys), settings)
            values, found = hiredis_runs.fetch_once()
            st.check(f"raw hiredis batch={size}", values, found, _rows_of(keys, table, np.unique(batch_keys)))
            groups["redis"].insert(0, ("raw C hiredis HMGET of distinct keys (limit)", True, hiredis_runs, None))
            if worker is not None:
                groups["in memory"].append(("TFRA 0.8.1: cuckoo hash table (CPU)", False,
                                            TfraCalls(worker, "tfra_cuckoo", batch_keys, min_time),
                                            lambda: worker.lookup("tfra_cuckoo", batch_keys)))
                groups["redis"].append(("TFRA 0.8.1: Redis table", False,
                                        TfraCalls(worker, "tfra_redis", batch_keys, min_time),
                                        lambda: worker.lookup("tfra_redis", batch_keys)))
            for group, entries in groups.items():
                for name, _, _, answer in entries:
                    if answer is not None:
                        st.check(f"{name} batch={size}", np.asarray(answer()), None, expected)
                timings = st.time_interleaved([e[2] for e in entries], size, repeats)
                ours_name = next(e[0] for e in entries if e[0].startswith("ours"))
                ours_rate = timings[[e[0] for e in entries].index(ours_name)].keys_per_s
                for (name, is_limit, _, _), timing in zip(entries, timings):
                    results.append({"group": group, "impl": name, "limit": is_limit, "batch": size,
                                    "distinct": distinct, "keys_per_s": timing.keys_per_s,
                                    "median_s": timing.median_s, "times_s": timing.times_s,
                                    "ours_over_this": ours_rate / timing.keys_per_s})
                    log(f"  {group:9} batch {size:>6}: {name:55} {timing.keys_per_s / 1e6:8.2f} M keys/s "
                        f"(ours / this {ours_rate / timing.keys_per_s:.2f}x)")
        rd.close()
        client.close()
        redis_db.close()
        rocks_db.close()
    finally:
        if worker is not None:
            worker.close()
        if deployment is not None:
            deployment.stop()
        shutil.rmtree(work, ignore_errors=True)

    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": describe(), "versions": versions,
        "settings": {"rows": rows_n, "dim": dim, "alpha": args.alpha, "batches": batch_sizes, "repeats": repeats,
                     "min_time_s": min_time, "gpucacheper": args.gpucacheper, "quick": q},
        "tfra": {"ran": tfra_ok, "note": tfra_note},
        "results": results, "total_s": time.perf_counter() - started,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump(out, f, indent=1)
    log(f"wrote {os.path.join(args.out, 'peers.json')} ({out['total_s']:.0f} s)")
    return 0


def _rows_of(keys: np.ndarray, table: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    order = np.argsort(keys)
    return table[order[np.searchsorted(keys, wanted, sorter=order)]]


def _config(work: str, name: str, dim: int, *, gpucacheper: float = 0.2, gpucache: bool = True,
            volatile_db: dict | None = None, persistent_db: dict | None = None) -> str:
    cfg = {"supportlonglong": True, "models": [{
        "model": name, "sparse_files": [os.path.join(work, "t0")], "embedding_table_names": ["t0"],
        "embedding_vecsize_per_table": [dim], "maxnum_catfeature_query_per_table_per_sample": [1],
        "default_value_for_each_table": [0.0], "deployed_device_list": [0], "max_batch_size": 65536,
        "gpucache": gpucache, "gpucacheper": gpucacheper}]}
    if volatile_db is not None:
        cfg["volatile_db"] = volatile_db
    if persistent_db is not None:
        cfg["persistent_db"] = persistent_db
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


if __name__ == "__main__":
    sys.exit(main())
