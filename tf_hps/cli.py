"""Command-line tool: manage tables in shared databases ahead of serving, and plan memory.

    python -m tf_hps ingest  --config=ps.json [--models=a,b] [--tables=t0] [--tiers=volatile_db,persistent_db]
    python -m tf_hps inspect --config=ps.json
    python -m tf_hps verify  --config=ps.json [--models=...] [--tables=...] [--tiers=...]
    python -m tf_hps drop    --config=ps.json --models=a [--tables=t0] [--tiers=...] --yes
    python -m tf_hps plan    ps.json [--json] [--l1=gpu|cpu] [--concurrent_calls=N] [--rows=model/table=N,...]

``python -m tf_hps <command> --help`` lists each command's flags, with examples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tf_hps import plan
from tf_hps.storage import Storage, canonical_config, table_tag

PROG = "python -m tf_hps"
SHARED_TYPES = {"volatile_db": ("redis_cluster",), "persistent_db": ("rocks_db",)}


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit status 2."""


def _words(text: str) -> list[str]:
    return [w for w in text.split(",") if w]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the whole usage
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


COMMANDS = {
    "ingest": ("load each selected table's sparse_files into the shared databases",
               "Loads each model's table files into the configured Redis (volatile_db) and RocksDB\n"
               "(persistent_db), so serving nodes can start with initialize_after_startup: false /\n"
               "read_only: true and no model files. The in-process hash map is skipped: it lives inside\n"
               "each serving process.",
               ["--config=ps.json", "--config=ps.json --models=ranker --tiers=persistent_db --progress"]),
    "inspect": ("rows stored per table and database",
                "Prints how many rows each selected table holds in each shared database, and the other\n"
                "tables stored there.",
                ["--config=ps.json", "--config=ps.json --models=ranker --tables=items"]),
    "verify": ("compare stored rows with the table files, bit for bit",
               "Reads every row of each selected table's files and compares it with the stored one; exits 1\n"
               "if a row is missing or different.",
               ["--config=ps.json", "--config=ps.json --tiers=volatile_db --progress"]),
    "drop": ("delete tables from the shared databases",
             "Deletes the selected tables' rows from the shared databases. Destructive: needs --yes.",
             ["--config=ps.json --models=ranker --yes", "--config=ps.json --models=ranker --tables=items --yes"]),
    "plan": ("RAM, GPU memory, Redis memory and disk each tier of each table needs",
             "Prints the memory each tier of each table will need, and the totals per GPU and per host\n"
             "(tf_hps/plan.py). Opens no database.",
             ["ps.json", "ps.json --l1=cpu --concurrent_calls=4", "ps.json --rows=ranker/items=50000000 --json"]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=f"{PROG} <command> --help lists a command's flags, with examples.")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="<command>", parser_class=_Parser)
    for name, (summary, description, examples) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog="examples:\n" + "\n".join(f"  {PROG} {name} {e}" for e in examples))
        if name == "plan":
            sub.add_argument("config_file", nargs="?", metavar="ps.json", help="HPS JSON config (or --config)")
        sub.add_argument("--config", help="HPS JSON config file" + ("" if name == "plan" else " (required)"))
        if name == "plan":
            sub.add_argument("--json", action="store_true", help="print the plan as JSON (bytes as integers)")
            sub.add_argument("--l1", choices=["gpu", "cpu"], default="gpu",
                             help="where L1 caches live: one copy per GPU of deployed_device_list (gpu, the "
                                  "default), or one in host RAM (cpu)")
            sub.add_argument("--concurrent_calls", type=int, default=1, metavar="N",
                             help="lookup calls in flight at once per serving process (default 1)")
            sub.add_argument("--rows", type=_words, default=[], metavar="model/table=N,...",
                             help="rows of tables whose files are not here")
            continue
        sub.add_argument("--models", type=_words, default=[], metavar="a,b",
                         help="models to act on (default: every model of the config)")
        sub.add_argument("--tables", type=_words, default=[], metavar="t0,t1",
                         help="table names to act on (default: every table of the selected models)")
        sub.add_argument("--tiers", type=_words, default=["volatile_db", "persistent_db"],
                         metavar="volatile_db,persistent_db", help="databases to act on (default: both)")
        if name in ("ingest", "verify"):
            sub.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                             help="progress bars on stderr (default: when stderr is a terminal)")
        if name == "drop":
            sub.add_argument("--yes", action="store_true", help="confirm: drop deletes data")
    return parser


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


