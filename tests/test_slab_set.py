"""The CPU embedding cache is the slab-set algorithm of core/slab_set.h, way for way.

Each test drives the CPU cache (the host execution of the set logic that the GPU cache runs
too) and the Python reference model in tests/slab_model.py with the same operations, and
requires the same hits, misses, rows and resident keys.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from slab_model import INT64_MAX, INT64_MIN, WAYS, HostCache, SlabSetModel, home, mix_key

# Distinct keys that a sentinel-based cache would mishandle (int32 -1 sign-extends to -1).
SPECIAL_KEYS = [0, -1, 1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, 2**32 - 1,
                int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)]


def keys_of_set(num_sets: int, target: int, count: int, start: int = 0) -> list[int]:
    """`count` keys whose home is set `target`."""
    out, key = [], start
    while len(out) < count:
        if home(key, num_sets)[0] == target:
            out.append(key)
        key += 1
    return out


def assert_same_query(cache: HostCache, model: SlabSetModel, keys, dim: int) -> None:
    got = np.full((len(keys), dim), -7.0, np.float32)
    want = got.copy()
    assert cache.query(keys, got) == model.query(keys, want)
    np.testing.assert_array_equal(got, want)


def test_placement_is_the_python_models_for_every_kind_of_key():
    rng = np.random.default_rng(0)
    keys = SPECIAL_KEYS + [int(k) for k in rng.integers(INT64_MIN, INT64_MAX, 200, dtype=np.int64)]
    for num_sets in (1, 2, 3, 7, 64, 1000, 123457):
        for key in keys:
            assert HostCache.home(key, num_sets) == home(key, num_sets), (key, num_sets)


@pytest.mark.parametrize("requested, capacity", [(0, 64), (1, 64), (64, 64), (65, 128), (1000, 1024), (4096, 4096)])
def test_capacity_rounds_up_to_whole_sets_of_64_ways(requested, capacity):
    cache = HostCache(requested, 4)
    assert cache.capacity == capacity and cache.num_sets == capacity // WAYS
    assert cache.size() == 0 and cache.dump() == []


def test_an_empty_cache_holds_no_key_not_even_zero():
    cache = HostCache(256, 4)
    out = np.zeros((len(SPECIAL_KEYS), 4), np.float32)
    assert cache.query(SPECIAL_KEYS, out) == list(range(len(SPECIAL_KEYS)))


def test_every_int64_key_is_cacheable_including_minus_one_and_the_extremes():
    cache = HostCache(256, 3)
    rows = np.arange(len(SPECIAL_KEYS) * 3, dtype=np.float32).reshape(-1, 3)
    cache.replace(SPECIAL_KEYS, rows)
    out = np.zeros_like(rows)
    assert cache.query(SPECIAL_KEYS, out) == []
    np.testing.assert_array_equal(out, rows)
    assert sorted(cache.dump()) == sorted(SPECIAL_KEYS)


def test_int32_keys_sign_extended_are_cached_like_any_other():
    cache = HostCache(128, 2)
    keys32 = np.array([-1, 0, 1, -(2**31), 2**31 - 1], np.int32)
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    cache.replace(keys32.astype(np.int64), rows)
    out = np.zeros_like(rows)
    assert cache.query(keys32.astype(np.int64), out) == []
    np.testing.assert_array_equal(out, rows)
    # -1 as int32 is -1 as int64, not 4294967295.
    assert cache.query([2**32 - 1], np.zeros((1, 2), np.float32)) == [0]


def test_a_set_holds_64_keys_then_evicts_its_least_recently_used_way():
    cache, model = HostCache(4 * WAYS, 2), SlabSetModel(4 * WAYS, 2)
    keys = keys_of_set(4, 2, WAYS + 1)
    for i, key in enumerate(keys[:WAYS]):  # one batch each: stamps 1..64
        for c in (cache, model):
            c.replace([key], np.full((1, 2), i, np.float32))
    assert sorted(cache.dump(2, 3)) == sorted(keys[:WAYS]) and cache.size() == WAYS
    assert_same_query(cache, model, [keys[0]], 2)  # key 0 is now the most recent
    for c in (cache, model):
        c.replace([keys[WAYS]], np.full((1, 2), 99, np.float32))
    resident = set(cache.dump())
    assert keys[1] not in resident and keys[0] in resident and keys[WAYS] in resident
    assert cache.dump() == model.dump()
    assert_same_query(cache, model, keys, 2)


def test_a_cache_of_full_sets_holds_exactly_its_capacity():
    num_sets = 5
    cache = HostCache(num_sets * WAYS, 4)
    keys = [k for s in range(num_sets) for k in keys_of_set(num_sets, s, WAYS)]
    rows = np.random.default_rng(1).standard_normal((len(keys), 4)).astype(np.float32)
    cache.replace(keys, rows)
    assert cache.size() == cache.capacity
    out = np.zeros_like(rows)
    assert cache.query(keys, out) == []
    np.testing.assert_array_equal(out, rows)


def test_replace_of_a_cached_key_overwrites_its_row_and_update_skips_absent_keys():
    cache = HostCache(64, 2)
    cache.replace([5, 6], [[1, 1], [2, 2]])
    cache.replace([5], [[3, 3]])
    cache.update([6, 7], [[4, 4], [9, 9]])
    out = np.zeros((3, 2), np.float32)
    assert cache.query([5, 6, 7], out) == [2]
    np.testing.assert_array_equal(out[:2], [[3, 3], [4, 4]])
    assert sorted(cache.dump()) == [5, 6]


def test_dump_lists_the_keys_of_a_set_range_and_clamps_the_range():
    cache, model = HostCache(8 * WAYS, 1), SlabSetModel(8 * WAYS, 1)
    keys = list(range(-300, 300))
    for c in (cache, model):
        c.replace(keys, np.zeros((len(keys), 1), np.float32))
    for begin, end in ((0, 8), (0, 1), (3, 5), (7, 8), (-4, 2), (6, 100), (5, 5), (6, 2)):
        assert cache.dump(begin, end) == model.dump(begin, end), (begin, end)
    assert sorted(cache.dump()) == sorted(set(model.dump())) and len(cache.dump()) == cache.size()


@pytest.mark.parametrize("capacity, dim, key_space, seed", [
    (64, 3, 150, 0),        # one set: heavy eviction
    (256, 4, 700, 1),       # 4 sets
    (1000, 2, 3000, 2),     # 16 sets, most keys miss
    (640, 5, 500, 3),       # 10 sets, most keys fit
])
def test_long_random_operation_sequences_match_the_reference_model(capacity, dim, key_space, seed):
    rng = np.random.default_rng(seed)
    cache, model = HostCache(capacity, dim), SlabSetModel(capacity, dim)
    assert cache.capacity == model.capacity
    pool = np.array(SPECIAL_KEYS + list(range(-key_space // 2, key_space // 2)), np.int64)
    for step in range(400):
        n = int(rng.integers(1, 80))
        keys = rng.choice(pool, n)  # duplicates included: they apply in order
        op = rng.choice(["query", "query", "replace", "replace", "update"])
        if op == "query":
            assert_same_query(cache, model, keys, dim)
        else:
            rows = rng.standard_normal((n, dim)).astype(np.float32)
            getattr(cache, op)(keys, rows)
            getattr(model, op)(keys, rows)
        if step % 20 == 0:
            assert cache.dump() == model.dump(), f"step {step}"
    assert cache.dump() == model.dump()
    assert cache.size() == model.size()
    assert_same_query(cache, model, pool, dim)


@pytest.mark.parametrize("capacity, dim, key_space, seed", [(64, 3, 150, 4), (1000, 2, 3000, 5), (640, 5, 500, 6)])
def test_query_of_positions_in_ranges_answers_every_position_like_query(capacity, dim, key_space, seed):
    """The lookup path's query (each range of a batch de-duplicated, each distinct key probed once
    through the tags, repeats copied from the row found) gives every position what the reference
    model's query gives it, reports each missed key once per range with all its positions, and
    leaves the same LRU state."""
    rng = np.random.default_rng(seed)
    cache, model = HostCache(capacity, dim), SlabSetModel(capacity, dim)
    pool = np.array(SPECIAL_KEYS + list(range(-key_space // 2, key_space // 2)), np.int64)
    for step in range(300):
        n = int(rng.integers(1, 200))
        keys = rng.choice(pool[:int(rng.integers(2, len(pool)))], n)  # often many repeats
        if rng.random() < 0.4:
            rows = rng.standard_normal((n, dim)).astype(np.float32)
            cache.replace(keys, rows)
            model.replace(keys, rows)
            continue
        want = np.full((n, dim), -7.0, np.float32)
        got = want.copy()
        stamp = cache.next_stamp()
        want_missing = model.query(keys, want)
        cuts = sorted({0, n, *rng.integers(0, n, int(rng.integers(0, 4))).tolist()})
        got_missing = []
        for begin, end in zip(cuts, cuts[1:]):
            miss_keys, positions, key_of, distinct = cache.query_positions(keys, got, begin, end, stamp)
            assert distinct == len(np.unique(keys[begin:end]))
            assert len(np.unique(miss_keys)) == len(miss_keys), "a missed key reported twice in one range"
            np.testing.assert_array_equal(miss_keys[key_of], keys[positions])
            assert set(miss_keys) == {int(keys[i]) for i in positions}
            got_missing += positions.tolist()
        assert sorted(got_missing) == want_missing, f"step {step}"
        np.testing.assert_array_equal(got, want)  # hits: the row; misses: untouched
        if step % 20 == 0:
            assert cache.dump() == model.dump(), f"step {step}"
    assert cache.dump() == model.dump()


def tag(key: int) -> int:
    """The CPU cache's tag of a key (core/embedding_cache.cc TagOfMix): a byte of its mix, never 0."""
    return ((mix_key(key) >> 8) & 0xFF) or 1


