"""Direct access to the storage backends, without TensorFlow.

Talks to the same C++ backends the ops use, through the small C ABI of
``_tf_hps_storage.so`` (tools/c_api.h). Tools (ingestion, inspection) and
tests use it to read and write tables in a volatile or persistent database.

Example:
    >>> import numpy as np
    >>> db = Storage("volatile_db", {"type": "hash_map", "num_partitions": 4})
    >>> db.insert("hps_et.m.t", np.arange(3), np.ones((3, 2), np.float32))
    >>> values, found = db.fetch("hps_et.m.t", np.array([0, 9]), dim=2)
    >>> found.tolist()
    [True, False]
"""

from __future__ import annotations

import ctypes
import functools
import json
import os

import numpy as np

_LIBRARY_NAME = "_tf_hps_storage.so"
_ERR_LEN = 4096

# tf_hps::ErrorCode, in enum order (base/error.h): name and the builtin it also is.
_ERRORS = [
    ("InvalidArgument", ValueError),
    ("NotFound", FileNotFoundError),
    ("FailedPrecondition", RuntimeError),
    ("Unimplemented", NotImplementedError),
    ("ResourceExhausted", MemoryError),
    ("Unavailable", ConnectionError),
    ("Internal", RuntimeError),
]


# void progress(int64 done, int64 total, void* user)
_PROGRESS = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


def _progress_callback(progress):
    if progress is None:
        return ctypes.cast(None, _PROGRESS)
    return _PROGRESS(lambda done, total, _user: progress(done, total))


class StorageError(Exception):
    """Base of the errors a storage call raises; also an instance of the matching builtin."""


_ERROR_CLASSES = [type(f"Storage{name}Error", (StorageError, builtin), {}) for name, builtin in _ERRORS]


def _raise(code: int, err) -> None:
    cls = _ERROR_CLASSES[code if 0 <= code < len(_ERROR_CLASSES) else -1]
    raise cls(err.value.decode(errors="replace"))


@functools.lru_cache(maxsize=None)
def _lib():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; build it with `make lib` in the repository root")
    lib = ctypes.CDLL(path)
    i64, p, cp, sz = ctypes.c_int64, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    lib.hps_storage_open.restype = p
    lib.hps_storage_open.argtypes = [cp, cp, ctypes.POINTER(ctypes.c_int), cp, sz]
    lib.hps_storage_close.argtypes = [p]
    lib.hps_storage_insert.restype = i64
    lib.hps_storage_insert.argtypes = [p, cp, i64, p, p, i64, cp, sz]
    lib.hps_storage_insert_unless_updated.restype = i64
    lib.hps_storage_insert_unless_updated.argtypes = [p, cp, i64, p, p, i64, ctypes.c_int, cp, sz]
    lib.hps_storage_apply_update.restype = i64
    lib.hps_storage_apply_update.argtypes = [p, cp, i64, p, p, i64, cp, cp, sz]
    lib.hps_storage_fetch.restype = i64
    lib.hps_storage_fetch.argtypes = [p, cp, i64, p, p, i64, p, cp, sz]
    lib.hps_storage_size.restype = i64
    lib.hps_storage_size.argtypes = [p, cp, cp, sz]
    lib.hps_storage_evict.restype = i64
    lib.hps_storage_evict.argtypes = [p, cp, i64, p, cp, sz]
    lib.hps_storage_drop_table.restype = i64
    lib.hps_storage_drop_table.argtypes = [p, cp, cp, sz]
    lib.hps_storage_list_tables.restype = i64
    lib.hps_storage_list_tables.argtypes = [p, cp, sz, cp, sz]
    lib.hps_storage_ingest.restype = i64
    lib.hps_storage_ingest.argtypes = [p, cp, cp, i64, ctypes.c_int, _PROGRESS, p, cp, sz]
    lib.hps_storage_verify.restype = i64
    lib.hps_storage_verify.argtypes = [p, cp, cp, i64, ctypes.c_int, ctypes.POINTER(i64), ctypes.POINTER(i64),
                                       _PROGRESS, p, cp, sz]
    lib.hps_config_load.restype = i64
    lib.hps_config_load.argtypes = [cp, cp, sz, cp, sz]
    return lib


def _read_string(fn, *args) -> str:
    """Calls a C function that fills a string buffer and returns the size it needs."""
    size = 1 << 16
    while True:
        out = ctypes.create_string_buffer(size)
        err = ctypes.create_string_buffer(_ERR_LEN)
        needed = fn(*args, out, size, err, _ERR_LEN)
        if needed < 0:
            _raise(-1 - needed, err)
        if needed <= size:
            return out.value.decode()
        size = needed


def canonical_config(ps_config_file: str | os.PathLike) -> dict:
    """Parses an HPS config with the C++ parser (no TensorFlow needed); returns its canonical form.

    Unknown keys are logged as warnings on stderr; errors raise ValueError or
    FileNotFoundError naming the JSON path.
    """
    path = os.path.abspath(os.fspath(ps_config_file))
    return json.loads(_read_string(_lib().hps_config_load, path.encode()))


