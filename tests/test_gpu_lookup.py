"""The GPU lookup pipeline (ops/cuda/gpu_lookup_c_api.h): dedup, L1 (dynamic cache or static
table), the fetch callback, insertion and scatter, checked against numpy.

The library tests run everywhere (CI has no GPU); the behaviour tests need a CUDA device. The
fetch callback is a ctypes function over a numpy table (slab_model.NumpyTiers). Device memory
comes from hps_gpu_malloc, so no CUDA binding (CuPy) is needed.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading

import numpy as np
import pytest

from slab_model import (COMBINERS, FETCH_FAILED, FETCH_FN, GPU_LIB, GUARD_FN, INT64_MAX, INT64_MIN, INVALID_ARGUMENT,
                        OUT_TYPES, DeviceArray, GpuLookup, LookupCounts, LookupError_, NumpyTiers, combine_rows_model,
                        device_lib, group_by_segment, last_error, round_to, zipf_keys)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def device_count() -> int:
    return device_lib().hps_gpu_cache_device_count()


needs_gpu = pytest.mark.skipif(os.path.isfile(GPU_LIB) and device_count() == 0, reason="no CUDA device")
needs_two_gpus = pytest.mark.skipif(os.path.isfile(GPU_LIB) and device_count() < 2, reason="fewer than 2 CUDA devices")


def expected(tiers: NumpyTiers, keys) -> np.ndarray:
    return tiers.lookup(np.asarray(keys).astype(np.int64))[0]


def random_tiers(rng, keys, dim: int, default: float = 0.5) -> NumpyTiers:
    return NumpyTiers(keys, rng.standard_normal((len(keys), dim)).astype(np.float32), default)


# ---------------------------------------------------------------------------------------------
# Everywhere.

def test_without_a_device_create_fails_with_an_error_code_and_a_message():
    if device_count() > 0:
        pytest.skip("a CUDA device is present")
    lib = device_lib()
    handle = ctypes.c_void_p(1)
    code = lib.hps_gpu_lookup_create_dynamic(1024, 8, 8, ctypes.byref(handle))
    assert code not in (0, INVALID_ARGUMENT) and not handle.value
    assert last_error().startswith("hps_gpu_lookup_create_dynamic: ") and "cuda" in last_error().lower()
    keys, rows = np.arange(4, dtype=np.int64), np.zeros((4, 8), np.float32)
    handle = ctypes.c_void_p(1)
    code = lib.hps_gpu_lookup_create_static(keys.ctypes.data, 4, rows.ctypes.data, 8, 8, ctypes.byref(handle))
    assert code not in (0, INVALID_ARGUMENT) and not handle.value
    assert last_error().startswith("hps_gpu_lookup_create_static: ")


@pytest.mark.parametrize("args, message", [
    ((-1, 8, 8), "capacity_rows must be >= 0, got -1"),
    ((64, 0, 8), "dim must be at least 1, got 0"),
    ((64, 8, 3), "key_bytes must be 4 (int32 keys) or 8 (int64 keys), got 3"),
])
def test_create_dynamic_refuses_invalid_arguments_before_touching_the_device(args, message):
    handle = ctypes.c_void_p(1)
    assert device_lib().hps_gpu_lookup_create_dynamic(*args, ctypes.byref(handle)) == INVALID_ARGUMENT
    assert not handle.value
    assert last_error() == f"hps_gpu_lookup_create_dynamic: {message}"


def test_create_static_refuses_invalid_arguments_before_touching_the_device():
    lib = device_lib()
    keys, rows = np.arange(4, dtype=np.int64), np.zeros((4, 2), np.float32)
    cases = [((keys.ctypes.data, -1, rows.ctypes.data, 2, 8), "n must be >= 0, got -1"),
             ((None, 4, rows.ctypes.data, 2, 8), "keys is NULL with n = 4"),
             ((keys.ctypes.data, 4, None, 2, 8), "rows is NULL with n = 4"),
             ((keys.ctypes.data, 4, rows.ctypes.data, 0, 8), "dim must be at least 1, got 0"),
             ((keys.ctypes.data, 4, rows.ctypes.data, 2, 2), "key_bytes must be 4 (int32 keys) or 8 (int64 keys)")]
    for args, message in cases:
        handle = ctypes.c_void_p(1)
        assert lib.hps_gpu_lookup_create_static(*args, ctypes.byref(handle)) == INVALID_ARGUMENT
        assert not handle.value
        assert last_error().startswith(f"hps_gpu_lookup_create_static: {message}"), last_error()
    assert lib.hps_gpu_lookup_create_dynamic(64, 8, 8, None) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_create_dynamic: out is NULL"


def test_calls_on_a_null_pipeline_fail_cleanly():
    lib = device_lib()
    counts = LookupCounts(keys=5)
    fetch = FETCH_FN(lambda *args: 0)
    assert lib.hps_gpu_lookup_query(None, None, 0, None, fetch, None, GUARD_FN(), None, None,
                                    ctypes.byref(counts)) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_query: lookup is NULL" and counts.keys == 0
    assert lib.hps_gpu_lookup_update(None, None, 0, None) == INVALID_ARGUMENT
    assert lib.hps_gpu_lookup_size(None) == -1 and lib.hps_gpu_lookup_evicted(None) == -1
    assert lib.hps_gpu_lookup_query_l1(None, None, 0, None, None, None, None) == INVALID_ARGUMENT
    lib.hps_gpu_lookup_destroy(None)


def test_the_guard_and_refresh_of_the_c_abi_refuse_a_null_pipeline_without_touching_a_device():
    lib = device_lib()
    assert hasattr(lib, "hps_gpu_lookup_refresh")
    called = []
    fetch = FETCH_FN(lambda *args: called.append("fetch") or 0)
    guard = GUARD_FN(lambda ctx: called.append("guard") or 1)
    refreshed = ctypes.c_int64(5)
    assert lib.hps_gpu_lookup_refresh(None, fetch, None, guard, None, ctypes.byref(refreshed)) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_refresh: lookup is NULL" and refreshed.value == 0
    assert lib.hps_gpu_lookup_refresh(None, FETCH_FN(), None, GUARD_FN(), None, None) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_refresh: lookup is NULL"
    counts = LookupCounts(inserted=3)
    assert lib.hps_gpu_lookup_query(None, None, 4, None, fetch, None, guard, None, None,
                                    ctypes.byref(counts)) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_query: lookup is NULL" and counts.inserted == 0
    assert called == []  # neither callback is called for a refused call


def test_last_error_is_per_thread():
    lib = device_lib()
    assert lib.hps_gpu_lookup_create_dynamic(64, 0, 8, ctypes.byref(ctypes.c_void_p())) == INVALID_ARGUMENT
    seen = []
    thread = threading.Thread(target=lambda: seen.append(last_error()))
    thread.start()
    thread.join()
    assert seen == [""] and last_error().startswith("hps_gpu_lookup_create_dynamic: dim")


# ---------------------------------------------------------------------------------------------
# On a GPU: the static table.

@needs_gpu
def test_static_table_answers_int64_keys_at_the_extremes_and_sends_only_distinct_misses_to_the_callback():
    rng = np.random.default_rng(0)
    dim = 12
    held = np.concatenate([[0, -1, 1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1],
                           rng.integers(INT64_MIN, INT64_MAX, 3000, dtype=np.int64)]).astype(np.int64)
    held = np.unique(held)
    rows = rng.standard_normal((len(held), dim)).astype(np.float32)
    lookup = GpuLookup.static(held, rows)
    assert lookup.size() == len(held)
    absent = np.setdiff1d(rng.integers(-5000, 5000, 400, dtype=np.int64), held)
    tiers = NumpyTiers(np.concatenate([held, absent[:200]]),  # half the absent keys are held by a lower tier
                       np.concatenate([rows + 100, rng.standard_normal((200, dim)).astype(np.float32)]), 0.25)
    batch = rng.choice(np.concatenate([held, absent]), 5000)
    batch[:6] = [INT64_MAX, INT64_MIN, -1, INT64_MAX, absent[0], absent[0]]
    out, counts = lookup.query(batch, tiers)
    # L1 rows for held keys (not the +100 rows of the lower tier), the lower tiers for the rest.
    want = expected(tiers, batch)
    in_l1 = np.isin(batch, held)
    want[in_l1] = rows[np.searchsorted(held, batch[in_l1])]
    np.testing.assert_array_equal(out, want)
    assert len(tiers.calls) == 1
    fetched = tiers.calls[0]
    assert len(np.unique(fetched)) == len(fetched)
    assert sorted(fetched.tolist()) == sorted(set(batch[~in_l1].tolist()))
    assert counts == {"keys": 5000, "l1_hits": int(in_l1.sum()), "missed_keys": len(fetched), "inserted": 0,
                      "evicted": 0}
    # Static: misses are never inserted, so they go to the callback again.
    out2, counts2 = lookup.query(batch, tiers)
    np.testing.assert_array_equal(out2, want)
    assert counts2 == counts and sorted(tiers.calls[1].tolist()) == sorted(fetched.tolist())
    assert lookup.size() == len(held)


@needs_gpu
def test_static_table_with_int32_keys_sign_extends_so_minus_one_is_an_ordinary_key():
    rng = np.random.default_rng(1)
    held = np.array([-1, 0, 1, INT32_MIN, INT32_MAX, 7, -7, 2**40], np.int64)  # 2**40: never asked for
    rows = rng.standard_normal((len(held), 4)).astype(np.float32)
    lookup = GpuLookup.static(held, rows, np.int32)
    batch = np.array([-1, INT32_MIN, INT32_MAX, 5, -1, 0, 5, -2, 7], np.int32)
    tiers = NumpyTiers([5], [[9, 9, 9, 9]], -3.0)
    out, counts = lookup.query(batch, tiers)
    want = np.array([rows[0], rows[3], rows[4], [9] * 4, rows[0], rows[1], [9] * 4, [-3] * 4, rows[5]], np.float32)
    np.testing.assert_array_equal(out, want)
    assert sorted(tiers.calls[0].tolist()) == [-2, 5]
    assert counts == {"keys": 9, "l1_hits": 6, "missed_keys": 2, "inserted": 0, "evicted": 0}
    l1, missing = lookup.query_l1(batch)
    assert missing == [3, 6, 7]
    np.testing.assert_array_equal(np.delete(l1, missing, axis=0), np.delete(want, missing, axis=0))


@needs_gpu
@pytest.mark.parametrize("dim", [1, 3, 8, 128, 131])
def test_static_table_query_l1_matches_numpy_with_duplicates_and_the_last_row_of_a_repeated_key_wins(dim):
    rng = np.random.default_rng(dim)
    keys = rng.integers(-10**6, 10**6, 20000, dtype=np.int64)
    keys[:50] = keys[50:100]  # repeated keys in the table: the later row counts
    rows = rng.standard_normal((len(keys), dim)).astype(np.float32)
    lookup = GpuLookup.static(keys, rows)
    tiers = NumpyTiers(keys, rows)  # keeps the last row of a repeated key
    assert lookup.size() == len(tiers.keys)
    batch = np.concatenate([rng.choice(keys, 30000), rng.integers(-10**6, 10**6, 3000)])
    out, missing = lookup.query_l1(batch)
    want, found = tiers.lookup(batch)
    assert missing == np.flatnonzero(~found).tolist()
    np.testing.assert_array_equal(out[found], want[found])
    assert (out[~found] == -7).all()


@needs_gpu
def test_static_table_update_overwrites_held_rows_and_ignores_others():
    rng = np.random.default_rng(2)
    keys = np.arange(-500, 500, dtype=np.int64)
    rows = rng.standard_normal((1000, 8)).astype(np.float32)
    lookup = GpuLookup.static(keys, rows)
    new_keys = np.array([-500, 0, 499, 10**9, -10**9], np.int64)
    new_rows = np.arange(40, dtype=np.float32).reshape(5, 8)
    lookup.update(new_keys, new_rows)
    lookup.update(new_keys[:0], new_rows[:0])
    assert lookup.size() == 1000
    out, missing = lookup.query_l1(np.array([-500, 0, 499, 1, 10**9], np.int64))
    assert missing == [4]
    np.testing.assert_array_equal(out[:3], new_rows[:3])
    np.testing.assert_array_equal(out[3], rows[501])


@needs_gpu
def test_an_empty_static_table_sends_every_distinct_key_to_the_callback():
    rng = np.random.default_rng(3)
    lookup = GpuLookup.static(np.zeros(0, np.int64), np.zeros((0, 16), np.float32))
    assert lookup.size() == 0
    tiers = random_tiers(rng, np.arange(1000), 16)
    batch = rng.integers(-100, 1100, 7000)
    out, counts = lookup.query(batch, tiers)
    np.testing.assert_array_equal(out, expected(tiers, batch))
    assert sorted(tiers.calls[0].tolist()) == sorted(set(batch.tolist()))
    assert counts["l1_hits"] == 0 and counts["missed_keys"] == len(set(batch.tolist()))


# ---------------------------------------------------------------------------------------------
# On a GPU: the dynamic cache.

def check_counts(counts: dict, batch: np.ndarray, call: np.ndarray | None, tiers: NumpyTiers,
                 static: bool = False) -> None:
    """The counters of one query against what the callback was asked."""
    fetched = np.zeros(0, np.int64) if call is None else call
    assert len(np.unique(fetched)) == len(fetched), "the callback got a key twice"
    assert set(fetched.tolist()) <= set(batch.astype(np.int64).tolist())
    missed_positions = int(np.isin(batch.astype(np.int64), fetched).sum())
    assert counts["keys"] == len(batch)
    assert counts["l1_hits"] + missed_positions == len(batch)
    assert counts["missed_keys"] == len(fetched)
    assert counts["inserted"] == (0 if static else int(tiers.lookup(fetched)[1].sum()))


@needs_gpu
@pytest.mark.parametrize("key_dtype, dim", [(np.int64, 16), (np.int32, 5), (np.int64, 128)])
def test_dynamic_pipeline_is_exact_under_heavy_eviction(key_dtype, dim):
    rng = np.random.default_rng(4)
    num_rows = 64 * 400
    table_keys = np.arange(num_rows, dtype=np.int64) - num_rows // 2  # negative keys, -1 included
    tiers = random_tiers(rng, table_keys, dim, default=-2.5)
    lookup = GpuLookup.dynamic(num_rows // 100, dim, key_dtype)  # 1 % of the table: 4 sets
    inserted = evicted_reported = 0
    for step in range(60):
        n = int(rng.choice([1, 7, 100, 2000, 20000]))
        batch = zipf_keys(rng, n, num_rows + 500) - num_rows // 2  # a few keys no tier holds
        calls_before = len(tiers.calls)
        out, counts = lookup.query(batch.astype(key_dtype), tiers)
        np.testing.assert_array_equal(out, expected(tiers, batch), err_msg=f"step {step}")
        assert len(tiers.calls) - calls_before <= 1
        call = tiers.calls[-1] if len(tiers.calls) > calls_before else None
        assert (call is None) == (counts["missed_keys"] == 0)
        check_counts(counts, batch, call, tiers)
        inserted += counts["inserted"]
        evicted_reported += counts["evicted"]
        assert 0 <= lookup.size() <= 64 * 4
    evicted = lookup.evicted()
    assert evicted > 0 and evicted_reported <= evicted
    assert inserted - evicted == lookup.size()  # one thread: every insertion took a new key
    _, counts = lookup.query(np.zeros(0, key_dtype), tiers)
    assert counts == {"keys": 0, "l1_hits": 0, "missed_keys": 0, "inserted": 0, "evicted": 0}


@needs_gpu
def test_dynamic_pipeline_answers_a_repeated_batch_from_l1_without_a_callback():
    rng = np.random.default_rng(5)
    tiers = random_tiers(rng, np.array([0, -1, INT64_MAX, INT64_MIN] + list(range(1, 3000))), 32)
    lookup = GpuLookup.dynamic(64 * 1000, 32)
    batch = rng.choice(np.array([0, -1, INT64_MAX, INT64_MIN, 10**12] + list(range(1, 3000))), 50000)
    out, counts = lookup.query(batch, tiers)
    np.testing.assert_array_equal(out, expected(tiers, batch))
    distinct = set(batch.tolist())
    assert counts["missed_keys"] == len(distinct) and counts["l1_hits"] == 0
    assert counts["inserted"] == len(distinct) - 1  # 10**12 is held by no tier: not cached
    assert lookup.size() == len(distinct) - 1
    calls = len(tiers.calls)
    keep = batch != 10**12
    out, counts = lookup.query(batch[keep], tiers)
    assert len(tiers.calls) == calls  # all hits: no callback
    np.testing.assert_array_equal(out, expected(tiers, batch[keep]))
    assert counts == {"keys": int(keep.sum()), "l1_hits": int(keep.sum()), "missed_keys": 0, "inserted": 0,
                      "evicted": 0}
    out, counts = lookup.query(batch, tiers)  # the default is asked for again, every time
    assert tiers.calls[-1].tolist() == [10**12] and counts["missed_keys"] == 1 and counts["inserted"] == 0
    np.testing.assert_array_equal(out, expected(tiers, batch))


@needs_gpu
def test_dynamic_update_overwrites_cached_rows_only():
    rng = np.random.default_rng(6)
    tiers = random_tiers(rng, np.arange(100), 8)
    lookup = GpuLookup.dynamic(1024, 8, np.int32)
    lookup.query(np.arange(50, dtype=np.int32), tiers)
    new_rows = np.full((4, 8), 42.0, np.float32)
    lookup.update(np.array([3, 60, -1, 2**40], np.int64), new_rows)  # 60, -1 not cached; 2**40 out of range
    assert lookup.size() == 50
    out, counts = lookup.query(np.array([3, 4, 60], np.int32), tiers)
    np.testing.assert_array_equal(out[0], new_rows[0])
    np.testing.assert_array_equal(out[1:], expected(tiers, [4, 60]))
    assert counts["missed_keys"] == 1 and tiers.calls[-1].tolist() == [60]


@needs_gpu
def test_a_failing_callback_fails_the_query_with_its_code_and_the_pipeline_recovers():
    rng = np.random.default_rng(7)
    tiers = random_tiers(rng, np.arange(1000), 8)
    pipelines = [(GpuLookup.dynamic(640, 8), 0), (GpuLookup.static(np.arange(10), np.zeros((10, 8), np.float32)), 10)]
    for lookup, static_rows in pipelines:
        tiers.fail = 3
        with pytest.raises(LookupError_) as info:
            lookup.query(np.arange(100), tiers)
        assert info.value.code == FETCH_FAILED
        assert "fetch callback failed (returned 3)" in info.value.message
        tiers.fail = 0
        batch = rng.integers(0, 1200, 5000)
        out, _ = lookup.query(batch, tiers)
        want = expected(tiers, batch)
        want[batch < static_rows] = 0  # the static table's own rows are zeros
        np.testing.assert_array_equal(out, want)


@needs_gpu
def test_invalid_query_arguments_are_refused_with_a_message():
    lookup = GpuLookup.dynamic(640, 8)
    lib = device_lib()
    tiers = NumpyTiers([1], [[0] * 8])
    keys = DeviceArray(np.arange(4, dtype=np.int64))
    out = DeviceArray(np.zeros((4, 8), np.float32))
    cases = [((keys.ptr, -1, out.ptr, tiers.fn), "n must be >= 0, got -1"),
             ((None, 4, out.ptr, tiers.fn), "d_keys is NULL with n = 4"),
             ((keys.ptr, 4, None, tiers.fn), "d_out is NULL with n = 4"),
             ((keys.ptr, 4, out.ptr, FETCH_FN()), "fetch is NULL: misses need a callback"),
             ((keys.ptr, 2**31, out.ptr, tiers.fn), "at most 2147483647 keys per call, got 2147483648")]
    for (k, n, o, fn), message in cases:
        assert lib.hps_gpu_lookup_query(lookup.handle, k, n, o, fn, None, GUARD_FN(), None, None,
                                        None) == INVALID_ARGUMENT
        assert last_error() == f"hps_gpu_lookup_query: {message}"
    assert lib.hps_gpu_lookup_update(lookup.handle, None, 3, None) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_update: keys is NULL with m = 3"
    refreshed = ctypes.c_int64(-1)
    assert lib.hps_gpu_lookup_refresh(lookup.handle, FETCH_FN(), None, GUARD_FN(), None,
                                      ctypes.byref(refreshed)) == INVALID_ARGUMENT
    assert last_error() == "hps_gpu_lookup_refresh: fetch is NULL: a refresh reads rows through it"
    assert refreshed.value == 0
    assert tiers.calls == [] and lookup.size() == 0
    with pytest.raises(LookupError_) as info:
        GpuLookup.static([1, 2], np.zeros((2, 0), np.float32))
    assert info.value.code == INVALID_ARGUMENT


@needs_gpu
def test_concurrent_queries_on_one_pipeline_are_exact():
    rng = np.random.default_rng(8)
    num_rows = 20000
    tiers = random_tiers(rng, np.arange(num_rows), 24)
    lookup = GpuLookup.dynamic(num_rows // 10, 24)
    errors = []

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(25):
                batch = zipf_keys(local, int(local.integers(1, 6000)), num_rows + 100)
                out, counts = lookup.query(batch, tiers)
                np.testing.assert_array_equal(out, expected(tiers, batch))
                assert counts["l1_hits"] <= len(batch)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert 0 < lookup.size() <= 64 * ((num_rows // 10 + 63) // 64)


@needs_gpu
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_a_full_size_batch_of_65536_x_26_zipf_keys_is_exact(kind):
    rng = np.random.default_rng(9)
    num_rows, dim = 200000, 16
    tiers = random_tiers(rng, np.arange(num_rows), dim)
    if kind == "dynamic":
        lookup = GpuLookup.dynamic(num_rows // 5, dim)
    else:
        lookup = GpuLookup.static(tiers.keys[: num_rows // 2], tiers.rows[: num_rows // 2])
    for _ in range(2):
        batch = zipf_keys(rng, 65536 * 26, num_rows)
        out, counts = lookup.query(batch, tiers)
        np.testing.assert_array_equal(out, expected(tiers, batch))
        check_counts(counts, batch, tiers.calls[-1] if counts["missed_keys"] else None, tiers, kind == "static")


# ---------------------------------------------------------------------------------------------
# On a GPU: the insert guard, updates after insertions, refreshes (gpu_lookup_c_api.h, top).

@needs_gpu
@pytest.mark.parametrize("key_dtype", [np.int64, np.int32])
def test_a_guard_that_refuses_keeps_the_rows_out_of_the_cache_yet_the_answer_is_exact(key_dtype):
    rng = np.random.default_rng(11)
    tiers = random_tiers(rng, np.arange(-500, 1500), 16, default=-1.5)
    lookup = GpuLookup.dynamic(64 * 256, 16, key_dtype)  # room for every row: no eviction
    batch = rng.integers(-600, 1600, 5000).astype(key_dtype)  # some keys no tier holds
    distinct = np.unique(batch.astype(np.int64))
    held = int(tiers.lookup(distinct)[1].sum())
    asked = []

    def refuse() -> int:
        asked.append(len(tiers.calls))  # the fetches done when the guard is asked
        return 0

    out, counts = lookup.query(batch, tiers, guard=refuse)
    np.testing.assert_array_equal(out, expected(tiers, batch))
    assert asked == [1]  # once, after the one fetch
    assert counts["missed_keys"] == len(distinct) and counts["inserted"] == 0
    assert lookup.size() == 0
    _, missing = lookup.query_l1(batch)
    assert len(missing) == len(batch)
    # Nothing to insert (only keys no tier holds): the guard is not asked.
    out, counts = lookup.query(np.array([10**6, -10**6], key_dtype), tiers, guard=refuse)
    np.testing.assert_array_equal(out, np.full((2, 16), -1.5, np.float32))
    assert asked == [1] and counts["missed_keys"] == 2 and counts["inserted"] == 0
    # The same batch again misses again; a guard that allows lets its rows in.
    allowed = []
    out, counts = lookup.query(batch, tiers, guard=lambda: allowed.append(len(tiers.calls)) or 1)
    np.testing.assert_array_equal(out, expected(tiers, batch))
    assert allowed == [len(tiers.calls)] and counts["missed_keys"] == len(distinct) and counts["inserted"] == held
    assert lookup.size() == held
    _, counts = lookup.query(batch, tiers, guard=refuse)
    assert counts["l1_hits"] == int(np.isin(batch, tiers.keys).sum()) and asked == [1]
    # A static table never inserts: its guard is never asked.
    static = GpuLookup.static(tiers.keys[:100], tiers.rows[:100], key_dtype)
    out, counts = static.query(batch, tiers, guard=refuse)
    np.testing.assert_array_equal(out, expected(tiers, batch))
    assert asked == [1] and counts["inserted"] == 0


_side_stream: list = []


def side_stream() -> ctypes.c_void_p:
    """A non-blocking CUDA stream of device 0 (one per process, never destroyed), made through the
    driver API in the primary context, which the pipeline's runtime uses too: work on it is not
    ordered with the legacy default stream that hps_gpu_lookup_update writes on."""
    if not _side_stream:
        try:
            cuda = ctypes.CDLL("libcuda.so.1")
        except OSError:
            pytest.skip("libcuda.so.1 cannot be loaded to create a stream")
        device, context, stream = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
        if (cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(device), 0)
                or cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device) or cuda.cuCtxSetCurrent(context)
                or cuda.cuStreamCreate(ctypes.byref(stream), 1)):  # 1: CU_STREAM_NON_BLOCKING
            pytest.skip("cannot create a CUDA stream through the driver API")
        _side_stream.append(stream)
    return _side_stream[0]


@needs_gpu
@pytest.mark.parametrize("stream_kind", ["default", "non_blocking"])
def test_an_update_right_after_a_query_overwrites_the_rows_the_query_inserted(stream_kind):
    lib = device_lib()
    rng = np.random.default_rng(12)
    n, dim = 200_000, 128
    tiers = random_tiers(rng, np.arange(n), dim)
    lookup = GpuLookup.dynamic(4 * n, dim)  # no eviction
    stream = None if stream_kind == "default" else side_stream()
    keys = rng.permutation(n).astype(np.int64)
    d_keys = DeviceArray(keys)
    d_out = DeviceArray(np.zeros((n, dim), np.float32), copy=False)
    counts = LookupCounts()
    asked = []
    guard = GUARD_FN(lambda ctx: asked.append(1) or 1)
    assert lib.hps_gpu_synchronize() == 0  # d_keys is on the device before another stream reads it
    # The query returns once its insertion is enqueued, before the stream has run it (100 MB of
    # fetched rows to copy first) ...
    assert lib.hps_gpu_lookup_query(lookup.handle, d_keys.ptr, n, d_out.ptr, tiers.fn, None, guard, None, stream,
                                    ctypes.byref(counts)) == 0, last_error()
    # ... and the update follows at once: on the device it must come after that insertion.
    updated = keys[:1000]
    new_rows = 1000.0 + np.arange(len(updated) * dim, dtype=np.float32).reshape(-1, dim)
    lookup.update(updated, new_rows)
    assert lib.hps_gpu_synchronize() == 0
    assert asked == [1] and counts.inserted == n and counts.missed_keys == n
    np.testing.assert_array_equal(d_out.get(), expected(tiers, keys))  # the answer: the rows as read
    l1, missing = lookup.query_l1(updated)
    assert missing == []
    np.testing.assert_array_equal(l1, new_rows)
    others = keys[1000:5000]
    l1, missing = lookup.query_l1(others)
    assert missing == []
    np.testing.assert_array_equal(l1, expected(tiers, others))


@needs_gpu
@pytest.mark.parametrize("kind, key_dtype", [("dynamic", np.int64), ("dynamic", np.int32), ("static", np.int64),
                                             ("static", np.int32)])
def test_refresh_brings_changed_rows_into_l1_and_a_refusing_guard_makes_it_write_nothing(kind, key_dtype):
    rng = np.random.default_rng(13)
    dim = 8
    table_keys = np.arange(-50_000, 100_000, dtype=np.int64)  # more keys than one refresh chunk (65536)
    old = random_tiers(rng, table_keys, dim)  # old.rows[i] is the row of table_keys[i] (sorted keys)
    if kind == "dynamic":
        lookup = GpuLookup.dynamic(4 * len(table_keys), dim, key_dtype)  # no eviction
        lookup.query(table_keys.astype(key_dtype), old)
    else:
        lookup = GpuLookup.static(table_keys, old.rows, key_dtype)
    assert lookup.size() == len(table_keys)
    # The tiers now: rows of even positions changed, every 4th key (from 1) gone, 100 keys L1 never held.
    gone = table_keys[1::4]
    kept = np.setdiff1d(table_keys, gone)
    kept_rows = old.lookup(kept)[0]
    kept_rows[np.isin(kept, table_keys[::2])] += 100.0
    extra = np.arange(200_000, 200_100, dtype=np.int64)
    new = NumpyTiers(np.concatenate([kept, extra]), np.concatenate([kept_rows, np.ones((100, dim), np.float32)]),
                     -9.0)

    def check_calls() -> None:  # every key L1 holds, once, in chunks of at most 65536 keys
        assert len(new.calls) >= 3 and max(len(c) for c in new.calls) <= 65536
        fetched = np.concatenate(new.calls)
        assert len(fetched) == len(np.unique(fetched)) and np.array_equal(np.sort(fetched), table_keys)

    # A guard that refuses: every chunk is read, asked about after its fetch, and none written.
    asked = []
    assert lookup.refresh(new, guard=lambda: asked.append(len(new.calls)) or 0) == 0
    check_calls()
    assert asked == list(range(1, len(new.calls) + 1))
    l1, missing = lookup.query_l1(table_keys.astype(key_dtype))
    assert missing == []
    np.testing.assert_array_equal(l1, old.rows)
    # A guard that allows (then none): the rows some tier holds are written, the others kept.
    want = old.rows.copy()
    is_kept = np.isin(table_keys, kept)
    want[is_kept] = kept_rows
    for guard in (lambda: 1, None):
        new.calls.clear()
        assert lookup.refresh(new, guard=guard) == len(kept)
        check_calls()
        l1, missing = lookup.query_l1(table_keys.astype(key_dtype))
        assert missing == []
        np.testing.assert_array_equal(l1, want)
        assert lookup.size() == len(table_keys)  # a refresh inserts nothing
    _, missing = lookup.query_l1(extra.astype(key_dtype))
    assert len(missing) == len(extra)
    # A failing fetch fails the refresh with its code.
    new.fail = 5
    with pytest.raises(LookupError_) as info:
        lookup.refresh(new)
    assert info.value.code == FETCH_FAILED and "fetch callback failed (returned 5)" in info.value.message


@needs_gpu
def test_refresh_of_a_pipeline_without_l1_or_with_an_empty_cache_fetches_nothing():
    tiers = NumpyTiers(np.arange(10), np.zeros((10, 4), np.float32))
    for lookup in (GpuLookup.static(np.zeros(0, np.int64), np.zeros((0, 4), np.float32)), GpuLookup.dynamic(640, 4)):
        assert lookup.refresh(tiers, guard=lambda: 1) == 0
        assert tiers.calls == [] and lookup.size() == 0


# ---------------------------------------------------------------------------------------------
# Everywhere: the CPU baseline of benchmarks/gpu_lookup.py (tests/cache_host_shim.cc).

class DenseTable(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_void_p), ("num_rows", ctypes.c_int64), ("dim", ctypes.c_int64),
                ("default_value", ctypes.c_float)]


def test_the_cpu_baseline_pipeline_is_exact_and_counts_like_the_gpu_pipeline():
    from slab_model import HostCache
    lib = HostCache.lib()
    lib.hps_cache_host_lookup.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.POINTER(DenseTable), ctypes.c_void_p]
    rng = np.random.default_rng(10)
    num_rows, dim = 5000, 6
    table = rng.standard_normal((num_rows, dim)).astype(np.float32)
    dense = DenseTable(table.ctypes.data, num_rows, dim, -4.0)
    cache = HostCache(64 * 2, dim)
    size = 0
    for step in range(30):
        batch = zipf_keys(rng, int(rng.integers(1, 3000)), num_rows + 50) - 20  # keys < 0 and >= num_rows: default
        out = np.full((len(batch), dim), 9.0, np.float32)
        counts = np.zeros(5, np.int64)
        lib.hps_cache_host_lookup(cache.handle, batch.ctypes.data, len(batch), out.ctypes.data, ctypes.byref(dense),
                                  counts.ctypes.data)
        held = (batch >= 0) & (batch < num_rows)
        want = np.full((len(batch), dim), -4.0, np.float32)
        want[held] = table[batch[held]]
        np.testing.assert_array_equal(out, want, err_msg=f"step {step}")
        assert counts[0] == len(batch) and 0 <= counts[1] <= len(batch)
        assert counts[2] <= len(np.unique(batch)) and counts[3] <= counts[2]
        size += counts[3] - counts[4]
        assert size == cache.size()
    assert size == cache.capacity  # 2 sets under this traffic are full



# ---------------------------------------------------------------------------------------------
# On a GPU: online updates racing lookups; two devices.

class VersionedTiers(NumpyTiers):
    """Tiers whose rows an updater rewrites, with the op library's epoch protocol (gpu_lookup_c_api.h,
    top; core/parameter_server.cc, UpdateGuard): an update makes the epoch odd, writes the tiers, then
    L1 (hps_gpu_lookup_update), then makes it even; a fetch notes the epoch before it reads, and the
    guard lets its rows into L1 only if the epoch is even and unchanged since."""

    def __init__(self, keys, rows):
        super().__init__(keys, rows)
        self.epoch = 0
        self.seen = threading.local()
        self.guard = lambda: int(self.seen.epoch % 2 == 0 and self.epoch == self.seen.epoch)

    def _fetch(self, ctx, keys_ptr, m, rows_ptr, found_ptr) -> int:
        self.seen.epoch = self.epoch
        return super()._fetch(ctx, keys_ptr, m, rows_ptr, found_ptr)


@needs_gpu
def test_online_updates_racing_lookups_never_leave_an_older_row_in_l1():
    """Four threads look zipf batches up while a fifth updates random rows 300 times: every answer is
    some version of its key's row, and afterwards every row L1 holds is the newest one."""
    rng = np.random.default_rng(14)
    n, dim = 4000, 8
    rows = np.zeros((n, dim), np.float32)
    rows[:, 0] = np.arange(n)  # column 0: the key; column 1: the row's version
    tiers = VersionedTiers(np.arange(n), rows)
    lookup = GpuLookup.dynamic(64 * 128, dim)  # room for every key: nothing is evicted
    errors, done = [], threading.Event()

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for round_ in itertools.count():
                if done.is_set() and round_ >= 10:
                    break
                batch = zipf_keys(local, int(local.integers(1, 3000)), n)
                out, _ = lookup.query(batch, tiers, guard=tiers.guard)
                np.testing.assert_array_equal(out[:, 0], batch.astype(np.float32))
                assert (out[:, 1] >= 0).all() and (out[:, 2:] == 0).all()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def updater() -> None:
        try:
            for version in range(1, 301):
                keys = np.unique(zipf_keys(rng, 64, n))  # hot keys: the ones L1 holds
                tiers.epoch += 1
                tiers.rows[keys, 1] = version
                lookup.update(keys, tiers.rows[keys])
                tiers.epoch += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    threads.append(threading.Thread(target=updater))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert tiers.epoch == 600 and lookup.size() > 0
    l1, missing = lookup.query_l1(np.arange(n))
    held = np.setdiff1d(np.arange(n), missing)
    np.testing.assert_array_equal(l1[held], tiers.rows[held])  # no row older than its last update
    out, _ = lookup.query(np.arange(n), tiers, guard=tiers.guard)
    np.testing.assert_array_equal(out, tiers.rows)


