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
    """base/key_hash.h MixKey on the key's 64 bits."""

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
    return (mix * num_sets) >> 64, mix & 1


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
            lib.hps_cache_host_query_positions.argtypes = [vp, vp, i64, i64, vp, ctypes.c_uint64, vp, vp, vp, vp]
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

    def next_stamp(self) -> int:
        """A new batch's stamp (one tick of the LRU clock)."""
        return self.lib().hps_cache_host_next_stamp(self.handle)

    def query_positions(self, keys, values: np.ndarray, begin: int, end: int, stamp: int):
        """QueryPositions of keys[begin:end] into values (len(keys), dim): (missed keys, their
        positions, each position's index into the missed keys, distinct keys of the range)."""
        keys = np.ascontiguousarray(keys, np.int64)
        assert values.dtype == np.float32 and values.flags.c_contiguous and values.shape == (len(keys), self.dim)
        n = max(len(keys), 1)
        miss_keys, positions, key_of = (np.empty(n, np.int64) for _ in range(3))
        counts = np.zeros(3, np.int64)
        self.lib().hps_cache_host_query_positions(self.handle, _ptr(keys), begin, end, _ptr(values), stamp,
                                                  _ptr(miss_keys), _ptr(positions), _ptr(key_of), _ptr(counts))
        return miss_keys[:counts[0]], positions[:counts[1]], key_of[:counts[1]], int(counts[2])

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


# ---------------------------------------------------------------------------------------------
# The GPU lookup pipeline (ops/cuda/gpu_lookup_c_api.h), driven from numpy.

FETCH_FAILED = 10001
INVALID_ARGUMENT = 10002
FETCH_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
                            ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int8))
GUARD_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)  # hps_gpu_insert_guard_fn; GUARD_FN() is NULL


def guard_fn(guard) -> GUARD_FN:
    """A Python callable () -> int as an insert guard (None: a NULL guard, which always allows)."""
    return GUARD_FN() if guard is None else GUARD_FN(lambda ctx: int(guard()))


class LookupCounts(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("keys", "l1_hits", "missed_keys", "inserted", "evicted")]

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name, _ in self._fields_}


