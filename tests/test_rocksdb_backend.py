"""The RocksDB persistent database (persistent_db.type "rocks_db"), on real RocksDB files.

The C++ backend is driven through tf_hps.storage (no TensorFlow). What it writes is checked
with an independent reader, the rocksdict package (its own RocksDB build), and what rocksdict
writes is read back by the C++ backend: both follow the layout of docs/storage.md (one column
family per table tag; key = int64 little-endian, value = dim float32 little-endian).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, WriteBatch

from tf_hps.storage import Storage, StorageError, table_tag

TAG = table_tag("model", "table0")
EDGE_KEYS = np.array([0, 1, -1, -2, 2**63 - 1, -(2**63), 2**32, -(2**40), 12345], np.int64)


def open_db(path, **extra) -> Storage:
    return Storage("persistent_db", {"type": "rocks_db", "path": str(path), **extra})


def rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def key_bytes(key: int) -> bytes:
    return np.array([key], "<i8").tobytes()


class RocksDictReader:
    """Opens a database read-only with rocksdict, every column family included."""

    def __init__(self, path):
        self.path = str(path)
        self.names = Rdict.list_cf(self.path)
        families = {name: Options(raw_mode=True) for name in self.names if name != "default"}
        self.db = Rdict(self.path, options=Options(raw_mode=True), column_families=families,
                        access_type=AccessType.read_only())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.db.close()

    def rows(self, tag: str, keys, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(values (N, dim), found (N,)) read with one multi_get."""
        family = self.db.get_column_family(tag)
        raw = family[[key_bytes(int(k)) for k in keys]]
        values = np.zeros((len(keys), dim), np.float32)
        found = np.array([r is not None for r in raw])
        for i, r in enumerate(raw):
            if r is not None:
                assert len(r) == dim * 4, f"row {i} of {tag} holds {len(r)} bytes"
                values[i] = np.frombuffer(r, "<f4")
        return values, found

    def count(self, tag: str) -> int:
        return sum(1 for _ in self.db.get_column_family(tag).keys())


def rocksdict_writer_options() -> Options:
    """rocksdict options whose files RocksDB 7.8 (the C++ side) can read: table format_version 5."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    table = BlockBasedOptions()
    table.set_format_version(5)
    options.set_block_based_table_factory(table)
    return options


def write_with_rocksdict(path, tables: dict[str, tuple[np.ndarray, bytes | np.ndarray]]) -> None:
    """Writes {tag: (keys, values (N, D) or a list of raw byte strings)} with rocksdict, flushed to SST files."""
    options = rocksdict_writer_options()
    db = Rdict(str(path), options=options)
    for tag, (keys, values) in tables.items():
        family = db.create_column_family(tag, options)
        batch = WriteBatch(raw_mode=True)
        batch.set_default_column_family(db.get_column_family_handle(tag))
        for i, key in enumerate(keys):
            value = values[i] if isinstance(values, list) else np.ascontiguousarray(values[i], "<f4").tobytes()
            batch.put(key_bytes(int(key)), value)
        db.write(batch)
        family.flush()
    db.close()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dim", [1, 16, 128])
def test_rows_round_trip_for_edge_int64_keys_and_rocksdict_reads_the_same_bytes(tmp_path, dim):
    values = rows(len(EDGE_KEYS), dim, seed=dim)
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, EDGE_KEYS, values)
        got, found = db.fetch(TAG, EDGE_KEYS[::-1], dim)
        assert found.all()
        np.testing.assert_array_equal(got, values[::-1])

    with RocksDictReader(tmp_path / "db") as reader:
        got, found = reader.rows(TAG, EDGE_KEYS, dim)
        assert found.all()
        np.testing.assert_array_equal(got, values)
        assert reader.count(TAG) == len(EDGE_KEYS)


def test_table_files_hold_16_kib_data_blocks(tmp_path):
    """Point reads of cached blocks are cheaper with 16 KiB blocks than RocksDB's 4 KiB default; the
    table file's own properties, read by rocksdict, say how many blocks the rows took."""
    db = open_db(tmp_path / "db")
    n, dim = 20_000, 16
    db.insert(TAG, np.arange(n), rows(n, dim))  # random floats: the blocks do not compress
    db.close()
    with RocksDictReader(tmp_path / "db") as reader:
        props = reader.db.get_column_family(TAG).property_value("rocksdb.aggregated-table-properties")
    fields = dict(part.split("=", 1) for part in props.split("; ") if "=" in part)
    blocks, data_bytes = int(fields["# data blocks"]), int(fields["data block size"])
    assert data_bytes >= n * dim * 4, props
    # Each block closes once it passes 16 KiB (one row of ~90 bytes over); 4 KiB blocks would be ~4x as many.
    assert data_bytes / blocks == pytest.approx(16 * 1024, rel=0.1), props


