"""Online updates: publish retrained embedding rows to running servers.

Rows go to one Redis stream per table (``update_source`` of type
``"redis_stream"`` in the config; format in docs/updates.md). Every serving
process with the same config applies them to its databases and overwrites
the rows its L1 caches hold, within about ``poll_timeout_ms / 10`` ms.

Example:
    >>> publisher = UpdatePublisher("ps_config.json")                 # doctest: +SKIP
    >>> publisher.publish("foo", "sparse_embedding0", keys, vectors)  # doctest: +SKIP
    >>> publisher.flush()                                             # doctest: +SKIP

No TensorFlow is needed to publish. ``tf_hps.callbacks.PublishChangedRows``
publishes the rows a training job changed, from Keras.
"""

from __future__ import annotations

import ctypes
import json
import os

import numpy as np

from tf_hps import storage


def _lib():
    lib = storage._lib()
    if not getattr(lib, "_publisher_bound", False):
        i64, p, cp, sz = ctypes.c_int64, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        lib.hps_publisher_open.restype = p
        lib.hps_publisher_open.argtypes = [cp, i64, ctypes.POINTER(ctypes.c_int), cp, sz]
        lib.hps_publisher_close.argtypes = [p]
        lib.hps_publisher_publish.restype = i64
        lib.hps_publisher_publish.argtypes = [p, cp, cp, i64, p, p, i64, cp, sz]
        lib.hps_publisher_flush.restype = i64
        lib.hps_publisher_flush.argtypes = [p, cp, sz]
        lib._publisher_bound = True
    return lib


class UpdatePublisher:
    """Publishes rows of the tables of a config to the servers that use it.

    Args:
        ps_config_file: the HPS config of the served models; its
            ``update_source`` must be ``{"type": "redis_stream", "address": ...}``.
        max_pending_bytes: rows queued by ``publish`` before it sends them
            itself, so a fast trainer waits for Redis rather than growing
            memory without bound.

    ``publish`` checks the model, the table (by name, e.g.
    ``"sparse_embedding0"``, or by index) and the vectors' dimension against
    the config and queues the rows; ``flush`` sends them and returns once
    Redis holds them all. Not thread-safe: use one per thread. Usable as a
    context manager (flushes and closes on exit).
    """

    def __init__(self, ps_config_file: str | os.PathLike, max_pending_bytes: int = 64 << 20):
        self._config = storage.canonical_config(ps_config_file)
        err = ctypes.create_string_buffer(storage._ERR_LEN)
        code = ctypes.c_int(0)
        handle = _lib().hps_publisher_open(json.dumps(self._config).encode(), int(max_pending_bytes),
                                           ctypes.byref(code), err, storage._ERR_LEN)
        if not handle:
            storage._raise(code.value, err)
        self._handle = handle

    def _table_name(self, model_name: str, table) -> str:
        if isinstance(table, str):
            return table
        models = {m["model"]: m for m in self._config["models"]}
        if model_name not in models:
            raise ValueError(f"model {model_name!r} is not in the config (models: {sorted(models)})")
        names = models[model_name]["embedding_table_names"]
        if not isinstance(table, (int, np.integer)) or not 0 <= table < len(names):
            raise ValueError(f"table {table!r} is out of range: model {model_name!r} has {len(names)} table(s)")
        return names[table]

    def publish(self, model_name: str, table_name, keys, vectors) -> None:
        """Queues rows: ``keys`` (n) integers, ``vectors`` (n, dim) numbers. A key given twice is published
        once, with its last row; keys must fit int64."""
        if not self._handle:
            raise ValueError("this UpdatePublisher is closed")
        keys = np.asarray(keys)
        if keys.dtype.kind not in "iu":
            raise TypeError(f"keys must be integers, got {keys.dtype}")
        if keys.dtype.kind == "u" and keys.size and keys.max() > np.iinfo(np.int64).max:
            raise ValueError(f"keys must fit int64: {int(keys.max())} does not (it would be sent as a negative key)")
        keys = np.ascontiguousarray(keys.reshape(-1), np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != keys.size:
            raise ValueError(f"vectors must have shape ({keys.size}, dim), got {vectors.shape}")
        err = ctypes.create_string_buffer(storage._ERR_LEN)
        status = _lib().hps_publisher_publish(
            self._handle, model_name.encode(), self._table_name(model_name, table_name).encode(), keys.size,
            keys.ctypes.data, vectors.ctypes.data, vectors.shape[1], err, storage._ERR_LEN)
        if status < 0:
            storage._raise(-1 - status, err)

    def flush(self) -> None:
        """Sends every queued row; returns once Redis has stored them.

        If Redis cannot be reached it raises (``ConnectionError``) and keeps the rows queued, so
        calling ``flush`` again later sends them.
        """
        if not self._handle:
            raise ValueError("this UpdatePublisher is closed")
        err = ctypes.create_string_buffer(storage._ERR_LEN)
        status = _lib().hps_publisher_flush(self._handle, err, storage._ERR_LEN)
        if status < 0:
            storage._raise(-1 - status, err)

    def close(self) -> None:
        """Frees the connection; rows still queued are dropped (call ``flush`` first)."""
        if getattr(self, "_handle", None):
            _lib().hps_publisher_close(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()

    def __del__(self):
        self.close()
