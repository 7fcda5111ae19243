"""The benchmark suite: every benchmark in one run, one Markdown report with plots.

    python benchmarks/suite.py [--quick] [--out DIR] [--no-tfra]

`make bench` runs it (about 6 minutes on 2 cores shared with other work, 15 at most) and writes benchmarks/results/:
REPORT.md, e2e.json, peers.json, memory.json, lookup_vs_tf.json, suite.json, *.png, and the per-tier
microbenchmarks' own outputs in benchmarks/results/tiers/. `make bench-quick` runs every part at small
sizes (about a minute) into build/bench-quick/, so it never touches the committed results.

Steps (each a separate process, so one failing is reported and the others still run):
  1. benchmarks/tfra_venv.sh     TFRA 0.8.1 + TF 2.16.2 in build/tfra-venv (idempotent; skipped loudly if it fails)
  2. storage_tiers.py            each tier's fetch vs numpy gather, redis-py, raw hiredis, rocksdict
  3. cache_hit_rate.py           L1 hit rate vs cache size and zipf alpha
  4. lookup_vs_tf.py             LookupLayer vs tf.nn.embedding_lookup
  5. e2e.py                      DLRM-like SavedModels: tf_hps vs native Keras Embedding, p50/p99
  6. peers.py                    one table: vs TFRA (cuckoo, Redis), a naive Python PS, and the limits
  7. memory.py                   memory per tier vs raw size, next to tf_hps.plan_memory
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from machine import cpu_model  # noqa: E402

PY = sys.executable


def steps(quick: bool, out: str, tiers: str) -> list[tuple[str, list[str], int]]:
    """(name, command, timeout seconds)."""
    b = os.path.join(HERE, "")
    if quick:
        return [
            ("storage_tiers", [PY, b + "storage_tiers.py", "--quick", "--no-cluster", "--dims", "16",
                               "--batches", "1024,16384", "--out", tiers], 120),
            ("cache_hit_rate", [PY, b + "cache_hit_rate.py", "--quick", "--sizes", "1,5,20,100",
                                "--warmup", "300", "--measure", "100", "--out", tiers], 120),
            ("lookup_vs_tf", [PY, b + "lookup_vs_tf.py", "--rows", "50000", "--repeats", "10",
                              "--batches", "1024,16384", "--out", out], 120),
            ("e2e", [PY, b + "e2e.py", "--quick", "--out", out], 180),
            ("peers", [PY, b + "peers.py", "--quick", "--out", out], 180),
            ("memory", [PY, b + "memory.py", "--quick", "--out", out], 120),
        ]
    return [
        ("storage_tiers", [PY, b + "storage_tiers.py", "--repeats", "11", "--min-time", "0.1", "--out", tiers], 300),
        ("cache_hit_rate", [PY, b + "cache_hit_rate.py", "--rows", "500000", "--warmup", "3000", "--measure", "500",
                            "--out", tiers], 240),
        ("lookup_vs_tf", [PY, b + "lookup_vs_tf.py", "--repeats", "21", "--out", out], 180),
        ("e2e", [PY, b + "e2e.py", "--out", out], 420),
        ("peers", [PY, b + "peers.py", "--out", out], 300),
        ("memory", [PY, b + "memory.py", "--out", out], 240),
    ]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "tensorflow", "keras", "redis", "hiredis", "rocksdict", "matplotlib"):
        for dist in (pkg, f"{pkg}-cpu"):
            try:
                out[pkg] = md.version(dist)
                break
            except md.PackageNotFoundError:
                out[pkg] = "not installed"
    try:
        import storage_tiers as st
        v = st.versions()
        out.update({"redis-server": v["redis-server"], "hiredis (C)": v["hiredis (C)"], "librocksdb": v["librocksdb"]})
    except Exception as e:  # noqa: BLE001 (the report says what is missing)
        out["storage versions"] = f"unknown ({e})"
    try:
        out["gcc"] = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        out["tf_hps commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="default benchmarks/results (quick: build/bench-quick)")
    parser.add_argument("--no-tfra", action="store_true", help="do not create or use build/tfra-venv")
    parser.add_argument("--only", help="comma-separated step names to run (the report uses what is there)")
    parser.add_argument("--report-only", action="store_true", help="rewrite REPORT.md from the JSON in --out")
    args = parser.parse_args()
    default_out = os.path.join(REPO, "build", "bench-quick") if args.quick else os.path.join(REPO, "benchmarks", "results")
    out = os.path.abspath(args.out or default_out)
    tiers = os.path.join(out, "tiers")
    logs = os.path.join(REPO, "build", "bench-logs", "quick" if args.quick else "full")
    os.makedirs(tiers, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    import report

    if args.report_only:
        report.write(out)
        return 0

    started = time.perf_counter()
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick, "command": "make bench-quick" if args.quick else "make bench",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "load_before": load(), "versions": run_versions(), "steps": {}, "tfra": {},
    }
    print(f"benchmark suite ({'quick' if args.quick else 'full'}) -> {out}; machine {info['machine']['cpu']}, "
          f"{info['machine']['cores']} cores; load average {info['load_before']}", flush=True)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}

    # 1. The TFRA venv.
    no_tfra = args.no_tfra
    if not no_tfra:
        t0 = time.perf_counter()
        with open(os.path.join(logs, "tfra_venv.log"), "w") as f:
            proc = subprocess.run(["bash", os.path.join(HERE, "tfra_venv.sh")], stdout=f, stderr=subprocess.STDOUT,
                                  env=env, timeout=900)
        info["tfra"] = {"venv_ok": proc.returncode == 0, "seconds": round(time.perf_counter() - t0, 1)}
        if proc.returncode != 0:
            no_tfra = True
            tail = open(os.path.join(logs, "tfra_venv.log")).read()[-1500:]
            info["tfra"]["note"] = f"benchmarks/tfra_venv.sh failed (exit {proc.returncode}): {tail}"
            print("!" * 78 + "\n!!! TFRA venv could not be created: the TFRA comparison is SKIPPED. See "
                  f"{logs}/tfra_venv.log\n" + "!" * 78, flush=True)
    else:
        info["tfra"] = {"venv_ok": False, "note": "skipped by --no-tfra"}

    only = set(args.only.split(",")) if args.only else None
    previous_total = 0.0
    if only:  # keep the other steps' records of the run this one completes
        previous = report._load(os.path.join(out, "suite.json")) or {}
        info["steps"] = {k: v for k, v in previous.get("steps", {}).items() if k not in only}
        info["partial_rerun"] = {"steps": sorted(only), "date": info["date"], "load_before": info["load_before"]}
        for k in ("date", "load_before", "tfra"):
            if k in previous:
                info[k] = previous[k]
        previous_total = previous.get("total_s", 0.0)
    for name, cmd, timeout in steps(args.quick, out, tiers):
        if only and name not in only:
            continue
        if name == "peers" and no_tfra:
            cmd = cmd + ["--no-tfra"]
        t0 = time.perf_counter()
        log_path = os.path.join(logs, f"{name}.log")
        shown = " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown.split(' ', 1)[1]}", flush=True)
        try:
            with open(log_path, "w") as f:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        seconds = round(time.perf_counter() - t0, 1)
        info["steps"][name] = {"rc": rc, "seconds": seconds, "load_after": load(),
                               "log": os.path.relpath(log_path, REPO), "command": shown}
        status = "ok" if rc == 0 else f"FAILED ({rc}); see {log_path}"
        print(f"           {name}: {status} in {seconds:.0f} s; load average {load()}", flush=True)
        if rc != 0:
            info["steps"][name]["tail"] = open(log_path, errors="replace").read()[-2000:]
    info["load_after"] = load()
    info["total_s"] = round(previous_total + time.perf_counter() - started, 1)
    with open(os.path.join(out, "suite.json"), "w") as f:
        json.dump(info, f, indent=1)
    report.write(out)
    print(f"suite done in {info['total_s']:.0f} s; report: {os.path.join(out, 'REPORT.md')}", flush=True)
    failed = [n for n, s in info["steps"].items() if s["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