def test_100k_rows_written_in_several_batches_all_read_back(tmp_path):
    n, dim = 100_000, 16
    keys = np.random.default_rng(7).permutation(np.arange(-n // 2, n // 2, dtype=np.int64) * 7919)
    values = rows(n, dim, seed=1)
    with open_db(tmp_path / "db", max_batch_size=8192) as db:  # 13 write and read batches
        db.insert(TAG, keys, values)
        order = np.random.default_rng(8).permutation(n)
        got, found = db.fetch(TAG, keys[order], dim)
        assert found.all()
        np.testing.assert_array_equal(got, values[order])
        assert db.size(TAG) == n

    with RocksDictReader(tmp_path / "db") as reader:
        assert reader.count(TAG) == n
        sample = np.random.default_rng(9).choice(n, 2000, replace=False)
        got, found = reader.rows(TAG, keys[sample], dim)
        assert found.all()
        np.testing.assert_array_equal(got, values[sample])


def test_overwriting_a_key_keeps_one_row_with_the_new_value(tmp_path):
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, [5, 6], np.ones((2, 4), np.float32))
        db.insert(TAG, [5], np.full((1, 4), 9.0, np.float32))
        got, found = db.fetch(TAG, [5, 6], 4)
        assert found.all()
        np.testing.assert_array_equal(got, [[9.0] * 4, [1.0] * 4])
        assert db.size(TAG) == 2


def test_rocksdict_written_database_is_read_by_the_cpp_backend(tmp_path):
    keys_a, values_a = EDGE_KEYS, rows(len(EDGE_KEYS), 16, seed=3)
    keys_b, values_b = np.arange(1000, dtype=np.int64) - 500, rows(1000, 128, seed=4)
    tag_b = table_tag("model", "table1")
    write_with_rocksdict(tmp_path / "db", {TAG: (keys_a, values_a), tag_b: (keys_b, values_b)})

    for read_only in (True, False):
        with open_db(tmp_path / "db", read_only=read_only, max_batch_size=300) as db:
            assert db.tables() == sorted([TAG, tag_b])
            got, found = db.fetch(TAG, keys_a, 16)
            assert found.all()
            np.testing.assert_array_equal(got, values_a)
            got, found = db.fetch(tag_b, keys_b[::-1], 128)
            assert found.all()
            np.testing.assert_array_equal(got, values_b[::-1])
            assert db.size(tag_b) == 1000


# ----------------------------------------------------------------------------- misses and tables


def test_keys_not_stored_are_reported_missing_in_order_and_left_zero(tmp_path):
    values = rows(4, 8)
    with open_db(tmp_path / "db", max_batch_size=3) as db:
        db.insert(TAG, [10, 20, 30, 40], values)
        query = np.array([99, 20, -1, 40, 10, 2**63 - 1, 30, 0], np.int64)
        got, found = db.fetch(TAG, query, 8)
        assert found.tolist() == [False, True, False, True, True, False, True, False]
        np.testing.assert_array_equal(got[found], values[[1, 3, 0, 2]])
        assert not got[~found].any()


def test_an_unknown_table_reports_every_key_missing(tmp_path):
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, [1], np.ones((1, 2), np.float32))
        got, found = db.fetch(table_tag("model", "nope"), [1, 2, 3], 2)
        assert not found.any() and not got.any()
        assert db.size(table_tag("model", "nope")) == 0
        assert db.evict(table_tag("model", "nope"), [1]) == 0
        db.drop(table_tag("model", "nope"))  # nothing to drop: no error
        assert db.tables() == [TAG]