class NumpyTiers:
    """The tiers below L1 for the pipeline's fetch callback: a table of (keys, rows); absent keys
    get found = 0 and a row of `default`. Records the keys of every call; `fail` makes the
    callback return that code instead."""

    def __init__(self, keys, rows, default: float = 0.0):
        keys = np.asarray(keys, np.int64)
        order = np.argsort(keys, kind="stable")
        # For a key given twice the last row counts, as in the static table.
        last = np.ones(len(keys), bool)
        if len(keys):
            sorted_keys = keys[order]
            last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
        self.keys = keys[order][last]
        self.rows = np.asarray(rows, np.float32)[order][last]
        self.dim = self.rows.shape[1]
        self.default = np.float32(default)
        self.calls: list[np.ndarray] = []
        self.fail = 0
        self.fn = FETCH_FN(self._fetch)

    def lookup(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found) of keys (int64), the expected answer of every tier below L1."""
        keys = np.asarray(keys, np.int64)
        pos = np.searchsorted(self.keys, keys)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == keys[found]
        rows = np.full((len(keys), self.dim), self.default, np.float32)
        rows[found] = self.rows[pos[found]]
        return rows, found

    def _fetch(self, ctx, keys_ptr, m, rows_ptr, found_ptr) -> int:
        try:
            keys = np.ctypeslib.as_array(keys_ptr, (m,)).copy()
            self.calls.append(keys)
            if self.fail:
                return self.fail
            rows, found = self.lookup(keys)
            np.ctypeslib.as_array(rows_ptr, (m, self.dim))[:] = rows
            np.ctypeslib.as_array(found_ptr, (m,))[:] = found
            return 0
        except Exception:  # an exception cannot cross the C boundary: report a failure
            import traceback
            traceback.print_exc()
            return 99


def device_lib():
    """tf_hps/_tf_hps_gpu_cache.so with the argument types of both C ABIs."""
    lib = GpuCache.lib()
    if not hasattr(lib, "_lookup_types"):
        i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        lib.hps_gpu_lookup_create_dynamic.argtypes = [i64, i64, i32, ctypes.POINTER(vp)]
        lib.hps_gpu_lookup_create_static.argtypes = [vp, i64, vp, i64, i32, ctypes.POINTER(vp)]
        lib.hps_gpu_lookup_destroy.argtypes = [vp]
        lib.hps_gpu_lookup_query.argtypes = [vp, vp, i64, vp, FETCH_FN, vp, GUARD_FN, vp, vp,
                                             ctypes.POINTER(LookupCounts)]
        lib.hps_gpu_lookup_refresh.argtypes = [vp, FETCH_FN, vp, GUARD_FN, vp, ctypes.POINTER(i64)]
        lib.hps_gpu_lookup_query_l1.argtypes = [vp, vp, i64, vp, vp, vp, vp]
        lib.hps_gpu_lookup_update.argtypes = [vp, vp, i64, vp]
        lib.hps_gpu_lookup_size.restype = i64
        lib.hps_gpu_lookup_size.argtypes = [vp]
        lib.hps_gpu_lookup_evicted.restype = i64
        lib.hps_gpu_lookup_evicted.argtypes = [vp]
        lib.hps_gpu_lookup_last_error.restype = ctypes.c_char_p
        lib.hps_gpu_combine_segments.argtypes = [vp, i64, i64, vp, vp, i64, i32, i32, vp, vp, vp]
        lib._lookup_types = True
    return lib


def last_error() -> str:
    return device_lib().hps_gpu_lookup_last_error().decode()


class DeviceArray:
    """Device memory (hps_gpu_malloc) holding a copy of a host array, or room for one."""

    def __init__(self, host: np.ndarray, copy: bool = True):
        self.shape, self.dtype = host.shape, host.dtype
        self.ptr = ctypes.c_void_p()
        GpuCache.check(device_lib().hps_gpu_malloc(max(host.nbytes, 16), ctypes.byref(self.ptr)))
        if copy and host.nbytes:
            GpuCache.check(device_lib().hps_gpu_memcpy(self.ptr, _ptr(host), host.nbytes))

    def get(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            GpuCache.check(device_lib().hps_gpu_memcpy(_ptr(out), self.ptr, out.nbytes))
        return out

    def free(self) -> None:
        if self.ptr:
            device_lib().hps_gpu_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.free()


class LookupError_(RuntimeError):
    def __init__(self, code: int, message: str):
        super().__init__(f"error {code}: {message}")
        self.code, self.message = code, message


class GpuLookup:
    """A pipeline through its C ABI: keys and outputs go through device buffers per call."""

    def __init__(self, handle: ctypes.c_void_p, dim: int, key_dtype):
        self.handle, self.dim, self.key_dtype = handle, dim, np.dtype(key_dtype)

    @classmethod
    def _create(cls, code: int, handle, dim, key_dtype) -> "GpuLookup":
        if code != 0:
            raise LookupError_(code, last_error())
        return cls(handle, dim, key_dtype)

    @classmethod
    def dynamic(cls, capacity_rows: int, dim: int, key_dtype=np.int64) -> "GpuLookup":
        handle = ctypes.c_void_p()
        code = device_lib().hps_gpu_lookup_create_dynamic(capacity_rows, dim, np.dtype(key_dtype).itemsize,
                                                          ctypes.byref(handle))
        return cls._create(code, handle, dim, key_dtype)

    @classmethod
    def static(cls, keys, rows, key_dtype=np.int64) -> "GpuLookup":
        keys = np.ascontiguousarray(keys, np.int64)
        rows = np.ascontiguousarray(rows, np.float32)
        handle = ctypes.c_void_p()
        code = device_lib().hps_gpu_lookup_create_static(_ptr(keys), len(keys), _ptr(rows), rows.shape[1],
                                                         np.dtype(key_dtype).itemsize, ctypes.byref(handle))
        return cls._create(code, handle, rows.shape[1], key_dtype)

    def close(self) -> None:
        if self.handle:
            device_lib().hps_gpu_lookup_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    def query(self, keys, tiers: NumpyTiers, fill: float = -7.0, guard=None) -> tuple[np.ndarray, dict]:
        """(rows (n, dim), counts); raises LookupError_ on failure. guard: see guard_fn."""
        keys = np.ascontiguousarray(keys, self.key_dtype)
        d_keys = DeviceArray(keys)
        d_out = DeviceArray(np.full((len(keys), self.dim), fill, np.float32))
        counts = LookupCounts()
        code = device_lib().hps_gpu_lookup_query(self.handle, d_keys.ptr, len(keys), d_out.ptr, tiers.fn, None,
                                                 guard_fn(guard), None, None, ctypes.byref(counts))
        if code != 0:
            raise LookupError_(code, last_error())
        return d_out.get(), counts.as_dict()

    def query_l1(self, keys) -> tuple[np.ndarray, list[int]]:
        """(rows, sorted missing positions) of L1 alone; missed rows hold -7."""
        keys = np.ascontiguousarray(keys, self.key_dtype)
        d_keys = DeviceArray(keys)
        d_out = DeviceArray(np.full((len(keys), self.dim), -7.0, np.float32))
        d_missing = DeviceArray(np.zeros(len(keys), np.int64), copy=False)
        d_count = DeviceArray(np.zeros(1, np.int64))
        code = device_lib().hps_gpu_lookup_query_l1(self.handle, d_keys.ptr, len(keys), d_out.ptr, d_missing.ptr,
                                                    d_count.ptr, None)
        if code != 0:
            raise LookupError_(code, last_error())
        count = int(d_count.get()[0])
        return d_out.get(), sorted(d_missing.get()[:count].tolist())

    def update(self, keys, rows) -> None:
        keys = np.ascontiguousarray(keys, np.int64)
        rows = np.ascontiguousarray(rows, np.float32)
        code = device_lib().hps_gpu_lookup_update(self.handle, _ptr(keys), len(keys), _ptr(rows))
        if code != 0:
            raise LookupError_(code, last_error())

    def refresh(self, tiers: NumpyTiers, guard=None) -> int:
        """hps_gpu_lookup_refresh through tiers: the rows written; raises LookupError_ on failure."""
        refreshed = ctypes.c_int64(-1)
        code = device_lib().hps_gpu_lookup_refresh(self.handle, tiers.fn, None, guard_fn(guard), None,
                                                   ctypes.byref(refreshed))
        if code != 0:
            raise LookupError_(code, last_error())
        return refreshed.value

    def size(self) -> int:
        return device_lib().hps_gpu_lookup_size(self.handle)

    def evicted(self) -> int:
        return device_lib().hps_gpu_lookup_evicted(self.handle)


def zipf_keys(rng, n: int, num_rows: int, alpha: float = 1.2) -> np.ndarray:
    """n keys in [0, num_rows) with P(rank r) ~ 1 / r^alpha, ranks scattered over the key range."""
    ranks = np.arange(1, num_rows + 1, dtype=np.float64)
    p = ranks ** -alpha
    p /= p.sum()
    perm = np.random.default_rng(12345).permutation(num_rows)
    return perm[rng.choice(num_rows, n, p=p)].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# TfHpsSparseLookup's combine (ops/sparse_combine.h, CombineRows), in numpy float32 arithmetic:
# the reference of the GPU combine (hps_gpu_combine_segments). tests/test_sparse_lookup.py checks
# it against TensorFlow's own segment kernels, bit for bit.

COMBINERS = {"sum": 0, "mean": 1, "sqrtn": 2}
OUT_TYPES = {"float32": 0, "float16": 1, "bfloat16": 2}


def group_by_segment(segment_ids: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """offsets (num_rows + 1) and order (nnz): each output row's key positions, in input order."""
    segment_ids = np.asarray(segment_ids, np.int64)
    offsets = np.zeros(num_rows + 1, np.int64)
    np.add.at(offsets, segment_ids + 1, 1)
    offsets = np.cumsum(offsets).astype(np.int64)
    order = np.argsort(segment_ids, kind="stable").astype(np.int64)
    return offsets, order


