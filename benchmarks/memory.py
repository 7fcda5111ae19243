"""Memory per tier against the raw table size, with tf_hps.plan_memory's prediction next to each measurement.

    python benchmarks/memory.py [--quick] [--out DIR] [--shapes 2000000x16,500000x64]

For each table shape (rows x D; random int64 keys, written with hps.save_table; raw = rows * (8 + 4 D)):

* hash map VDB: resident memory (RSS, after malloc_trim) that a process gains while
  ``Storage("volatile_db", hash_map).ingest`` loads the table (no TensorFlow);
* parameter server (L1 on the CPU + hash map): RSS gained by ``TfHpsInit`` of a config with an L1 of
  50 % of the rows (``cache_refresh_percentage_per_iteration`` fills it at start-up) and the hash map;
* Redis: ``INFO memory`` used_memory gained by a standalone redis-server while our backend ingests it;
* RocksDB: the database's bytes on disk after our backend ingested it and closed.

Each measurement runs in a fresh process (or server); plan_memory reads the same config.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from machine import describe  # noqa: E402

RSS = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
def rss():
    libc.malloc_trim(0)
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
"""

HASH_MAP = RSS + """
import sys, numpy as np
from tf_hps.storage import Storage
folder, dim = sys.argv[1], int(sys.argv[2])
db = Storage("volatile_db", {"type": "hash_map", "num_partitions": 16})
db.insert("warm", np.arange(10), np.zeros((10, dim), np.float32))
before = rss()
db.ingest("t", folder, dim)
print(rss() - before)
"""

SERVER = RSS + """
import sys, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
lib = tf.load_op_library(sys.argv[1])
def canonical(path):
    return lib.tf_hps_parse_config(config_file=path)[0].numpy().decode()
lib.tf_hps_init(ps_config=canonical(sys.argv[2]))
big = canonical(sys.argv[3])
before = rss()
lib.tf_hps_init(ps_config=big)
print(rss() - before)
"""


def write_config(path: str, model: str, folder: str, dim: int, extra: dict | None = None,
                 model_extra: dict | None = None) -> str:
    cfg = {"supportlonglong": True, "models": [{
        "model": model, "sparse_files": [folder], "embedding_table_names": ["t0"],
        "embedding_vecsize_per_table": [dim], "maxnum_catfeature_query_per_table_per_sample": [1],
        "default_value_for_each_table": [0.0], "deployed_device_list": [0], **(model_extra or {})}],
        **(extra or {})}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def tier(plan: dict, name: str) -> dict:
    return next(i for i in plan["tables"][0]["tiers"] if i["tier"] == name)


def measure_shape(rows: int, dim: int, work: str, redis_deployment, log) -> list[dict]:
    import tf_hps as hps
    from tf_hps.storage import Storage, table_tag

    rng = np.random.default_rng(rows + dim)
    keys = rng.permutation(rows * 4)[:rows].astype(np.int64)
    folder = os.path.join(work, f"t_{rows}_{dim}")
    hps.save_table(folder, keys, rng.standard_normal((rows, dim)).astype(np.float32))
    raw = rows * (8 + 4 * dim)
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = []

    def add(what, measured, planned, estimate, how):
        out.append({"rows": rows, "dim": dim, "raw_bytes": raw, "tier": what, "measured_bytes": int(measured),
                    "planned_bytes": int(planned), "plan_is_estimate": estimate, "how": how})
        log(f"  {rows:,} x {dim}: {what}: measured {measured / 2**20:.1f} MiB ({measured / raw:.2f}x raw), "
            f"planned {planned / 2**20:.1f} MiB")

    # Hash map.
    cfg = write_config(os.path.join(work, "hm.json"), "hm", folder, dim,
                       {"volatile_db": {"type": "hash_map", "num_partitions": 16}})
    planned = tier(hps.plan_memory(cfg, l1="cpu"), "vdb")["bytes"]
    proc = subprocess.run([sys.executable, "-c", HASH_MAP, folder, str(dim)], capture_output=True, text=True,
                          env=env, check=True)
    add("hash map VDB (RSS)", int(proc.stdout.split()[-1]), planned, False, "RSS gained by Storage.ingest")

    # A whole parameter server: L1 (CPU, 50 %, filled at start-up) + hash map.
    small_folder = os.path.join(work, f"small{dim}")
    if not os.path.isdir(small_folder):
        hps.save_table(small_folder, np.arange(100), np.zeros((100, dim), np.float32))
    warm = {"gpucacheper": 0.5, "cache_refresh_percentage_per_iteration": 0.1}
    small = write_config(os.path.join(work, f"small{dim}.json"), f"small{dim}", small_folder, dim, None, warm)
    big = write_config(os.path.join(work, "ps.json"), "ps", folder, dim, None, warm)
    plan = hps.plan_memory(big, l1="cpu")
    planned = tier(plan, "l1")["bytes"] + tier(plan, "vdb")["bytes"]
    proc = subprocess.run([sys.executable, "-c", SERVER, hps.op_library_path(), small, big], capture_output=True,
                          text=True, env={**env, "PYTHONPATH": ""}, cwd="/", timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    add("parameter server: L1 50 % + hash map (RSS)", int(proc.stdout.split()[-1]), planned, False,
        "RSS gained by TfHpsInit")

    # Redis.
    vdb = {"type": "redis_cluster", "address": redis_deployment.address, "num_partitions": 16}
    cfg = write_config(os.path.join(work, "redis.json"), "foo", folder, dim, {"volatile_db": vdb})
    planned = tier(hps.plan_memory(cfg), "vdb")["bytes"]
    client = redis_deployment.client
    tag = table_tag("foo", "t0")
    with Storage("volatile_db", vdb) as db:
        db.drop(tag)
        before = client.info("memory")["used_memory"]
        db.ingest(tag, folder, dim)
        grown = client.info("memory")["used_memory"] - before
        db.drop(tag)
    add("Redis VDB (used_memory)", grown, planned, True, "INFO memory used_memory gained")

    # RocksDB on disk.
    path = os.path.join(work, f"rdb_{rows}_{dim}")
    cfg = write_config(os.path.join(work, "rdb.json"), "foo", folder, dim,
                       {"persistent_db": {"type": "rocks_db", "path": path}})
    planned = tier(hps.plan_memory(cfg), "pdb")["bytes"]
    with Storage("persistent_db", {"type": "rocks_db", "path": path}) as db:
        db.ingest(tag, folder, dim)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    add("RocksDB PDB (disk)", size, planned, True, "bytes of the database folder")
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(REPO, "build", "bench-memory"))
    parser.add_argument("--shapes", help="rows x D list (default 2000000x16,500000x64; quick 200000x16)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in
              (args.shapes or ("200000x16" if args.quick else "2000000x16,500000x64")).split(",")]

    import storage_tiers as st

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="tf_hps_memory_")
    results = []
    deployment = None
    try:
        deployment = st.redis_servers.start_standalone(os.path.join(work, "redis"))
        for rows, dim in shapes:
            results += measure_shape(rows, dim, work, deployment, log)
    finally:
        if deployment is not None:
            deployment.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": describe(),
           "shapes": shapes, "results": results, "total_s": time.perf_counter() - started}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.json"), "w") as f:
        json.dump(out, f, indent=1)
    log(f"wrote {os.path.join(args.out, 'memory.json')} ({out['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