def test_each_table_is_a_column_family_named_by_its_tag(tmp_path):
    tag_a, tag_b = table_tag("m", "a"), table_tag("m", "b")
    with open_db(tmp_path / "db") as db:
        db.insert(tag_a, [1, 2], np.full((2, 4), 1.0, np.float32))
        db.insert(tag_b, [1, 3], np.full((2, 8), 2.0, np.float32))  # same key 1, other table, other dim
        got, found = db.fetch(tag_a, [1, 3], 4)
        assert found.tolist() == [True, False] and (got[0] == 1.0).all()
        got, found = db.fetch(tag_b, [1, 2], 8)
        assert found.tolist() == [True, False] and (got[0] == 2.0).all()

    assert sorted(Rdict.list_cf(str(tmp_path / "db"))) == ["default", tag_a, tag_b]
    with RocksDictReader(tmp_path / "db") as reader:
        assert reader.count(tag_a) == 2 and reader.count(tag_b) == 2
        assert reader.db.get(key_bytes(1)) is None  # nothing lands in the default column family
        got, _ = reader.rows(tag_b, [1], 8)
        assert (got == 2.0).all()


def test_tables_are_listed_sorted_without_the_default_column_family(tmp_path):
    tags = [table_tag("z", "t"), table_tag("a", "t2"), table_tag("a", "t1"), table_tag("m", "x")]
    with open_db(tmp_path / "db") as db:
        assert db.tables() == []
        for tag in tags:
            db.insert(tag, [0], np.zeros((1, 1), np.float32))
        assert db.tables() == sorted(tags)
    with open_db(tmp_path / "db", read_only=True) as db:
        assert db.tables() == sorted(tags)


def test_a_stored_row_of_another_dimension_is_rejected_naming_the_table_and_sizes(tmp_path):
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, [1, 2], rows(2, 8))
        with pytest.raises(ValueError) as error:
            db.fetch(TAG, [2], 16)
        message = str(error.value)
        assert TAG in message and "32 bytes" in message and "64" in message

    # A row rocksdict wrote with 10 bytes (not a whole number of floats) is rejected as well.
    write_with_rocksdict(tmp_path / "odd", {TAG: ([7], [b"0123456789"])})
    with open_db(tmp_path / "odd", read_only=True) as db:
        with pytest.raises(ValueError, match="10 bytes"):
            db.fetch(TAG, [7], 4)


def test_invalid_inserts_are_rejected(tmp_path):
    with open_db(tmp_path / "db") as db:
        with pytest.raises(ValueError, match="not a valid table name"):
            db.insert("default", [1], np.ones((1, 2), np.float32))
        with pytest.raises(ValueError, match="dimension"):
            db.insert(TAG, [1], np.ones((1, 0), np.float32))
        assert db.tables() == []


# ----------------------------------------------------------------------------- evict, drop, size


def test_evicting_keys_removes_only_those_and_counts_the_ones_present(tmp_path):
    keys = np.arange(100, dtype=np.int64) - 50
    values = rows(100, 4)
    with open_db(tmp_path / "db", max_batch_size=16) as db:
        db.insert(TAG, keys, values)
        gone = np.array([-50, -1, 0, 49, 1000, -1], np.int64)  # 1000 is absent; -1 is given twice
        assert db.evict(TAG, gone) == 4
        assert db.size(TAG) == 96
        got, found = db.fetch(TAG, keys, 4)
        assert found.tolist() == [k not in {-50, -1, 0, 49} for k in keys]
        np.testing.assert_array_equal(got[found], values[found])
        assert db.evict(TAG, gone) == 0

    with RocksDictReader(tmp_path / "db") as reader:
        _, found = reader.rows(TAG, [-50, -1, 0, 49, 1], 4)
        assert found.tolist() == [False, False, False, False, True]
        assert reader.count(TAG) == 96