def _flushed(x):
    """x with subnormals as zeros of their sign: TF's CPU kernels run with FTZ and DAZ set."""
    x = np.asarray(x, np.float32)
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), x).astype(np.float32)


def _add(a, b):
    return _flushed(_flushed(a) + _flushed(b))


def combine_rows_model(rows: np.ndarray, offsets: np.ndarray, order: np.ndarray, combiner: str) -> np.ndarray:
    """float32 (num_rows, dim): row r combines rows[order[offsets[r]:offsets[r+1]]] in TF's order, with
    denormals flushed in every operation (a single key's row is copied, unflushed, as TF copies it)."""
    rows = np.asarray(rows, np.float32)
    num_rows, dim = len(offsets) - 1, rows.shape[1]
    out = np.zeros((num_rows, dim), np.float32)
    for r in range(num_rows):
        x = rows[order[offsets[r]:offsets[r + 1]]]
        n = len(x)
        if n == 0:
            continue
        if n == 1:
            out[r] = x[0]
            continue
        first_scale, divisor = np.float32(1), None
        if combiner != "sum":
            m = np.float32(n) if combiner == "mean" else np.float32(np.sqrt(np.float64(n)))
            if n < 10:
                first_scale = np.float32(1) / m
            else:
                divisor = m
        first = {0: 8, 1: 9}.get(n % 8, n % 8)
        acc = x[0].copy()
        for k in range(1, first):
            acc = _add(acc, x[k])
        if first_scale != np.float32(1):
            acc = _flushed(_flushed(acc) * first_scale)
        for k in range(first, n, 8):
            group = _add(x[k], x[k + 1])
            for j in range(2, 8):
                group = _add(group, x[k + j])
            acc = _add(acc, group)
        if divisor is not None:
            acc = _flushed(_flushed(acc) / divisor)
        out[r] = acc
    return out


def round_to(values: np.ndarray, out_type: str) -> np.ndarray:
    """float32 -> the bits of out_type (uint16 for the 16-bit types), rounded to nearest even."""
    if out_type == "float32":
        return values.view(np.uint32)
    if out_type == "float16":
        return values.astype(np.float16).view(np.uint16)
    bits = values.view(np.uint32).astype(np.uint64)  # bfloat16: the top half, rounded (no NaNs here)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
