"""Where the time of the DLRM-like model goes: perf samples of each model at each batch, by category.

    python benchmarks/profile.py [--batches 32,1024,16384] [--seconds 6] [--scale 0.02] [--dim 16]

For each model (native Keras Embedding; one ``hps.FusedLookupLayer`` with ``fuse_embedding_table``; a
``hps.LookupLayer`` per table) and batch size, a child process builds the model of ``workload.py``
(in RAM: L1 of 20 % of the rows, hash-map VDB of every row), warms it, and calls it in a loop while
``perf record -g`` samples it for ``--seconds``. Each sample is put in one category by the frames of
its stack (the first tf_hps frame from the leaf decides for samples in our op; else TF's kernels by
name), and the table gives each category in ms per call: its share of the samples times the CPU time
per call. Prints Markdown. Needs ``perf`` (Debian package linux-perf) and the right to use it (root,
or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CHILD = r'''
import os, sys, time
sys.path.insert(0, {here!r}); sys.path.insert(0, {repo!r})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, tensorflow as tf
import workload as wl
kind, batch, seconds, scale, dim, work = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
w = wl.make_workload(scale, dim, 1.2, 0)
paths = w.save_tables(os.path.join(work, "tables"))
cfg = wl.ps_config(os.path.join(work, kind + ".json"), "prof_" + kind, paths, dim, gpucacheper=0.2,
                   volatile_db={{"type": "hash_map", "num_partitions": 8}}, fuse=kind == "hps_fused")
model = wl.dlrm_model(w, kind, config=None if kind == "native" else cfg, model_name="prof_" + kind)
fn = tf.function(lambda d, i: model({{"dense": d, "ids": i}}))
batches = [tuple(tf.constant(a) for a in b) for b in w.batches(batch, 8, seed=batch)]
for b in w.batches(4096, 20, seed=1):
    fn(tf.constant(b[0]), tf.constant(b[1])).numpy()
for b in batches:
    fn(*b).numpy()
print("ready", flush=True)
calls, cpu0, t0 = 0, time.process_time(), time.perf_counter()
while time.perf_counter() - t0 < seconds:
    fn(*batches[calls % 8]).numpy()
    calls += 1
print(calls, time.perf_counter() - t0, time.process_time() - cpu0, flush=True)
'''

# (category, substrings of a frame's symbol); the first tf_hps frame from the leaf is matched first.
OURS = [
    ("tf_hps: L1 probe and row copies", ("QueryPositions", "FindOptimistic", "CopyChecked", "LookupMany")),
    ("tf_hps: L1 inserts", ("Replace", "InsertIntoCache", "BackgroundWorker")),
    ("tf_hps: below L1 (dedup, hash map, copies)", ("ResolveMisses", "FetchFromDatabases", "HashMapBackend",
                                                     "Dedup", "LookupDatabases")),
]
TF = [
    ("TF: gathers (native's embeddings, the interaction's columns)", ("HandleCopies", "Gather")),
    ("TF: column slices of the ids", ("Slice", "TensorBlockIO", "StridedSlice")),
    ("TF: stack and concat", ("Concat", "Pack")),
    ("TF: matmul, interaction, MLP", ("dnnl", "Matmul", "MatMul", "gemm", "sgemm", "Contraction", "jit_", "BiasAdd",
                                      "Relu", "Sigmoid", "Reduc", "Mul", "Tile", "Transpose")),
]


def categorize(frames: list[str]) -> str:
    for sym in frames:  # leaf first
        if "tf_hps::" in sym:
            for name, keys in OURS:
                if any(k in sym for k in keys):
                    return name
            return "tf_hps: op glue (outputs, handles, key widening)"
    for name, keys in TF:
        if any(k in sym for sym in frames for k in keys):
            return name
    leaf = frames[0] if frames else ""
    if leaf.startswith("[k]"):
        return "kernel (scheduling, page faults)"
    if "libpython" in leaf or "(/usr/bin/python" in leaf or "python3" in leaf.split("(")[-1]:
        return "Python (the call loop, tf.function dispatch)"
    if "libtensorflow" in leaf or "_pywrap_tensorflow" in leaf:
        return "TF runtime and other TF kernels"
    if "[unknown]" in leaf:
        return "JIT code (oneDNN matmuls) and frames without symbols"
    if "libc.so" in leaf or "libstdc++" in leaf:
        return "libc (memcpy, malloc) outside our op"
    return "other"


def samples_by_category(data: str) -> collections.Counter:
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"], capture_output=True, text=True,
                         check=True).stdout
    counts: collections.Counter = collections.Counter()
    frames: list[str] = []
    for line in out.splitlines() + [""]:
        line = line.strip()
        if not line:
            if frames:
                counts[categorize(frames)] += 1
            frames = []
            continue
        parts = line.split(None, 1)
        sym = parts[1] if len(parts) > 1 else ""  # "symbol (dso)"
        if "[kernel.kallsyms]" in sym and not frames:
            sym = "[k]" + sym
        frames.append(sym)
    return counts


def profile(kind: str, batch: int, args, work: str) -> dict:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=HERE, repo=REPO), kind, str(batch),
                              str(args.seconds), str(args.scale), str(args.dim), work],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().strip() == "ready"
    data = os.path.join(work, f"{kind}_{batch}.perf")
    subprocess.run(["perf", "record", "-q", "-F", "1999", "-g", "-o", data, "-p", str(child.pid), "--", "sleep",
                    str(args.seconds - 0.5)], check=True, stderr=subprocess.DEVNULL)
    calls, wall, cpu = child.stdout.readline().split()
    child.wait()
    counts = samples_by_category(data)
    total = sum(counts.values())
    cpu_ms = float(cpu) * 1e3 / int(calls)
    return {"kind": kind, "batch": batch, "wall_ms": float(wall) * 1e3 / int(calls), "cpu_ms": cpu_ms,
            "ms": {c: cpu_ms * n / total for c, n in counts.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="32,1024,16384")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--scale", type=float, default=0.02)
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("perf is not installed (apt-get install linux-perf)", file=sys.stderr)
        return 1
    kinds = ("native", "hps_fused", "hps")
    work = tempfile.mkdtemp(prefix="tf_hps_profile_")
    try:
        rows = [profile(kind, int(b), args, work) for b in args.batches.split(",") for kind in kinds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cats = [c for c, _ in OURS] + ["tf_hps: op glue (outputs, handles, key widening)"] + [c for c, _ in TF] + [
        "JIT code (oneDNN matmuls) and frames without symbols", "libc (memcpy, malloc) outside our op",
        "TF runtime and other TF kernels", "Python (the call loop, tf.function dispatch)",
        "kernel (scheduling, page faults)", "other"]
    names = {"native": "native", "hps_fused": "fused", "hps": "per table"}
    print(f"DLRM-like model, D={args.dim}, scale {args.scale}, in RAM (L1 20 %); {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d')}\n")
    for b in args.batches.split(","):
        rs = [r for r in rows if r["batch"] == int(b)]
        print(f"batch {int(b):,}: ms per call\n")
        print("| | " + " | ".join(names[r["kind"]] for r in rs) + " |")
        print("|---|" + "---:|" * len(rs))
        print("| wall time | " + " | ".join(f"{r['wall_ms']:.2f}" for r in rs) + " |")
        print("| CPU time (both cores) | " + " | ".join(f"{r['cpu_ms']:.2f}" for r in rs) + " |")
        for c in cats:
            if any(r["ms"].get(c, 0) >= 0.005 for r in rs):
                print(f"| {c} | " + " | ".join(f"{r['ms'].get(c, 0):.2f}" for r in rs) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