def test_dropping_a_table_drops_its_column_family(tmp_path):
    other = table_tag("model", "kept")
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, np.arange(10), rows(10, 4))
        db.insert(other, np.arange(10), rows(10, 4))
        db.drop(TAG)
        assert db.tables() == [other]
        assert db.size(TAG) == 0
        assert not db.fetch(TAG, np.arange(10), 4)[1].any()
        assert db.fetch(other, np.arange(10), 4)[1].all()

    assert sorted(Rdict.list_cf(str(tmp_path / "db"))) == ["default", other]
    with open_db(tmp_path / "db") as db:
        assert db.tables() == [other]
        # A table dropped and written again starts empty.
        db.insert(TAG, [3], np.ones((1, 2), np.float32))
        assert db.size(TAG) == 1
        assert db.fetch(TAG, [3, 4], 2)[1].tolist() == [True, False]


def test_size_counts_rows_exactly(tmp_path):
    with open_db(tmp_path / "db") as db:
        assert db.size(TAG) == 0
        db.insert(TAG, np.arange(500), rows(500, 2))
        db.insert(TAG, np.arange(250, 750), rows(500, 2))  # 250 overwrites
        assert db.size(TAG) == 750
        db.evict(TAG, np.arange(100))
        assert db.size(TAG) == 650


# ----------------------------------------------------------------------------- persistence and sharing


def test_rows_persist_across_close_and_reopen(tmp_path):
    keys, values = EDGE_KEYS, rows(len(EDGE_KEYS), 16)
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, keys, values)
    with open_db(tmp_path / "db") as db:
        db.insert(table_tag("model", "later"), [1], np.ones((1, 16), np.float32))
        got, found = db.fetch(TAG, keys, 16)
        assert found.all()
        np.testing.assert_array_equal(got, values)
    with open_db(tmp_path / "db", read_only=True) as db:
        assert db.tables() == sorted([TAG, table_tag("model", "later")])
        np.testing.assert_array_equal(db.fetch(TAG, keys, 16)[0], values)


def test_two_read_only_openers_share_the_database_and_refuse_writes(tmp_path):
    keys, values = np.arange(1000, dtype=np.int64), rows(1000, 16)
    with open_db(tmp_path / "db") as db:
        db.insert(TAG, keys, values)

    first = open_db(tmp_path / "db", read_only=True)
    second = open_db(tmp_path / "db", read_only=True)
    try:
        for db in (first, second):
            got, found = db.fetch(TAG, keys, 16)
            assert found.all()
            np.testing.assert_array_equal(got, values)
        for write in (lambda: first.insert(TAG, [1], np.ones((1, 16), np.float32)),
                      lambda: first.evict(TAG, [1]),
                      lambda: second.drop(TAG)):
            with pytest.raises(RuntimeError, match="read_only") as error:
                write()
            assert isinstance(error.value, StorageError) and str(tmp_path / "db") in str(error.value)
        assert first.size(TAG) == 1000
    finally:
        first.close()
        second.close()

    with RocksDictReader(tmp_path / "db") as reader:
        assert reader.names == ["default", TAG]
        assert reader.count(TAG) == 1000


def test_a_second_writer_on_a_locked_path_fails_naming_the_path(tmp_path):
    path = str(tmp_path / "db")
    with open_db(path) as db:
        db.insert(TAG, [1], np.ones((1, 2), np.float32))
        with pytest.raises(ConnectionError, match="locked by another writer") as error:
            open_db(path)
        assert path in str(error.value) and "RocksDB" in str(error.value)
        with open_db(path, read_only=True) as reader:  # readers do not need the lock
            assert reader.tables() == [TAG]
    with open_db(path) as db:  # the lock goes with the close
        assert db.size(TAG) == 1


