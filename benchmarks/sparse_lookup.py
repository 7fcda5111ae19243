"""SparseLookupLayer vs tf.nn.embedding_lookup_sparse on a dense tf.Variable holding the same table.

    python benchmarks/sparse_lookup.py [--rows 200000] [--dims 16,128] [--batches 1024,16384]
        [--ids-per-row 26] [--alpha 1.2] [--repeats 30]

Each batch is a RaggedTensor of rows of 1 to 2 x --ids-per-row keys (zipf(alpha) ranks). Three
ways of calling, each on both sides: no weights (our fused op), weights (a weight per key), and
max_norm (TF's own clipping and segment ops over the distinct rows, on our side too). Both sides'
outputs are consumed by the next op, a reduce_sum inside the same tf.function, as a model's next
layer would read them. Timed in turns (A, B, A, B, ...), garbage collector off, medians. Prints a
Markdown table of ms per batch and the ratio tf.nn.embedding_lookup_sparse / SparseLookupLayer
(above 1: ours is faster). Both sides' outputs are checked bit for bit first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time

import numpy as np
import tensorflow as tf

import tf_hps as hps


def timed_in_turns(fns, args, repeats):
    gc.collect()
    gc.disable()
    times = [[] for _ in fns]
    try:
        for _ in range(repeats):
            for fn, log in zip(fns, times):
                start = time.perf_counter()
                fn(*args).numpy()  # a scalar: the consumed output, not a copy of it
                log.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return [float(np.median(log)) for log in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dims", default="16,128")
    parser.add_argument("--batches", default="1024,16384")
    parser.add_argument("--ids-per-row", type=int, default=26)
    parser.add_argument("--alpha", type=float, default=1.2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; TF {tf.__version__}")
    print(f"table {args.rows} rows, keys zipf({args.alpha}), 1..{2 * args.ids_per_row} keys per row, L1 20 %")
    print()
    print("| D | batch (rows) | call | SparseLookupLayer ms | tf.nn.embedding_lookup_sparse ms | ratio |")
    print("|---:|---:|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    work = tempfile.mkdtemp(prefix="tf_hps_bench_")
    for dim in (int(d) for d in args.dims.split(",")):
        table = rng.standard_normal((args.rows, dim)).astype(np.float32)
        folder = os.path.join(work, f"t{dim}")
        hps.save_table(folder, np.arange(args.rows), table)
        config = os.path.join(work, f"ps{dim}.json")
        with open(config, "w") as f:
            json.dump({"supportlonglong": True, "models": [{
                "model": f"bench{dim}", "sparse_files": [folder], "embedding_vecsize_per_table": [dim],
                "maxnum_catfeature_query_per_table_per_sample": [2 * args.ids_per_row],
                "default_value_for_each_table": [0.0], "deployed_device_list": [0], "gpucacheper": 0.2}]}, f)
        layer = hps.SparseLookupLayer(f"bench{dim}", 0, dim, tf.float32, config)
        dense = tf.Variable(table)
        calls = {
            "no weights, mean": (lambda ids, w: layer(ids, combiner="mean"),
                                 lambda ids, w: tf.nn.embedding_lookup_sparse(dense, ids, None, combiner="mean")),
            "weights, sum": (lambda ids, w: layer(ids, w, combiner="sum"),
                             lambda ids, w: tf.nn.embedding_lookup_sparse(dense, ids, w, combiner="sum")),
            "max_norm 1, mean": (lambda ids, w: layer(ids, combiner="mean", max_norm=1.0),
                                 lambda ids, w: tf.nn.embedding_lookup_sparse(dense, ids, None, combiner="mean",
                                                                              max_norm=1.0)),
        }
        for batch in (int(b) for b in args.batches.split(",")):
            lengths = rng.integers(1, 2 * args.ids_per_row + 1, size=batch)
            keys = (rng.zipf(args.alpha, size=lengths.sum()) - 1) % args.rows
            weights = rng.uniform(0.5, 1.5, size=lengths.sum()).astype(np.float32)
            ragged = tf.RaggedTensor.from_row_lengths(tf.constant(keys, tf.int64), lengths)
            sparse_ids = ragged.to_sparse()
            sparse_w = tf.RaggedTensor.from_row_lengths(tf.constant(weights), lengths).to_sparse()
            for name, (ours, theirs) in calls.items():
                got = ours(sparse_ids, sparse_w).numpy()
                want = theirs(sparse_ids, sparse_w).numpy()
                assert got.tobytes() == want.tobytes(), f"{name}: outputs differ"
                ours_fn = tf.function(lambda ids, w, f=ours: tf.reduce_sum(f(ids, w)))
                theirs_fn = tf.function(lambda ids, w, f=theirs: tf.reduce_sum(f(ids, w)))
                for _ in range(3):  # trace and warm both
                    ours_fn(sparse_ids, sparse_w), theirs_fn(sparse_ids, sparse_w)
                t_ours, t_theirs = timed_in_turns([ours_fn, theirs_fn], (sparse_ids, sparse_w), args.repeats)
                print(f"| {dim} | {batch:,} | {name} | {t_ours * 1e3:.2f} | {t_theirs * 1e3:.2f} | "
                      f"{t_theirs / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