@pytest.mark.parametrize("full_first_slab", [False, True])
def test_query_of_positions_compares_keys_whose_tags_collide(full_first_slab):
    """The lookup path filters a set's ways by a byte tag before it compares keys: keys of one set
    that share a tag (in either slab) must each still find their own row, and a key whose tag
    matches cached ways but which is not cached must miss."""
    cache, model = HostCache(WAYS, 2), SlabSetModel(WAYS, 2)  # one set
    by_tag: dict[int, list[int]] = {}
    key = 0
    while True:  # keys that share one tag, half of them starting at each slab
        by_tag.setdefault(tag(key), []).append(key)
        group = by_tag[tag(key)]
        if sum(home(k, 1)[1] == 0 for k in group) >= 3 and sum(home(k, 1)[1] == 1 for k in group) >= 3:
            break
        key += 1
    group = by_tag[tag(key)]
    absent = group[-1]  # shares the tag, never inserted
    cached = group[:-1]
    fillers = [k for k in range(10_000, 10_000 + 200) if tag(k) != tag(key)][:WAYS - len(cached)]
    inserted = cached + (fillers if full_first_slab else fillers[:8])
    rows = np.arange(len(inserted) * 2, dtype=np.float32).reshape(-1, 2)
    for k, r in zip(inserted, rows):  # one at a time, so the set fills in this order
        cache.replace([k], r[None])
        model.replace([k], r[None])
    keys = np.array(cached[::-1] + [absent] + cached + [absent], np.int64)
    want = np.full((len(keys), 2), -7.0, np.float32)
    got = want.copy()
    want_missing = model.query(keys, want)
    miss_keys, positions, key_of, _ = cache.query_positions(keys, got, 0, len(keys), cache.next_stamp())
    assert positions.tolist() == want_missing == [len(cached), 2 * len(cached) + 1]
    assert miss_keys.tolist() == [absent] and key_of.tolist() == [0, 0]
    np.testing.assert_array_equal(got, want)
    assert cache.dump() == model.dump()


