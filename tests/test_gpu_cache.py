"""The GPU embedding cache: always built and loadable; on a GPU, identical to the CPU cache.

The library tests run everywhere (CI has no GPU). The behaviour tests run the same operation
sequences on the GPU cache and on the CPU cache and need a CUDA device.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

# No conftest import: scripts/device_check.sh runs this file where there is no TensorFlow (--noconftest).
from slab_model import GPU_LIB, INT64_MAX, INT64_MIN, WAYS, GpuCache, HostCache, home

C_ABI = ["hps_gpu_cache_device_count", "hps_gpu_error_string", "hps_gpu_cache_create", "hps_gpu_cache_destroy",
         "hps_gpu_cache_capacity", "hps_gpu_cache_num_sets", "hps_gpu_cache_query", "hps_gpu_cache_replace",
         "hps_gpu_cache_update", "hps_gpu_cache_dump", "hps_gpu_malloc", "hps_gpu_free", "hps_gpu_memcpy",
         "hps_gpu_synchronize", "hps_gpu_device_name", "hps_gpu_set_device",
         # the lookup pipeline (ops/cuda/gpu_lookup_c_api.h; tests/test_gpu_lookup.py)
         "hps_gpu_lookup_create_dynamic", "hps_gpu_lookup_create_static", "hps_gpu_lookup_destroy",
         "hps_gpu_lookup_query", "hps_gpu_lookup_query_l1", "hps_gpu_lookup_update", "hps_gpu_lookup_size",
         "hps_gpu_lookup_evicted", "hps_gpu_lookup_last_error", "hps_gpu_lookup_refresh",
         # the sparse lookup's combine (gpu_lookup_c_api.h)
         "hps_gpu_combine_segments"]


def device_count() -> int:
    return GpuCache.lib().hps_gpu_cache_device_count()


# Without the library these tests fail (like the library test below) rather than skip.
needs_gpu = pytest.mark.skipif(os.path.isfile(GPU_LIB) and device_count() == 0, reason="no CUDA device")


def test_gpu_cache_library_is_built_and_exports_exactly_the_c_abi():
    assert os.path.isfile(GPU_LIB), f"{GPU_LIB} is missing: run `make gpu` (or `make test`)"
    lib = ctypes.CDLL(GPU_LIB)
    for name in C_ABI:
        assert hasattr(lib, name), name
    # The CUDA runtime is linked in statically and kept private, so it cannot clash with the
    # CUDA runtime of TensorFlow in the same process.
    for name in ("cudaMalloc", "cudaGetDeviceCount", "cudaLaunchKernel"):
        assert not hasattr(lib, name), name
    # Nothing else is exported either: no symbol of the implementation (tf_hps::...). Weak
    # instantiations of libstdc++ templates stay visible (their headers say so) and are harmless.
    out = subprocess.run(["nm", "-D", "--defined-only", GPU_LIB], capture_output=True, text=True, check=True).stdout
    symbols = [line.split()[-2:] for line in out.splitlines()]
    strong = {name for kind, name in symbols if kind in ("T", "D", "B", "R")}
    assert strong == set(C_ABI), strong ^ set(C_ABI)
    assert all(name.startswith(("_ZSt", "_ZNSt", "_ZNKSt")) for kind, name in symbols if kind in ("W", "V")), symbols


def test_device_count_answers_without_crashing_with_or_without_a_driver():
    code = "import ctypes, sys; print(ctypes.CDLL(sys.argv[1]).hps_gpu_cache_device_count())"
    out = subprocess.run([sys.executable, "-c", code, GPU_LIB], capture_output=True, text=True, timeout=120,
                         check=True)
    assert int(out.stdout.strip()) == device_count() >= 0


def test_without_a_device_create_fails_with_a_cuda_error_and_no_cache():
    if device_count() > 0:
        pytest.skip("a CUDA device is present")
    lib = GpuCache.lib()
    handle = ctypes.c_void_p(1)
    code = lib.hps_gpu_cache_create(1024, 8, 8, ctypes.byref(handle))
    assert code != 0 and not handle.value
    assert lib.hps_gpu_error_string(code)


def test_invalid_arguments_are_refused_before_touching_the_device():
    lib = GpuCache.lib()
    handle = ctypes.c_void_p(1)
    assert lib.hps_gpu_cache_create(1024, 8, 3, ctypes.byref(handle)) != 0 and not handle.value
    assert lib.hps_gpu_cache_create(1024, 0, 8, ctypes.byref(handle)) != 0 and not handle.value


# ---------------------------------------------------------------------------------------------
# On a GPU.

def one_new_key_per_set(keys: np.ndarray, num_sets: int) -> np.ndarray:
    """The first key of each set: a Replace batch whose outcome does not depend on the order in
    which the GPU's warps place keys."""
    seen, out = set(), []
    for key in keys.tolist():
        s = home(key, num_sets)[0]
        if s not in seen:
            seen.add(s)
            out.append(key)
    return np.array(out, np.int64)