class Storage:
    """One database tier opened from its config section.

    Args:
        kind: ``"volatile_db"`` or ``"persistent_db"``.
        config: that section of an HPS config, as a dict or JSON text.

    Tables are named by tag, ``hps_et.<model>.<table>`` (``table_tag``).
    """

    def __init__(self, kind: str, config: dict | str):
        text = config if isinstance(config, str) else json.dumps(config)
        err = ctypes.create_string_buffer(_ERR_LEN)
        code = ctypes.c_int(0)
        handle = _lib().hps_storage_open(kind.encode(), text.encode(), ctypes.byref(code), err, _ERR_LEN)
        if not handle:
            _raise(code.value, err)
        self._handle = handle

    def close(self) -> None:
        """Closes connections and files; the object is unusable afterwards."""
        if self._handle:
            _lib().hps_storage_close(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _call(self, fn, *args):
        if not self._handle:
            raise RuntimeError("storage is closed")
        err = ctypes.create_string_buffer(_ERR_LEN)
        rc = fn(self._handle, *args, err, _ERR_LEN)
        if rc < 0:
            _raise(-1 - rc, err)
        return rc

    def insert(self, table: str, keys, values, *, keep_updated: bool = False,
               only_absent: bool = False) -> None:
        """Inserts or overwrites rows: keys (N,), values (N, D).

        With ``keep_updated``, rows that may be older than online updates (a start-up load, rows
        read from RocksDB) leave alone each key an update wrote into a shared Redis, even one
        overflow evicted since; with ``only_absent`` also each key that has a row. The other
        backends have one writing process, which orders these itself: they just insert.
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=np.float32)
        if keys.ndim != 1 or values.ndim != 2 or values.shape[0] != keys.shape[0]:
            raise ValueError(f"need keys (N,) and values (N, D); got {keys.shape} and {values.shape}")
        if only_absent and not keep_updated:
            raise ValueError("only_absent needs keep_updated=True")
        if keep_updated:
            self._call(_lib().hps_storage_insert_unless_updated, table.encode(), keys.size, keys.ctypes.data,
                       values.ctypes.data, values.shape[1], int(only_absent))
        else:
            self._call(_lib().hps_storage_insert, table.encode(), keys.size, keys.ctypes.data,
                       values.ctypes.data, values.shape[1])

    def apply_update(self, table: str, keys, values, version: str) -> None:
        """Writes an online update's rows; ``version`` is its stream position as sortable text.

        A shared backend (Redis) keeps, per key, the row of the highest version whatever the
        order updates arrive in; the others overwrite like ``insert``.
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=np.float32)
        if keys.ndim != 1 or values.ndim != 2 or values.shape[0] != keys.shape[0]:
            raise ValueError(f"need keys (N,) and values (N, D); got {keys.shape} and {values.shape}")
        self._call(_lib().hps_storage_apply_update, table.encode(), keys.size, keys.ctypes.data,
                   values.ctypes.data, values.shape[1], version.encode())

    def fetch(self, table: str, keys, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (values (N, dim) float32, found (N,) bool); rows of keys not found are zero."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        values = np.empty((keys.size, dim), np.float32)  # the C side writes every row
        found = np.empty(keys.size, np.bool_)  # one byte each, as the C side writes them
        self._call(_lib().hps_storage_fetch, table.encode(), keys.size, keys.ctypes.data, values.ctypes.data,
                   dim, found.ctypes.data)
        return values, found

    def size(self, table: str) -> int:
        """Rows stored for the table (0 if it does not exist)."""
        return self._call(_lib().hps_storage_size, table.encode())

    def evict(self, table: str, keys) -> int:
        """Removes keys; returns how many were present."""
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        return self._call(_lib().hps_storage_evict, table.encode(), keys.size, keys.ctypes.data)

    def drop(self, table: str) -> None:
        """Deletes the whole table."""
        self._call(_lib().hps_storage_drop_table, table.encode())

    def ingest(self, table: str, folder: str | os.PathLike, dim: int, keys_are_32_bit: bool = False,
               progress=None) -> int:
        """Loads an HPS table folder into ``table`` in chunks; returns the rows loaded.

        ``progress(done, total)`` is called after each chunk. ``keys_are_32_bit``
        applies the rule of configs with ``supportlonglong: false``.
        """
        callback = _progress_callback(progress)
        return self._call(_lib().hps_storage_ingest, table.encode(), os.fspath(folder).encode(), dim,
                          int(keys_are_32_bit), callback, None)

    def verify(self, table: str, folder: str | os.PathLike, dim: int, keys_are_32_bit: bool = False,
               progress=None) -> tuple[int, int, int]:
        """Compares ``table`` with an HPS table folder: returns (rows checked, missing, mismatched)."""
        missing, mismatched = ctypes.c_int64(0), ctypes.c_int64(0)
        callback = _progress_callback(progress)
        rows = self._call(_lib().hps_storage_verify, table.encode(), os.fspath(folder).encode(), dim,
                          int(keys_are_32_bit), ctypes.byref(missing), ctypes.byref(mismatched), callback, None)
        return rows, missing.value, mismatched.value

    def tables(self) -> list[str]:
        """Tags of the stored tables, sorted."""
        if not self._handle:
            raise RuntimeError("storage is closed")
        text = _read_string(_lib().hps_storage_list_tables, self._handle)
        return [t for t in text.split("\n") if t]


def table_tag(model: str, table: str) -> str:
    """The name under which a table is stored in every backend: ``hps_et.<model>.<table>``."""
    return f"hps_et.{model}.{table}"
