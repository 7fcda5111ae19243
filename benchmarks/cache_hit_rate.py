"""Hit rate of the L1 embedding cache against cache size and key skew, next to a perfect cache.

    python benchmarks/cache_hit_rate.py [--quick] [--out benchmarks/results]
        [--rows 1000000] [--batch 16384] [--alphas 1.05,1.2,1.4] [--sizes 1,2,5,10,20,50,100]
        [--warmup 6000] [--measure 1000] [--seed 0] [--jobs N]

The cache is core/embedding_cache.cc (the host execution of the GPU cache's slab sets, core/slab_set.h)
through build/libhps_cache_host.so (`make gpu`), created with capacity_rows = size % of the table's rows
and D = 1: only hits matter here.

Traffic. The table has keys 0..rows-1. Each batch draws `batch` ranks from the zipf(alpha) law truncated
to the table, P(rank r) = r^-alpha / sum_s s^-alpha for r = 1..rows (sampled exactly by inverting its
CDF), and maps ranks to keys through one fixed random permutation, so hot keys are not neighbours.

Protocol, per batch, as the lookup path runs it: Query the batch's distinct keys (in order of first
appearance), then Replace the keys that missed, both with the batch's one LRU stamp. After `--warmup`
batches the next `--measure` batches are counted. Every cache size of one alpha sees the same batches.

Reported for each (alpha, size):

* hit rate over distinct keys: hits / distinct keys queried (what the cache serves), and over all keys:
  the share of batch positions whose key hit (what the traffic sees);
* ideal: a perfect cache that always holds the k most frequent keys, k = the cache's capacity in rows.
  Over all keys this is exact: the top-k probability mass. Over distinct keys it is counted on the same
  measured batches: the share of their distinct keys whose rank is within the top k;
* set-limited: the same perfect cache, but each key may only sit in its own set (64 ways, placed by
  base/key_hash.h), so each set keeps the 64 most frequent of its keys. No replacement policy with this
  placement can beat it; the gap between it and the ideal is what the set overflow costs;
* LRU model: what a fully associative cache with the same batch-grained LRU would reach in the long run,
  from the characteristic-time approximation of LRU (Che et al.): a key is cached exactly when it occurred in
  one of the last T batches, T set so that the cache holds `capacity` keys on average. Measured close to it
  means the distance to the ideal is LRU's own, not the sets';
* first-seen: the share of measured queries whose key had not appeared in any earlier batch since the
  start. No cache filled on demand can hit those.

Writes cache_hit_rate.md (the two tables, also printed), cache_hit_rate.json (every number, plus the hit rate
of each tenth of the measured batches to show it is steady) and cache_hit_rate.png (hit rate against
cache size, log x, one line per alpha, the ideal dashed) to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from slab_model import WAYS, HostCache  # noqa: E402  (the cache's ctypes bindings live with the tests)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model  # noqa: E402

SEGMENTS = 10  # the measured batches are also reported in this many consecutive parts


# --------------------------------------------------------------------------- traffic


def zipf_probabilities(rows: int, alpha: float) -> np.ndarray:
    """P(rank r), r = 1..rows, of the zipf law truncated to the table; index 0 is rank 1."""
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
    return weights / weights.sum()


class Traffic:
    """Batches of zipf ranks, the same sequence for every process given the same seed."""

    def __init__(self, rows: int, alpha: float, batch: int, seed: int):
        self.rows, self.batch = rows, batch
        self.p = zipf_probabilities(rows, alpha)
        self.cdf = np.cumsum(self.p)
        self.top_mass = self.cdf  # top_mass[k - 1]: probability of the k most frequent keys
        rng = np.random.default_rng(seed)
        self.rank_to_key = rng.permutation(rows).astype(np.int64)
        self.rng = np.random.default_rng([seed, 1])

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ranks of the next batch in order of first appearance, and how often each occurs."""
        ranks = np.searchsorted(self.cdf, self.rng.random(self.batch) * self.cdf[-1], side="right")
        np.minimum(ranks, self.rows - 1, out=ranks)
        distinct, first, counts = np.unique(ranks, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        return distinct[order], counts[order]


# --------------------------------------------------------------------------- set placement


def _rotr(x: np.ndarray, r: int) -> np.ndarray:
    return (x >> np.uint64(r)) | (x << np.uint64(64 - r))


def mix_key(keys: np.ndarray) -> np.ndarray:
    """base/key_hash.h MixKey, vectorised (uint64 arithmetic wraps as in C++)."""
    v = keys.astype(np.uint64)
    v = v ^ _rotr(v, 25) ^ _rotr(v, 50)
    v = v * np.uint64(0xA24BAED4963EE407)
    v = v ^ _rotr(v, 24) ^ _rotr(v, 49)
    v = v * np.uint64(0x9FB21C651E98DF25)
    return v ^ (v >> np.uint64(28))


def set_limited_holdings(set_of_rank: np.ndarray, ways: int) -> np.ndarray:
    """For each rank, whether it is among the `ways` most frequent (lowest) ranks of its set."""
    order = np.argsort(set_of_rank, kind="stable")  # grouped by set, ranks ascending inside a group
    grouped = set_of_rank[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    group_sizes = np.diff(np.r_[starts, len(grouped)])
    position = np.arange(len(grouped)) - np.repeat(starts, group_sizes)
    held = np.empty(len(grouped), bool)
    held[order] = position < ways
    return held


def set_of(mix: np.ndarray, num_sets: int) -> np.ndarray:
    """The set of keys with MixKey `mix` (core/slab_set.h): mix * num_sets / 2^64, in 64-bit pieces."""
    n = np.uint64(num_sets)  # < 2^32, so no piece overflows
    hi, lo = mix >> np.uint64(32), mix & np.uint64(0xFFFFFFFF)
    return ((hi * n + ((lo * n) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def check_placement() -> None:
    """The vectorised placement must agree with the library's own."""
    keys = np.r_[np.arange(64), np.random.default_rng(7).integers(0, 1 << 40, 64)].astype(np.int64)
    for num_sets in (1, 157, 15625):
        mine = set_of(mix_key(keys), num_sets)
        theirs = [HostCache.home(int(k), num_sets)[0] for k in keys]
        if mine.astype(np.int64).tolist() != theirs:
            raise SystemExit("set placement of benchmarks/cache_hit_rate.py disagrees with base/key_hash.h")


# --------------------------------------------------------------------------- LRU model


def lru_model(p: np.ndarray, batch: int, capacity: int) -> tuple[float, float]:
    """(distinct, all keys) hit rate of a fully associative cache with the same batch-grained LRU, in the
    characteristic-time approximation of LRU (Che et al.): a key is cached exactly when it occurred in one
    of the last T batches, with T such that the expected number of such keys equals the capacity."""
    with np.errstate(divide="ignore"):
        log_absent = batch * np.log1p(-p)  # log P(a key is not in a batch)
        in_batch = -np.expm1(log_absent)
        if capacity >= len(p):
            cached = np.ones_like(p)
        else:
            lo, hi = 1e-6, 1e12  # batches; geometric bisection
            for _ in range(64):
                mid = np.sqrt(lo * hi)
                if -np.expm1(mid * log_absent).sum() < capacity:
                    lo = mid
                else:
                    hi = mid
            cached = -np.expm1(hi * log_absent)
    return float((in_batch * cached).sum() / in_batch.sum()), float((p * cached).sum())


# --------------------------------------------------------------------------- one run


def run_job(job: dict) -> dict:
    """All cache sizes of one alpha that this process drives, over one batch sequence."""
    started = time.perf_counter()
    rows, batch = job["rows"], job["batch"]
    traffic = Traffic(rows, job["alpha"], batch, job["seed"])
    lib = HostCache.lib()
    caches, limits, set_held = [], [], []
    mix_of_rank = mix_key(traffic.rank_to_key)
    for pct in job["sizes"]:
        cache = HostCache(max(1, round(rows * pct / 100)), 1)
        caches.append(cache)
        limits.append(min(cache.capacity, rows))
        set_held.append(set_limited_holdings(set_of(mix_of_rank, cache.num_sets), WAYS))

    seen = np.zeros(rows, bool)
    values = np.zeros((batch, 1), np.float32)
    missing = np.empty(batch, np.int64)
    n_sizes = len(caches)
    # Per measured segment: [queries, keys, first-seen distinct, first-seen keys], and per size:
    # [hits distinct, hits keys, ideal distinct, set-limited distinct, ideal keys (counted)].
    totals = np.zeros((SEGMENTS, 4), np.int64)
    per_size = np.zeros((SEGMENTS, n_sizes, 5), np.int64)
    fill_after_warmup = [0.0] * n_sizes
    seen_after_warmup = 0.0
    total_batches = job["warmup"] + job["measure"]
    for b in range(total_batches):
        ranks, counts = traffic.next()
        keys = traffic.rank_to_key[ranks]
        measuring = b >= job["warmup"]
        if b == job["warmup"]:
            fill_after_warmup = [cache.size() / cache.capacity for cache in caches]
            seen_after_warmup = float(seen.mean())
        if measuring:
            seg = (b - job["warmup"]) * SEGMENTS // job["measure"]
            new = ~seen[ranks]
            totals[seg] += (len(ranks), batch, np.count_nonzero(new), counts[new].sum())
        for i, cache in enumerate(caches):
            stamp = lib.hps_cache_host_next_stamp(cache.handle)  # one stamp per batch, as the lookup path does
            m = lib.hps_cache_host_query_at(cache.handle, keys.ctypes.data, len(keys), values.ctypes.data,
                                            missing.ctypes.data, stamp)
            missed = keys[missing[:m]]
            if measuring:
                in_top = ranks < limits[i]
                per_size[seg, i] += (len(ranks) - m, batch - counts[missing[:m]].sum(), np.count_nonzero(in_top),
                                     np.count_nonzero(set_held[i][ranks]), counts[in_top].sum())
            if m:
                lib.hps_cache_host_replace_at(cache.handle, missed.ctypes.data, m, values.ctypes.data, stamp)
        seen[ranks] = True

    sums, size_sums = totals.sum(axis=0), per_size.sum(axis=0)
    queries, positions = sums[0], sums[1]
    results = []
    for i, pct in enumerate(job["sizes"]):
        k = limits[i]
        model_distinct, model_all = lru_model(traffic.p, batch, k)
        results.append({
            "alpha": job["alpha"], "size_pct": pct, "capacity_rows": int(caches[i].capacity),
            "num_sets": int(caches[i].num_sets),
            "fill_after_warmup": fill_after_warmup[i],
            "fill_at_end": caches[i].size() / caches[i].capacity,
            "hit_distinct": size_sums[i, 0] / queries,
            "ideal_distinct": size_sums[i, 2] / queries,
            "set_limited_distinct": size_sums[i, 3] / queries,
            "hit_all": size_sums[i, 1] / positions,
            "lru_model_distinct": model_distinct,
            "lru_model_all": model_all,
            "ideal_all": float(traffic.top_mass[k - 1]),
            "ideal_all_counted": size_sums[i, 4] / positions,
            "set_limited_all": float(traffic.p[set_held[i]].sum()),
            "first_seen_distinct": sums[2] / queries,
            "first_seen_all": sums[3] / positions,
            "hit_distinct_by_segment": (per_size[:, i, 0] / totals[:, 0]).tolist(),
            "hit_all_by_segment": (per_size[:, i, 1] / totals[:, 1]).tolist(),
        })
        caches[i].close()
    return {"alpha": job["alpha"], "results": results, "distinct_per_batch": queries / job["measure"],
            "keys_seen_after_warmup": seen_after_warmup, "keys_seen_at_end": float(seen.mean()),
            "seconds": time.perf_counter() - started}


def plan_jobs(alphas, sizes, jobs_wanted: int, common: dict) -> list[dict]:
    """Jobs of one alpha and a group of sizes (interleaved), as many groups as make the jobs a multiple of the
    processes: 3 alphas on 2 cores give 6 jobs, 3 per core, rather than 3 jobs that leave one core idle."""
    groups = min(len(sizes), max(1, jobs_wanted // math.gcd(len(alphas), jobs_wanted)))
    plan = []
    for alpha in alphas:
        for g in range(groups):
            part = sizes[g::groups]
            if part:
                plan.append(dict(common, alpha=alpha, sizes=part))
    return plan


# --------------------------------------------------------------------------- output


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def markdown_table(results: list[dict], metric: str) -> str:
    lines = [
        "| α | cache | rows | filled | LRU (measured) | LRU model | set-limited ideal | ideal | first-seen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['alpha']:g} | {r['size_pct']:g} % | {r['capacity_rows']:,} | {100 * r['fill_after_warmup']:.0f} % "
            f"| **{pct(r[f'hit_{metric}'])}** | {pct(r[f'lru_model_{metric}'])} | {pct(r[f'set_limited_{metric}'])} "
            f"| {pct(r[f'ideal_{metric}'])} | {pct(r[f'first_seen_{metric}'])} |")
    return "\n".join(lines)


def plot(results: list[dict], alphas, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    colors = plt.get_cmap("tab10").colors
    for ax, metric, label in ((axes[0], "distinct", "distinct keys of each batch"),
                              (axes[1], "all", "all keys of each batch")):
        for c, alpha in enumerate(alphas):
            rows = sorted((r for r in results if r["alpha"] == alpha), key=lambda r: r["size_pct"])
            x = [r["size_pct"] for r in rows]
            ax.plot(x, [100 * r[f"hit_{metric}"] for r in rows], "o-", color=colors[c], label=f"α = {alpha:g}, LRU")
            ax.plot(x, [100 * r[f"ideal_{metric}"] for r in rows], "--", color=colors[c], alpha=0.8,
                    label=f"α = {alpha:g}, ideal")
        ax.set_xscale("log")
        sizes = sorted({r["size_pct"] for r in results})
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("cache size (% of table rows)")
        ax.set_ylabel("hit rate (%)")
        ax.set_title(f"Hit rate over {label}")
        ax.grid(True, which="major", alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8, ncol=1)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 100,000-row table and fewer batches (under 30 s)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"),
                        help="folder for cache_hit_rate.md, .json and .png")
    parser.add_argument("--rows", type=int, help="table rows (default 1000000, quick 100000)")
    parser.add_argument("--batch", type=int, default=16384, help="keys per batch, duplicates included")
    parser.add_argument("--alphas", default="1.05,1.2,1.4", help="zipf exponents")
    parser.add_argument("--sizes", default="1,2,5,10,20,50,100", help="cache sizes in %% of the table's rows")
    parser.add_argument("--warmup", type=int, help="batches before counting (default 6000, quick 1000)")
    parser.add_argument("--measure", type=int, help="batches counted (default 1000, quick 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    warmup = args.warmup if args.warmup is not None else (1000 if args.quick else 6000)
    measure = max(SEGMENTS, args.measure or (300 if args.quick else 1000))
    alphas = [float(a) for a in args.alphas.split(",")]
    sizes = [float(s) for s in args.sizes.split(",")]

    started = time.perf_counter()
    command = " ".join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), REPO)] + sys.argv[1:])
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "numpy": np.__version__}
    check_placement()
    header = [
        "# L1 cache hit rate against cache size and key skew",
        "",
        f"- command: `{command}`",
        f"- machine: {machine['cpu']}, {machine['cores']} cores ({machine['platform']}); "
        f"Python {machine['python']}, numpy {machine['numpy']}",
        f"- table: {rows:,} rows (keys 0..{rows - 1:,}), D = 1; cache: core/embedding_cache.cc through "
        "build/libhps_cache_host.so, capacity_rows = size × rows (rounded up to sets of 64 ways)",
        f"- traffic: batches of {args.batch:,} keys, zipf(α) ranks truncated to the table, mapped to keys by a fixed "
        f"random permutation (seed {args.seed}); per batch: Query the distinct keys, Replace the misses, "
        "one stamp per batch for its Query and the Replace of its misses",
        f"- counted: batches {warmup + 1:,} to {warmup + measure:,} (after a warm-up of {warmup:,})",
    ]
    print("\n".join(header) + "\n", flush=True)

    common = dict(rows=rows, batch=args.batch, warmup=warmup, measure=measure, seed=args.seed)
    plan = plan_jobs(alphas, sizes, args.jobs, common)
    print(f"{len(plan)} jobs on {min(args.jobs, len(plan))} processes ...", file=sys.stderr, flush=True)
    if args.jobs > 1 and len(plan) > 1:
        with multiprocessing.get_context("fork").Pool(min(args.jobs, len(plan))) as pool:
            outcomes = pool.map(run_job, plan, chunksize=1)
    else:
        outcomes = [run_job(job) for job in plan]

    results = sorted((r for o in outcomes for r in o["results"]), key=lambda r: (r["alpha"], r["size_pct"]))
    per_alpha = {}
    for o in outcomes:
        per_alpha[f"{o['alpha']:g}"] = {k: o[k] for k in ("distinct_per_batch", "keys_seen_after_warmup",
                                                           "keys_seen_at_end")}
    total = time.perf_counter() - started

    notes = ["", "Per α: distinct keys per batch, and the share of the table's keys that appeared at least once "
             "by the end of the warm-up:", ""]
    for alpha, info in per_alpha.items():
        notes.append(f"- α = {alpha}: {info['distinct_per_batch']:,.0f} distinct of {args.batch:,}; "
                     f"{100 * info['keys_seen_after_warmup']:.1f} % of the keys seen")
    def halves(r):  # all-keys hit rate of the second half of the counted batches minus the first half's
        seg = r["hit_all_by_segment"]
        return abs(np.mean(seg[SEGMENTS // 2:]) - np.mean(seg[:SEGMENTS // 2]))
    drift = max(halves(r) for r in results)
    sampler = max(abs(r["ideal_all_counted"] - r["ideal_all"]) for r in results)
    notes += [
        "",
        f"Steadiness: the all-keys hit rate of the second half of the counted batches differs from the first half's "
        f"by at most {100 * drift:.2f} points in any row. Sampler check: the all-keys ideal counted on the batches is within "
        f"{100 * sampler:.2f} points of the exact one.",
        "",
        f"Run time {total:.0f} s.",
    ]
    legend = [
        "",
        "Columns: rows = the cache's capacity; filled = its rows in use at the end of the warm-up; LRU (measured) = "
        "the cache's hit rate; LRU model = a fully associative cache with the same batch-grained LRU, from the "
        "characteristic-time approximation (a key is cached if it occurred in the last T batches); ideal = a "
        "perfect cache always holding the `rows` most frequent keys (all keys: the exact top-k probability; "
        "distinct keys: counted on the same batches); set-limited ideal = that perfect cache when each key may only "
        "sit in its own set of 64 ways; first-seen = queries of keys that occurred in no earlier batch, which no "
        "cache filled on demand can hit.",
        "",
    ]
    table = ("## Hit rate over the distinct keys of each batch (hits / keys queried)\n\n"
             + markdown_table(results, "distinct")
             + "\n\n## Hit rate over all keys of each batch (duplicates included)\n\n"
             + markdown_table(results, "all"))
    print(table + "\n" + "\n".join(notes))

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cache_hit_rate.md"), "w") as f:
        f.write("\n".join(header + legend) + "\n" + table + "\n" + "\n".join(notes) + "\n")
    with open(os.path.join(args.out, "cache_hit_rate.json"), "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command, "machine": machine,
            "settings": {"rows": rows, "dim": 1, "batch": args.batch, "alphas": alphas, "sizes_pct": sizes,
                         "warmup_batches": warmup, "measured_batches": measure, "seed": args.seed,
                         "quick": args.quick, "jobs": args.jobs},
            "per_alpha": per_alpha, "results": results,
            "job_seconds": [o["seconds"] for o in outcomes], "total_s": total,
        }, f, indent=1)
        f.write("\n")
    title = (f"L1 cache (sets of 64 ways, batch LRU): {rows:,} rows, batches of {args.batch:,} zipf(α) keys; "
             f"solid = measured, dashed = ideal (top-k keys)")
    plot(results, alphas, os.path.join(args.out, "cache_hit_rate.png"), title)
    print(f"\nWrote {', '.join(os.path.join(args.out, 'cache_hit_rate.' + e) for e in ('md', 'json', 'png'))}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
