"""Process-level API: ``Init``, as in HugeCTR's HPS plugin."""

from __future__ import annotations

import functools
import json
import os

from tf_hps._ops import evaluate as _evaluate
from tf_hps._ops import ops
from tf_hps._warn import warn
from tf_hps.config import PsConfig, load_config

# The configs hps.Init loaded, by canonical path, in Init order (a later Init of a file replaces it).
_loaded: dict[str, PsConfig] = {}


def Init(global_batch_size: int = 1, ps_config_file: str | os.PathLike = "") -> str:  # noqa: N802 (HPS name)
    """Loads the parameter server of a config now, and serves its models with it in this process.

    Every table of every model is loaded into the configured tiers. Layers
    without a ``ps_config_file`` find their model in the configs loaded by
    ``Init`` (created before or after it); a SavedModel exported elsewhere
    serves the models this config names from it, whatever config it carries,
    so a config edited after the export takes effect. Call it before the
    first lookup. Calling it again with the same file reads it again (a
    changed file gives a new server). Returns ``"OK"``. The whole rule:
    docs/config.md, "Which config serves a layer".

    Example:
        >>> import tf_hps as hps
        >>> hps.Init(global_batch_size=1024, ps_config_file="ps_config.json")  # doctest: +SKIP
        'OK'
    """
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
    if not os.fspath(ps_config_file):
        raise ValueError("ps_config_file is required")
    config = load_config(ps_config_file)
    for model in config.data["models"]:
        if global_batch_size > model["max_batch_size"]:
            warn(
                f"hps.Init: global_batch_size {global_batch_size} is above model {model['model']!r}'s max_batch_size "
                f"{model['max_batch_size']} in {config.path} (HPS refuses this); lookups of bigger batches are served, "
                "but GPU caches size their buffers by max_batch_size: raise it to the largest batch",
                UserWarning)
    _evaluate(lambda: ops().tf_hps_init(ps_config=config.canonical_json, ps_config_file=config.path, bind=True,
                                        global_batch_size=global_batch_size))
    key = os.path.realpath(config.path)
    _loaded.pop(key, None)
    _loaded[key] = config
    return "OK"


def stats() -> dict[str, dict[str, int | list[int]]]:
    """Counters of every table served in this process, by table tag (``hps_et.<model>.<table>``).

    Each holds ``lookups`` (calls), ``fused_lookups`` (of those, calls looked up
    in one pass with other tables: ``FusedLookupLayer`` under ``fuse_embedding_table``),
    ``keys`` (duplicates included), ``l1_hits``
    (keys answered by L1), ``missed_keys`` (distinct keys of each batch that L1
    missed; each is then a ``vdb_hits``, a ``pdb_hits`` or one of the
    ``defaults``, keys no tier held; a table with no L1 and the hash map as its
    VDB hands the hash map every position, so there each position it answers
    counts, then each distinct key of the rest), ``vdb_errors``
    (failed calls to a shared VDB), ``vdb_skipped`` (calls that passed over
    it while it was down), ``cache_inserted`` (rows put into L1 after a miss),
    ``insert_deferred`` / ``insert_dropped`` (of those, rows left to the
    background inserter / dropped because its queue was full), ``cache_evicted``
    (rows L1 evicted to make room), ``cache_refreshed``, ``cache_rows``,
    ``rows_updated``, ``updates_rejected`` (malformed update messages) and
    ``update_failures`` (polls of the table's update stream that failed, then
    retried after ``failure_backoff_ms``), ``updates_trimmed`` (messages the
    stream lost to ``max_stream_entries`` before this process read them),
    ``vdb_rows_missing`` (rows a Redis VDB with no persistent_db no longer
    holds, e.g. restarted empty), and a latency histogram: ``latency_counts[i]`` calls took at most
    ``latency_us_bounds[i]`` microseconds (the last count is unbounded).
    With RocksDB as the persistent database, also its memory in bytes:
    ``pdb_memtable_bytes`` and ``pdb_index_filter_bytes`` (the table's) and
    ``pdb_block_cache_bytes`` (the block cache all its tables share).

    Example:
        >>> hps.stats()["hps_et.foo.sparse_embedding0"]["l1_hits"]  # doctest: +SKIP
        1234
    """
    totals: dict[str, dict[str, int | list[int]]] = {}
    per_server = _evaluate(lambda: ops().tf_hps_stats())
    for text in per_server:
        for tag, counters in json.loads(text.decode()).items():
            table = totals.get(tag)
            if table is None:
                totals[tag] = counters
                continue
            for name, value in counters.items():  # the same table in several servers: add up
                if name == "latency_us_bounds":
                    continue
                if name not in table:  # a figure only some servers' tiers report
                    table[name] = value
                    continue
                table[name] = [a + b for a, b in zip(table[name], value)] if isinstance(value, list) \
                    else table[name] + value
    return totals


def refresh_cache(model_name: str = "") -> int:
    """Re-reads every row cached in L1 from the databases and overwrites it.

    Rows that changed in the VDB or PDB (e.g. written by a training job)
    reach the cache without waiting for eviction. For one model, or every
    model served in this process when ``model_name`` is empty. A model's
    ``refresh_interval`` (seconds) also runs this on a timer, first after
    ``refresh_delay``. Returns the number of rows refreshed; a ``model_name``
    that no parameter server of the process serves raises
    ``tf.errors.InvalidArgumentError`` naming the models served.

    Example:
        >>> hps.refresh_cache("foo")  # doctest: +SKIP
        2000
    """
    return int(_evaluate(lambda: ops().tf_hps_refresh(model_name=model_name)))


def config_for_model(model_name: str) -> PsConfig | None:
    """The config loaded by ``Init`` that names ``model_name``, or None.

    Raises ValueError naming both files when two loaded configs name it."""
    found = [c for c in _loaded.values() if any(m["model"] == model_name for m in c.data["models"])]
    if len(found) > 1:
        raise ValueError(
            f"model {model_name!r} is in two configs loaded by hps.Init: {found[0].path} and {found[1].path}; "
            "rename one, or give the layer its ps_config_file"
        )
    return found[0] if found else None


def config_for_file(ps_config_file: str | os.PathLike) -> PsConfig | None:
    """The config ``Init`` loaded from this file (compared by real path), or None."""
    return _loaded.get(os.path.realpath(os.fspath(ps_config_file)))


@functools.lru_cache(maxsize=None)
def process_token() -> str:
    """This process's id, which the graphs traced here carry (TfHpsInit's traced_in)."""
    return _evaluate(lambda: ops().tf_hps_process_token()).decode()