@needs_two_gpus
def test_two_devices_hold_a_pipeline_each_and_answer_at_the_same_time():
    """As deployed_device_list [0, 1] deploys a table: one pipeline per device, made there, queried
    from a thread on each device at once, each exact against its own tiers."""
    lib = device_lib()
    rng = np.random.default_rng(15)
    made = []
    try:
        for device in (0, 1):
            assert lib.hps_gpu_set_device(device) == 0
            tiers = random_tiers(rng, np.arange(20_000), 16, default=float(device))
            made.append((GpuLookup.dynamic(2000, 16), tiers))
    finally:
        lib.hps_gpu_set_device(0)
    errors = []

    def worker(device: int) -> None:
        lookup, tiers = made[device]
        local = np.random.default_rng(device)
        try:
            assert lib.hps_gpu_set_device(device) == 0  # the batch's buffers live on this device
            for _ in range(20):
                batch = zipf_keys(local, int(local.integers(1, 20_000)), 20_100)
                out, _ = lookup.query(batch, tiers)
                np.testing.assert_array_equal(out, expected(tiers, batch))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(device,)) for device in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert all(0 < lookup.size() <= 64 * 32 for lookup, _ in made)


# ---------------------------------------------------------------------------------------------
# TfHpsSparseLookup's combine on the device (hps_gpu_combine_segments), against the numpy model
# of the CPU kernel's order (slab_model.combine_rows_model; tests/test_sparse_lookup.py holds that
# model to TensorFlow's bits).

