"""Reading and writing HPS sparse model folders.

A table folder holds two raw files with no header:

* ``key``: N keys, little-endian int64;
* ``emb_vector``: N x D float32 values, row-major.

D is not stored in the files; it comes from ``embedding_vecsize_per_table``.
"""

from __future__ import annotations

import os

import numpy as np


def _refuse_duplicate_keys(keys: np.ndarray) -> None:
    """A key twice in a table would serve one of its rows, which depending on eviction: refuse it."""
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if same.size:
        first, second = int(order[same[0]]), int(order[same[0] + 1])
        raise ValueError(f"key {int(keys[first])} is in rows {first} and {second}: each key must be in one row "
                         f"({same.size} repeated key(s) in all)")


def save_table(folder: str | os.PathLike, keys, vectors) -> str:
    """Writes an HPS table folder from arrays of keys (N,) and vectors (N, D).

    Files are written next to their final names and renamed into place, so a
    reader never sees half a table.

    Example:
        >>> import numpy as np, tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = save_table(d, np.arange(3), np.ones((3, 4), np.float32))
        >>> sorted(os.listdir(d))
        ['emb_vector', 'key']
    """
    keys = np.asarray(keys)
    vectors = np.asarray(vectors)
    if keys.ndim != 1:
        raise ValueError(f"keys must be one-dimensional, got shape {keys.shape}")
    if not np.issubdtype(keys.dtype, np.integer):
        raise TypeError(f"keys must be integers, got {keys.dtype}")
    if vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
        raise ValueError(f"vectors must have shape ({keys.shape[0]}, D), got {vectors.shape}")
    if keys.shape[0] == 0:
        raise ValueError("a table needs at least one row")
    if vectors.shape[1] == 0:
        raise ValueError("vectors must have at least one column")
    if np.issubdtype(keys.dtype, np.unsignedinteger) and keys.size and keys.max() > np.iinfo(np.int64).max:
        raise ValueError("keys must fit int64")
    _refuse_duplicate_keys(keys)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    for name, data in (("key", keys.astype("<i8")), ("emb_vector", vectors.astype("<f4"))):
        final = os.path.join(folder, name)
        tmp = final + ".tmp"
        np.ascontiguousarray(data).tofile(tmp)
        os.replace(tmp, final)
    return folder


def load_table(folder: str | os.PathLike, emb_vec_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads an HPS table folder: returns keys (N,) int64 and vectors (N, D) float32.

    Raises FileNotFoundError for a missing file and ValueError when the file
    sizes disagree with each other or with ``emb_vec_size``.
    """
    folder = os.fspath(folder)
    key_path = os.path.join(folder, "key")
    vector_path = os.path.join(folder, "emb_vector")
    for path in (key_path, vector_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"table folder {folder!r} has no {os.path.basename(path)!r} file")
    if emb_vec_size < 1:
        raise ValueError(f"emb_vec_size must be at least 1, got {emb_vec_size}")
    key_bytes = os.path.getsize(key_path)
    vector_bytes = os.path.getsize(vector_path)
    if key_bytes % 8:
        raise ValueError(f"{key_path}: {key_bytes} bytes is not a multiple of 8 (int64 keys)")
    rows = key_bytes // 8
    if vector_bytes != rows * emb_vec_size * 4:
        raise ValueError(
            f"{vector_path}: {vector_bytes} bytes, but {rows} keys of dimension {emb_vec_size} "
            f"need {rows * emb_vec_size * 4}"
        )
    keys = np.fromfile(key_path, dtype="<i8")
    vectors = np.fromfile(vector_path, dtype="<f4").reshape(rows, emb_vec_size)
    return keys, vectors


def save_embedding_layer(folder: str | os.PathLike, layer, keys=None) -> str:
    """Writes the weights of a trained ``keras.layers.Embedding`` as an HPS table.

    Row ``i`` of the embedding matrix is stored under key ``keys[i]``
    (default: ``i``), so the HPS lookup of key ``i`` equals ``layer(i)``.

    Example:
        >>> import keras, tempfile
        >>> emb = keras.layers.Embedding(10, 4); emb.build((None,))
        >>> _ = save_embedding_layer(tempfile.mkdtemp(), emb)
    """
    weights = getattr(layer, "embeddings", None)
    if weights is None:
        raise TypeError(f"expected a built keras.layers.Embedding, got {type(layer).__name__}")
    matrix = np.asarray(weights.numpy() if hasattr(weights, "numpy") else weights, dtype=np.float32)
    if keys is None:
        keys = np.arange(matrix.shape[0], dtype=np.int64)
    return save_table(folder, keys, matrix)
