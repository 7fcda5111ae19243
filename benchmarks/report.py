"""Writes REPORT.md and the PNG plots of a suite run from the JSON files in its folder.

    python benchmarks/report.py DIR      # e.g. benchmarks/results or build/bench-quick

Reads suite.json, e2e.json, peers.json, memory.json, lookup_vs_tf.json and tiers/{storage_tiers,cache_hit_rate}.json;
a part that is missing or failed is reported as such, never filled in.
"""

from __future__ import annotations

import json
import os
import sys


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f} MiB"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


# --------------------------------------------------------------------------- plots


def _plots(out: str, e2e, peers, memory) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if e2e:
        dims = list(e2e["dims"])
        fig, axes = plt.subplots(2, len(dims), figsize=(5.5 * len(dims), 7), squeeze=False)
        for j, dim in enumerate(dims):
            rows = e2e["dims"][dim]["results"]
            batches = [r["batch"] for r in rows]
            ax = axes[0][j]
            for name, label, style in (("native", "native Keras Embedding", "k-o"),
                                       ("in_ram", "tf_hps, in RAM", "b-s"),
                                       ("vdb_tenth", "tf_hps, VDB = 1/10 + RocksDB", "r-^")):
                if name not in rows[0]["models"]:
                    continue
                ax.plot(batches, [r["models"][name]["p50_ms"] for r in rows], style, label=f"{label} p50")
                ax.plot(batches, [r["models"][name]["p99_ms"] for r in rows], style[0] + ":", alpha=0.5)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"DLRM-like model, D = {dim}: latency (p50 solid, p99 dotted)")
            ax.set_xlabel("batch")
            ax.set_ylabel("ms")
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            ax = axes[1][j]
            ax.plot(batches, [r["ratio_in_ram"] for r in rows], "b-s", label="in RAM, fused (goal >= 1.0, 1.3 from 1k)")
            ax.plot(batches, [r["ratio_vdb_tenth"] for r in rows], "r-^", label="VDB = 1/10, fused (goal >= 0.7)")
            if all("ratio_per_table" in r for r in rows):
                ax.plot(batches, [r["ratio_per_table"] for r in rows], "g-v", label="in RAM, a LookupLayer per table")
            ax.axhline(1.0, color="b", ls="--", lw=0.8)
            ax.axhline(1.3, color="b", ls=":", lw=0.8)
            ax.axhline(0.7, color="r", ls="--", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_ylim(0, max(1.6, max(r["ratio_in_ram"] for r in rows) * 1.1))
            ax.set_xlabel("batch")
            ax.set_ylabel("native p50 / tf_hps p50")
            ax.legend(fontsize=8)
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "e2e.png"), dpi=90)
        plt.close(fig)
        made.append("e2e.png")
    if peers:
        groups = []
        for r in peers["results"]:
            if r["group"] not in groups:
                groups.append(r["group"])
        batches = peers["settings"]["batches"]
        fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 6.5), squeeze=False)
        for j, g in enumerate(groups):
            ax = axes[0][j]
            impls = []
            for r in peers["results"]:
                if r["group"] == g and r["impl"] not in impls:
                    impls.append(r["impl"])
            width = 0.8 / len(impls)
            for i, impl in enumerate(impls):
                vals = [next((r["keys_per_s"] for r in peers["results"] if r["group"] == g and r["impl"] == impl
                              and r["batch"] == b), 0) / 1e6 for b in batches]
                ax.bar([k + i * width for k in range(len(batches))], vals, width, label=impl,
                       hatch="//" if "limit" in impl else None)
            ax.set_xticks([k + 0.4 - width / 2 for k in range(len(batches))], [f"{b:,}" for b in batches])
            ax.set_yscale("log")
            ax.set_xlabel("keys per call")
            ax.set_ylabel("M keys/s (median)")
            ax.set_title(f"{g}")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
            ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "peers.png"), dpi=90)
        plt.close(fig)
        made.append("peers.png")
    if memory:
        rows = memory["results"]
        labels = [f"{r['tier'].split(' (')[0]}\n{r['rows'] // 1000}k x {r['dim']}" for r in rows]
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["measured_bytes"] / r["raw_bytes"] for r in rows], 0.4, label="measured")
        ax.bar([x + 0.2 for x in xs], [r["planned_bytes"] / r["raw_bytes"] for r in rows], 0.4,
               label="tf_hps.plan_memory")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("bytes / raw table bytes")
        ax.set_title("Memory per tier (raw = rows x (8 + 4 D))")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "memory.png"), dpi=90)
        plt.close(fig)
        made.append("memory.png")
    return made