def combine_on_device(rows: np.ndarray, segment_ids: np.ndarray, num_rows: int, combiner: str, out_type: str):
    """The combine's output bits (uint32 for float32, uint16 for the 16-bit types), and the model's."""
    rows = np.ascontiguousarray(rows, np.float32)
    nnz, dim = rows.shape
    offsets, order = group_by_segment(segment_ids, num_rows)
    d_rows = DeviceArray(rows)
    d_scratch = DeviceArray(np.zeros(num_rows + 1 + nnz, np.int64), copy=False)
    bits = np.uint32 if out_type == "float32" else np.uint16
    d_out = DeviceArray(np.zeros((num_rows, dim), bits), copy=False)
    rc = device_lib().hps_gpu_combine_segments(d_rows.ptr, nnz, dim, offsets.ctypes.data, order.ctypes.data, num_rows,
                                               COMBINERS[combiner], OUT_TYPES[out_type], d_scratch.ptr, d_out.ptr,
                                               None)
    assert rc == 0, last_error()
    return d_out.get(), round_to(combine_rows_model(rows, offsets, order, combiner), out_type)


def test_the_combine_refuses_invalid_arguments_before_touching_the_device():
    lib = device_lib()
    offsets, order = np.array([0, 2, 3], np.int64), np.array([1, 0, 2], np.int64)
    ok = dict(d_rows=1, nnz=3, dim=4, offsets=offsets.ctypes.data, order=order.ctypes.data, num_rows=2, combiner=1,
              out_type=0, d_scratch=1, d_out=1)
    bad_offsets, bad_order, falling = (np.array([0, 2, 4], np.int64), np.array([1, 0, 3], np.int64),
                                       np.array([0, 3, 2, 3], np.int64))
    cases = [(dict(nnz=-1), "nnz and num_rows must be >= 0, got -1 and 2"),
             (dict(dim=0), "dim must be at least 1, got 0"),
             (dict(combiner=3), "combiner must be 0 (sum), 1 (mean) or 2 (sqrtn), got 3"),
             (dict(out_type=-1), "out_type must be 0 (float32), 1 (float16) or 2 (bfloat16), got -1"),
             (dict(d_out=None), "offsets, d_scratch and d_out must not be NULL with num_rows = 2"),
             (dict(order=None), "order and d_rows must not be NULL with nnz = 3"),
             (dict(offsets=bad_offsets.ctypes.data), "offsets must start at 0 and end at nnz = 3, got 0 and 4"),
             (dict(offsets=falling.ctypes.data, num_rows=3),
              "offsets must not decrease: offsets[2] = 2 < offsets[1] = 3"),
             (dict(order=bad_order.ctypes.data), "order[2] = 3 is out of range [0, 3)"),
             (dict(num_rows=0), "nnz = 3 keys need an output row, but num_rows is 0")]
    for change, message in cases:
        args = {**ok, **change}
        assert lib.hps_gpu_combine_segments(*args.values(), None) == INVALID_ARGUMENT, message
        assert last_error() == f"hps_gpu_combine_segments: {message}"
    # No output rows: nothing to do, nothing touched (not even the NULL pointers).
    assert lib.hps_gpu_combine_segments(None, 0, 4, None, None, 0, 0, 0, None, None, None) == 0