def selected_tables(args, config: dict):
    """(model, table name, tag, folder, dim) of each selected table."""
    models = {m["model"]: m for m in config["models"]}
    for name in args.models:
        if name not in models:
            raise UsageError(f"model {name!r} is not in the config (models: {', '.join(models)})")
    chosen = [models[n] for n in args.models] if args.models else list(models.values())
    found_tables = set()
    for model in chosen:
        for name, folder, dim in zip(model["embedding_table_names"], model["sparse_files"],
                                     model["embedding_vecsize_per_table"]):
            if args.tables and name not in args.tables:
                continue
            found_tables.add(name)
            yield model["model"], name, table_tag(model["model"], name), folder, dim
    missing = set(args.tables) - found_tables
    if missing:
        raise UsageError(f"table(s) {', '.join(sorted(missing))} not in the selected models")


def open_tiers(args, config: dict) -> list[tuple[str, Storage]]:
    tiers = []
    for tier in args.tiers:
        if tier not in SHARED_TYPES:
            raise UsageError(f"--tiers takes volatile_db and/or persistent_db, not {tier!r}")
        section = dict(config[tier])
        if args.command in ("inspect", "verify") and tier == "persistent_db":
            section["read_only"] = True  # a read-only tool never creates a database (a mistyped path fails)
        if section["type"] not in SHARED_TYPES[tier]:
            print(f"{tier}: skipped (type {section['type']!r} is not a shared database)", file=sys.stderr)
            continue
        tiers.append((tier, Storage(tier, section)))
    if not tiers:
        raise UsageError("no shared database in the selected tiers: nothing to do")
    return tiers


def run(args) -> int:
    command = args.command
    config = canonical_config(args.config)
    keys_32 = not config["supportlonglong"]
    tables = list(selected_tables(args, config))
    if command == "drop" and not args.yes:
        raise UsageError("drop deletes data: repeat with --yes")
    progress = getattr(args, "progress", None)
    failures = 0
    for tier, db in open_tiers(args, config):
        kind = config[tier]["type"]
        for model, name, tag, folder, dim in tables:
            label = f"{kind} {tag}"
            if command == "ingest":
                rows = db.ingest(tag, folder, dim, keys_32, ProgressBar(label, progress))
                print(f"{label}: ingested {rows} rows from {folder}")
            elif command == "inspect":
                print(f"{label}: {db.size(tag)} rows stored (dimension {dim})")
            elif command == "verify":
                rows, missing, mismatched = db.verify(tag, folder, dim, keys_32, ProgressBar(label, progress))
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
            raise UsageError(f"--rows wants model/table=N, got {item!r}")
        rows[name] = int(count)
    return rows


def run_plan(args) -> int:
    if args.concurrent_calls < 1:
        raise UsageError(f"--concurrent_calls must be at least 1, got {args.concurrent_calls}")
    result = plan.plan_memory(args.config, l1=args.l1, rows=parse_rows(args.rows),
                              concurrent_calls=args.concurrent_calls)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(plan.format_plan(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(f"{PROG}: a command is required: {', '.join(COMMANDS)} (see {PROG} --help)")
        if args.command == "plan" and args.config_file:
            if args.config:
                raise UsageError(f"{PROG} plan: give the config once, as ps.json or --config")
            args.config = args.config_file
        if not args.config:
            hint = " (or: python -m tf_hps plan ps.json)" if args.command == "plan" else ""
            raise UsageError(f"{PROG} {args.command}: --config is required{hint}")
        return run_plan(args) if args.command == "plan" else run(args)
    except UsageError as e:
        message = str(e)
        if not message.startswith(PROG):
            message = f"{PROG} {args.command}: {message}"
        print(message, file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ConnectionError, NotImplementedError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def entry_point() -> None:
    sys.exit(main())
