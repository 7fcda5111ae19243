"""A Criteo-like synthetic recommendation workload: tables, key batches and a DLRM-like Keras model.

    python benchmarks/workload.py --out DIR [--scale 0.01] [--dim 16] [--alpha 1.2]   # writes the tables

* 26 categorical tables with the cardinalities of the Criteo Kaggle (Display Advertising Challenge)
  data set, multiplied by ``scale`` (at least ``min_rows`` rows each). Row i of table t has key i, so
  the same array serves ``keras.layers.Embedding`` (row i) and the HPS table file (key i).
* Keys per table: ranks drawn from a zipf(alpha) law truncated to the table's rows (sampled exactly
  from its CDF), mapped to rows through a fixed random permutation, so hot rows are scattered.
* Tables are written in the HPS file format with ``tf_hps.save_table`` (``key``, ``emb_vector``).
* ``dlrm_model``: 13 dense features -> bottom MLP; 26 embeddings; pairwise dot interaction of the
  27 vectors; top MLP -> click probability. ``embedding="hps"`` looks the tables up with
  ``hps.LookupLayer`` (one per table), ``embedding="native"`` with ``keras.layers.Embedding`` holding
  the very same arrays; the dense weights of both are identical (``copy_dense_weights``).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np

# Distinct values of the 26 categorical columns C1..C26 of the Criteo Kaggle Display Advertising
# Challenge training set (train.txt, 45,840,617 samples; 33,762,577 values in all), as counted by the
# preprocessing of Meta's DLRM reference implementation for its `--data-set=kaggle` runs and quoted
# widely since (e.g. as `ln_emb` of DLRM Kaggle models). Public knowledge; not in shared/reference/.
CRITEO_KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
NUM_DENSE = 13
NUM_TABLES = len(CRITEO_KAGGLE_CARDINALITIES)


def cardinalities(scale: float, min_rows: int = 4) -> list[int]:
    """Rows per table: the Criteo Kaggle cardinality times ``scale``, at least ``min_rows``."""
    return [max(min_rows, int(round(c * scale))) for c in CRITEO_KAGGLE_CARDINALITIES]


class ZipfKeys:
    """Keys of one table: rank ~ zipf(alpha) truncated to ``rows`` (exact CDF sampling), rank r -> row perm[r]."""

    def __init__(self, rows: int, alpha: float, rng: np.random.Generator):
        weights = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
        self.cdf = np.cumsum(weights)
        self.cdf /= self.cdf[-1]
        self.perm = rng.permutation(rows).astype(np.int64)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        ranks = np.searchsorted(self.cdf, rng.random(n), side="right")
        return self.perm[np.minimum(ranks, self.perm.size - 1)]


@dataclass
class Workload:
    """Tables and a generator of (dense, ids) batches for the Criteo-like model."""

    scale: float
    dim: int
    alpha: float
    rows: list[int]
    tables: list[np.ndarray]          # (rows[t], dim) float32, row i = key i
    samplers: list[ZipfKeys]
    seed: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the table files: 8-byte key + 4*dim value bytes per row."""
        return self.total_rows * (8 + 4 * self.dim)

    def batches(self, batch: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``count`` batches of (dense (batch, 13) float32, ids (batch, 26) int64)."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(count):
            dense = rng.standard_normal((batch, NUM_DENSE)).astype(np.float32)
            ids = np.stack([s.draw(batch, rng) for s in self.samplers], axis=1)
            out.append((dense, ids))
        return out

    def save_tables(self, folder: str) -> list[str]:
        """Writes every table as an HPS table folder (``t00`` .. ``t25``) and returns their paths."""
        import tf_hps as hps
        paths = []
        for t, table in enumerate(self.tables):
            path = os.path.join(folder, f"t{t:02d}")
            hps.save_table(path, np.arange(table.shape[0], dtype=np.int64), table)
            paths.append(path)
        return paths


def make_workload(scale: float, dim: int, alpha: float, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    rows = cardinalities(scale)
    tables = [(rng.standard_normal((n, dim)) * 0.05).astype(np.float32) for n in rows]
    samplers = [ZipfKeys(n, alpha, rng) for n in rows]
    return Workload(scale, dim, alpha, rows, tables, samplers, seed)


def with_alpha(w: Workload, alpha: float, seed: int) -> Workload:
    """The same tables with keys of another zipf exponent (new hot rows)."""
    rng = np.random.default_rng(seed)
    return Workload(w.scale, w.dim, alpha, w.rows, w.tables, [ZipfKeys(n, alpha, rng) for n in w.rows], seed)


def ps_config(path: str, model: str, table_paths: list[str], dim: int, *, gpucacheper: float = 0.1,
              max_batch_size: int = 16384, volatile_db: dict | None = None, persistent_db: dict | None = None,
              extra_model: dict | None = None, fuse: bool = False) -> str:
    """Writes an HPS JSON config for the 26 tables of one model and returns its path (``fuse``: the
    top-level fuse_embedding_table)."""
    n = len(table_paths)
    model_entry = {
        "model": model, "sparse_files": table_paths,
        "embedding_table_names": [f"t{t:02d}" for t in range(n)],
        "embedding_vecsize_per_table": [dim] * n,
        "maxnum_catfeature_query_per_table_per_sample": [1] * n,
        "default_value_for_each_table": [0.0] * n,
        "deployed_device_list": [0], "max_batch_size": max_batch_size,
        "gpucache": True, "gpucacheper": gpucacheper, "hit_rate_threshold": 0.9,
        **(extra_model or {}),
    }
    config = {"supportlonglong": True, "fuse_embedding_table": fuse, "models": [model_entry]}
    if volatile_db is not None:
        config["volatile_db"] = volatile_db
    if persistent_db is not None:
        config["persistent_db"] = persistent_db
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


# --------------------------------------------------------------------------- model


def dlrm_model(workload: Workload, embedding: str, *, config: str | None = None, model_name: str = "criteo",
               bottom: tuple[int, ...] = (64,), top: tuple[int, ...] = (128, 64), seed: int = 0):
    """The DLRM-like Keras model. Inputs: ``dense`` (batch, 13) float32, ``ids`` (batch, 26) int64."""
    import keras
    import tensorflow as tf

    dim = workload.dim
    dense_in = keras.Input(shape=(NUM_DENSE,), dtype="float32", name="dense")
    ids_in = keras.Input(shape=(NUM_TABLES,), dtype="int64", name="ids")
    init = keras.initializers.GlorotUniform(seed=seed)
    x = dense_in
    for i, width in enumerate(bottom):
        x = keras.layers.Dense(width, activation="relu", kernel_initializer=init, name=f"bottom{i}")(x)
    x = keras.layers.Dense(dim, activation="relu", kernel_initializer=init, name=f"bottom{len(bottom)}")(x)

    # The 26 key columns in one op (an unstack, not 26 slices), for every kind of model alike.
    columns = keras.layers.Lambda(lambda v: tf.unstack(v, num=NUM_TABLES, axis=1), name="columns")(ids_in)
    if embedding == "hps":
        import tf_hps as hps
        if config is None:
            raise ValueError("the hps model needs a config")
        vectors = [hps.LookupLayer(model_name, t, dim, tf.float32, config, name=f"emb{t:02d}")(c)
                   for t, c in enumerate(columns)]
    elif embedding == "hps_fused":
        import tf_hps as hps
        if config is None:
            raise ValueError("the hps model needs a config")
        # One tensor with a column per table: the layer unstacks it itself.
        vectors = hps.FusedLookupLayer(model_name, list(range(NUM_TABLES)), dim, tf.float32, config,
                                       name="emb")(ids_in)
    elif embedding == "none":
        # The limit: the same model whose lookups only write their output (each id as a float times ones,
        # no table read), so native / this is the most any lookup can gain on the whole model.
        vectors = [keras.layers.Lambda(lambda v: tf.cast(v[:, None], tf.float32) * tf.ones((dim,)),
                                       name=f"emb{t:02d}")(c) for t, c in enumerate(columns)]
    elif embedding == "native":
        vectors = []
        for t, c in enumerate(columns):
            layer = keras.layers.Embedding(workload.rows[t], dim, name=f"emb{t:02d}")
            vectors.append(layer(c))
    else:
        raise ValueError(f"embedding must be 'hps', 'hps_fused', 'native' or 'none', not {embedding!r}")

    # Dot interaction: the upper triangle (without the diagonal) of the 27 x 27 Gram matrix, and x itself.
    stacked = keras.layers.Lambda(lambda vs: tf.stack(vs, axis=1), name="stack")([x] + vectors)
    n = NUM_TABLES + 1
    rows_i, cols_i = np.triu_indices(n, k=1)
    flat = (rows_i * n + cols_i).astype(np.int32)

    def interact(s):
        gram = tf.matmul(s, s, transpose_b=True)
        return tf.gather(tf.reshape(gram, (-1, n * n)), flat, axis=1)

    pairs = keras.layers.Lambda(interact, name="interaction")(stacked)
    z = keras.layers.Concatenate(name="concat")([x, pairs])
    for i, width in enumerate(top):
        z = keras.layers.Dense(width, activation="relu", kernel_initializer=init, name=f"top{i}")(z)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init, name="click")(z)
    model = keras.Model({"dense": dense_in, "ids": ids_in}, out, name=f"dlrm_{embedding}")
    if embedding == "native":
        for t in range(NUM_TABLES):
            model.get_layer(f"emb{t:02d}").set_weights([workload.tables[t]])
    return model


def copy_dense_weights(src, dst) -> None:
    """Gives ``dst`` the MLP weights of ``src`` (layers of the same names)."""
    for layer in src.layers:
        if layer.name.startswith(("bottom", "top", "click")):
            dst.get_layer(layer.name).set_weights(layer.get_weights())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=1.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    w = make_workload(args.scale, args.dim, args.alpha, args.seed)
    os.makedirs(args.out, exist_ok=True)
    paths = w.save_tables(args.out)
    config = ps_config(os.path.join(args.out, "ps_config.json"), "criteo", paths, args.dim)
    print(f"{len(paths)} tables, {w.total_rows:,} rows x {args.dim} ({w.raw_bytes / 2**20:.1f} MiB) in {args.out}; "
          f"config {config}")


if __name__ == "__main__":
    main()
