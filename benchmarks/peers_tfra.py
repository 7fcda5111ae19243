"""TFRA worker for benchmarks/peers.py: runs in build/tfra-venv (TF 2.16.2 + TFRA 0.8.1), not the project venv.

    build/tfra-venv/bin/python benchmarks/peers_tfra.py      # reads commands from stdin, one JSON per line

It holds TFRA ``dynamic_embedding`` variables (the CPU cuckoo hash table, or the Redis table) and answers
one JSON line per command, so peers.py can time it in turns with its own lookups:

  {"cmd": "load", "name": N, "kind": "cuckoo"|"redis", "keys": PATH.npy, "values": PATH.npy,
   "redis_config": PATH.json}               -> upserts every row; {"seconds": ...}
  {"cmd": "batch", "id": I, "keys": PATH.npy} -> keeps the keys as a tensor
  {"cmd": "dump", "name": N, "id": I, "out": PATH.npy} -> one lookup, written out (checked by the caller)
  {"cmd": "time", "name": N, "id": I, "min_time": S}   -> {"seconds_per_call": ..., "inner": ...}
  {"cmd": "versions"} / {"cmd": "quit"}
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Replies go to the original stdout; everything the libraries print (some print to stdout at import) to stderr.
REPLY = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders_addons as tfra  # noqa: E402
from tensorflow_recommenders_addons import dynamic_embedding as de  # noqa: E402


def main():
    variables, lookups, batches, inner = {}, {}, {}, {}
    reply_to = REPLY
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        out = {}
        if cmd == "versions":
            out = {"tensorflow": tf.__version__, "tfra": tfra.__version__}
        elif cmd == "load":
            keys = np.load(msg["keys"])
            values = np.load(msg["values"])
            kwargs = {}
            if msg["kind"] == "redis":
                kwargs["kv_creator"] = de.RedisTableCreator(
                    config=de.RedisTableConfig(redis_config_abs_dir=msg["redis_config"]))
            else:
                kwargs["init_size"] = int(keys.size)
            var = de.get_variable(msg["name"], key_dtype=tf.int64, value_dtype=tf.float32, dim=values.shape[1],
                                  devices=["/CPU:0"], initializer=0.0, **kwargs)
            start = time.perf_counter()
            chunk = 65536
            for i in range(0, keys.size, chunk):
                var.upsert(tf.constant(keys[i:i + chunk]), tf.constant(values[i:i + chunk]))
            out["seconds"] = time.perf_counter() - start
            out["size"] = int(var.size())
            variables[msg["name"]] = var
            lookups[msg["name"]] = tf.function(lambda k, v=var: v.lookup(k))
        elif cmd == "batch":
            batches[msg["id"]] = tf.constant(np.load(msg["keys"]))
        elif cmd == "dump":
            np.save(msg["out"], lookups[msg["name"]](batches[msg["id"]]).numpy())
        elif cmd == "time":
            fn, ids = lookups[msg["name"]], batches[msg["id"]]
            key = (msg["name"], msg["id"])
            if key not in inner:
                start = time.perf_counter()
                fn(ids).numpy()
                inner[key] = int(msg["min_time"] / max(time.perf_counter() - start, 1e-9)) + 1
            start = time.perf_counter()
            for _ in range(inner[key]):
                fn(ids).numpy()
            out = {"seconds_per_call": (time.perf_counter() - start) / inner[key], "inner": inner[key]}
        elif cmd == "quit":
            break
        else:
            out = {"error": f"unknown command {cmd!r}"}
        reply_to.write(json.dumps(out) + "\n")
        reply_to.flush()


if __name__ == "__main__":
    main()
