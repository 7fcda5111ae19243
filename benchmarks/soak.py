"""Soak: concurrent callers at full rate for minutes while online updates stream in.

    python benchmarks/soak.py [--minutes 10] [--callers 8] [--vdb hash_map|redis] [--out soak.json]

One serving process (this one) holds a table in the L1 cache, a volatile database (the in-process
hash map, or Redis with --vdb redis) and RocksDB, and takes online updates from a throwaway
redis-server. --callers threads call one tf.function over one hps.LookupLayer back to back (no
pauses: full rate) with zipf-distributed keys, while a publisher process publishes --update_rows
rows every --update_interval seconds. Every row returned is checked: a row is [key, version,
version, ...] (version -1 for the rows of the table files), so a row of another key or a row mixing
two versions is an error, as is an exception or a call that does not return within 10 s.

Reported, over the time after the warm-up (--warmup, a fraction of the run, at least 30 s):
- resident memory (VmRSS) at the end of the warm-up and at the end, its growth, and the slope of a
  line fitted to the samples (target: growth < 2 %);
- errors (target: 0);
- call latency p50 / p99 / max, calls/s and keys/s, rows updated and the last update lag.

Exit status 1 when a target is missed. On a shared machine the figures are indicative.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODEL = "soak"
STALL_S = 10.0  # a call taking longer than this counts as an error (hang)
GROWTH_TARGET = 0.02
# Latency histogram: log-spaced bins from 1 us to 100 s, 1 % wide; constant memory however long the run.
BIN_EDGES = np.geomspace(1e-6, 100.0, int(np.log(1e8) / np.log(1.01)) + 1)

# The publisher process: every `interval` s, `count` random keys at the next version, until stdin closes.
PUBLISHER = r"""
import sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from tf_hps.updates import UpdatePublisher
config = sys.argv[2]
rows, dim, count, interval = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
rng = np.random.default_rng(7)
publisher = UpdatePublisher(config)
version, published, failures = 0, 0, 0
next_at = time.monotonic()
while not stop.is_set():
    keys = rng.choice(rows, count, replace=False)
    vectors = np.full((count, dim), version, np.float32)
    vectors[:, 0] = keys
    try:
        publisher.publish("soak", 0, keys, vectors)
        publisher.flush()
        published += count
        version += 1
    except (ConnectionError, RuntimeError) as e:
        failures += 1
        print(f"publish failed: {e}", file=sys.stderr, flush=True)
    next_at += interval
    stop.wait(max(0.0, next_at - time.monotonic()))
publisher.close()
print(published, version, failures, flush=True)
"""


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def memory_breakdown(stats_of_table) -> dict[str, float]:
    """MB of memory by holder: glibc malloc's bytes in use and free-but-kept (every arena), of those
    in use RocksDB's memtables, index/filter blocks and block cache (hps.stats()), and RSS."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    stats = stats_of_table()
    mb = lambda v: round(v / 2**20, 1)  # noqa: E731
    return {"rss": mb(rss_bytes()), "malloc_in_use": mb(info.uordblks + info.hblkhd),
            "malloc_free_kept": mb(info.fordblks),
            "rocksdb_memtables": mb(stats.get("pdb_memtable_bytes", 0)),
            "rocksdb_index_filter": mb(stats.get("pdb_index_filter_bytes", 0)),
            "rocksdb_block_cache": mb(stats.get("pdb_block_cache_bytes", 0))}


