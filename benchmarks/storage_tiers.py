"""Fetch throughput of each storage tier against plain clients of the same data, measured in one run.

    python benchmarks/storage_tiers.py [--quick] [--out benchmarks/results] [--no-cluster]

One table of power-law keys (rank ~ zipf(alpha), ranks scattered over the rows and mapped to random
int64 table keys) is loaded into every tier at D=16 and D=128. For each tier, dimension and batch size
(1k / 16k / 64k keys), "ours" is ``tf_hps.storage.Storage.fetch`` (the C++ backend behind its ctypes
wrapper), and each baseline fetches the very same keys from the very same data:

* hash_map: numpy gather ``table[rows]`` of a dense (rows, D) float32 array.
* Redis (a standalone server and a 3-master cluster, started here and always stopped):
  - redis-py + hiredis: take the batch's distinct keys (``np.unique(..., return_inverse=True)``),
    compute each one's partition in numpy (the mix of base/key_hash.h), sort them by partition, queue
    one ``HMGET hps_et{<tag>/p<p>}v <8-byte key>...`` per non-empty partition in a non-transactional
    pipeline (``RedisCluster.pipeline()`` on the cluster), execute it once, then join the row bytes
    into a (distinct, D) float32 array and index it with the inverse into (batch, D).
  - raw C hiredis: benchmarks/hiredis_hmget.c (built into build/bench/) does the same per batch in C
    (distinct keys through an open-addressing table, ``redisAppendCommandArgv``, every node flushed,
    ``redisGetReply``, each row copied to its key's places); it times only that loop.
* RocksDB (written by our backend, closed, reopened ``read_only``): rocksdict ``multi_get``
  (``cf[list_of_8_byte_keys]``) of the batch's distinct keys (``np.unique``) on the same database
  opened read-only with ``raw_mode=True``, column family = the table's tag, then the rows joined into
  a (distinct, D) array indexed with the inverse into (batch, D).

Every baseline de-duplicates the batch first, as a competent client does and as our backends do.

Each number is the median over repeats (each repeat runs back-to-back calls for at least
``--min-time`` seconds; the repeats of ours and of the baselines take turns) after a warm-up call
whose answer is checked against the table, so a fast wrong answer fails the run. Prints a Markdown table and writes ``storage_tiers.md`` and
``storage_tiers.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import operator
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import hiredis
import numpy as np
import redis.cluster
from rocksdict import AccessType, Options, Rdict

from tf_hps.storage import Storage, table_tag

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_redis_servers():
    """tests/redis_servers.py: starts and stops real redis-server processes (the tests' fixtures use it too)."""
    spec = importlib.util.spec_from_file_location("redis_servers", os.path.join(REPO, "tests", "redis_servers.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


redis_servers = _load_redis_servers()
HIREDIS_SOURCE = os.path.join(REPO, "benchmarks", "hiredis_hmget.c")
HIREDIS_BINARY = os.path.join(REPO, "build", "bench", "hiredis_hmget")

# Ratio ours / baseline each tier should reach.
TARGETS = {
    ("hash_map", "numpy gather"): 0.5,
    ("redis", "redis-py + hiredis"): 2.5,
    ("redis", "raw C hiredis"): 0.8,
    ("rocks_db", "rocksdict multi_get"): 1.5,
}


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call, one entry per repeat, and how many calls each repeat averaged."""

    keys: int
    times_s: list[float]
    inner: int

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.median_s

    def to_json(self) -> dict:
        return {"keys_per_s": self.keys_per_s, "median_s": self.median_s, "inner": self.inner,
                "times_s": self.times_s}


class Calls:
    """A Python callable timed in repeats of back-to-back calls lasting at least ``min_time`` seconds."""

    def __init__(self, fn, min_time: float):
        self.fn = fn
        self.min_time = min_time
        self.inner = 0

    def repeat(self) -> float:
        """Seconds per call over one repeat."""
        if self.inner == 0:
            start = time.perf_counter()
            self.fn()
            self.inner = int(self.min_time / max(time.perf_counter() - start, 1e-9)) + 1
        start = time.perf_counter()
        for _ in range(self.inner):
            self.fn()
        return (time.perf_counter() - start) / self.inner


def time_interleaved(sources: list, keys: int, repeats: int) -> list[Timing]:
    """Timings of several sources whose repeats take turns (in rotating order), so that load from
    elsewhere on the machine falls on all of them alike; the callers made a checked warm-up call."""
    times: list[list[float]] = [[] for _ in sources]
    for r in range(repeats):
        for k in range(len(sources)):
            i = (r + k) % len(sources)
            times[i].append(sources[i].repeat())
    return [Timing(keys, t, s.inner) for s, t in zip(sources, times, strict=True)]


def check(what: str, values: np.ndarray, found: np.ndarray | None, expected: np.ndarray) -> None:
    """Fails the run unless ``values`` are exactly the expected rows (and all were found)."""
    if found is not None and not np.all(found):
        raise AssertionError(f"{what}: {int(np.size(found) - np.count_nonzero(found))} keys reported missing")
    if values.shape != expected.shape or not np.array_equal(values, expected):
        raise AssertionError(f"{what}: values differ from the table ({values.shape} vs {expected.shape})")


# --------------------------------------------------------------------------- data


@dataclass
class Workload:
    """The table (same keys, both dims) and the key batches every tier fetches."""

    rows: int
    alpha: float
    keys: np.ndarray                                   # (rows,) int64 table keys
    tables: dict[int, np.ndarray]                      # dim -> (rows, dim) float32
    batches: dict[int, tuple[np.ndarray, np.ndarray]]  # size -> ((size,) row positions, (size,) keys)


def make_workload(rows: int, dims: list[int], batch_sizes: list[int], alpha: float, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    candidates = np.unique(rng.integers(1, 2**62, size=rows + rows // 8 + 16, dtype=np.int64))
    keys = rng.permutation(candidates)[:rows]
    if keys.size != rows:
        raise RuntimeError("could not draw enough distinct keys")
    tables = {d: rng.standard_normal((rows, d)).astype(np.float32) for d in dims}
    hot_order = rng.permutation(rows)  # rank r (0 = hottest) is row hot_order[r]
    batches = {}
    for size in batch_sizes:
        ranks = (rng.zipf(alpha, size=size) - 1) % rows
        positions = hot_order[ranks].astype(np.int64)
        batches[size] = (positions, keys[positions].copy())
    return Workload(rows, alpha, keys, tables, batches)


def partition_of(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    """PartitionOf of storage/layout.h in numpy: MixKey (base/key_hash.h) mod num_partitions."""
    v = keys.astype(np.int64).view(np.uint64)

    def rotr(x, r):
        return (x >> np.uint64(r)) | (x << np.uint64(64 - r))

    v = v ^ rotr(v, 25) ^ rotr(v, 50)
    v = v * np.uint64(0xA24BAED4963EE407)
    v = v ^ rotr(v, 24) ^ rotr(v, 49)
    v = v * np.uint64(0x9FB21C651E98DF25)
    v = v ^ (v >> np.uint64(28))
    return (v % np.uint64(num_partitions)).astype(np.int64)


def redis_value_hash(tag: str, partition: int) -> str:
    """RedisValueHash of storage/layout.h."""
    return f"hps_et{{{tag}/p{partition}}}v"


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    tier: str
    baseline: str
    dim: int
    batch: int
    ours: Timing
    theirs: Timing
    target_key: tuple[str, str]
    notes: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours.keys_per_s / self.theirs.keys_per_s

    @property
    def target(self) -> float:
        return TARGETS[self.target_key]

    @property
    def met(self) -> bool:
        return self.ratio >= self.target

    def to_json(self) -> dict:
        return {"tier": self.tier, "baseline": self.baseline, "dim": self.dim, "batch": self.batch,
                "ours": self.ours.to_json(), "baseline_timing": self.theirs.to_json(), "ratio": self.ratio,
                "target": self.target, "met": self.met, **self.notes}


def rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def markdown(rows: list[Row], header: list[str]) -> str:
    lines = list(header)
    lines += ["", "| tier | baseline | D | batch | ours keys/s | baseline keys/s | ratio | target | met? |",
              "|---|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r.tier} | {r.baseline} | {r.dim} | {r.batch:,} | {rate(r.ours.keys_per_s)} | "
                     f"{rate(r.theirs.keys_per_s)} | {r.ratio:.2f}x | >= {r.target:g}x | "
                     f"{'yes' if r.met else '**no**'} |")
    met = sum(r.met for r in rows)
    lines += ["", f"{met} of {len(rows)} targets met."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- machine and versions


def header_version(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return "unknown"
    parts = [re.search(rf"#define {prefix}_{p}\s+(\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else "unknown"


def versions() -> dict:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
        redis_server = re.search(r"v=(\S+)", out).group(1)
    except (OSError, subprocess.CalledProcessError, AttributeError):
        redis_server = "unknown"
    return {
        "redis-server": redis_server,
        "hiredis (C)": header_version("/usr/include/hiredis/hiredis.h", "HIREDIS"),
        "redis-py": redis.__version__,
        "hiredis (Python)": hiredis.__version__,
        "rocksdict": importlib.metadata.version("rocksdict"),
        "librocksdb": header_version("/usr/include/rocksdb/version.h", "ROCKSDB"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- tiers


@dataclass
class Settings:
    repeats: int
    min_time: float
    work: str
    log: object


def tag_of(dim: int) -> str:
    return table_tag("bench", f"d{dim}")


def bench_hash_map(w: Workload, s: Settings) -> list[Row]:
    rows = []
    db = Storage("volatile_db", {"type": "hash_map"})
    try:
        for dim, table in w.tables.items():
            db.insert(tag_of(dim), w.keys, table)
        for dim, table in w.tables.items():
            for size, (positions, keys) in w.batches.items():
                values, found = db.fetch(tag_of(dim), keys, dim)
                check(f"hash_map D={dim} batch={size}", values, found, table[positions])
                ours, theirs = time_interleaved(
                    [Calls(functools.partial(db.fetch, tag_of(dim), keys, dim), s.min_time),
                     Calls(functools.partial(operator.getitem, table, positions), s.min_time)],  # table[positions]
                    size, s.repeats)
                rows.append(Row("hash_map", "numpy gather", dim, size, ours, theirs, ("hash_map", "numpy gather")))
                s.log(rows[-1])
    finally:
        db.close()
    return rows


def redispy_fetch(client, hashes: list[str], keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The baseline a user would write with redis-py: the batch's distinct keys (np.unique), one HMGET
    per partition of them in one pipeline, then each row copied to the places of its key."""
    keys, inverse = np.unique(keys, return_inverse=True)
    values, found = _redispy_fetch_distinct(client, hashes, keys, dim)
    return values[inverse], found[inverse]


def _redispy_fetch_distinct(client, hashes: list[str], keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    n = keys.size
    partitions = partition_of(keys, len(hashes))
    order = np.argsort(partitions, kind="stable")
    bounds = np.searchsorted(partitions[order], np.arange(len(hashes) + 1))
    raw = keys[order].astype("<i8").tobytes()
    pipe = client.pipeline(transaction=False)
    for p in range(len(hashes)):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if lo < hi:
            pipe.hmget(hashes[p], [raw[8 * i:8 * i + 8] for i in range(lo, hi)])
    rows = [row for reply in pipe.execute() for row in reply]
    values = np.zeros((n, dim), np.float32)
    found = np.zeros(n, bool)
    if None not in rows:
        values[order] = np.frombuffer(b"".join(rows), "<f4").reshape(n, dim)
        found[:] = True
    else:
        for j, row in enumerate(rows):
            if row is not None:
                values[order[j]] = np.frombuffer(row, "<f4")
                found[order[j]] = True
    return values, found


def ensure_hiredis_binary() -> str:
    if os.path.exists(HIREDIS_BINARY) and os.path.getmtime(HIREDIS_BINARY) >= os.path.getmtime(HIREDIS_SOURCE):
        return HIREDIS_BINARY
    os.makedirs(os.path.dirname(HIREDIS_BINARY), exist_ok=True)
    cmd = ["gcc", "-O2", "-std=c11", "-Wall", "-o", HIREDIS_BINARY, HIREDIS_SOURCE, "-lhiredis"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (needs libhiredis-dev):\n{proc.stderr}")
    return HIREDIS_BINARY


class HiredisRuns:
    """hiredis_hmget.c on one batch: each repeat is one run of the program, which times its own loop."""

    def __init__(self, binary: str, nodes: list[str], partition_nodes: list[int], tag: str, dim: int,
                 keys: np.ndarray, s: Settings):
        self.keys_path = os.path.join(s.work, "hiredis_keys.bin")
        keys.astype("<i8").tofile(self.keys_path)
        self.n, self.dim = keys.size, dim
        self.command = [binary, "--nodes", ",".join(nodes), "--partition-nodes", ",".join(map(str, partition_nodes)),
                        "--tag", tag, "--dim", str(dim), "--keys", self.keys_path, "--repeats", "1",
                        "--min-time", str(s.min_time)]
        self.dump_path = os.path.join(s.work, "hiredis_values.bin")
        self.inner = 0
        self.version = "unknown"

    def _run(self, *extra: str) -> dict:
        proc = subprocess.run(self.command + list(extra), check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"hiredis_hmget failed: {proc.stderr.strip()}")
        result = json.loads(proc.stdout)
        self.inner, self.version = result["inner"], result["hiredis"]
        return result

    def fetch_once(self) -> tuple[np.ndarray, np.ndarray]:
        """The values and found flags of the program's warm-up fetch."""
        self._run("--dump", self.dump_path)
        raw = np.fromfile(self.dump_path, np.uint8)
        size = self.n * self.dim * 4
        return raw[:size].view("<f4").reshape(self.n, self.dim), raw[size:].astype(bool)

    def repeat(self) -> float:
        return self._run()["times_s"][0]


def bench_redis(label: str, deployment, w: Workload, s: Settings, num_partitions: int) -> list[Row]:
    rows = []
    client = deployment.client
    binary = ensure_hiredis_binary()
    nodes = [server.address for server in deployment.servers]
    db = Storage("volatile_db", {"type": "redis_cluster", "address": deployment.address,
                                 "num_partitions": num_partitions})
    try:
        for dim, table in w.tables.items():
            start = time.perf_counter()
            db.insert(tag_of(dim), w.keys, table)
            s.log(f"  {label}: inserted {w.rows:,} rows of D={dim} in {time.perf_counter() - start:.2f} s")
            # The baselines rely on partition_of matching the backend: every hash must hold its share.
            hashes = [redis_value_hash(tag_of(dim), p) for p in range(num_partitions)]
            expected = np.bincount(partition_of(w.keys, num_partitions), minlength=num_partitions)
            stored = [client.hlen(h) for h in hashes]
            if stored != expected.tolist():
                raise AssertionError(f"{label}: partition sizes {stored} != computed {expected.tolist()}")
        for dim, table in w.tables.items():
            tag = tag_of(dim)
            hashes = [redis_value_hash(tag, p) for p in range(num_partitions)]
            if isinstance(client, redis.cluster.RedisCluster):
                port_index = {server.port: i for i, server in enumerate(deployment.servers)}
                partition_nodes = [port_index[client.get_node_from_key(h).port] for h in hashes]
            else:
                partition_nodes = [0] * num_partitions
            for size, (positions, keys) in w.batches.items():
                expected = table[positions]
                values, found = db.fetch(tag, keys, dim)
                check(f"{label} D={dim} batch={size}", values, found, expected)
                values, found = redispy_fetch(client, hashes, keys, dim)
                check(f"{label} redis-py D={dim} batch={size}", values, found, expected)
                raw_hiredis = HiredisRuns(binary, nodes, partition_nodes, tag, dim, keys, s)
                values, found = raw_hiredis.fetch_once()
                check(f"{label} raw hiredis D={dim} batch={size}", values, found, expected)

                ours, redispy, raw = time_interleaved(
                    [Calls(functools.partial(db.fetch, tag, keys, dim), s.min_time),
                     Calls(functools.partial(redispy_fetch, client, hashes, keys, dim), s.min_time), raw_hiredis],
                    size, s.repeats)
                rows.append(Row(label, "redis-py + hiredis", dim, size, ours, redispy, ("redis", "redis-py + hiredis")))
                s.log(rows[-1])
                rows.append(Row(label, "raw C hiredis", dim, size, ours, raw, ("redis", "raw C hiredis")))
                s.log(rows[-1])
    finally:
        db.close()
    return rows


def rocksdict_fetch(cf, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The baseline a user would write with rocksdict: one multi_get of the batch's distinct 8-byte keys
    (np.unique), then each row copied to the places of its key."""
    keys, inverse = np.unique(keys, return_inverse=True)
    values, found = _rocksdict_fetch_distinct(cf, keys, dim)
    return values[inverse], None if found is None else found[inverse]


def _rocksdict_fetch_distinct(cf, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    raw = keys.astype("<i8").tobytes()
    rows = cf[[raw[i:i + 8] for i in range(0, len(raw), 8)]]
    if None not in rows:
        return np.frombuffer(b"".join(rows), "<f4").reshape(keys.size, dim), None
    values = np.zeros((keys.size, dim), np.float32)
    found = np.zeros(keys.size, bool)
    for i, row in enumerate(rows):
        if row is not None:
            values[i] = np.frombuffer(row, "<f4")
            found[i] = True
    return values, found


def bench_rocksdb(w: Workload, s: Settings) -> list[Row]:
    rows = []
    path = os.path.join(s.work, "rocksdb")
    writer = Storage("persistent_db", {"type": "rocks_db", "path": path})
    try:
        for dim, table in w.tables.items():
            start = time.perf_counter()
            writer.insert(tag_of(dim), w.keys, table)
            s.log(f"  rocks_db: inserted {w.rows:,} rows of D={dim} in {time.perf_counter() - start:.2f} s")
    finally:
        writer.close()  # flushes, so read-only openers find every row in table files

    db = Storage("persistent_db", {"type": "rocks_db", "path": path, "read_only": True})
    column_families = {tag_of(dim): Options(raw_mode=True) for dim in w.tables}
    rd = Rdict(path, options=Options(raw_mode=True), column_families=column_families,
               access_type=AccessType.read_only())
    try:
        for dim, table in w.tables.items():
            tag = tag_of(dim)
            cf = rd.get_column_family(tag)
            for size, (positions, keys) in w.batches.items():
                expected = table[positions]
                values, found = db.fetch(tag, keys, dim)
                check(f"rocks_db D={dim} batch={size}", values, found, expected)
                values, found = rocksdict_fetch(cf, keys, dim)
                check(f"rocksdict D={dim} batch={size}", values, found, expected)
                ours, theirs = time_interleaved(
                    [Calls(functools.partial(db.fetch, tag, keys, dim), s.min_time),
                     Calls(functools.partial(rocksdict_fetch, cf, keys, dim), s.min_time)], size, s.repeats)
                rows.append(Row("rocks_db (read_only)", "rocksdict multi_get", dim, size, ours, theirs,
                                ("rocks_db", "rocksdict multi_get")))
                s.log(rows[-1])
    finally:
        rd.close()
        db.close()
    return rows


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller table, fewer and shorter repeats (about a minute)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"),
                        help="folder for storage_tiers.md and storage_tiers.json")
    parser.add_argument("--rows", type=int, help="table rows (default 200000, quick 50000)")
    parser.add_argument("--repeats", type=int, help="timed repeats per number, at least 7 (default 15, quick 7)")
    parser.add_argument("--min-time", type=float,
                        help="seconds of back-to-back calls per repeat (default 0.15, quick 0.01)")
    parser.add_argument("--dims", default="16,128")
    parser.add_argument("--batches", default="1024,16384,65536")
    parser.add_argument("--alpha", type=float, default=1.2, help="zipf exponent of the key ranks")
    parser.add_argument("--partitions", type=int, default=16, help="Redis volatile_db.num_partitions")
    parser.add_argument("--no-cluster", action="store_true", help="skip the 3-master Redis cluster")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows_n = args.rows or (50_000 if args.quick else 200_000)
    repeats = max(7, args.repeats or (7 if args.quick else 15))
    min_time = args.min_time if args.min_time is not None else (0.01 if args.quick else 0.15)
    dims = [int(d) for d in args.dims.split(",")]
    batch_sizes = [int(b) for b in args.batches.split(",")]

    started = time.perf_counter()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}
    vers = versions()
    workload = make_workload(rows_n, dims, batch_sizes, args.alpha, args.seed)
    distinct = {size: int(np.unique(keys).size) for size, (_, keys) in workload.batches.items()}
    distinct_text = ", ".join(f"{d:,} of {size:,}" for size, d in distinct.items())
    header = [
        "# Storage tier fetch throughput",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores ({machine['platform']})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        (f"- table: {rows_n:,} rows at D = {', '.join(map(str, dims))}; keys: zipf({args.alpha}) ranks over the "
         f"rows, random int64 keys ({distinct_text} distinct per batch); Redis num_partitions {args.partitions}"),
        (f"- each number: median of {repeats} repeats of at least {min_time * 1000:g} ms of back-to-back calls, "
         "after a checked warm-up call; ours = `tf_hps.storage.Storage.fetch`"),
    ]
    print("\n".join(header), flush=True)

    def log(item) -> None:
        if isinstance(item, Row):
            item = (f"  {item.tier} vs {item.baseline}, D={item.dim}, batch={item.batch}: ours "
                    f"{rate(item.ours.keys_per_s)}, baseline {rate(item.theirs.keys_per_s)} -> {item.ratio:.2f}x")
        print(item, file=sys.stderr, flush=True)

    work = tempfile.mkdtemp(prefix="tf_hps_storage_tiers_")
    settings = Settings(repeats, min_time, work, log)
    results: list[Row] = []
    phases = {}
    try:
        start = time.perf_counter()
        results += bench_hash_map(workload, settings)
        phases["hash_map"] = time.perf_counter() - start

        start = time.perf_counter()
        deployment = redis_servers.start_standalone(os.path.join(work, "standalone"))
        try:
            results += bench_redis("redis (standalone)", deployment, workload, settings, args.partitions)
        finally:
            deployment.stop()
        phases["redis standalone"] = time.perf_counter() - start

        if not args.no_cluster:
            start = time.perf_counter()
            deployment = redis_servers.start_cluster(os.path.join(work, "cluster"))
            try:
                results += bench_redis("redis (3-node cluster)", deployment, workload, settings, args.partitions)
            finally:
                deployment.stop()
            phases["redis cluster"] = time.perf_counter() - start

        start = time.perf_counter()
        results += bench_rocksdb(workload, settings)
        phases["rocks_db"] = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = time.perf_counter() - started
    timing = f"Run time {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())})."
    print(markdown(results, []) + "\n" + timing)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "storage_tiers.md"), "w") as f:
        f.write(markdown(results, header) + "\n" + timing + "\n")
    with open(os.path.join(args.out, "storage_tiers.json"), "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "machine": machine, "versions": vers,
            "settings": {"rows": rows_n, "dims": dims, "batches": batch_sizes, "distinct_keys": distinct,
                         "alpha": args.alpha,
                         "repeats": repeats, "min_time_s": min_time, "redis_num_partitions": args.partitions,
                         "quick": args.quick, "seed": args.seed},
            "targets": {f"{tier} vs {baseline}": t for (tier, baseline), t in TARGETS.items()},
            "results": [r.to_json() for r in results],
            "phases_s": phases, "total_s": total,
        }, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