@pytest.mark.parametrize("alias", ["trailing slash", "dot segments", "symlink", "relative"])
def test_another_spelling_of_a_locked_path_is_locked_too(tmp_path, alias, monkeypatch):
    """RocksDB keeps a process's locks by path as written; the backend opens one canonical spelling, so two
    writers through `db` and `db/` (or a symlink) cannot both open and corrupt the database."""
    path = str(tmp_path / "db")
    with open_db(path) as db:
        db.insert(TAG, [1], np.ones((1, 2), np.float32))
        if alias == "symlink":
            os.symlink(path, tmp_path / "link")
            other = str(tmp_path / "link")
        elif alias == "relative":
            monkeypatch.chdir(tmp_path)
            other = "db"
        else:
            other = {"trailing slash": path + "/", "dot segments": str(tmp_path / "x" / ".." / "db")}[alias]
        with pytest.raises(ConnectionError, match="locked by another writer") as error:
            open_db(other)
        assert other in str(error.value)  # named as the config wrote it
        db.insert(TAG, [2], np.ones((1, 2), np.float32))
    with open_db(path) as db:  # still a sound database
        assert db.size(TAG) == 2


def test_a_writer_in_another_process_locks_the_path(tmp_path):
    path = str(tmp_path / "db")
    storage_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tf_hps", "storage.py")
    child_code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('tf_hps.storage', sys.argv[1])\n"
        "storage = importlib.util.module_from_spec(spec); spec.loader.exec_module(storage)\n"
        "db = storage.Storage('persistent_db', {'type': 'rocks_db', 'path': sys.argv[2]})\n"
        "print('open', flush=True)\n"
        "sys.stdin.readline()\n"
        "db.close()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", child_code, storage_py, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(ConnectionError, match="locked by another writer") as error:
            open_db(path)
        assert path in str(error.value)
    finally:
        child.communicate("\n", timeout=60)
    assert child.returncode == 0
    with open_db(path) as db:
        assert db.tables() == []


def test_opening_a_missing_path_read_only_fails_clearly(tmp_path):
    path = str(tmp_path / "never_written")
    with pytest.raises(FileNotFoundError, match="holds no RocksDB database") as error:
        open_db(path, read_only=True)
    assert path in str(error.value)
    assert not os.path.exists(path)


def test_a_writable_open_creates_the_folder_and_its_parents(tmp_path):
    path = tmp_path / "a" / "b" / "db"
    with open_db(path, num_threads=2) as db:
        assert db.tables() == []
    assert (path / "CURRENT").is_file()


def test_a_corrupt_database_fails_clearly_naming_the_path(tmp_path):
    path = tmp_path / "db"
    with open_db(path) as db:
        db.insert(TAG, [1], np.ones((1, 2), np.float32))
    manifest = (path / (path / "CURRENT").read_text().strip())
    manifest.write_bytes(b"\x00garbage, not a manifest" * 10)
    for read_only in (False, True):
        with pytest.raises(StorageError) as error:
            open_db(path, read_only=read_only)
        assert str(path) in str(error.value) and "RocksDB" in str(error.value)


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_fetches_and_inserts_from_many_threads_stay_consistent(tmp_path):
    dim, n = 16, 20_000
    base_keys, base_values = np.arange(n, dtype=np.int64), rows(n, dim, seed=11)
    errors: list[BaseException] = []
    with open_db(tmp_path / "db", max_batch_size=1024) as db:
        db.insert(TAG, base_keys, base_values)

        def reader(seed: int) -> None:
            try:
                rng = np.random.default_rng(seed)
                for _ in range(20):
                    pick = rng.choice(n, 2000)
                    got, found = db.fetch(TAG, base_keys[pick], dim)
                    assert found.all()
                    np.testing.assert_array_equal(got, base_values[pick])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def writer(table_index: int) -> None:
            try:
                tag = table_tag("model", f"new{table_index}")
                for step in range(10):
                    keys = np.arange(step * 500, (step + 1) * 500, dtype=np.int64)
                    db.insert(tag, keys, np.full((500, dim), table_index, np.float32))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        threads += [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(3):
            tag = table_tag("model", f"new{i}")
            assert db.size(tag) == 5000
            got, found = db.fetch(tag, np.arange(5000), dim)
            assert found.all() and (got == i).all()
        assert db.tables() == sorted([TAG] + [table_tag("model", f"new{i}") for i in range(3)])
