"""All-hit Query throughput of the embedding cache, on the GPU and on the CPU.

    python benchmarks/gpu_cache.py [--batch 65536] [--hotness 26] [--dim 128] [--repeats 20]
                                   [--cpu-keys 16384] [--no-cpu] [--no-tf]

GPU (needs a CUDA device; without one it says so and goes on with the CPU): one Query call of
batch x hotness distinct int64 keys (after deduplication, as the lookup path calls it), all
cached, rows of `dim` floats, through the C ABI of tf_hps/_tf_hps_gpu_cache.so. The cache holds
about 2.5x the keys, so no set overflows. Each repeat times one call from launch to the end of a
device synchronisation; the median is reported as keys/s and as effective bandwidth (row read +
row write).

CPU: EmbeddingCache::Query (core/embedding_cache.cc) through build/libhps_cache_host.so on one
thread: `--cpu-keys` random resident keys per call, D = `dim`, a cache of 131072 rows half full
(64 MiB of rows at D = 128, beyond the last-level cache). With TensorFlow importable, it is
compared with tf.nn.embedding_lookup of the same number of random ids from a dense table of the
same byte size.

Build first: `make gpu` (both libraries; no GPU needed to build).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_LIB = os.path.join(ROOT, "tf_hps", "_tf_hps_gpu_cache.so")
HOST_LIB = os.path.join(ROOT, "build", "libhps_cache_host.so")
vp, i64 = ctypes.c_void_p, ctypes.c_int64


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def distinct_keys(n: int, rng) -> np.ndarray:
    """n distinct int64 keys spread over the whole range."""
    keys = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, int(n * 1.01) + 16, dtype=np.int64))
    rng.shuffle(keys)
    assert len(keys) >= n
    return keys[:n]


def gpu_benchmark(lib, args) -> None:
    def check(code: int) -> None:
        if code:
            raise RuntimeError(f"CUDA error {code}: {lib.hps_gpu_error_string(code).decode()}")

    def device(nbytes: int) -> ctypes.c_void_p:
        p = vp()
        check(lib.hps_gpu_malloc(ctypes.c_size_t(nbytes), ctypes.byref(p)))
        return p

    def upload(a: np.ndarray) -> ctypes.c_void_p:
        p = device(a.nbytes)
        check(lib.hps_gpu_memcpy(p, ptr(a), ctypes.c_size_t(a.nbytes)))
        return p

    name = ctypes.create_string_buffer(256)
    check(lib.hps_gpu_device_name(name, ctypes.c_size_t(256)))
    n, dim = args.batch * args.hotness, args.dim
    capacity = int(n * 2.5)
    rng = np.random.default_rng(0)
    keys = distinct_keys(n, rng)
    cache = vp()
    check(lib.hps_gpu_cache_create(i64(capacity), i64(dim), 8, ctypes.byref(cache)))
    d_keys = upload(keys)
    d_values = device(n * dim * 4)
    d_missing, d_count = device(n * 8), device(8)
    # Fill: rows whose first element is the key's position, so the warm-up can check them.
    chunk = 1 << 20
    for begin in range(0, n, chunk):
        end = min(n, begin + chunk)
        rows = np.zeros((end - begin, dim), np.float32)
        rows[:, 0] = np.arange(begin, end)
        d_rows = upload(rows)
        check(lib.hps_gpu_cache_replace(cache, ctypes.c_void_p(d_keys.value + begin * 8), i64(end - begin), d_rows,
                                        None))
        check(lib.hps_gpu_synchronize())
        check(lib.hps_gpu_free(d_rows))

    def query() -> float:
        start = time.perf_counter()
        check(lib.hps_gpu_cache_query(cache, d_keys, i64(n), d_values, d_missing, d_count, None))
        check(lib.hps_gpu_synchronize())
        return time.perf_counter() - start

    query()
    count = np.zeros(1, np.int64)
    check(lib.hps_gpu_memcpy(ptr(count), d_count, ctypes.c_size_t(8)))
    first = np.zeros((min(n, 4096), dim), np.float32)
    check(lib.hps_gpu_memcpy(ptr(first), d_values, ctypes.c_size_t(first.nbytes)))
    if count[0] != 0 or not (first[:, 0] == np.arange(len(first))).all():
        raise SystemExit(f"warm-up query is wrong: {count[0]} misses of {n} keys")
    times = sorted(query() for _ in range(args.repeats))
    t = times[len(times) // 2]
    print(f"GPU: {name.value.decode()}; cache {capacity} rows requested, "
          f"{lib.hps_gpu_cache_capacity(cache)} ways; median of {args.repeats}\n")
    print("| keys per Query | D | median time (ms) | G keys/s | effective GB/s (read + write rows) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {args.batch} x {args.hotness} = {n} | {dim} | {t * 1e3:.3f} | {n / t / 1e9:.2f} | "
          f"{2 * n * dim * 4 / t / 1e9:.0f} |\n")
    for p in (d_keys, d_values, d_missing, d_count):
        check(lib.hps_gpu_free(p))
    lib.hps_gpu_cache_destroy(cache)


def cpu_benchmark(args) -> None:
    if not os.path.isfile(HOST_LIB):
        raise SystemExit(f"{HOST_LIB} is missing: run `make gpu`")
    lib = ctypes.CDLL(HOST_LIB)
    lib.hps_cache_host_create.restype = vp
    lib.hps_cache_host_create.argtypes = [i64, i64]
    lib.hps_cache_host_capacity.restype = i64
    lib.hps_cache_host_capacity.argtypes = [vp]
    lib.hps_cache_host_replace.argtypes = [vp, vp, i64, vp]
    lib.hps_cache_host_query.restype = i64
    lib.hps_cache_host_query.argtypes = [vp, vp, i64, vp, vp]
    lib.hps_cache_host_destroy.argtypes = [vp]
    dim, n, rows = args.dim, args.cpu_keys, 1 << 17
    rng = np.random.default_rng(1)
    cache = vp(lib.hps_cache_host_create(rows, dim))
    resident = distinct_keys(lib.hps_cache_host_capacity(cache) // 2, rng)
    values = rng.standard_normal((len(resident), dim)).astype(np.float32)
    lib.hps_cache_host_replace(cache, ptr(resident), len(resident), ptr(values))
    out, missing = np.zeros((n, dim), np.float32), np.zeros(n, np.int64)
    batches = [rng.choice(len(resident), n) for _ in range(args.repeats)]
    times = []
    for pos in [batches[0]] + batches:
        keys = np.ascontiguousarray(resident[pos])
        start = time.perf_counter()
        misses = lib.hps_cache_host_query(cache, ptr(keys), n, ptr(out), ptr(missing))
        times.append(time.perf_counter() - start)
        if misses or not np.array_equal(out, values[pos]):
            raise SystemExit(f"CPU query is wrong: {misses} misses")
    lib.hps_cache_host_destroy(cache)
    t = float(np.median(times[1:]))
    ours = n / t

    theirs = None
    if not args.no_tf:
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf
        except ImportError:
            tf = None
        if tf is not None:
            table = tf.Variable(rng.standard_normal((rows // 2, dim)).astype(np.float32))
            gather = tf.function(lambda ids: tf.nn.embedding_lookup(table, ids))
            tf_times = []
            for _ in range(args.repeats + 1):
                ids = tf.constant(rng.integers(0, rows // 2, n))
                start = time.perf_counter()
                gather(ids).numpy()
                tf_times.append(time.perf_counter() - start)
            theirs = n / float(np.median(tf_times[1:]))

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; EmbeddingCache::Query on "
          f"one thread, {rows} rows half full, median of {args.repeats}\n")
    print("| keys per call | D | EmbeddingCache::Query (M keys/s) | tf.nn.embedding_lookup (M keys/s) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    tf_cell, ratio = ("n/a", "n/a") if theirs is None else (f"{theirs / 1e6:.1f}", f"{ours / theirs:.2f}")
    print(f"| {n} | {dim} | {ours / 1e6:.1f} | {tf_cell} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--hotness", type=int, default=26)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cpu-keys", type=int, default=16384)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU cache")
    parser.add_argument("--no-tf", action="store_true", help="skip the tf.nn.embedding_lookup comparison")
    args = parser.parse_args()

    if not os.path.isfile(GPU_LIB):
        sys.exit(f"{GPU_LIB} is missing: run `make gpu`")
    lib = ctypes.CDLL(GPU_LIB)
    lib.hps_gpu_error_string.restype = ctypes.c_char_p
    lib.hps_gpu_cache_create.argtypes = [i64, i64, ctypes.c_int, ctypes.POINTER(vp)]
    lib.hps_gpu_cache_capacity.restype = i64
    lib.hps_gpu_cache_capacity.argtypes = [vp]
    lib.hps_gpu_cache_destroy.argtypes = [vp]
    lib.hps_gpu_cache_query.argtypes = [vp, vp, i64, vp, vp, vp, vp]
    lib.hps_gpu_cache_replace.argtypes = [vp, vp, i64, vp, vp]
    lib.hps_gpu_memcpy.argtypes = [vp, vp, ctypes.c_size_t]
    lib.hps_gpu_free.argtypes = [vp]
    if lib.hps_gpu_cache_device_count() > 0:
        gpu_benchmark(lib, args)
    else:
        print("no CUDA device: GPU cache benchmark skipped (it needs a GPU; the library itself built fine)\n")
    if not args.no_cpu:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
