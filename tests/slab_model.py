"""The slab-set embedding cache in plain Python, and ctypes bindings of its two executions.

`SlabSetModel` restates core/slab_set.h line by line: sets of 2 slabs x 32 ways, stamp 0 = empty,
MixKey picks the set and the first slab, probes stop at a slab with an empty way, Replace takes
the key's own way, else the first empty way in probe order, else the way with the smallest
(stamp, probe position). Each query and each replace call is one tick of the LRU clock.

`HostCache` drives the CPU cache (build/libhps_cache_host.so, tests/cache_host_shim.cc) and
`GpuCache` the GPU cache (tf_hps/_tf_hps_gpu_cache.so, ops/cuda/gpu_cache_c_api.h).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_LIB = os.path.join(ROOT, "build", "libhps_cache_host.so")
GPU_LIB = os.path.join(ROOT, "tf_hps", "_tf_hps_gpu_cache.so")

LANES = 32
WAYS = 64
MASK64 = (1 << 64) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def mix_key(key: int) -> int:
    """core/key_hash.h MixKey on the key's 64 bits."""

    def rotr(x: int, r: int) -> int:
        return ((x >> r) | (x << (64 - r))) & MASK64

    v = key & MASK64
    v ^= rotr(v, 25) ^ rotr(v, 50)
    v = (v * 0xA24BAED4963EE407) & MASK64
    v ^= rotr(v, 24) ^ rotr(v, 49)
    v = (v * 0x9FB21C651E98DF25) & MASK64
    return v ^ (v >> 28)


def home(key: int, num_sets: int) -> tuple[int, int]:
    """(set, first slab) of a key."""
    mix = mix_key(key)
    return (mix >> 16) % num_sets, mix & 1