def percentile(counts: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of a histogram over BIN_EDGES (upper edge of its bin)."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    index = int(np.searchsorted(np.cumsum(counts), q / 100 * total))
    return float(BIN_EDGES[min(index + 1, len(BIN_EDGES) - 1)])


class Caller(threading.Thread):
    def __init__(self, fn, rows: int, dim: int, batch: int, seed: int, measuring: threading.Event,
                 stop: threading.Event):
        super().__init__(daemon=True)
        self.fn, self.rows, self.dim, self.batch = fn, rows, dim, batch
        self.rng = np.random.default_rng(seed)
        self.measuring, self.stop = measuring, stop
        self.counts = np.zeros(len(BIN_EDGES) + 1, np.int64)
        self.calls = self.keys = 0
        self.max_s = 0.0
        self.errors: list[str] = []
        self.call_started = 0.0  # monotonic start of the call in flight, 0 when none

    def check(self, ids: np.ndarray, rows: np.ndarray) -> str | None:
        if rows.shape != (len(ids), self.dim):
            return f"shape {rows.shape}"
        if (rows[:, 0] != ids).any():
            return f"a row of another key: key {ids[rows[:, 0] != ids][0]}"
        versions = rows[:, 1:]
        if (versions != versions[:, :1]).any():
            return "a torn row (elements of two versions)"
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            ids = (self.rng.zipf(1.2, self.batch) - 1) % self.rows
            start = time.monotonic()
            self.call_started = start
            try:
                rows = self.fn(ids)
                error = self.check(ids, rows)
            except Exception as e:  # noqa: BLE001 - every failure is a soak error
                error = f"{type(e).__name__}: {e}"
            elapsed = time.monotonic() - start
            self.call_started = 0.0
            if elapsed > STALL_S:
                error = error or f"a call took {elapsed:.1f} s"
            if error and len(self.errors) < 100:
                self.errors.append(error)
            if self.measuring.is_set():
                self.counts[np.searchsorted(BIN_EDGES, elapsed)] += 1
                self.calls += 1
                self.keys += len(ids)
                self.max_s = max(self.max_s, elapsed)


def write_table(work: str, rows: int, dim: int) -> str:
    import tf_hps as hps

    keys = np.arange(rows, dtype=np.int64)
    vectors = np.full((rows, dim), -1.0, np.float32)
    vectors[:, 0] = keys
    folder = os.path.join(work, "t0")
    hps.save_table(folder, keys, vectors)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run, warm-up included")
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="fraction of the run before measuring (at least 30 s, at most half the run)")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1024, help="keys per call")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--cache", type=float, default=0.2, help="gpucacheper: L1 size as a fraction of the rows")
    parser.add_argument("--vdb", choices=["hash_map", "redis"], default="hash_map")
    parser.add_argument("--update_rows", type=int, default=2000, help="rows per published update")
    parser.add_argument("--update_interval", type=float, default=0.1, help="seconds between updates")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    assert args.rows < 1 << 24, "keys are stored in float32 rows: at most 2^24"

    import tensorflow as tf

    import tf_hps as hps
    from machine import describe
    from redis_servers import start_standalone

    work = tempfile.mkdtemp(prefix="tf_hps_soak_")
    redis = start_standalone(work)
    publisher = None
    try:
        folder = write_table(work, args.rows, args.dim)
        vdb = ({"type": "hash_map"} if args.vdb == "hash_map"
               else {"type": "redis_cluster", "address": redis.address, "num_partitions": 8})
        config = os.path.join(work, "ps.json")
        with open(config, "w") as f:
            json.dump({"supportlonglong": True,
                       "volatile_db": vdb,
                       "persistent_db": {"type": "rocks_db", "path": os.path.join(work, "rocksdb")},
                       "update_source": {"type": "redis_stream", "address": redis.address},
                       "models": [{"model": MODEL, "sparse_files": [folder], "embedding_vecsize_per_table": [args.dim],
                                   "maxnum_catfeature_query_per_table_per_sample": [1],
                                   "default_value_for_each_table": [0.0], "deployed_device_list": [0],
                                   "max_batch_size": args.batch, "gpucache": True,
                                   "gpucacheper": args.cache}]}, f)
        layer = hps.LookupLayer(MODEL, 0, args.dim, tf.float32, config)
        lookup = tf.function(lambda k: layer(k), input_signature=[tf.TensorSpec([None], tf.int64)])
        fn = lambda ids: lookup(tf.constant(ids, tf.int64)).numpy()  # noqa: E731
        fn(np.arange(10))  # creates the server, traces the function
        tag = f"hps_et.{MODEL}.sparse_embedding0"

        publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, ROOT, config, str(args.rows), str(args.dim),
                                      str(args.update_rows), str(args.update_interval)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        measuring, stop = threading.Event(), threading.Event()
        callers = [Caller(fn, args.rows, args.dim, args.batch, seed, measuring, stop) for seed in range(args.callers)]
        start = time.monotonic()
        for c in callers:
            c.start()
        duration = args.minutes * 60
        # RocksDB's memtables (64 MiB each) and block cache fill from the updates and misses during the
        # first tens of seconds: the warm-up lasts at least 30 s (at most half the run).
        warm_at = start + max(args.warmup * duration, min(30.0, duration / 2))
        samples: list[tuple[float, int]] = []  # (seconds since the warm-up ended, RSS bytes)
        stalled = 0
        breakdown: list[tuple[int, dict]] = []  # (seconds after the warm-up, memory_breakdown())
        while time.monotonic() < start + duration:
            time.sleep(1.0)
            now = time.monotonic()
            if not measuring.is_set() and now >= warm_at:
                measuring.set()
                warm_at = now
            if measuring.is_set():
                samples.append((now - warm_at, rss_bytes()))
                if len(samples) % 10 == 1:  # about every 10 s
                    breakdown.append((round(now - warm_at), memory_breakdown(lambda: hps.stats()[tag])))
            stalled = max(stalled, sum(1 for c in callers if c.call_started and now - c.call_started > STALL_S))
            if publisher.poll() is not None:
                raise RuntimeError(f"the publisher exited early with {publisher.returncode}")
        stop.set()
        for c in callers:
            c.join(timeout=3 * STALL_S)
        hung = sum(c.is_alive() for c in callers)
        measured_s = time.monotonic() - warm_at
        publisher.stdin.close()
        published, versions, publish_failures = map(int, publisher.stdout.read().split())
        publisher.wait(timeout=60)
        stats = hps.stats()[tag]

        counts = sum(c.counts for c in callers)
        errors = [e for c in callers for e in c.errors]
        calls, keys = sum(c.calls for c in callers), sum(c.keys for c in callers)
        times = np.array([t for t, _ in samples])
        rss = np.array([r for _, r in samples], np.float64)
        slope = float(np.polyfit(times / 60, rss, 1)[0]) if len(samples) > 2 else float("nan")
        # Start and end as medians of the first and last 10 samples, so one sample's noise does not decide.
        rss_warm, rss_end = float(np.median(rss[:10])), float(np.median(rss[-10:]))
        growth = (rss_end - rss_warm) / rss_warm
        result = {
            "machine": describe(), "tensorflow": tf.__version__,
            "minutes": args.minutes, "measured_s": round(measured_s, 1), "callers": args.callers,
            "batch": args.batch, "rows": args.rows, "dim": args.dim, "cache": args.cache, "vdb": args.vdb,
            "update_rows": args.update_rows, "update_interval_s": args.update_interval,
            "rss_warm_mb": round(rss_warm / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
            "rss_max_mb": round(float(rss.max()) / 2**20, 1), "rss_growth_pct": round(100 * growth, 2),
            "rss_slope_mb_per_min": round(slope / 2**20, 3),
            "errors": len(errors) + hung + stalled, "error_samples": errors[:5], "hung_callers": hung,
            "calls": calls, "calls_per_s": round(calls / measured_s, 1), "keys_per_s": round(keys / measured_s),
            "p50_ms": round(1000 * percentile(counts, 50), 3), "p99_ms": round(1000 * percentile(counts, 99), 3),
            "max_ms": round(1000 * max(c.max_s for c in callers), 1),
            "rows_published": published, "updates_published": versions, "publish_failures": publish_failures,
            "rows_updated": stats["rows_updated"], "update_lag_ms": stats["update_lag_ms"],
            "l1_hit_pct": round(100 * stats["l1_hits"] / max(stats["keys"], 1), 1),
            # Every 10th sample (about one per 10 s): (seconds after the warm-up, RSS MB).
            "rss_samples": [(round(t), round(r / 2**20, 1)) for t, r in samples[::10]],
            # About every 10 s: (seconds after the warm-up, MB by holder: see memory_breakdown).
            "memory_breakdown": breakdown,
        }
        passed = result["errors"] == 0 and growth < GROWTH_TARGET and stats["rows_updated"] > 0
        result["passed"] = passed

        print(f"machine: {result['machine']}; TF {result['tensorflow']}; {args.callers} callers x {args.batch} keys, "
              f"table {args.rows:,} x {args.dim}, L1 {args.cache:.0%}, VDB {args.vdb}, RocksDB; "
              f"{args.update_rows} rows published every {args.update_interval} s")
        print(f"\nsoak of {args.minutes:g} min, measured over the last {measured_s:.0f} s (after the warm-up):\n")
        print("| RSS warm | RSS end | growth | slope | errors | p50 | p99 | max | calls/s | keys/s | rows updated |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {result['rss_warm_mb']} MB | {result['rss_end_mb']} MB | {result['rss_growth_pct']:+.2f} % | "
              f"{result['rss_slope_mb_per_min']:+.2f} MB/min | {result['errors']} | {result['p50_ms']:.2f} ms | "
              f"{result['p99_ms']:.2f} ms | {result['max_ms']:.0f} ms | {result['calls_per_s']:.0f} | "
              f"{result['keys_per_s']:,} | {result['rows_updated']:,} |")
        if len(breakdown) >= 2:
            (t0, first), (t1, last) = breakdown[0], breakdown[-1]
            print(f"\nmemory by holder, MB, {t0} s and {t1} s after the warm-up:\n")
            print("| holder | " + " | ".join(first) + " |")
            print("|---|" + "---:|" * len(first))
            for label, row in ((f"{t0} s", first), (f"{t1} s", last)):
                print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
            print("| change | " + " | ".join(f"{last[k] - first[k]:+.1f}" for k in first) + " |")
        print(f"\ntargets: growth < {GROWTH_TARGET:.0%}, 0 errors: {'PASS' if passed else 'FAIL'}")
        if errors:
            print("first errors:", *errors[:5], sep="\n  ")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
        return 0 if passed else 1
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