def test_rows_are_never_torn_while_threads_query_replace_and_update_at_once():
    """Writers store rows that are constant (key * 1000 + version); a reader must only ever see
    whole rows: every element equal, and equal to a row once written for that key."""
    dim, key_space, versions = 64, 512, 1000
    cache = HostCache(4 * WAYS, dim)  # 256 ways for 512 keys: constant eviction
    stop = threading.Event()
    errors: list[str] = []

    def writer(seed: int, update: bool):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            keys = rng.choice(key_space, 64, replace=False).astype(np.int64)
            version = rng.integers(0, versions, 64)
            rows = np.repeat((keys * 1000 + version).astype(np.float32)[:, None], dim, axis=1)
            (cache.update if update else cache.replace)(keys, rows)

    def reader(seed: int):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            keys = rng.choice(key_space, 128, replace=False).astype(np.int64)
            out = np.full((len(keys), dim), -1.0, np.float32)
            missing = set(cache.query(keys, out))
            hit = np.array([i for i in range(len(keys)) if i not in missing], np.int64)
            if len(hit) == 0:
                continue
            rows = out[hit]
            torn = (rows != rows[:, :1]).any(axis=1)
            version = rows[:, 0].astype(np.int64) - keys[hit] * 1000
            wrong = (version < 0) | (version >= versions)
            if torn.any() or wrong.any():
                errors.append(f"keys {keys[hit][torn | wrong][:4]} rows {rows[torn | wrong][:2, :4]}")
                stop.set()

    def position_reader(seed: int):  # the lookup path's query: repeats copied from the first position
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            keys = rng.choice(key_space, 256).astype(np.int64)  # with repeats
            out = np.full((len(keys), dim), -1.0, np.float32)
            _, positions, _, _ = cache.query_positions(keys, out, 0, len(keys), cache.next_stamp())
            hit = np.setdiff1d(np.arange(len(keys)), positions)
            rows = out[hit]
            version = rows[:, 0].astype(np.int64) - keys[hit] * 1000
            bad = (rows != rows[:, :1]).any(axis=1) | (version < 0) | (version >= versions)
            if bad.any():
                errors.append(f"keys {keys[hit][bad][:4]} rows {rows[bad][:2, :4]}")
                stop.set()

    threads = [threading.Thread(target=writer, args=(1, False)), threading.Thread(target=writer, args=(2, True)),
               threading.Thread(target=reader, args=(3,)), threading.Thread(target=reader, args=(4,)),
               threading.Thread(target=position_reader, args=(5,))]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.size() <= cache.capacity