# --------------------------------------------------------------------------- report


def write(out: str) -> str:
    suite = _load(os.path.join(out, "suite.json")) or {}
    e2e = _load(os.path.join(out, "e2e.json"))
    peers = _load(os.path.join(out, "peers.json"))
    memory = _load(os.path.join(out, "memory.json"))
    lvt = _load(os.path.join(out, "lookup_vs_tf.json"))
    tiers = _load(os.path.join(out, "tiers", "storage_tiers.json"))
    hits = _load(os.path.join(out, "tiers", "cache_hit_rate.json"))
    steps = suite.get("steps", {})

    def failed(name: str) -> str | None:
        s = steps.get(name)
        if s is None:
            return "not run in this suite run"
        if s["rc"] != 0:
            return f"FAILED (exit {s['rc']}); log: `{s['log']}`"
        return None

    plots = _plots(out, e2e if not failed("e2e") else None, peers if not failed("peers") else None,
                   memory if not failed("memory") else None)
    m = suite.get("machine", {})
    L: list[str] = []
    quick = suite.get("quick")
    L += ["# tf_hps benchmark report", ""]
    if quick:
        L += ["> **Quick run** (`make bench-quick`): small sizes and few repeats, for checking the suite works. "
              "Its figures are not the project's results; those come from `make bench`.", ""]
    rerun = suite.get("partial_rerun")
    if isinstance(rerun, list):
        rerun = {"steps": rerun, "date": "?", "load_before": "?"}
    L += [f"- command: `{suite.get('command', '?')}` ({suite.get('date', '?')}); run time {suite.get('total_s', 0):.0f} s"
          + (f"; steps {', '.join(rerun['steps'])} re-run on {rerun['date']} (load average {rerun['load_before']})"
             if rerun else ""),
          f"- machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB "
          f"({m.get('platform', '?')})",
          f"- load average (1, 5, 15 min) before: {suite.get('load_before')}, after: {suite.get('load_after')}"
          + (" — **the machine was busy** (other processes shared the cores): ratios are A/B-interleaved and "
             "hold up better than absolute rates" if max((suite.get('load_before') or [0])[0],
                                                          (suite.get('load_after') or [0])[0]) > 1.2 else ""),
          "- versions: " + ", ".join(f"{k} {v}" for k, v in suite.get("versions", {}).items())]
    if peers and peers.get("versions"):
        tv = {k: v for k, v in peers["versions"].items() if k.startswith("TFRA venv")}
        if tv:
            L.append("- peer venv: " + ", ".join(f"{k[len('TFRA venv '):]} {v}" for k, v in tv.items()))
    L += ["- method: every figure is a median, or a ratio of medians, from this one run; implementations compared "
          "with each other are timed in turns (A B A B ...) so that the machine's drift falls on all of them alike; "
          "every implementation's first answer is checked against the table before it is timed.", ""]

    # ---------------------------------------------------------------- summary
    L += ["## Summary", "", "| part | what | figure | target | met? |", "|---|---|---|---|:---:|"]
    if e2e and not failed("e2e"):
        def goal(r, case):
            """(target, met) of one row; rows of an older e2e.json carry no target_* (the goals of then)."""
            target = r.get(f"target_{case}", {"in_ram": 1.0, "vdb_tenth": 0.5}.get(case))
            return target, (None if target is None else r[f"ratio_{case}"] >= target)

        rows_all = [(dim, r) for dim, d in e2e["dims"].items() for r in d["results"]]
        for case, label, pick, target_text in (
                ("in_ram", "tables in RAM (hash map VDB + L1), `FusedLookupLayer`", lambda r: True,
                 ">= 1.0x at every batch"),
                ("in_ram", "the same, batches >= 1,024", lambda r: r["batch"] >= 1024, ">= 1.3x"),
                ("vdb_tenth", "tables 10x the VDB (hash map of 1/10 of the rows + RocksDB), `FusedLookupLayer`",
                 lambda r: True, ">= 0.7x at every batch"),
                ("per_table", "tables in RAM, a `LookupLayer` per table (HPS's model unchanged)", lambda r: True,
                 "(none: measured)")):
            ratios = [(dim, r["batch"], r[f"ratio_{case}"], goal(r, case)) for dim, r in rows_all
                      if pick(r) and f"ratio_{case}" in r]
            if not ratios:
                continue
            worst = min(ratios, key=lambda x: x[2])
            best = max(ratios, key=lambda x: x[2])
            judged = [x for x in ratios if x[3][1] is not None]
            met = sum(bool(x[3][1]) for x in judged)
            L.append(f"| end to end | DLRM-like SavedModel, tf_hps / native Keras Embedding (p50 speed), {label} | "
                     f"{worst[2]:.2f}x (D={worst[0]}, batch {worst[1]:,}) .. {best[2]:.2f}x (D={best[0]}, batch "
                     f"{best[1]:,})" + (f"; {met} of {len(judged)} at or above target" if judged else "") +
                     f" | {target_text} | {_yes(met == len(judged)) if judged else ''} |")
        limits = [(dim, r["batch"], r["ratio_no_lookup"]) for dim, r in rows_all if "ratio_no_lookup" in r]
        if limits:
            L.append("| end to end | the limit beside them: native / the same model whose lookups only write their "
                     "output, reading no table (the most any lookup could gain here) | "
                     + ", ".join(f"{x[2]:.2f}x (D={x[0]}, {x[1]:,})" for x in limits) + " | (none: measured) | |")
        skew = [r for d in e2e["dims"].values() for r in d.get("skew", [])]
        if skew:
            for case in ("in_ram", "vdb_tenth"):
                v = [(r[f"ratio_{case}"], goal(r, case)) for r in skew]
                L.append(f"| end to end | the same, {'in RAM' if case == 'in_ram' else 'VDB = 1/10'}, other key skews "
                         f"(zipf α {', '.join(sorted({str(r['alpha']) for r in skew}))}; batches "
                         f"{', '.join(f'{b:,}' for b in sorted({r['batch'] for r in skew}))}) | {min(x[0] for x in v):.2f}x .. "
                         f"{max(x[0] for x in v):.2f}x; {sum(bool(x[1][1]) for x in v)} of {len(v)} at or above target | "
                         f"{'>= 1.0x, >= 1.3x from batch 1,024' if case == 'in_ram' else '>= 0.7x'} | "
                         f"{_yes(all(x[1][1] for x in v))} |")
    else:
        L.append(f"| end to end | DLRM-like model | {failed('e2e') or 'no e2e.json'} | | |")
    if peers and not failed("peers"):
        def span(group, impl_prefix):
            rs = [r for r in peers["results"] if r["group"] == group and r["impl"].startswith(impl_prefix)]
            if not rs:
                return None
            v = [r["ours_over_this"] for r in rs]
            return f"{min(v):.2f}x .. {max(v):.2f}x"
        def pair(group, a_prefix, b_prefix):
            v = []
            for b in peers["settings"]["batches"]:
                here = [r for r in peers["results"] if r["group"] == group and r["batch"] == b]
                ra = [r for r in here if r["impl"].startswith(a_prefix)]
                rb = [r for r in here if r["impl"].startswith(b_prefix)]
                if ra and rb:
                    v.append(ra[0]["keys_per_s"] / rb[0]["keys_per_s"])
            return f"{min(v):.2f}x .. {max(v):.2f}x" if v else "not measured"
        batches_text = ", ".join(f"{b:,}" for b in peers["settings"]["batches"])
        for group, a, b, what in (
                ("redis", "ours: LookupLayer, Redis VDB + L1", "naive", "ours (Redis + L1 20%) / naive Python PS (redis-py)"),
                ("redis", "ours: LookupLayer, Redis VDB + L1", "TFRA", "ours (Redis + L1 20%) / TFRA Redis table"),
                ("redis", "ours: LookupLayer, Redis VDB, no L1", "ours: Storage.fetch",
                 "ours: LookupLayer (Redis, no L1) / the Redis backend alone (what the TF op path costs)"),
                ("rocksdb", "ours: LookupLayer", "ours: Storage.fetch",
                 "ours: LookupLayer (RocksDB) / the RocksDB backend alone (what the TF op path costs)")):
            L.append(f"| peers & limits | {what}, keys/s, batches {batches_text} | {pair(group, a, b)} | (none: measured) | |")
        for group, impl, what in (("in memory", "TFRA", "ours (hash map + L1) / TFRA cuckoo hash table"),
                                  ("redis", "TFRA", "ours (Redis, no L1) / TFRA Redis table"),
                                  ("redis", "naive", "ours (Redis, no L1) / naive Python PS (redis-py)"),
                                  ("rocksdb", "naive", "ours (RocksDB) / naive Python PS (rocksdict)"),
                                  ("in memory", "numpy", "ours (hash map + L1) / numpy gather (memory-bound limit)"),
                                  ("redis", "raw C hiredis", "ours (Redis, no L1) / raw hiredis of distinct keys (limit)"),
                                  ("rocksdb", "rocksdict",
                                   "ours (RocksDB) / rocksdict multi_get of distinct keys (limit of a Python client)")):
            s = span(group, impl)
            if s is None and impl == "TFRA":
                s = f"not run: {peers['tfra']['note']}"
            L.append(f"| peers & limits | {what}, keys/s, batches {', '.join(f'{b:,}' for b in peers['settings']['batches'])} "
                     f"| {s} | (none: measured) | |")
    else:
        L.append(f"| peers & limits | one table | {failed('peers') or 'no peers.json'} | | |")
    if tiers and not failed("storage_tiers"):
        met = sum(r["met"] for r in tiers["results"])
        L.append(f"| per tier | `storage_tiers.py`: each tier's fetch vs numpy gather / redis-py / raw hiredis / "
                 f"rocksdict | {met} of {len(tiers['results'])} targets met | per row (see below) | "
                 f"{_yes(met == len(tiers['results']))} |")
    else:
        L.append(f"| per tier | storage tiers | {failed('storage_tiers') or 'no storage_tiers.json'} | | |")
    if hits and not failed("cache_hit_rate"):
        worst = max(abs(r["hit_all"] - r["lru_model_all"]) for r in hits["results"] if r["size_pct"] < 100)
        L.append(f"| per tier | L1 hit rate vs the LRU model (all keys, caches below 100 %) | within "
                 f"{100 * worst:.2f} points | on the model's curve | |")
    if lvt and not failed("lookup_vs_tf"):
        # What a model sees: the output read by the next op (results of older runs have no consumer).
        read = [r for r in lvt["results"] if r.get("consumer", "returned") != "returned"]
        v = [r["ratio"] for r in read or lvt["results"]]
        how = "output read by the next op" if read else "timed to the op's return only (an older run)"
        ls = lvt["settings"]
        L.append(f"| single table | `LookupLayer` / `tf.nn.embedding_lookup`, {how} "
                 f"({ls['rows']:,} rows x D={ls['dim']}, L1 {ls['gpucacheper']:.0%}; batches "
                 f"{', '.join(f'{b:,}' for b in sorted({r['batch'] for r in lvt['results']}))}) | "
                 f"{min(v):.2f}x .. {max(v):.2f}x; {sum(x >= 1.0 for x in v)} of {len(v)} at or above target | "
                 f">= 1.0x | {_yes(min(v) >= 1.0)} |")
        pairs = [(r["ours_no_l1_keys_per_s"] / r["ours_keys_per_s"]) for r in (read or lvt["results"])
                 if "ours_no_l1_keys_per_s" in r]
        if pairs:
            L.append(f"| single table | the same from the hash map alone (`gpucache: false`) / with L1 | "
                     f"{min(pairs):.2f}x .. {max(pairs):.2f}x; {sum(x >= 1.0 for x in pairs)} of {len(pairs)} at or "
                     f"above target | >= 1.0x (no slower) | {_yes(min(pairs) >= 1.0)} |")
    if memory and not failed("memory"):
        for tier in dict.fromkeys(r["tier"] for r in memory["results"]):
            rs = [r for r in memory["results"] if r["tier"] == tier]
            acc = [r["measured_bytes"] / r["planned_bytes"] for r in rs]
            raw = [r["measured_bytes"] / r["raw_bytes"] for r in rs]
            L.append(f"| memory | {tier}: measured / plan_memory; measured / raw | {min(acc):.2f}x .. {max(acc):.2f}x; "
                     f"{min(raw):.2f}x .. {max(raw):.2f}x raw | | |")
    else:
        L.append(f"| memory | per tier | {failed('memory') or 'no memory.json'} | | |")
    tfra = suite.get("tfra", {})
    if not tfra.get("venv_ok", False):
        L += ["", f"> **TFRA was not measured in this run**: {tfra.get('note', 'unknown reason')}"]
    L.append("")

    # ---------------------------------------------------------------- e2e
    L += ["## 1. End to end: DLRM-like model served from SavedModels", ""]
    if e2e and not failed("e2e"):
        s = e2e["settings"]
        L += [f"Model (`benchmarks/workload.py`): 13 dense features -> bottom MLP (64, D) ; 26 embedding tables with "
              f"the Criteo Kaggle cardinalities x {s['scale']} (at least 4 rows); dot interaction of the 27 vectors "
              f"(351 pairs) -> top MLP (128, 64, 1). Keys: zipf({s['alpha']}) per table, hot rows scattered. The "
              "SavedModels written by `model.export` and loaded with `tf.saved_model.load` in one process, called "
              "through their `serve` signature, with the same dense weights and table rows (outputs checked equal):",
              "",
              "- **native**: `keras.layers.Embedding` (tables as `tf.Variable`s, in RAM);",
              f"- **tf_hps in RAM**: one `hps.FusedLookupLayer` for the 26 tables (`fuse_embedding_table` on), L1 of "
              f"{s['gpucacheper']:.0%} of the rows, hash-map VDB holding every row;",
              f"- **tf_hps VDB = 1/10**: the same layer; the hash map capped by `overflow_margin` (evict_least_used, "
              f"misses written back) to about {s['vdb_fraction']:.0%} of the rows, every row in a RocksDB PDB, L1 of "
              f"{s['big_gpucacheper']:.0%}. RocksDB reads come from the OS page cache here (the tables fit in RAM "
              "on this machine), so this measures the software path of the lower tiers, not a disk;",
              "- **tf_hps per table** (where measured): the in-RAM case with an `hps.LookupLayer` per table and no "
              "fusion, HPS's own model unchanged;",
              "- **limit**: native p50 / p50 of the same model whose lookups are an elementwise op each that "
              "writes the same output without reading any table: the most any lookup could gain on the whole "
              "model here.",
              "",
              f"Caches warmed with {s['warm']} batches of {s['warm_batch']:,}. For each batch size the three models "
              f"take turns (order rotating each round) for {s['budget']:g} s or at least {s['min_rounds']} rounds; "
              "latency = call to numpy result, one request at a time; throughput = batch / p50; ratio = native p50 / "
              "tf_hps p50 (above 1: tf_hps faster). p99 of fewer than 100 rounds is the slowest or second-slowest call.",
              ""]
        for dim, d in e2e["dims"].items():
            st = d["setup"]
            pl = st["planned"]
            L += [f"### D = {dim}: {st['total_rows']:,} rows, {_mib(st['raw_bytes'])} raw",
                  "",
                  f"VDB = 1/10 case: the hash map holds {st['vdb_rows_tenth']:,} rows "
                  f"({st['vdb_rows_tenth'] / st['total_rows']:.1%}; margin {st['vdb_margin_per_partition']:,} rows per "
                  f"partition x {st['partitions']}), planned {_mib(pl['vdb_tenth']['vdb'])} against "
                  f"{_mib(st['raw_bytes'])} of table, plus an L1 of {_mib(pl['vdb_tenth']['l1'])}; in-RAM case: hash map "
                  f"{_mib(pl['in_ram']['vdb'])} + L1 {_mib(pl['in_ram']['l1'])}.",
                  "",
                  "| batch | rounds | native p50 / p99 ms | tf_hps in RAM p50 / p99 ms | ratio | goal | met | "
                  "tf_hps VDB=1/10 p50 / p99 ms | ratio | goal | met | per table p50 ms | ratio | limit | "
                  "native / in RAM / VDB=1/10 samples/s |",
                  "|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|:---:|---:|---:|---:|---:|"]
            for r in d["results"]:
                mm = r["models"]
                g_ram, g_big = goal(r, "in_ram"), goal(r, "vdb_tenth")
                per = (f"{mm['per_table']['p50_ms']:.2f} | {r['ratio_per_table']:.2f}x" if "per_table" in mm
                       else "- | -")
                limit = f"{r['ratio_no_lookup']:.2f}x" if "no_lookup" in mm else "-"
                L.append(f"| {r['batch']:,} | {r['rounds']} | {mm['native']['p50_ms']:.2f} / {mm['native']['p99_ms']:.2f} | "
                         f"{mm['in_ram']['p50_ms']:.2f} / {mm['in_ram']['p99_ms']:.2f} | {r['ratio_in_ram']:.2f}x | "
                         f">= {g_ram[0]}x | {_yes(g_ram[1])} | {mm['vdb_tenth']['p50_ms']:.2f} / "
                         f"{mm['vdb_tenth']['p99_ms']:.2f} | {r['ratio_vdb_tenth']:.2f}x | >= {g_big[0]}x | "
                         f"{_yes(g_big[1])} | {per} | {limit} | "
                         f"{_rate(mm['native']['samples_per_s'])} / {_rate(mm['in_ram']['samples_per_s'])} / "
                         f"{_rate(mm['vdb_tenth']['samples_per_s'])} |")
            tc = d.get("tier_counts", {})
            parts = []
            for case, label in (("in_ram", "in RAM"), ("vdb_tenth", "VDB = 1/10")):
                c = tc.get(case)
                if c and c["keys"]:
                    parts.append(f"{label}: {c['keys']:,} keys, L1 hits {c['l1_hits'] / c['keys']:.1%} of keys; of the "
                                 f"{c['missed_keys']:,} distinct keys L1 missed, VDB {c['vdb_hits']:,}, PDB "
                                 f"{c['pdb_hits']:,}, default {c['defaults']:,}")
            if parts:
                L += ["", "Tier counters over the timed rounds (`hps.stats()`): " + "; ".join(parts) + "."]
            L.append("")
        skew = [r for d in e2e["dims"].values() for r in d.get("skew", [])]
        if skew:
            base = {r["batch"]: r for d in e2e["dims"].values() for r in d["results"] if r["dim"] == skew[0]["dim"]}
            L += [f"### Key skew (D = {skew[0]['dim']}, same models and tables, caches re-warmed on each stream)", "",
                  "| zipf α | batch | rounds | native p50 ms | tf_hps in RAM p50 ms | ratio | met | tf_hps VDB=1/10 p50 ms "
                  "| ratio | met | L1 hits of keys: in RAM / VDB=1/10 |",
                  "|---:|---:|---:|---:|---:|---:|:---:|---:|---:|:---:|---:|"]
            rows = [base[b] for b in sorted({r["batch"] for r in skew}) if b in base] + skew
            for r in sorted(rows, key=lambda r: (r["batch"], r["alpha"])):
                mm = r["models"]
                tc = r.get("tier_counts") or e2e["dims"][str(r["dim"])].get("tier_counts", {})
                hit = " / ".join(f"{tc[c]['l1_hits'] / tc[c]['keys']:.1%}" if tc.get(c, {}).get("keys") else "?"
                                 for c in ("in_ram", "vdb_tenth"))
                L.append(f"| {r['alpha']} | {r['batch']:,} | {r['rounds']} | {mm['native']['p50_ms']:.2f} | "
                         f"{mm['in_ram']['p50_ms']:.2f} | {r['ratio_in_ram']:.2f}x | {_yes(goal(r, 'in_ram')[1])} | "
                         f"{mm['vdb_tenth']['p50_ms']:.2f} | {r['ratio_vdb_tenth']:.2f}x | "
                         f"{_yes(goal(r, 'vdb_tenth')[1])} | {hit} |")
            L += ["", "The rows of the main α are the ones of the table above (its L1 hit rates are over all of its batch "
                  "sizes). Each α was timed at another moment of the run, so compare ratios across rows, not "
                  "milliseconds: on a shared machine the absolute times move with the load, while each ratio comes "
                  "from calls made in turns.", ""]
        if "e2e.png" in plots:
            L += ["![end to end latency and ratio](e2e.png)", ""]
    else:
        L += [failed("e2e") or "e2e.json is missing.", ""]

    # ---------------------------------------------------------------- peers
    L += ["## 2. Peers and physical limits: one table", ""]
    if peers and not failed("peers"):
        s = peers["settings"]
        L += [f"One table of {s['rows']:,} rows x D = {s['dim']} (random int64 keys), batches of zipf({s['alpha']}) "
              f"keys; each number is the median of {s['repeats']} repeats of at least {s['min_time_s'] * 1000:g} ms of "
              "back-to-back calls, the implementations of a group taking turns. `ours / this` > 1 means tf_hps is "
              "faster. TFRA runs in its own TF 2.16.2 venv (another process, timed inside it, in turns with ours). "
              "'ours' is the whole `LookupLayer` op in a `tf.function` (dedup, L1, tier fetch, scatter), result "
              "fetched as numpy; limits do less work than a lookup (see each row) and bound what any implementation "
              "can reach.", ""]
        if not peers["tfra"]["ran"]:
            L += [f"> **TFRA rows are missing: {peers['tfra']['note']}**", ""]
        L += ["| group | implementation | batch | distinct keys | M keys/s | ours / this |", "|---|---|---:|---:|---:|---:|"]
        for r in sorted(peers["results"], key=lambda r: (["in memory", "redis", "rocksdb"].index(r["group"]), r["batch"])):
            L.append(f"| {r['group']} | {r['impl']} | {r['batch']:,} | {r['distinct']:,} | {r['keys_per_s'] / 1e6:.2f} | "
                     f"{r['ours_over_this']:.2f}x |")
        L += ["", "In each group, 'ours' in the ratio column is the first 'ours' row (for Redis: without L1). "
              "The limits are what the issue names: numpy gather knows each key's row and only copies memory; raw C "
              "hiredis sends one HMGET per partition of the distinct keys and copies the replies, with no dedup, L1 or "
              "scatter; rocksdict `multi_get` is a Python binding, so every key and row is a Python object: it bounds "
              "a Python client, not RocksDB, and our C++ `MultiGet` passes it at large batches (a ratio above 1 there "
              "is not ours beating RocksDB's own limit). The 'Storage.fetch' rows are our backends alone (the TF-free "
              "storage library), so 'LookupLayer / Storage.fetch' is what the op path (TF dispatch, dedup, parameter "
              "server bookkeeping, scatter) costs.", ""]
        if "peers.png" in plots:
            L += ["![peers](peers.png)", ""]
    else:
        L += [failed("peers") or "peers.json is missing.", ""]

    # ---------------------------------------------------------------- tiers
    L += ["## 3. Per tier", ""]
    if tiers and not failed("storage_tiers"):
        st_ = tiers["settings"]
        L += [f"### Storage tiers (`benchmarks/storage_tiers.py`, `{steps['storage_tiers']['command']}`)", "",
              f"`tf_hps.storage.Storage.fetch` (the C++ backend) against plain clients of the same data: {st_['rows']:,} "
              f"rows, D = {', '.join(map(str, st_['dims']))}, zipf({st_['alpha']}) keys, median of {st_['repeats']} "
              f"repeats of >= {st_['min_time_s'] * 1000:g} ms. Full tables: `tiers/storage_tiers.md`.", "",
              "| tier | baseline | D | batch | ours keys/s | baseline keys/s | ratio | target | met? |",
              "|---|---|---:|---:|---:|---:|---:|---:|:---:|"]
        for r in tiers["results"]:
            L.append(f"| {r['tier']} | {r['baseline']} | {r['dim']} | {r['batch']:,} | {_rate(r['ours']['keys_per_s'])} | "
                     f"{_rate(r['baseline_timing']['keys_per_s'])} | {r['ratio']:.2f}x | >= {r['target']:g}x | "
                     f"{_yes(r['met'])} |")
        L.append("")
    else:
        L += [f"Storage tiers: {failed('storage_tiers') or 'no result'}", ""]
    if hits and not failed("cache_hit_rate"):
        hs = hits["settings"]
        L += [f"### L1 hit rate (`benchmarks/cache_hit_rate.py`, `{steps['cache_hit_rate']['command']}`)", "",
              f"{hs['rows']:,}-row table, batches of {hs['batch']:,} zipf(α) keys, counted over {hs['measured_batches']} "
              f"batches after {hs['warmup_batches']}; hit rate over all keys of a batch. Full tables and the LRU model: "
              "`tiers/cache_hit_rate.md`.", "",
              "| α | cache | LRU (measured) | LRU model | ideal |", "|---:|---:|---:|---:|---:|"]
        for r in hits["results"]:
            L.append(f"| {r['alpha']} | {r['size_pct']:g} % | {100 * r['hit_all']:.2f} % | {100 * r['lru_model_all']:.2f} % | "
                     f"{100 * r['ideal_all']:.2f} % |")
        L.append("")
        if os.path.exists(os.path.join(out, "tiers", "cache_hit_rate.png")):
            L += ["![L1 hit rate](tiers/cache_hit_rate.png)", ""]
    else:
        L += [f"L1 hit rate: {failed('cache_hit_rate') or 'no result'}", ""]
    if lvt and not failed("lookup_vs_tf"):
        ls = lvt["settings"]
        L += [f"### `LookupLayer` vs `tf.nn.embedding_lookup` (`benchmarks/lookup_vs_tf.py`)", "",
              f"{ls['rows']:,} rows x D = {ls['dim']}, keys zipf({ls['alpha']}), L1 of {ls['gpucacheper']:.0%}, "
              f"median of {ls['repeats']} calls in turns.", "",
              "| keys per call | output read by | LookupLayer M keys/s | without L1 M keys/s | "
              "tf.nn.embedding_lookup M keys/s | ratio | without L1 |",
              "|---:|---|---:|---:|---:|---:|---:|"]
        for r in lvt["results"]:
            no_l1 = r.get("ours_no_l1_keys_per_s")
            L.append(f"| {r['batch']:,} | {r.get('consumer', 'returned')} | {r['ours_keys_per_s'] / 1e6:.1f} | "
                     f"{no_l1 / 1e6 if no_l1 else float('nan'):.1f} | {r['tf_keys_per_s'] / 1e6:.1f} | "
                     f"{r['ratio']:.2f}x | {r.get('ratio_no_l1', float('nan')):.2f}x |")
        L.append("")
    else:
        L += [f"LookupLayer vs tf.nn.embedding_lookup: {failed('lookup_vs_tf') or 'no result'}", ""]

    # ---------------------------------------------------------------- memory
    L += ["## 4. Memory per tier", ""]
    if memory and not failed("memory"):
        L += ["Each measurement in a fresh process or server (`benchmarks/memory.py`); raw = rows x (8 + 4 D) bytes, "
              "the size of the table files. Planned = `tf_hps.plan_memory` on the same config (exact for the hash map "
              "and the L1; an estimate for Redis and RocksDB).", "",
              "| table | tier | how measured | raw | measured | planned | measured / planned | measured / raw |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in memory["results"]:
            L.append(f"| {r['rows']:,} x {r['dim']} | {r['tier']} | {r['how']} | {_mib(r['raw_bytes'])} | "
                     f"{_mib(r['measured_bytes'])} | {_mib(r['planned_bytes'])}{' (estimate)' if r['plan_is_estimate'] else ''} | "
                     f"{r['measured_bytes'] / r['planned_bytes']:.3f} | {r['measured_bytes'] / r['raw_bytes']:.2f}x |")
        L.append("")
        if "memory.png" in plots:
            L += ["![memory](memory.png)", ""]
    else:
        L += [failed("memory") or "memory.json is missing.", ""]

    # ---------------------------------------------------------------- steps
    L += ["## Steps of this run", "", "| step | command | exit | seconds | load average after |", "|---|---|---:|---:|---|"]
    if "tfra" in suite and "seconds" in suite["tfra"]:
        L.append(f"| tfra venv | `benchmarks/tfra_venv.sh` | {'0' if suite['tfra']['venv_ok'] else 'failed'} | "
                 f"{suite['tfra']['seconds']:.0f} | |")
    for name, s in steps.items():
        L.append(f"| {name} | `{s['command']}` | {s['rc']} | {s['seconds']:.0f} | {s['load_after']} |")
    L.append("")
    text = "\n".join(L) + "\n"
    with open(os.path.join(out, "REPORT.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