@needs_gpu
@pytest.mark.parametrize("out_type", sorted(OUT_TYPES))
@pytest.mark.parametrize("combiner", sorted(COMBINERS))
@pytest.mark.parametrize("dim", [1, 5, 16, 128, 300])
def test_the_combine_gives_the_cpu_kernels_bits_for_every_row_length(combiner, out_type, dim):
    """Row lengths 0 to 41 (empty rows, one key, the first group's sizes, the scale below 10 keys and
    the divisor from 10), keys out of row order, widths below a warp, with tails and above one block."""
    rng = np.random.default_rng(dim)
    lengths = rng.permutation(np.arange(42))
    segment_ids = rng.permutation(np.repeat(np.arange(len(lengths)), lengths))
    rows = (rng.standard_normal((segment_ids.size, dim)) * rng.uniform(0.01, 100.0, (segment_ids.size, 1)))
    got, want = combine_on_device(rows.astype(np.float32), segment_ids, len(lengths) + 3, combiner, out_type)
    np.testing.assert_array_equal(got, want)


@needs_gpu
@pytest.mark.parametrize("out_type", sorted(OUT_TYPES))
def test_the_combine_flushes_subnormals_as_tfs_cpu_kernels_do(out_type):
    """Subnormal rows, and small normal ones whose sums fall below the normal range: flushed to zeros
    of their sign in every operation (a single key's row is copied as it is)."""
    rng = np.random.default_rng(4)
    lengths = rng.permutation(np.arange(30))
    segment_ids = rng.permutation(np.repeat(np.arange(len(lengths)), lengths))
    rows = rng.choice([-1, 1], size=(segment_ids.size, 16)) * rng.uniform(1.2e-38, 2e-38, (segment_ids.size, 16))
    rows[rng.random(rows.shape) < 0.3] = 3e-39
    for combiner in sorted(COMBINERS):
        got, want = combine_on_device(rows.astype(np.float32), segment_ids, len(lengths), combiner, out_type)
        np.testing.assert_array_equal(got, want)


