"""Command-line tool: manage tables in shared databases ahead of serving.

    python -m tf_hps ingest  --config=ps.json [--models=a,b] [--tiers=volatile_db,persistent_db]
    python -m tf_hps inspect --config=ps.json
    python -m tf_hps verify  --config=ps.json [--models=...] [--tiers=...]
    python -m tf_hps drop    --config=ps.json --models=a [--tables=t0] [--tiers=...] --yes
    python -m tf_hps plan    ps.json [--json] [--l1=gpu|cpu] [--concurrent_calls=N] [--rows=model/table=N,...]

``ingest`` loads each model's ``sparse_files`` into the configured Redis
(``volatile_db``) and RocksDB (``persistent_db``), so serving nodes can start
with ``initialize_after_startup: false`` / ``read_only: true`` and no model
files. ``verify`` compares stored rows with the files bit for bit. The
in-process hash map is skipped: it lives inside each serving process.
``plan`` prints the RAM, GPU memory, Redis memory and disk each tier of each
table will need, and the totals per GPU and per host (tf_hps/plan.py); the
config may also be given as ``--config``.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

from tf_hps import plan
from tf_hps.storage import Storage, canonical_config, table_tag

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "HPS JSON config file.")
flags.DEFINE_list("models", [], "Models to act on (default: every model of the config).")
flags.DEFINE_list("tables", [], "Table names to act on (default: every table of the selected models).")
flags.DEFINE_list("tiers", ["volatile_db", "persistent_db"], "Databases to act on.")
flags.DEFINE_boolean("yes", False, "Confirm a destructive command (drop).")
flags.DEFINE_boolean("progress", None, "Show progress bars on stderr (default: when stderr is a terminal).")
flags.DEFINE_boolean("json", False, "plan: print the plan as JSON (bytes as integers).")
flags.DEFINE_enum("l1", "gpu", ["gpu", "cpu"],
                  "plan: where L1 caches live: one copy per GPU of deployed_device_list, or one in host RAM.")
flags.DEFINE_integer("concurrent_calls", 1, "plan: lookup calls in flight at once per serving process.", lower_bound=1)
flags.DEFINE_list("rows", [], "plan: rows of tables whose files are not here, as model/table=N.")

COMMANDS = ("ingest", "inspect", "verify", "drop", "plan")
SHARED_TYPES = {"volatile_db": ("redis_cluster",), "persistent_db": ("rocks_db",)}


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, label: str, enabled: bool | None):
        self.label, self.start, self.drawn = label, time.monotonic(), 0.0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.drawn < 0.1 and done < total):
            return
        self.drawn = now
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows "
                         f"{rate / 1e3:.0f}k rows/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def selected_tables(config: dict):
    """(model, table name, tag, folder, dim) of each selected table."""
    models = {m["model"]: m for m in config["models"]}
    for name in FLAGS.models:
        if name not in models:
            raise app.UsageError(f"model {name!r} is not in the config (models: {', '.join(models)})")
    chosen = [models[n] for n in FLAGS.models] if FLAGS.models else list(models.values())
    found_tables = set()
    for model in chosen:
        for name, folder, dim in zip(model["embedding_table_names"], model["sparse_files"],
                                     model["embedding_vecsize_per_table"]):
            if FLAGS.tables and name not in FLAGS.tables:
                continue
            found_tables.add(name)
            yield model["model"], name, table_tag(model["model"], name), folder, dim
    missing = set(FLAGS.tables) - found_tables
    if missing:
        raise app.UsageError(f"table(s) {', '.join(sorted(missing))} not in the selected models")


def open_tiers(config: dict) -> list[tuple[str, Storage]]:
    tiers = []
    for tier in FLAGS.tiers:
        if tier not in SHARED_TYPES:
            raise app.UsageError(f"--tiers takes volatile_db and/or persistent_db, not {tier!r}")
        section = config[tier]
        if section["type"] not in SHARED_TYPES[tier]:
            print(f"{tier}: skipped (type {section['type']!r} is not a shared database)", file=sys.stderr)
            continue
        tiers.append((tier, Storage(tier, section)))
    if not tiers:
        raise app.UsageError("no shared database in the selected tiers: nothing to do")
    return tiers


def run(command: str) -> int:
    config = canonical_config(FLAGS.config)
    keys_32 = not config["supportlonglong"]
    tables = list(selected_tables(config))
    if command == "drop" and not FLAGS.yes:
        raise app.UsageError("drop deletes data: repeat with --yes")
    failures = 0
    for tier, db in open_tiers(config):
        kind = config[tier]["type"]
        for model, name, tag, folder, dim in tables:
            label = f"{kind} {tag}"
            if command == "ingest":
                rows = db.ingest(tag, folder, dim, keys_32, ProgressBar(label, FLAGS.progress))
                print(f"{label}: ingested {rows} rows from {folder}")
            elif command == "inspect":
                print(f"{label}: {db.size(tag)} rows stored (dimension {dim})")
            elif command == "verify":
                rows, missing, mismatched = db.verify(tag, folder, dim, keys_32, ProgressBar(label, FLAGS.progress))
                ok = missing == 0 and mismatched == 0
                failures += not ok
                print(f"{label}: {'OK' if ok else 'FAILED'}: {rows} rows checked, {missing} missing, "
                      f"{mismatched} different")
            elif command == "drop":
                db.drop(tag)
                print(f"{label}: dropped")
        if command == "inspect":
            others = sorted(set(db.tables()) - {t[2] for t in tables})
            if others:
                print(f"{kind}: other tables stored: {', '.join(others)}")
        db.close()
    return 1 if failures else 0


def parse_rows(items: list[str]) -> dict[str, int]:
    """--rows=model/table=N,... as a dict."""
    rows = {}
    for item in items:
        name, sep, count = item.rpartition("=")
        if not sep or "/" not in name or not count.isdigit():
            raise app.UsageError(f"--rows wants model/table=N, got {item!r}")
        rows[name] = int(count)
    return rows


def run_plan() -> int:
    result = plan.plan_memory(FLAGS.config, l1=FLAGS.l1, rows=parse_rows(FLAGS.rows),
                              concurrent_calls=FLAGS.concurrent_calls)
    if FLAGS.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(plan.format_plan(result))
    return 0


def main(argv: list[str]) -> int:
    usage = f"usage: python -m tf_hps {{{'|'.join(COMMANDS)}}} --config=ps.json [flags]"
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(usage)
    if argv[1] == "plan" and len(argv) == 3 and not FLAGS.config:
        FLAGS.config = argv[2]  # python -m tf_hps plan ps.json
    elif len(argv) != 2:
        raise app.UsageError(f"unexpected argument(s) {' '.join(argv[2:])}; {usage}")
    if not FLAGS.config:
        hint = " (or: python -m tf_hps plan ps.json)" if argv[1] == "plan" else ""
        raise app.UsageError("--config is required" + hint)
    try:
        if argv[1] == "plan":
            return run_plan()
        return run(argv[1])
    except (ValueError, FileNotFoundError, ConnectionError, NotImplementedError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def entry_point() -> None:
    app.run(main)
