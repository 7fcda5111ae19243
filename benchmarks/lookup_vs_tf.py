"""LookupLayer vs tf.nn.embedding_lookup on a dense tf.Variable holding the same table.

    python benchmarks/lookup_vs_tf.py [--rows 1000000] [--dim 128] [--alpha 1.2] [--repeats 30] [--out DIR]

Keys are power-law distributed (rank ~ zipf(alpha)), as recommendation
traffic is. Prints a Markdown table of median lookups/s per batch size and the
ratio LookupLayer / tf.nn.embedding_lookup, measured in the same run, with the output
read three ways: not at all (the call's return), by a reduce_sum, by a Dense layer. A second
LookupLayer serves the same table from the hash map alone (``gpucache: false``), timed in the same
turns: the goal is that it is no slower than with L1;
with --out, also writes lookup_vs_tf.json there (benchmarks/suite.py reads it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import tf_hps as hps


def median_rates(fns, ids, repeats):
    """Median keys/s of each function, timed in turns (A, B, A, B, ...) so that drift in the
    machine's speed during the run affects both alike. Python's garbage collector is off while
    timing (as in timeit), so that its passes do not land on one side's calls by chance.

    A call is timed until the tf.function returns its tensor: CPU ops run synchronously in eager
    mode, so the lookup is done by then. Not until `.numpy()`: that copies the whole output
    (EagerTensor.numpy() returns a copy; 32 MiB at 64k keys of D=128), the same copy on both
    sides, which a model never makes and which would only dilute the ratio."""
    first = [fn(ids).numpy() for fn in fns]
    for other in first[1:]:  # the sides answer alike (the table has no unknown keys)
        np.testing.assert_array_equal(first[0], other)
    times = [[] for _ in fns]
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, log in zip(fns, times):
                start = time.perf_counter()
                fn(ids)
                log.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return [ids.shape.num_elements() / float(np.median(log)) for log in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=1.2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", default="1024,16384,65536")
    parser.add_argument("--gpucacheper", type=float, default=0.2)
    parser.add_argument("--out", help="folder for lookup_vs_tf.json")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="tf_hps_bench_")
    rng = np.random.default_rng(0)
    table = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    hps.save_table(os.path.join(work, "t0"), np.arange(args.rows), table)
    config = os.path.join(work, "ps.json")
    model = {"sparse_files": ["t0"], "embedding_vecsize_per_table": [args.dim],
             "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [0.0],
             "deployed_device_list": [0], "max_batch_size": max(int(b) for b in args.batches.split(","))}
    with open(config, "w") as f:
        json.dump({"supportlonglong": True, "models": [
            {"model": "bench", "gpucacheper": args.gpucacheper, **model},
            {"model": "bench_no_l1", "gpucache": False, **model}]}, f)
    layer = hps.LookupLayer("bench", 0, args.dim, tf.float32, config)
    layer_no_l1 = hps.LookupLayer("bench_no_l1", 0, args.dim, tf.float32, config)
    dense = tf.Variable(table)
    # What reads the output, as the next op of a model would: nothing (the call's return alone), a sum
    # of every value, a Dense layer. A lookup that leaves work for its reader (say, output written
    # past the cache) wins the first row and loses the others.
    next_layer = keras.layers.Dense(64)
    next_layer.build((None, args.dim))
    consumers = {"returned": lambda out: out, "reduce_sum": tf.reduce_sum, "Dense(64)": next_layer}

    def pair(consume):
        @tf.function
        def ours(k):
            return consume(layer(k))

        @tf.function
        def ours_no_l1(k):
            return consume(layer_no_l1(k))

        @tf.function
        def theirs(k):
            return consume(tf.nn.embedding_lookup(dense, k))
        return ours, ours_no_l1, theirs

    pairs = {name: pair(consume) for name, consume in consumers.items()}

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; TF {tf.__version__}")
    print(f"table {args.rows} x {args.dim}, keys zipf({args.alpha}), L1 {args.gpucacheper:.0%}, "
          f"median of {args.repeats}\n")
    print("| keys per call | output read by | LookupLayer (M keys/s) | without L1 (M keys/s) | "
          "tf.nn.embedding_lookup (M keys/s) | ratio | without L1 |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        ids = tf.constant((rng.zipf(args.alpha, size=batch) - 1) % args.rows, tf.int64)
        for name, (hps_fn, no_l1_fn, tf_fn) in pairs.items():
            ours, no_l1, theirs = median_rates([hps_fn, no_l1_fn, tf_fn], ids, args.repeats)
            print(f"| {batch} | {name} | {ours / 1e6:.1f} | {no_l1 / 1e6:.1f} | {theirs / 1e6:.1f} | "
                  f"{ours / theirs:.2f} | {no_l1 / theirs:.2f} |")
            results.append({"batch": batch, "consumer": name, "ours_keys_per_s": ours,
                            "ours_no_l1_keys_per_s": no_l1, "tf_keys_per_s": theirs,
                            "ratio": ours / theirs, "ratio_no_l1": no_l1 / theirs})
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "lookup_vs_tf.json"), "w") as f:
            json.dump({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                       "tensorflow": tf.__version__,
                       "settings": {k: v for k, v in vars(args).items() if k != "out"},
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
