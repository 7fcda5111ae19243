"""Freshness and throughput of online updates, end to end, across processes.

    python benchmarks/update_freshness.py [--rounds 50] [--rows 1000000]

Starts a throwaway redis-server, exports a Keras model with an hps.LookupLayer,
and serves it from another process that loads the SavedModel (no tf_hps Python
code: the op library and tf.saved_model.load only) and looks a probe key up in
a loop. This process publishes a new row for the probe key, flushes, and the
server reports when it first returned that row:

- freshness: time from flush() returning to the served value changing (p50, p99);
- throughput: rows/s applied by the server while --rows rows are published at once
  (time from the first publish until the server's rows_updated counter has them all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

SERVER = r"""
import sys, time
import tensorflow as tf
tf.load_op_library(sys.argv[1])
model = tf.saved_model.load(sys.argv[2])
fn = model.signatures["serve"]
name = list(fn.structured_input_signature[1])[0]
probe = tf.constant([[int(sys.argv[3])]], tf.int64)
print("ready", flush=True)
for line in sys.stdin:
    command = line.split()
    if command[0] == "watch":            # report when the probe's first element becomes this value
        want = float(command[1])
        while True:
            value = float(list(fn(**{name: probe}).values())[0].numpy().reshape(-1)[0])
            if value == want:
                print("seen", time.time(), flush=True)
                break
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--table_rows", type=int, default=100_000)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    import tf_hps as hps
    from redis_servers import start_standalone

    work = tempfile.mkdtemp(prefix="tf_hps_updates_")
    redis = start_standalone(work)
    try:
        keys = np.arange(args.table_rows)
        hps.save_table(os.path.join(work, "t0"), keys, np.zeros((args.table_rows, args.dim), np.float32))
        config = os.path.join(work, "ps.json")
        with open(config, "w") as f:
            json.dump({"supportlonglong": True,
                       "update_source": {"type": "redis_stream", "address": redis.address},
                       "models": [{"model": "fresh", "sparse_files": [os.path.join(work, "t0")],
                                   "embedding_vecsize_per_table": [args.dim],
                                   "maxnum_catfeature_query_per_table_per_sample": [1],
                                   "default_value_for_each_table": [0.0], "deployed_device_list": [0],
                                   "gpucacheper": 0.5}]}, f)
        inputs = keras.Input(shape=(1,), dtype="int64")
        model = keras.Model(inputs, hps.LookupLayer("fresh", 0, args.dim, tf.float32, config)(inputs))
        export = os.path.join(work, "export")
        model.export(export, verbose=False)

        probe = 7
        server = subprocess.Popen([sys.executable, "-c", SERVER, hps.op_library_path(), export, str(probe)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert server.stdout.readline().strip() == "ready"
        publisher = hps.UpdatePublisher(config)

        latencies = []
        for round_ in range(1, args.rounds + 1):
            server.stdin.write(f"watch {round_}.0\n")
            server.stdin.flush()
            time.sleep(0.05)  # the server is polling the old value
            publisher.publish("fresh", 0, [probe], np.full((1, args.dim), round_, np.float32))
            publisher.flush()
            flushed = time.time()
            line = server.stdout.readline().split()
            assert line[0] == "seen", line
            latencies.append(float(line[1]) - flushed)

        rows = np.arange(args.rows) % args.table_rows
        vectors = np.ones((args.rows, args.dim), np.float32)
        start = time.time()
        publisher.publish("fresh", 0, rows, vectors)
        publisher.publish("fresh", 0, [probe], np.full((1, args.dim), -1.0, np.float32))  # the last row
        publisher.flush()
        published = time.time()
        server.stdin.write("watch -1.0\n")
        server.stdin.flush()
        line = server.stdout.readline().split()
        applied = float(line[1])
        publisher.close()
        server.stdin.close()
        server.wait(timeout=60)

        ms = np.array(latencies) * 1000
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"TF {tf.__version__}; redis standalone on loopback")
        print(f"\nfreshness over {args.rounds} updates (flush() returned -> other process serves the new row):")
        print(f"| p50 | p99 | max |\n|---:|---:|---:|\n| {np.median(ms):.1f} ms | {np.percentile(ms, 99):.1f} ms "
              f"| {ms.max():.1f} ms |")
        print(f"\nthroughput: {args.rows:,} rows of dimension {args.dim}: published in {published - start:.2f} s "
              f"({args.rows / (published - start) / 1e6:.2f} M rows/s), served by the other process after "
              f"{applied - start:.2f} s ({args.rows / (applied - start) / 1e6:.2f} M rows/s end to end)")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