def assert_same(gpu: GpuCache, cpu: HostCache, keys, dim: int) -> None:
    got = np.full((len(keys), dim), -7.0, np.float32)
    want = got.copy()
    assert gpu.query(keys, got) == cpu.query(keys, want)
    np.testing.assert_array_equal(got, want)


@needs_gpu
@pytest.mark.parametrize("capacity, dim, key_space, seed", [
    (64, 3, 150, 0), (256, 4, 700, 1), (1000, 2, 3000, 2), (640, 128, 500, 3), (64 * 300, 16, 40000, 4)])
def test_gpu_and_cpu_caches_agree_on_long_random_operation_sequences(capacity, dim, key_space, seed):
    rng = np.random.default_rng(seed)
    gpu, cpu = GpuCache(capacity, dim), HostCache(capacity, dim)
    assert gpu.capacity == cpu.capacity and gpu.num_sets == cpu.num_sets
    pool = np.array([0, -1, INT64_MAX, INT64_MIN] + list(range(-key_space // 2, key_space // 2)), np.int64)
    for step in range(300):
        n = int(rng.integers(1, 400))
        keys = np.unique(rng.choice(pool, n))
        rng.shuffle(keys)
        op = rng.choice(["query", "query", "replace", "replace", "update"])
        if op == "query":
            assert_same(gpu, cpu, keys, dim)
            continue
        if op == "replace":
            keys = one_new_key_per_set(keys, cpu.num_sets)
        rows = rng.standard_normal((len(keys), dim)).astype(np.float32)
        getattr(gpu, op)(keys, rows)
        getattr(cpu, op)(keys, rows)
        if step % 25 == 0:
            assert gpu.dump() == sorted(cpu.dump()), f"step {step}"
    assert gpu.dump() == sorted(cpu.dump())
    for begin, end in ((0, 1), (1, 3), (-2, 2), (cpu.num_sets - 1, cpu.num_sets + 5)):
        assert gpu.dump(begin, end) == sorted(cpu.dump(begin, end))
    assert_same(gpu, cpu, pool, dim)


@needs_gpu
def test_int32_keys_are_sign_extended_so_minus_one_is_cacheable():
    keys = np.array([-1, 0, 1, -(2**31), 2**31 - 1, 7], np.int32)
    rows = np.arange(len(keys) * 4, dtype=np.float32).reshape(-1, 4)
    gpu32, gpu64 = GpuCache(128, 4, np.int32), GpuCache(128, 4, np.int64)
    gpu32.replace(keys, rows)
    gpu64.replace(keys.astype(np.int64), rows)
    for gpu in (gpu32, gpu64):
        out = np.zeros_like(rows)
        assert gpu.query(keys, out) == []
        np.testing.assert_array_equal(out, rows)
    assert gpu32.dump() == gpu64.dump() == sorted(keys.tolist())


@needs_gpu
def test_full_sets_hold_exactly_their_capacity_and_then_evict_like_the_cpu_cache():
    num_sets, dim = 3, 8
    gpu, cpu = GpuCache(num_sets * WAYS, dim), HostCache(num_sets * WAYS, dim)
    by_set = {s: [] for s in range(num_sets)}
    key = 0
    while min(len(v) for v in by_set.values()) < WAYS + 8:
        by_set[home(key, num_sets)[0]].append(key)
        key += 1
    for i in range(WAYS + 8):  # one key per set and batch
        batch = np.array([by_set[s][i] for s in range(num_sets)], np.int64)
        rows = np.full((num_sets, dim), i, np.float32)
        gpu.replace(batch, rows)
        cpu.replace(batch, rows)
        if i % 7 == 0:
            assert_same(gpu, cpu, np.array(by_set[0][: i + 1], np.int64), dim)
    assert gpu.dump() == sorted(cpu.dump()) and len(gpu.dump()) == gpu.capacity


@needs_gpu
def test_duplicate_keys_in_one_batch_leave_whole_rows():
    dim, keys = 64, np.repeat(np.arange(16, dtype=np.int64), 64)
    rows = np.repeat((keys * 1000 + np.tile(np.arange(64), 16)).astype(np.float32)[:, None], dim, axis=1)
    gpu = GpuCache(1024, dim)
    gpu.replace(keys, rows)
    out = np.zeros((16, dim), np.float32)
    assert gpu.query(np.arange(16, dtype=np.int64), out) == []
    assert (out == out[:, :1]).all()
    version = out[:, 0].astype(np.int64) - np.arange(16) * 1000
    assert ((version >= 0) & (version < 64)).all()
    assert gpu.dump() == list(range(16))
