"""Memory planning: how much RAM, GPU memory, Redis memory and disk a config will need.

``plan_memory(config_path)`` reads an HPS config (through the C++ parser, no
TensorFlow needed), sizes every table from its files, and returns a dict with
the bytes each tier holds per table and the totals per GPU, per serving host,
for the Redis servers and on disk. ``python -m tf_hps plan ps_config.json``
prints it as a table (``--json`` for the dict).

Where the numbers come from:

* L1 cache and the in-process hash map: the allocation rules of
  ``core/embedding_cache.cc`` / ``ops/cuda/gpu_cache.cu`` and
  ``storage/hash_map_backend.cc``, replayed here, so these are what the
  process allocates (tests/test_plan.py compares them with resident memory).
* Redis: a rule for Redis 7 hash fields (``redis_bytes_per_row``), checked
  against ``INFO memory`` of a real server; an estimate.
* RocksDB: on disk ``rows * (4 * dim + 8 + 16)`` before compression, in RAM
  the block cache (fixed at 128 MiB), bloom filters and index blocks, and
  memtables while the database is writable; estimates.
* Lookup buffers: what one lookup call allocates at most (every key
  distinct and missing L1); an estimate.

Entries that are estimates carry ``"estimate": True``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from tf_hps.storage import canonical_config, table_tag

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

# core/slab_set.h and core/embedding_cache.h: sets of 2 slabs x 32 ways.
CACHE_WAYS = 64
# core/embedding_cache.cc AllocateAligned: 64-byte alignment, 2 MiB (huge pages) for arrays of 2 MiB and more.
CACHE_HUGE_PAGE = 2 * MIB
CACHE_LINE = 64
# storage/hash_map_backend.cc: rows per page (at least, see hash_map_page_rows), first page size, index load limit.
HASH_MAP_PAGE_ROWS = 4096
HASH_MAP_FIRST_PAGE_ROWS = 16
HASH_MAP_MIN_INDEX = 16
HASH_MAP_MAX_LOAD = 0.75
MEMORY_PAGE = 4 * KIB
# storage/rocksdb_backend.cc: one LRU block cache per database, bloom filter bits per key.
ROCKSDB_BLOCK_CACHE = 128 * MIB
ROCKSDB_BLOOM_BITS_PER_KEY = 10
# The backend's data block size, and the memtable size per column family (RocksDB's default).
ROCKSDB_BLOCK_SIZE = 16 * KIB
ROCKSDB_WRITE_BUFFER = 64 * MIB
# Per row on disk, beyond the 8-byte key and the 4*dim value bytes: the internal key's sequence number
# and type (8), varint lengths (3-4), data-block hash index (~1.3), bloom filter (1.25), index blocks.
ROCKSDB_DISK_OVERHEAD_PER_ROW = 16
# Per index-block entry (one per data block): separator key and block handle.
ROCKSDB_INDEX_ENTRY = 24
UNLIMITED_MARGIN = (1 << 64) - 1


# --------------------------------------------------------------- tables ---

def table_rows(folder: str, dim: int, where: str) -> int:
    """Rows of an HPS table folder from its file sizes; raises naming the file when they are wrong."""
    key_path = os.path.join(folder, "key")
    vector_path = os.path.join(folder, "emb_vector")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{where}: table folder '{folder}' does not exist")
    for path in (key_path, vector_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: table folder '{folder}' has no '{os.path.basename(path)}' file")
    key_bytes = os.path.getsize(key_path)
    vector_bytes = os.path.getsize(vector_path)
    if key_bytes == 0:
        raise ValueError(f"{where}: table file '{key_path}' is empty")
    if key_bytes % 8:
        raise ValueError(f"{where}: table file '{key_path}' has {key_bytes} bytes, not a multiple of 8 (int64 keys)")
    rows = key_bytes // 8
    if vector_bytes != rows * dim * 4:
        hint = ""
        if vector_bytes % (rows * 4) == 0:
            hint = (f"; it holds vectors of {vector_bytes // (rows * 4)} floats, so embedding_vecsize_per_table "
                    "may be wrong")
        raise ValueError(f"{where}: table file '{vector_path}' has {vector_bytes} bytes, but {rows} keys of "
                         f"dimension {dim} need {rows * dim * 4}{hint}")
    return rows


# ------------------------------------------------------------- L1 cache ---

def cache_capacity_rows(model: dict, rows: int) -> int:
    """Rows the L1 cache is asked for (core/parameter_server.cc LoadTable)."""
    if model["embedding_cache_type"] not in ("dynamic", "stochastic"):
        return rows  # static / uvm: the whole table
    return max(64, math.ceil(model["gpucacheper"] * rows))


def cache_sets(capacity_rows: int) -> int:
    return max(1, -(-capacity_rows // CACHE_WAYS))


def _aligned_bytes(raw: int) -> int:
    raw = max(raw, 1)
    align = CACHE_HUGE_PAGE if raw >= CACHE_HUGE_PAGE else CACHE_LINE
    return -(-raw // align) * align


def cpu_cache_bytes(capacity_rows: int, dim: int) -> int:
    """Bytes core/embedding_cache.cc allocates: keys, stamps, a tag byte per way, rows (each aligned) and a
    4-byte sequence word per set."""
    sets = cache_sets(capacity_rows)
    slots = sets * CACHE_WAYS
    return 2 * _aligned_bytes(slots * 8) + _aligned_bytes(slots) + _aligned_bytes(slots * dim * 4) + sets * 4


def gpu_cache_bytes(capacity_rows: int, dim: int) -> int:
    """Bytes ops/cuda/gpu_cache.cu asks cudaMalloc for: int64 keys, uint64 stamps, rows, an int lock per set."""
    sets = cache_sets(capacity_rows)
    slots = sets * CACHE_WAYS
    return slots * 8 + slots * 8 + slots * dim * 4 + sets * 4


def gpu_static_table_bytes(rows: int, dim: int) -> int:
    """Bytes ops/cuda/gpu_static_table.cu keeps on the device: a (key, row) slot index of a power of two
    >= 2 * rows slots (at least 64) of 16 bytes, and the dense rows. (Building it briefly needs 8 bytes
    per key more.)"""
    slots = 64
    while slots < 2 * rows:
        slots *= 2
    return slots * 16 + max(rows, 1) * dim * 4


# ------------------------------------------------------------- hash map ---

def hash_map_page_rows(dim: int) -> int:
    """Rows of a full hash-map page: 4096, or the power of two whose values fill 2 MiB (PageShiftFor)."""
    rows = HASH_MAP_PAGE_ROWS
    while rows * dim * 4 < CACHE_HUGE_PAGE:
        rows *= 2
    return rows


def hash_map_partition_bytes(rows: int, dim: int, track_meta: bool, resident: bool = False) -> int:
    """Bytes one hash-map partition of `rows` rows allocates (HashMapBackend::Partition::MemoryBytes).

    With `resident`, the part of them that is written, so resident: the last page's arrays (values, keys,
    metadata) are written only up to the rows they hold, rounded up to 4 KiB pages of memory; the index
    is filled when it is allocated.
    """
    if rows <= 0:
        return 0
    page_rows = hash_map_page_rows(dim)
    full_pages, rest = divmod(rows, page_rows)
    row_bytes = (dim * 4, 8) + ((4,) if track_meta else ())
    bytes_ = full_pages * page_rows * sum(row_bytes)
    if rest:
        # The first page grows by doubling; later ones are allocated whole.
        last = HASH_MAP_FIRST_PAGE_ROWS if full_pages == 0 else page_rows
        while last < rest:
            last *= 2
        last = min(last, page_rows)
        if resident:
            for b in row_bytes:
                # Values of 2 MiB and more lie on huge pages: the whole page is resident once written.
                page = CACHE_HUGE_PAGE if b == dim * 4 and last * b >= CACHE_HUGE_PAGE else MEMORY_PAGE
                bytes_ += min(-(-rest * b // page) * page, last * b)
        else:
            bytes_ += last * sum(row_bytes)
    index = HASH_MAP_MIN_INDEX
    while rows > HASH_MAP_MAX_LOAD * index:
        index *= 2
    return bytes_ + index * 4


def partition_rows(rows: int, partitions: int, margin: int) -> list[int]:
    """Rows per partition for an even spread of the keys, each capped at the overflow margin."""
    base, extra = divmod(rows, partitions)
    return [min(base + (p < extra), margin) for p in range(partitions)]


def hash_map_bytes(rows: int, dim: int, vdb: dict, resident: bool = True) -> int:
    """Bytes of a table of `rows` rows in the hash map: resident after loading, or allocated."""
    track_meta = vdb["overflow_margin"] != UNLIMITED_MARGIN and vdb["overflow_policy"] != "evict_random"
    counts = partition_rows(rows, vdb["num_partitions"], vdb["overflow_margin"])
    # Partitions of equal size take the same; there are at most two sizes.
    return sum(hash_map_partition_bytes(n, dim, track_meta, resident) * counts.count(n) for n in set(counts))


# ---------------------------------------------------------------- Redis ---

def jemalloc_size(size: int) -> int:
    """jemalloc's size class for an allocation (16-byte quantum, then 4 classes per doubling)."""
    if size <= 8:
        return 8
    if size <= 128:
        return -(-size // 16) * 16
    step = 1 << (size - 1).bit_length() - 3  # a quarter of the power of two below
    return -(-size // step) * step


def sds_bytes(length: int) -> int:
    """Allocated size of a Redis sds string of `length` bytes (header by length, the NUL, jemalloc class)."""
    header = 1 if length < 32 else 3 if length < 256 else 5 if length < 65536 else 9
    return jemalloc_size(header + length + 1)


def redis_bytes_per_row(dim: int, meta_value_length: int | None, rows_per_partition: int) -> float:
    """Estimated Redis memory per row of one partition hash (hashtable encoding, Redis 7, jemalloc).

    A field costs a dict entry (24 bytes -> 32), the 8-byte key as an sds string, the row as an sds
    string, and its share of the bucket array (8 bytes per bucket, a power of two >= the fields).
    The metadata hash of the overflow policies adds the same again with a short decimal value.
    """
    buckets = 4
    while buckets < rows_per_partition:
        buckets *= 2
    per_field = jemalloc_size(24) + sds_bytes(8) + 8 * buckets / max(rows_per_partition, 1)
    total = per_field + sds_bytes(4 * dim)
    if meta_value_length is not None:
        total += per_field + sds_bytes(meta_value_length)
    return total


# -------------------------------------------------------------- RocksDB ---

def rocksdb_disk_bytes(rows: int, dim: int) -> int:
    return rows * (4 * dim + 8 + ROCKSDB_DISK_OVERHEAD_PER_ROW)


def rocksdb_table_ram(rows: int, dim: int, writable: bool) -> dict[str, int]:
    """RAM a RocksDB table keeps outside the block cache: bloom filters, index blocks, memtable."""
    data = rows * (4 * dim + 8 + ROCKSDB_DISK_OVERHEAD_PER_ROW)
    filters = -(-rows * ROCKSDB_BLOOM_BITS_PER_KEY // 8)
    index = -(-data // ROCKSDB_BLOCK_SIZE) * ROCKSDB_INDEX_ENTRY
    memtable = min(ROCKSDB_WRITE_BUFFER, data) if writable else 0
    return {"filters": filters, "index": index, "memtable": memtable}


# ------------------------------------------------------- lookup buffers ---

def lookup_call_bytes(keys: int, dim: int) -> int:
    """Host memory one lookup call of `keys` keys uses at most (every key distinct, every key missing L1).

    core/parameter_server.cc Lookup: the output tensor (4*dim per key), the thread's row scratch
    (1.25x that, kept between calls), dedup (keys, first positions, index: 8 bytes each per key, and a
    slot table of a power of two >= 2*keys int64s, 1.25x), and the miss path (missed keys, fetched rows,
    found flags, the tier's keys and rows, the rows to insert into L1 and their keys).
    """
    row = 4 * dim
    slots = 16
    while slots < 2 * keys:
        slots *= 2
    output = keys * row
    scratch = int(1.25 * keys * row) + int(1.25 * slots * 8)
    dedup = keys * 8 * 3
    misses = keys * (8 + row + 1 + 8 + row + 8 + row)
    return output + scratch + dedup + misses


# ----------------------------------------------------------------- plan ---

def _files_needed(config: dict) -> bool:
    vdb, pdb = config["volatile_db"], config["persistent_db"]
    fill_vdb = vdb["type"] != "disabled" and vdb["initialize_after_startup"]
    fill_pdb = pdb["type"] != "disabled" and not pdb["read_only"]
    return fill_vdb or fill_pdb


def _vdb_rows(config: dict, rows: int) -> tuple[int, str]:
    """Rows the volatile database holds for a table of `rows` rows (before the overflow margin)."""
    vdb, pdb = config["volatile_db"], config["persistent_db"]
    has_pdb = pdb["type"] != "disabled"
    if vdb["type"] == "redis_cluster" and not vdb["initialize_after_startup"]:
        return rows, "filled by `python -m tf_hps ingest` (every row)"
    if not has_pdb:
        return rows, "every row"
    if vdb["cache_missed_embeddings"]:
        return rows, (f"starts with initial_cache_rate {vdb['initial_cache_rate']:g}, grows up to every row "
                      "(cache_missed_embeddings)")
    return math.ceil(vdb["initial_cache_rate"] * rows), f"initial_cache_rate {vdb['initial_cache_rate']:g}"


def _parse_rows_overrides(rows: dict[str, int] | None) -> dict[str, int]:
    out = {}
    for name, count in (rows or {}).items():
        if int(count) < 1:
            raise ValueError(f"rows for {name!r} must be at least 1, got {count}")
        out[name] = int(count)
    return out


def plan_memory(config_path: str | os.PathLike, l1: str = "gpu", rows: dict[str, int] | None = None,
                concurrent_calls: int = 1) -> dict[str, Any]:
    """Plans the memory a parameter-server config needs, per table, tier and device.

    Args:
        config_path: an HPS JSON config (relative paths resolve against its folder).
        l1: where the L1 cache of tables with ``gpucache`` lives: ``"gpu"`` (one full copy per device of
            the model's ``deployed_device_list``, as HPS does) or ``"cpu"`` (one copy in host RAM, as
            a CPU-only build or machine serves it).
        rows: row counts for tables whose files are not at hand, keyed ``"<model>/<table name>"``.
        concurrent_calls: lookup calls in flight at once per serving process (sizes the lookup buffers
            in the host total).

    Returns:
        A dict: ``tables`` (per table: rows, and per tier ``bytes``, ``where``, ``devices``,
        ``estimate``, ``detail``), ``shared`` (per-database items such as the RocksDB block cache),
        ``totals`` (``host_ram``, ``gpu`` per device id, ``redis``, ``disk``; ``None`` where a table's
        rows are unknown), ``unknown_rows`` and ``notes``.

    Raises:
        FileNotFoundError: the config, or a table file the config loads at start-up, is missing.
        ValueError: a bad config or inconsistent table files (the message names the file).
    """
    if l1 not in ("gpu", "cpu"):
        raise ValueError(f"l1 must be 'gpu' or 'cpu', got {l1!r}")
    if concurrent_calls < 1:
        raise ValueError(f"concurrent_calls must be at least 1, got {concurrent_calls}")
    path = os.path.abspath(os.fspath(config_path))
    if os.path.isdir(path):
        raise ValueError(f"config file '{path}' is a directory, not a JSON file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file '{path}' does not exist")
    config = canonical_config(path)
    overrides = _parse_rows_overrides(rows)
    known_tables = {f"{m['model']}/{n}" for m in config["models"] for n in m["embedding_table_names"]}
    for name in overrides:
        if name not in known_tables:
            raise ValueError(f"rows given for {name!r}, which is not a table of the config "
                             f"(tables: {', '.join(sorted(known_tables))})")

    vdb, pdb = config["volatile_db"], config["persistent_db"]
    vdb_type, pdb_type = vdb["type"], pdb["type"]
    if vdb_type not in ("hash_map", "parallel_hash_map", "redis_cluster", "disabled"):
        raise NotImplementedError(f"volatile_db.type '{vdb_type}' is not available in this build, so it "
                                  "cannot be planned (the server fails at init with UnimplementedError)")
    files_needed = _files_needed(config)
    margin = vdb["overflow_margin"]
    policy_meta = margin != UNLIMITED_MARGIN and vdb["overflow_policy"] != "evict_random"
    notes: list[str] = []
    unknown: list[str] = []
    tables: list[dict[str, Any]] = []

    for model in config["models"]:
        devices = list(model["deployed_device_list"])
        for t, (name, folder, dim) in enumerate(zip(model["embedding_table_names"], model["sparse_files"],
                                                      model["embedding_vecsize_per_table"])):
            where = f"models[{model['model']!r}] table {name!r}"
            key = f"{model['model']}/{name}"
            n: int | None
            if key in overrides:
                n, source = overrides[key], "given with --rows"
            elif files_needed or os.path.isdir(folder):
                n, source = table_rows(folder, dim, where), f"from the files in {folder}"
            else:
                n, source = None, (f"'{folder}' is not here and the config does not load it at start-up; "
                                   f"pass --rows={key}=N")
                unknown.append(key)
            entry: dict[str, Any] = {
                "model": model["model"], "table": name, "tag": table_tag(model["model"], name), "dim": dim,
                "rows": n, "rows_source": source, "folder": folder,
                "raw_bytes": None if n is None else n * (8 + 4 * dim), "tiers": [],
            }
            tiers = entry["tiers"]

            # L1.
            if model["gpucache"]:
                kind = model["embedding_cache_type"]
                on_gpu = l1 == "gpu" and bool(devices)
                item: dict[str, Any] = {"tier": "l1", "kind": kind, "where": "gpu" if on_gpu else "host",
                                        "devices": devices if on_gpu else [], "estimate": False}
                if n is None:
                    item.update(bytes=None, detail="rows unknown")
                else:
                    capacity = cache_capacity_rows(model, n)
                    sets = cache_sets(capacity)
                    share = "every row" if kind not in ("dynamic", "stochastic") else \
                        f"gpucacheper {model['gpucacheper']:g}"
                    if on_gpu and kind == "static":  # the GPU static table: a hash index over dense rows
                        item["bytes"] = gpu_static_table_bytes(n, dim)
                        item["rows"] = n
                        item["detail"] = f"{n:,} rows (static table: dense rows + hash index; {share})"
                    else:
                        item["bytes"] = gpu_cache_bytes(capacity, dim) if on_gpu else cpu_cache_bytes(capacity, dim)
                        item["rows"] = sets * CACHE_WAYS
                        item["detail"] = f"{sets * CACHE_WAYS:,} rows ({sets:,} sets x 64 ways; {share})"
                tiers.append(item)

            # VDB.
            if vdb_type != "disabled":
                held, why = (None, "rows unknown") if n is None else _vdb_rows(config, n)
                item = {"tier": "vdb", "kind": vdb_type}
                if vdb_type in ("hash_map", "parallel_hash_map"):
                    item.update(where="host", devices=[], estimate=False)
                    if held is not None:
                        item["bytes"] = hash_map_bytes(held, dim, vdb)
                        item["allocated_bytes"] = hash_map_bytes(held, dim, vdb, resident=False)
                        stored = sum(partition_rows(held, vdb["num_partitions"], margin))
                        item["rows"] = stored
                        per_row = item["bytes"] / max(stored, 1)
                        item["detail"] = (f"{stored:,} rows in {vdb['num_partitions']} partitions ({why}), "
                                          f"{per_row:.1f} B/row = {per_row / (8 + 4 * dim):.2f}x raw; "
                                          f"{format_bytes(item['allocated_bytes'])} allocated")
                else:
                    item.update(where="redis", devices=[], estimate=True)
                    if held is not None:
                        counts = partition_rows(held, vdb["num_partitions"], margin)
                        meta_len = None
                        if policy_meta:
                            meta_len = 13 if vdb["overflow_policy"] == "evict_oldest" else 2
                        item["bytes"] = int(sum(c * redis_bytes_per_row(dim, meta_len, c) for c in counts))
                        item["rows"] = sum(counts)
                        item["detail"] = (f"{sum(counts):,} rows in {vdb['num_partitions']} partition hashes "
                                          f"({why}), ~{item['bytes'] / max(sum(counts), 1):.0f} B/row")
                if held is None:
                    item.update(bytes=None, detail="rows unknown")
                tiers.append(item)

            # PDB.
            if pdb_type == "rocks_db":
                item = {"tier": "pdb", "kind": "rocks_db", "where": "disk", "devices": [], "estimate": True}
                if n is None:
                    item.update(bytes=None, detail="rows unknown")
                else:
                    item["bytes"] = rocksdb_disk_bytes(n, dim)
                    item["rows"] = n
                    item["detail"] = (f"{n:,} rows, ~{4 * dim + 8 + ROCKSDB_DISK_OVERHEAD_PER_ROW} B/row "
                                      "before compression")
                    item["ram"] = rocksdb_table_ram(n, dim, writable=not pdb["read_only"])
                tiers.append(item)

            # Lookup buffers (host, per call in flight).
            per_call_keys = model["max_batch_size"] * model["maxnum_catfeature_query_per_table_per_sample"][t]
            tiers.append({
                "tier": "lookup", "kind": "per call", "where": "host", "devices": [], "estimate": True,
                "bytes": lookup_call_bytes(per_call_keys, dim),
                "detail": (f"{per_call_keys:,} keys per call (max_batch_size {model['max_batch_size']} x "
                           f"{model['maxnum_catfeature_query_per_table_per_sample'][t]}), worst case"),
            })
            tables.append(entry)

    # Items shared by every table of a database.
    shared: list[dict[str, Any]] = []
    if pdb_type == "rocks_db":
        shared.append({"tier": "pdb", "kind": "rocks_db block cache", "where": "host", "bytes": ROCKSDB_BLOCK_CACHE,
                       "estimate": False, "detail": "one LRU cache for every table, fills up to this size"})
        ram_items = [item["ram"] for e in tables for item in e["tiers"] if "ram" in item]
        known = len(ram_items) == sum(1 for e in tables for item in e["tiers"] if item["tier"] == "pdb")
        for part, what in (("filters", "bloom filters (10 bits per key)"), ("index", "index blocks"),
                           ("memtable", "memtables (writable database; up to 64 MiB per table)")):
            if part == "memtable" and pdb["read_only"]:
                continue
            shared.append({"tier": "pdb", "kind": f"rocks_db {part}", "where": "host", "estimate": True,
                           "bytes": sum(r[part] for r in ram_items) if known else None, "detail": what})

    # Totals.
    host = 0
    gpu: dict[str, int] = {}
    redis = 0
    disk = 0
    incomplete = {"host_ram": False, "gpu": False, "redis": False, "disk": False}
    for e in tables:
        for item in e["tiers"]:
            b = item["bytes"]
            if item["tier"] == "lookup":
                host += b * concurrent_calls
                continue
            if item["where"] == "gpu":
                for d in item["devices"]:
                    if b is None:
                        incomplete["gpu"] = True
                    else:
                        gpu[str(d)] = gpu.get(str(d), 0) + b
                continue
            bucket = {"host": "host_ram", "redis": "redis", "disk": "disk"}[item["where"]]
            if b is None:
                incomplete[bucket] = True
            elif bucket == "host_ram":
                host += b
            elif bucket == "redis":
                redis += b
            else:
                disk += b
    for item in shared:
        if item["bytes"] is None:
            incomplete["host_ram"] = True
        else:
            host += item["bytes"]
    for e in tables:  # a device that only serves tables of unknown size still shows up
        for item in e["tiers"]:
            for d in item.get("devices", []):
                gpu.setdefault(str(d), 0)
    totals = {
        "host_ram": None if incomplete["host_ram"] else host,
        "gpu": {d: (None if incomplete["gpu"] else b) for d, b in sorted(gpu.items(), key=lambda x: int(x[0]))},
        "redis": (None if incomplete["redis"] else redis) if vdb_type == "redis_cluster" else 0,
        "disk": (None if incomplete["disk"] else disk) if pdb_type == "rocks_db" else 0,
    }

    if l1 == "gpu" and any(m["gpucache"] for m in config["models"]):
        notes.append("L1 on the GPU: every device of a model's deployed_device_list holds its own full copy of "
                     "each cache (exact cudaMalloc request sizes, before the driver's rounding). Where no GPU "
                     "serves the tables, the cache is in host RAM instead: plan with --l1=cpu.")
    if l1 == "cpu":
        notes.append("L1 in host RAM (--l1=cpu): one copy per serving process; rows are allocated up front but "
                     "become resident as the cache fills.")
    if vdb_type in ("hash_map", "parallel_hash_map"):
        notes.append("hash_map: the pages and index storage/hash_map_backend.cc allocates for keys spread evenly "
                     "over the partitions, counting the unwritten tail of each partition's last page only once "
                     "rows fill it (the 'allocated' figure). Each serving process holds its own copy.")
    if vdb_type == "redis_cluster":
        notes.append("Redis: estimate for Redis 7 with jemalloc (hashtable-encoded partition hashes), for all "
                     "masters together; replicas hold as much again each. Partitions of fewer than 128 small "
                     "rows are stored more compactly than this.")
    if pdb_type == "rocks_db":
        notes.append(f"RocksDB: disk at persistent_db.path ({pdb['path']}) is an estimate before compression; "
                     "compactions while loading need up to as much again temporarily.")
    if margin != UNLIMITED_MARGIN and vdb_type != "disabled":
        notes.append(f"volatile_db.overflow_margin {margin:,}: at most that many rows per partition.")
    notes.append(f"Lookup buffers: worst case per call in flight; the host total counts {concurrent_calls} "
                 "call(s) per table (--concurrent_calls).")
    if unknown:
        notes.append("Rows unknown for " + ", ".join(unknown) + ": totals that depend on them are not given.")

    return {"config": path, "l1": l1, "concurrent_calls": concurrent_calls, "volatile_db": vdb_type,
            "persistent_db": pdb_type, "tables": tables, "shared": shared, "totals": totals,
            "unknown_rows": unknown, "notes": notes}


# ------------------------------------------------------------- printing ---

def format_bytes(b: int | None, estimate: bool = False) -> str:
    if b is None:
        return "unknown"
    mark = "~" if estimate else ""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if b >= size:
            return f"{mark}{b / size:.1f} {unit}"
    return f"{mark}{b} B"


_TIER_NAMES = {"l1": "L1 cache", "vdb": "VDB", "pdb": "PDB", "lookup": "lookup buffers"}


def _where(item: dict) -> str:
    if item["where"] == "gpu":
        return ", ".join(f"GPU {d}" for d in item["devices"]) + (" (each)" if len(item["devices"]) > 1 else "")
    return {"host": "host RAM", "redis": "Redis", "disk": "disk"}[item["where"]]


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a readable table."""
    lines = [f"Memory plan for {plan['config']}",
             "(1 MiB = 2^20 bytes; ~ marks an estimate)", ""]
    rows: list[tuple[str, str, str, str]] = []
    for e in plan["tables"]:
        raw = "" if e["raw_bytes"] is None else f", raw {format_bytes(e['raw_bytes'])}"
        count = f"rows unknown ({e['rows_source']})" if e["rows"] is None else f"{e['rows']:,} rows"
        lines_before = (f"{e['model']} / {e['table']}: {count} x {e['dim']} floats{raw}", "", "", "")
        rows.append(lines_before)
        for item in e["tiers"]:
            label = _TIER_NAMES[item["tier"]]
            label += f" ({item['kind']})" if item["tier"] != "lookup" else ""
            where = _where(item) + (", per call" if item["tier"] == "lookup" else "")
            rows.append(("  " + label, where, format_bytes(item["bytes"], item["estimate"]), item.get("detail", "")))
    if plan["shared"]:
        rows.append(("shared by all tables", "", "", ""))
        for item in plan["shared"]:
            rows.append(("  " + item["kind"], _where(item), format_bytes(item["bytes"], item["estimate"]),
                         item["detail"]))
    widths = [max(len(r[i]) for r in rows if r[1]) for i in range(3)]
    for r in rows:
        if not r[1]:
            lines.append(r[0])
        else:
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())

    totals = plan["totals"]
    lines += ["", "totals"]
    total_rows = [("host RAM, each serving process", format_bytes(totals["host_ram"], True))]
    for d, b in totals["gpu"].items():
        total_rows.append((f"GPU {d}", format_bytes(b)))
    if plan["volatile_db"] == "redis_cluster":
        total_rows.append(("Redis, all masters (no replicas)", format_bytes(totals["redis"], True)))
    if plan["persistent_db"] == "rocks_db":
        total_rows.append(("disk (RocksDB)", format_bytes(totals["disk"], True)))
    width = max(len(r[0]) for r in total_rows)
    lines += [f"  {name:<{width}}  {value}" for name, value in total_rows]
    lines += ["", "notes"] + [f"  - {note}" for note in plan["notes"]]
    return "\n".join(lines)
