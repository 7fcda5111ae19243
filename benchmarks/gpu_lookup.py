"""The GPU lookup pipeline against the CPU lookup path, and the static GPU table's query throughput.

    python benchmarks/gpu_lookup.py [--rows 1000000] [--dim 128] [--alpha 1.2] [--cache-percent 20]
                                    [--batches 32,128,512,2048,8192,32768,131072] [--repeats 30]
                                    [--static-keys 1703936] [--out DIR]

Needs a CUDA device (without one it stops with a message) and `make gpu` (no TensorFlow).

Table: `rows` rows of `dim` float32 (key k is row k), held by the tiers below L1 in both pipelines
through the same C++ callback (tests/cache_host_shim.cc: hps_cache_host_dense_fetch), so the
comparison is L1 + dedup + scatter, not Python. Keys: zipf(alpha) ranks over the rows, scattered
over the key range, so hot keys repeat within a batch.

(a) Static table: every row in a static GPU table. hps_gpu_lookup_query_l1 of `static-keys` keys
    (default 65,536 x 26; zipf and uniform), then the full pipeline (dedup included) on the same keys.
(b) Pipeline: hps_gpu_lookup_query (dynamic GPU cache of cache-percent % of the rows; keys already on
    the device; timed to the end of a device synchronisation) against hps_cache_host_lookup (the CPU
    cache of the same size, one thread: dedup -> query -> fetch -> replace -> scatter). Both caches
    are warmed with the same batches first; each batch size then runs the same batches through
    both, in turns. The first answer of each is compared with the table.

Medians are reported; --out writes gpu_lookup.md and gpu_lookup.json there.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402

GPU_LIB = os.path.join(ROOT, "tf_hps", "_tf_hps_gpu_cache.so")
HOST_LIB = os.path.join(ROOT, "build", "libhps_cache_host.so")
vp, i64 = ctypes.c_void_p, ctypes.c_int64


class DenseTable(ctypes.Structure):  # tests/cache_host_shim.cc
    _fields_ = [("rows", vp), ("num_rows", i64), ("dim", i64), ("default_value", ctypes.c_float)]


class Counts(ctypes.Structure):  # hps_gpu_lookup_counts
    _fields_ = [(name, i64) for name in ("keys", "l1_hits", "missed_keys", "inserted", "evicted")]


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def load_libraries():
    for path in (GPU_LIB, HOST_LIB):
        if not os.path.isfile(path):
            sys.exit(f"{path} is missing: run `make gpu` first")
    gpu, host = ctypes.CDLL(GPU_LIB), ctypes.CDLL(HOST_LIB)
    gpu.hps_gpu_error_string.restype = ctypes.c_char_p
    gpu.hps_gpu_error_string.argtypes = [ctypes.c_int]
    gpu.hps_gpu_malloc.argtypes = [ctypes.c_size_t, ctypes.POINTER(vp)]
    gpu.hps_gpu_free.argtypes = [vp]
    gpu.hps_gpu_memcpy.argtypes = [vp, vp, ctypes.c_size_t]
    gpu.hps_gpu_device_name.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    gpu.hps_gpu_lookup_create_dynamic.argtypes = [i64, i64, ctypes.c_int, ctypes.POINTER(vp)]
    gpu.hps_gpu_lookup_create_static.argtypes = [vp, i64, vp, i64, ctypes.c_int, ctypes.POINTER(vp)]
    gpu.hps_gpu_lookup_destroy.argtypes = [vp]
    # (..., fetch, fetch_ctx, guard, guard_ctx, stream, counts): no guard here (NULL: always insert).
    gpu.hps_gpu_lookup_query.argtypes = [vp, vp, i64, vp, vp, vp, vp, vp, vp, ctypes.POINTER(Counts)]
    gpu.hps_gpu_lookup_query_l1.argtypes = [vp, vp, i64, vp, vp, vp, vp]
    gpu.hps_gpu_lookup_last_error.restype = ctypes.c_char_p
    host.hps_cache_host_create.restype = vp
    host.hps_cache_host_create.argtypes = [i64, i64]
    host.hps_cache_host_destroy.argtypes = [vp]
    host.hps_cache_host_lookup.argtypes = [vp, vp, i64, vp, ctypes.POINTER(DenseTable), vp]
    return gpu, host


class Gpu:
    def __init__(self, lib):
        self.lib = lib

    def check(self, code: int, what: str = "") -> None:
        if code:
            detail = self.lib.hps_gpu_lookup_last_error().decode() or self.lib.hps_gpu_error_string(code).decode()
            raise SystemExit(f"GPU call failed{' (' + what + ')' if what else ''}: error {code}: {detail}")

    def upload(self, a: np.ndarray) -> vp:
        p = vp()
        self.check(self.lib.hps_gpu_malloc(max(a.nbytes, 16), ctypes.byref(p)), "cudaMalloc")
        self.check(self.lib.hps_gpu_memcpy(p, ptr(a), a.nbytes), "copy to the device")
        return p

    def empty(self, nbytes: int) -> vp:
        p = vp()
        self.check(self.lib.hps_gpu_malloc(max(nbytes, 16), ctypes.byref(p)), "cudaMalloc")
        return p

    def download(self, p: vp, out: np.ndarray) -> np.ndarray:
        self.check(self.lib.hps_gpu_memcpy(ptr(out), p, out.nbytes), "copy to the host")
        return out

    def sync(self) -> None:
        self.check(self.lib.hps_gpu_synchronize(), "synchronize")


class Zipf:
    """Keys with P(rank r) ~ r^-alpha; rank r is key perm[r], so hot keys are spread out."""

    def __init__(self, rows: int, alpha: float, seed: int):
        p = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
        self.cdf = np.cumsum(p / p.sum())
        self.perm = np.random.default_rng(seed).permutation(rows).astype(np.int64)
        self.rng = np.random.default_rng(seed + 1)

    def __call__(self, n: int) -> np.ndarray:
        ranks = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.cdf) - 1)
        return self.perm[ranks]


def median_ms(times: list[float]) -> float:
    return float(np.median(times)) * 1e3


def static_benchmark(gpu: Gpu, table: np.ndarray, fetch, ctx, zipf: Zipf, args) -> dict:
    lib, n, dim = gpu.lib, args.static_keys, args.dim
    keys = np.arange(len(table), dtype=np.int64)
    handle = vp()
    start = time.perf_counter()
    gpu.check(lib.hps_gpu_lookup_create_static(ptr(keys), len(keys), ptr(table), dim, 8, ctypes.byref(handle)),
              "create the static table")
    build_s = time.perf_counter() - start
    d_out, d_missing, d_count = gpu.empty(n * dim * 4), gpu.empty(n * 8), gpu.empty(8)
    rng = np.random.default_rng(7)
    results = {"rows": len(table), "keys": n, "build_s": build_s, "cases": []}
    for name, batch in (("zipf", zipf(n)), ("uniform", rng.integers(0, len(table), n))):
        d_keys = gpu.upload(batch)

        def l1() -> float:
            t = time.perf_counter()
            gpu.check(lib.hps_gpu_lookup_query_l1(handle, d_keys, n, d_out, d_missing, d_count, None), "query_l1")
            gpu.sync()
            return time.perf_counter() - t

        def pipeline() -> float:
            counts = Counts()
            t = time.perf_counter()
            gpu.check(lib.hps_gpu_lookup_query(handle, d_keys, n, d_out, fetch, ctx, None, None, None,
                                               ctypes.byref(counts)), "query")
            gpu.sync()
            return time.perf_counter() - t

        for run in (l1, pipeline):
            run()
            got = gpu.download(d_out, np.empty((min(n, 65536), dim), np.float32))
            if not np.array_equal(got, table[batch[: len(got)]]):
                raise SystemExit(f"static table: wrong rows ({name}, {run.__name__})")
        t_l1 = median_ms([l1() for _ in range(args.repeats)])
        t_pipe = median_ms([pipeline() for _ in range(args.repeats)])
        results["cases"].append({"keys": name, "distinct": int(len(np.unique(batch))), "l1_ms": t_l1,
                                 "pipeline_ms": t_pipe})
        gpu.check(lib.hps_gpu_free(d_keys))
    for p in (d_out, d_missing, d_count):
        gpu.check(lib.hps_gpu_free(p))
    lib.hps_gpu_lookup_destroy(handle)
    return results


def pipeline_benchmark(gpu: Gpu, host, table: np.ndarray, fetch, ctx, dense_ptr, zipf: Zipf, args) -> dict:
    lib, dim = gpu.lib, args.dim
    capacity = max(64, len(table) * args.cache_percent // 100)
    handle = vp()
    gpu.check(lib.hps_gpu_lookup_create_dynamic(capacity, dim, 8, ctypes.byref(handle)), "create the pipeline")
    cpu_cache = vp(host.hps_cache_host_create(capacity, dim))
    warmup_keys = 16384
    biggest = max(args.batches + [warmup_keys])
    d_out = gpu.empty(biggest * dim * 4)
    cpu_out = np.empty((biggest, dim), np.float32)
    cpu_counts = np.zeros(5, np.int64)

    def run_gpu(d_keys, n: int) -> tuple[float, Counts]:
        counts = Counts()
        t = time.perf_counter()
        gpu.check(lib.hps_gpu_lookup_query(handle, d_keys, n, d_out, fetch, ctx, None, None, None,
                                           ctypes.byref(counts)), "query")
        gpu.sync()
        return time.perf_counter() - t, counts

    def run_cpu(keys: np.ndarray) -> float:
        t = time.perf_counter()
        host.hps_cache_host_lookup(cpu_cache, ptr(keys), len(keys), ptr(cpu_out), dense_ptr, ptr(cpu_counts))
        return time.perf_counter() - t

    for _ in range(args.warmup_batches):  # the same traffic fills both caches
        keys = zipf(warmup_keys)
        d_keys = gpu.upload(keys)
        run_gpu(d_keys, len(keys))
        run_cpu(keys)
        gpu.check(lib.hps_gpu_free(d_keys))

    results = []
    for n in args.batches:
        batches = [zipf(n) for _ in range(args.repeats + 1)]
        device_batches = [gpu.upload(b) for b in batches]
        _, _ = run_gpu(device_batches[0], n)
        if not np.array_equal(gpu.download(d_out, np.empty((n, dim), np.float32)), table[batches[0]]):
            raise SystemExit(f"GPU pipeline: wrong rows at {n} keys")
        run_cpu(batches[0])
        if not np.array_equal(cpu_out[:n], table[batches[0]]):
            raise SystemExit(f"CPU pipeline: wrong rows at {n} keys")
        gpu_times, cpu_times, gpu_hits, cpu_hits, distinct = [], [], 0, 0, 0
        for keys, d_keys in zip(batches[1:], device_batches[1:]):
            t, counts = run_gpu(d_keys, n)
            gpu_times.append(t)
            gpu_hits += counts.l1_hits
            cpu_times.append(run_cpu(keys))
            cpu_hits += int(cpu_counts[1])
            distinct += len(np.unique(keys))
        for p in device_batches:
            gpu.check(lib.hps_gpu_free(p))
        total = n * args.repeats
        results.append({"keys": n, "distinct_pct": 100 * distinct / total, "gpu_ms": median_ms(gpu_times),
                        "cpu_ms": median_ms(cpu_times), "gpu_hit_pct": 100 * gpu_hits / total,
                        "cpu_hit_pct": 100 * cpu_hits / total, "gpu_times": gpu_times, "cpu_times": cpu_times})
    gpu.check(lib.hps_gpu_free(d_out))
    lib.hps_gpu_lookup_destroy(handle)
    host.hps_cache_host_destroy(cpu_cache)
    return {"capacity_rows": capacity, "results": results}


def report(gpu_name: str, args, static: dict, pipe: dict) -> str:
    out = [f"GPU: {gpu_name}; CPU: {describe()}",
           f"Table {args.rows} rows x D = {args.dim} float32; zipf({args.alpha}) keys; medians of {args.repeats}.", "",
           f"(a) Static GPU table of all {static['rows']} rows (built in {static['build_s']:.2f} s), "
           f"{static['keys']} keys per call", "",
           "| keys | distinct | L1 query (ms) | G keys/s | GB/s (row read + write) | full pipeline (ms) | G keys/s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for c in static["cases"]:
        n = static["keys"]
        out.append(f"| {c['keys']} | {c['distinct']} | {c['l1_ms']:.3f} | {n / c['l1_ms'] / 1e6:.2f} | "
                   f"{2 * n * args.dim * 4 / c['l1_ms'] / 1e6:.0f} | {c['pipeline_ms']:.3f} | "
                   f"{n / c['pipeline_ms'] / 1e6:.2f} |")
    out += ["", f"(b) Lookup pipeline, L1 of {args.cache_percent} % of the rows ({pipe['capacity_rows']} rows) "
            "on each side; GPU: hps_gpu_lookup_query to the end of a device sync; CPU: the same steps on one "
            "thread (hps_cache_host_lookup)", "",
            "| keys per batch | distinct % | GPU L1 hits % | CPU L1 hits % | GPU (ms) | CPU (ms) | GPU M keys/s | "
            "CPU M keys/s | GPU / CPU speed |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in pipe["results"]:
        n = r["keys"]
        out.append(f"| {n} | {r['distinct_pct']:.1f} | {r['gpu_hit_pct']:.1f} | {r['cpu_hit_pct']:.1f} | "
                   f"{r['gpu_ms']:.3f} | {r['cpu_ms']:.3f} | {n / r['gpu_ms'] / 1e3:.1f} | "
                   f"{n / r['cpu_ms'] / 1e3:.1f} | {r['cpu_ms'] / r['gpu_ms']:.2f}x |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=1.2)
    parser.add_argument("--cache-percent", type=int, default=20)
    parser.add_argument("--batches", default="32,128,512,2048,8192,32768,131072")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup-batches", type=int, default=50)
    parser.add_argument("--static-keys", type=int, default=65536 * 26)
    parser.add_argument("--out", default=None, help="folder for gpu_lookup.md and gpu_lookup.json")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]

    lib, host = load_libraries()
    if lib.hps_gpu_cache_device_count() <= 0:
        sys.exit("no CUDA device: benchmarks/gpu_lookup.py needs a GPU (the libraries themselves built fine; "
                 "benchmarks/gpu_cache.py measures the CPU cache alone)")
    gpu = Gpu(lib)
    name = ctypes.create_string_buffer(256)
    gpu.check(lib.hps_gpu_device_name(name, 256), "device name")

    rng = np.random.default_rng(0)
    table = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    dense = DenseTable(table.ctypes.data, args.rows, args.dim, 0.0)
    dense_ptr = ctypes.pointer(dense)
    ctx = ctypes.cast(dense_ptr, vp)
    fetch = ctypes.cast(host.hps_cache_host_dense_fetch, vp)
    zipf = Zipf(args.rows, args.alpha, seed=1)

    static = static_benchmark(gpu, table, fetch, ctx, zipf, args)
    pipe = pipeline_benchmark(gpu, host, table, fetch, ctx, dense_ptr, zipf, args)
    text = report(name.value.decode(), args, static, pipe)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_lookup.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "gpu_lookup.json"), "w") as f:
            json.dump({"gpu": name.value.decode(), "cpu": describe(), "args": vars(args), "static": static,
                       "pipeline": pipe}, f, indent=1)


if __name__ == "__main__":
    main()