@needs_gpu
def test_the_combine_of_a_batch_without_keys_is_zeros_and_a_large_batch_matches():
    got, want = combine_on_device(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), 5, "mean", "float32")
    assert not got.any() and not want.any()
    rng = np.random.default_rng(3)
    segment_ids = rng.integers(0, 8000, size=120_000)  # about 15 keys a row
    rows = rng.standard_normal((segment_ids.size, 32)).astype(np.float32)
    got, want = combine_on_device(rows, segment_ids, 8000, "sqrtn", "float32")
    np.testing.assert_array_equal(got, want)


@needs_gpu
@pytest.mark.parametrize("key_dtype", [np.int64, np.int32])
def test_the_pipeline_then_the_combine_answer_a_ragged_batch_as_the_cpu_kernel(key_dtype):
    """What TfHpsSparseLookup's GPU kernel runs: one row per key from the pipeline (cold, then warm),
    then the combine, against the numpy tiers and the model."""
    rng = np.random.default_rng(5)
    dim = 24
    tiers = random_tiers(rng, np.arange(5000, dtype=np.int64), dim)
    lookup = GpuLookup.dynamic(64 * 16, dim, key_dtype)
    for _ in range(3):
        segment_ids = rng.integers(0, 700, size=4000)
        keys = zipf_keys(rng, segment_ids.size, 6000).astype(key_dtype)  # some above 4999: the default
        rows, _ = lookup.query(keys, tiers)
        np.testing.assert_array_equal(rows, expected(tiers, keys))
        for combiner in sorted(COMBINERS):
            got, want = combine_on_device(rows, segment_ids, 700, combiner, "float32")
            np.testing.assert_array_equal(got, want)
