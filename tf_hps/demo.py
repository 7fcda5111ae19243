"""End-to-end demo on embedded defaults (no server needed).

    python -m tf_hps.demo [--workdir DIR] [--rows N] [--dim D] [--serve-env KEY=VALUE ...]

1. trains nothing: a Keras Embedding with random weights stands in for a
   trained table, and its weights are written as an HPS table folder;
2. writes an HPS JSON config (in-process hash map, CPU cache of 20 % rows);
3. builds the same small model twice: once with the native Embedding, once
   with ``hps.LookupLayer``; checks the looked-up rows are the Embedding's,
   bit for bit, and the predictions identical (the same computation: the
   same dense layers on the same batches in one process);
4. exports the HPS model as a SavedModel (endpoints ``serve``: predictions,
   and ``lookup``: the rows), deletes the config file, and serves the export
   from a fresh Python process that loads only the op library (no
   ``import tf_hps``); checks the served rows bit for bit, and the served
   predictions to within float32 rounding of the in-process ones (another
   process at another batch shape may sum the dense layers in another
   order; ``tf_hps.testing.rounding_bound`` gives the bound);
5. prints lookups per second of the layer and of ``tf.nn.embedding_lookup``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up notices out of the demo
os.environ.setdefault("TF_HPS_LOG_LEVEL", "0")  # but show tf_hps's own (base/log.h: it follows TF's otherwise)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_hps as hps  # noqa: E402
from tf_hps import testing  # noqa: E402

_SERVE_SCRIPT = """
import sys, numpy as np, tensorflow as tf
tf.load_op_library(sys.argv[1])
model = tf.saved_model.load(sys.argv[2])
ids = tf.constant(np.load(sys.argv[3]))
np.savez(sys.argv[4], predictions=model.serve(ids).numpy(), rows=model.lookup(ids).numpy())
"""


def build_model(embedding: keras.layers.Layer, slots: int) -> keras.Model:
    ids = keras.Input(shape=(slots,), dtype="int64", name="ids")
    x = keras.layers.Flatten(name="flatten")(embedding(ids))
    x = keras.layers.Dense(8, activation="relu", kernel_initializer="glorot_uniform", name="hidden")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    return keras.Model(ids, out)


def export_with_lookup(model: keras.Model, lookup: keras.layers.Layer, slots: int, path: str) -> None:
    """A SavedModel with two endpoints: serve (the predictions) and lookup (the rows)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = [tf.TensorSpec([None, slots], tf.int64, name="ids")]
    archive.add_endpoint("serve", tf.function(model.__call__, input_signature=spec))
    archive.add_endpoint("lookup", tf.function(lookup.__call__, input_signature=spec))
    archive.write_out(path, verbose=False)


def lookups_per_second(fn, ids, repeats: int = 20) -> float:
    fn(ids)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(ids)
        times.append(time.perf_counter() - start)
    return ids.shape.num_elements() / float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where to write tables and exports (default: a temp dir)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in the serving process only, e.g. ONEDNN_MAX_CPU_ISA=AVX2 or TF_ENABLE_ONEDNN_OPTS=0 "
                        "to serve on other float kernels than this process's, as another machine would")
    args = parser.parse_args(argv)
    serve_env = {}
    for item in args.serve_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--serve-env wants KEY=VALUE, got {item!r}")
        serve_env[name] = value
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tf_hps_demo_"))
    os.makedirs(workdir, exist_ok=True)
    slots, batch = 26, 1024
    rng = np.random.default_rng(0)

    print(f"[1/5] table: {args.rows} rows x {args.dim} floats -> {workdir}/table0")
    native = keras.layers.Embedding(args.rows, args.dim, name="native_embedding")
    native.build((None,))
    hps.save_embedding_layer(os.path.join(workdir, "table0"), native)

    config_path = os.path.join(workdir, "ps_config.json")
    with open(config_path, "w") as f:
        json.dump(
            {
                "supportlonglong": True,
                "models": [
                    {
                        "model": "demo",
                        "sparse_files": ["table0"],
                        "embedding_table_names": ["items"],
                        "embedding_vecsize_per_table": [args.dim],
                        "maxnum_catfeature_query_per_table_per_sample": [slots],
                        "default_value_for_each_table": [0.0],
                        "deployed_device_list": [0],
                        "max_batch_size": batch,
                        "gpucache": True,
                        "gpucacheper": 0.2,
                    }
                ],
                "volatile_db": {"type": "hash_map", "num_partitions": 4},
            },
            f,
            indent=2,
        )
    print(f"[2/5] config: {config_path}")

    hps.Init(global_batch_size=batch, ps_config_file=config_path)
    native_model = build_model(native, slots)
    lookup = hps.LookupLayer("demo", 0, args.dim, tf.float32, config_path)
    hps_model = build_model(lookup, slots)
    hps_model.set_weights(native_model.get_weights()[1:])  # same dense weights; the table lives in HPS
    # Power-law keys, as in recommendation traffic.
    ids = ((rng.zipf(1.2, size=(batch, slots)) - 1) % args.rows).astype(np.int64)
    rows = lookup(tf.constant(ids)).numpy()
    testing.assert_bitwise_equal(rows, native(tf.constant(ids)).numpy(), "rows of the HPS model")
    expected = native_model.predict(ids, verbose=0)
    got = hps_model.predict(ids, verbose=0)
    # The same computation on both sides (the same dense layers, batches and process): the same bits.
    testing.assert_bitwise_equal(got, expected, "predictions of the HPS model")
    unknown = lookup(tf.constant([args.rows + 7], tf.int64)).numpy()
    assert (unknown == 0.0).all(), "an unknown key must get the table default"
    print(f"[3/5] rows and predictions: HPS == native Keras, bit for bit, on all {batch} samples; "
          "unknown keys get the default")

    export_dir = os.path.join(workdir, "export")
    export_with_lookup(hps_model, lookup, slots, export_dir)
    moved = export_dir + "_moved"
    if os.path.exists(moved):
        subprocess.run(["rm", "-rf", moved], check=True)
    os.rename(export_dir, moved)
    os.remove(config_path)
    np.save(os.path.join(workdir, "ids.npy"), ids)
    out_path = os.path.join(workdir, "served.npz")
    subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT, hps.op_library_path(), moved, os.path.join(workdir, "ids.npy"), out_path],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **serve_env},
    )
    served = np.load(out_path)
    testing.assert_bitwise_equal(served["rows"], rows, "served rows")
    bound = testing.rounding_bound(rows, [hps_model.get_layer(n) for n in ("flatten", "hidden", "score")])
    testing.assert_within_rounding(served["predictions"], got, bound, "served predictions")
    difference = float(np.abs(served["predictions"] - got).max())
    print("[4/5] SavedModel moved, config deleted, served by a process without tf_hps: rows identical, "
          f"predictions within float32 rounding (|difference| {difference:.1e}, allowed {2 * bound.max():.1e})")

    dense = tf.constant(native.embeddings.numpy())
    keys = tf.constant(ids)
    hps_rate = lookups_per_second(tf.function(lambda k: lookup(k)), keys)
    tf_rate = lookups_per_second(tf.function(lambda k: tf.nn.embedding_lookup(dense, k)), keys)
    print(
        f"[5/5] lookups/s at batch {batch}x{slots}, D={args.dim}: LookupLayer {hps_rate / 1e6:.1f} M, "
        f"tf.nn.embedding_lookup {tf_rate / 1e6:.1f} M (ratio {hps_rate / tf_rate:.2f})"
    )
    print("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