class SlabSetModel:
    """Reference model of the cache; rows are kept per (set, way)."""

    def __init__(self, capacity_rows: int, dim: int):
        self.dim = dim
        self.num_sets = max(1, -(-capacity_rows // WAYS))
        self.keys = [[0] * WAYS for _ in range(self.num_sets)]
        self.stamps = [[0] * WAYS for _ in range(self.num_sets)]
        self.rows: dict[tuple[int, int], np.ndarray] = {}
        self.clock = 0

    @property
    def capacity(self) -> int:
        return self.num_sets * WAYS

    def find_way(self, s: int, first: int, key: int) -> int:
        keys, stamps = self.keys[s], self.stamps[s]
        for step in range(2):
            base = (first ^ step) * LANES
            for way in range(base, base + LANES):
                if stamps[way] and keys[way] == key:
                    return way
            if 0 in stamps[base:base + LANES]:
                return -1
        return -1

    def choose_way(self, s: int, first: int, key: int) -> tuple[int, bool]:
        keys, stamps = self.keys[s], self.stamps[s]
        for step in range(2):
            base = (first ^ step) * LANES
            for way in range(base, base + LANES):
                if stamps[way] and keys[way] == key:
                    return way, True
            for way in range(base, base + LANES):
                if stamps[way] == 0:
                    return way, False
        probe = [first * LANES + lane for lane in range(LANES)] + [(first ^ 1) * LANES + lane for lane in range(LANES)]
        order = min(range(WAYS), key=lambda q: (stamps[probe[q]], q))
        return probe[order], False

    def query(self, keys, values: np.ndarray) -> list[int]:
        """Fills values[i] for hits (others untouched); returns the missing positions."""
        self.clock += 1
        missing = []
        for i, key in enumerate(int(k) for k in keys):
            s, first = home(key, self.num_sets)
            way = self.find_way(s, first, key)
            if way < 0:
                missing.append(i)
                continue
            self.stamps[s][way] = max(self.stamps[s][way], self.clock)
            values[i] = self.rows[(s, way)]
        return missing

    def replace(self, keys, values: np.ndarray) -> None:
        self.clock += 1
        for i, key in enumerate(int(k) for k in keys):
            s, first = home(key, self.num_sets)
            way, cached = self.choose_way(s, first, key)
            if cached:
                self.stamps[s][way] = max(self.stamps[s][way], self.clock)
            else:
                self.keys[s][way] = key
                self.stamps[s][way] = self.clock
            self.rows[(s, way)] = np.array(values[i], np.float32)

    def update(self, keys, values: np.ndarray) -> None:
        for i, key in enumerate(int(k) for k in keys):
            s, first = home(key, self.num_sets)
            way = self.find_way(s, first, key)
            if way >= 0:
                self.rows[(s, way)] = np.array(values[i], np.float32)

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> list[int]:
        set_end = self.num_sets if set_end is None else min(set_end, self.num_sets)
        return [self.keys[s][w] for s in range(max(set_begin, 0), set_end) for w in range(WAYS) if self.stamps[s][w]]

    def size(self) -> int:
        return sum(1 for stamps in self.stamps for st in stamps if st)


def _ptr(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


class HostCache:
    """The CPU cache (core/embedding_cache.cc) through the test shim."""

    _lib = None

    @classmethod
    def lib(cls):
        if cls._lib is None:
            if not os.path.isfile(HOST_LIB):
                raise FileNotFoundError(f"{HOST_LIB} is missing: run `make gpu` (or `make test`)")
            lib = ctypes.CDLL(HOST_LIB)
            i64, vp = ctypes.c_int64, ctypes.c_void_p
            lib.hps_cache_host_create.restype = vp
            lib.hps_cache_host_create.argtypes = [i64, i64]
            lib.hps_cache_host_destroy.argtypes = [vp]
            for name in ("capacity", "num_sets", "size"):
                getattr(lib, f"hps_cache_host_{name}").restype = i64
                getattr(lib, f"hps_cache_host_{name}").argtypes = [vp]
            lib.hps_cache_host_query.restype = i64
            lib.hps_cache_host_query.argtypes = [vp, vp, i64, vp, vp]
            lib.hps_cache_host_replace.argtypes = [vp, vp, i64, vp]
            lib.hps_cache_host_next_stamp.restype = ctypes.c_uint64
            lib.hps_cache_host_next_stamp.argtypes = [vp]
            lib.hps_cache_host_query_at.restype = i64
            lib.hps_cache_host_query_at.argtypes = [vp, vp, i64, vp, vp, ctypes.c_uint64]
            lib.hps_cache_host_replace_at.argtypes = [vp, vp, i64, vp, ctypes.c_uint64]
            lib.hps_cache_host_update.argtypes = [vp, vp, i64, vp]
            lib.hps_cache_host_dump.restype = i64
            lib.hps_cache_host_dump.argtypes = [vp, i64, i64, vp]
            lib.hps_cache_host_home.argtypes = [i64, i64, ctypes.POINTER(i64), ctypes.POINTER(ctypes.c_int32)]
            cls._lib = lib
        return cls._lib

    def __init__(self, capacity_rows: int, dim: int):
        self.dim = dim
        self.handle = ctypes.c_void_p(self.lib().hps_cache_host_create(capacity_rows, dim))

    def close(self) -> None:
        if self.handle:
            self.lib().hps_cache_host_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    @property
    def capacity(self) -> int:
        return self.lib().hps_cache_host_capacity(self.handle)

    @property
    def num_sets(self) -> int:
        return self.lib().hps_cache_host_num_sets(self.handle)

    def size(self) -> int:
        return self.lib().hps_cache_host_size(self.handle)

    def query(self, keys, values: np.ndarray) -> list[int]:
        keys = np.ascontiguousarray(keys, np.int64)
        assert values.dtype == np.float32 and values.flags.c_contiguous and values.shape == (len(keys), self.dim)
        missing = np.empty(len(keys), np.int64)
        m = self.lib().hps_cache_host_query(self.handle, _ptr(keys), len(keys), _ptr(values), _ptr(missing))
        return missing[:m].tolist()

    def replace(self, keys, values) -> None:
        keys = np.ascontiguousarray(keys, np.int64)
        values = np.ascontiguousarray(values, np.float32)
        self.lib().hps_cache_host_replace(self.handle, _ptr(keys), len(keys), _ptr(values))

    def update(self, keys, values) -> None:
        keys = np.ascontiguousarray(keys, np.int64)
        values = np.ascontiguousarray(values, np.float32)
        self.lib().hps_cache_host_update(self.handle, _ptr(keys), len(keys), _ptr(values))

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> list[int]:
        set_end = self.num_sets if set_end is None else set_end
        out = np.empty(max(0, set_end - set_begin) * WAYS + 1, np.int64)
        n = self.lib().hps_cache_host_dump(self.handle, set_begin, set_end, _ptr(out))
        return out[:n].tolist()

    @classmethod
    def home(cls, key: int, num_sets: int) -> tuple[int, int]:
        s, first = ctypes.c_int64(), ctypes.c_int32()
        cls.lib().hps_cache_host_home(key, num_sets, ctypes.byref(s), ctypes.byref(first))
        return s.value, first.value


class GpuCache:
    """The GPU cache through its C ABI; arrays are copied through device buffers per call."""

    _lib = None

    @classmethod
    def lib(cls):
        if cls._lib is None:
            lib = ctypes.CDLL(GPU_LIB)
            i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
            lib.hps_gpu_cache_device_count.restype = i32
            lib.hps_gpu_error_string.restype = ctypes.c_char_p
            lib.hps_gpu_error_string.argtypes = [i32]
            lib.hps_gpu_cache_create.argtypes = [i64, i64, i32, ctypes.POINTER(vp)]
            lib.hps_gpu_cache_destroy.argtypes = [vp]
            lib.hps_gpu_cache_capacity.restype = i64
            lib.hps_gpu_cache_capacity.argtypes = [vp]
            lib.hps_gpu_cache_num_sets.restype = i64
            lib.hps_gpu_cache_num_sets.argtypes = [vp]
            lib.hps_gpu_cache_query.argtypes = [vp, vp, i64, vp, vp, vp, vp]
            lib.hps_gpu_cache_replace.argtypes = [vp, vp, i64, vp, vp]
            lib.hps_gpu_cache_update.argtypes = [vp, vp, i64, vp, vp]
            lib.hps_gpu_cache_dump.argtypes = [vp, i64, i64, vp, vp, vp]
            lib.hps_gpu_malloc.argtypes = [ctypes.c_size_t, ctypes.POINTER(vp)]
            lib.hps_gpu_free.argtypes = [vp]
            lib.hps_gpu_memcpy.argtypes = [vp, vp, ctypes.c_size_t]
            lib.hps_gpu_device_name.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
            cls._lib = lib
        return cls._lib

    @classmethod
    def check(cls, code: int) -> None:
        if code != 0:
            raise RuntimeError(f"CUDA error {code}: {cls.lib().hps_gpu_error_string(code).decode()}")

    def __init__(self, capacity_rows: int, dim: int, key_dtype=np.int64):
        self.dim = dim
        self.key_dtype = np.dtype(key_dtype)
        handle = ctypes.c_void_p()
        self.check(self.lib().hps_gpu_cache_create(capacity_rows, dim, self.key_dtype.itemsize, ctypes.byref(handle)))
        self.handle = handle

    def close(self) -> None:
        if self.handle:
            self.lib().hps_gpu_cache_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    @property
    def capacity(self) -> int:
        return self.lib().hps_gpu_cache_capacity(self.handle)

    @property
    def num_sets(self) -> int:
        return self.lib().hps_gpu_cache_num_sets(self.handle)

    def device(self, array: np.ndarray) -> ctypes.c_void_p:
        """A device copy of a host array (free it with release())."""
        ptr = ctypes.c_void_p()
        self.check(self.lib().hps_gpu_malloc(max(array.nbytes, 8), ctypes.byref(ptr)))
        if array.nbytes:
            self.check(self.lib().hps_gpu_memcpy(ptr, _ptr(array), array.nbytes))
        return ptr

    def host(self, ptr: ctypes.c_void_p, out: np.ndarray) -> np.ndarray:
        if out.nbytes:
            self.check(self.lib().hps_gpu_memcpy(_ptr(out), ptr, out.nbytes))
        return out

    def release(self, *ptrs) -> None:
        for ptr in ptrs:
            self.check(self.lib().hps_gpu_free(ptr))

    def query(self, keys, values: np.ndarray) -> list[int]:
        """Like HostCache.query; the missing positions come back sorted."""
        keys = np.ascontiguousarray(keys, self.key_dtype)
        d_keys, d_values = self.device(keys), self.device(values)
        d_missing, d_count = self.device(np.zeros(len(keys), np.int64)), self.device(np.zeros(1, np.int64))
        self.check(self.lib().hps_gpu_cache_query(self.handle, d_keys, len(keys), d_values, d_missing, d_count, None))
        self.host(d_values, values)
        count = int(self.host(d_count, np.zeros(1, np.int64))[0])
        missing = self.host(d_missing, np.zeros(len(keys), np.int64))[:count]
        self.release(d_keys, d_values, d_missing, d_count)
        return sorted(missing.tolist())

    def replace(self, keys, values) -> None:
        keys = np.ascontiguousarray(keys, self.key_dtype)
        d_keys, d_values = self.device(keys), self.device(np.ascontiguousarray(values, np.float32))
        self.check(self.lib().hps_gpu_cache_replace(self.handle, d_keys, len(keys), d_values, None))
        self.release(d_keys, d_values)

    def update(self, keys, values) -> None:
        keys = np.ascontiguousarray(keys, self.key_dtype)
        d_keys, d_values = self.device(keys), self.device(np.ascontiguousarray(values, np.float32))
        self.check(self.lib().hps_gpu_cache_update(self.handle, d_keys, len(keys), d_values, None))
        self.release(d_keys, d_values)

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> list[int]:
        """Keys of the set range, sorted (the GPU's order is unspecified)."""
        set_end = self.num_sets if set_end is None else set_end
        room = max(0, min(set_end, self.num_sets) - max(set_begin, 0)) * WAYS
        d_out, d_count = self.device(np.zeros(room, self.key_dtype)), self.device(np.zeros(1, np.int64))
        self.check(self.lib().hps_gpu_cache_dump(self.handle, set_begin, set_end, d_out, d_count, None))
        count = int(self.host(d_count, np.zeros(1, np.int64))[0])
        keys = self.host(d_out, np.zeros(room, self.key_dtype))[:count]
        self.release(d_out, d_count)
        return sorted(int(k) for k in keys)
