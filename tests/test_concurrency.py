"""Many simultaneous callers each get exact results, nothing deadlocks, and idle servers use no CPU.

Every test bounds its waits: worker threads are daemons joined with a deadline (a hung test fails,
it does not hang the run), and subprocesses run under run_python's timeout.
"""

import json
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, run_python
from tf_hps.storage import Storage, table_tag

DIM = 8
JOIN_TIMEOUT_S = 60.0


def run_threads(work, args_list, timeout=JOIN_TIMEOUT_S):
    """Runs work(*args) on one daemon thread per args, all released at once; returns their results.

    Fails if a thread is still running after `timeout` seconds (a deadlock or a hang), and re-raises
    the first exception a thread raised.
    """
    barrier = threading.Barrier(len(args_list))
    results = [None] * len(args_list)
    errors = []

    def run(i, args):
        try:
            barrier.wait(timeout)
            results[i] = work(*args)
        except BaseException as e:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, args), daemon=True) for i, args in enumerate(args_list)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"{len(hung)} of {len(threads)} threads still running after {timeout} s: deadlock?"
    if errors:
        raise errors[0]
    return results


def reference(dense, ids, max_norm=None):
    return tf.nn.embedding_lookup(dense, np.asarray(ids, np.int64), max_norm=max_norm).numpy()


def mismatches(got, want):
    return 0 if np.array_equal(got, want) else int(np.sum(np.any(got != want, axis=-1)))


@pytest.fixture
def table(tables):
    """make(model, extra=None, **model keys) writes a config of one 2000 x 8 table (keys 0..1999, default
    -3.0) and returns (config path, dense reference over keys 0..2399)."""
    tables.table("t0", 2000, DIM)

    def make(model="foo", extra=None, **extra_model):
        path = tables.config(dims=(DIM,), defaults=(-3.0,), model=model, extra_model=extra_model, extra=extra,
                             name=f"{model}.json")
        return path, tables.dense("t0", -3.0, 2399)

    return make


# --- threads sharing layers and functions -------------------------------------------------------


def test_threads_share_one_layer_and_one_tf_function(table):
    path, dense = table()
    layer = hps.LookupLayer("foo", 0, DIM, tf.float32, path)
    by_function = tf.function(lambda ids: layer(ids), input_signature=[tf.TensorSpec([None, None], tf.int64)])

    def worker(seed):
        rng = np.random.default_rng(seed)
        bad = 0
        for i in range(8):
            ids = rng.integers(0, 2400, size=(int(rng.integers(1, 40)), int(rng.integers(1, 30))))
            # First calls race: the function is traced while other threads call it and the layer
            # (with int64 keys, and int32 keys, which the kernel widens in a per-thread buffer).
            if (seed + i) % 2:
                got = by_function(tf.constant(ids, tf.int64))
            else:
                got = layer(tf.constant(ids, tf.int32 if seed % 4 == 0 else tf.int64))
            bad += mismatches(got.numpy(), reference(dense, ids))
        return bad

    assert run_threads(worker, [(seed,) for seed in range(16)]) == [0] * 16
    assert by_function.experimental_get_tracing_count() == 1


def test_first_calls_of_several_configs_race_from_threads(tables):
    """Threads create servers of 3 configs at once (2 threads each) and look up in them right away."""
    tables.table("t0", 500, DIM)
    paths = [tables.config(dims=(DIM,), model=f"race{i}", defaults=(float(i),), name=f"race{i}.json")
             for i in range(3)]
    dense = [tables.dense("t0", float(i), 599) for i in range(3)]

    def worker(i, seed):
        layer = hps.LookupLayer(f"race{i}", 0, DIM, tf.float32, paths[i])
        ids = np.random.default_rng(seed).integers(0, 600, size=(300,))
        return mismatches(layer(tf.constant(ids)).numpy(), reference(dense[i], ids))

    assert run_threads(worker, [(i % 3, i) for i in range(6)]) == [0] * 6


# --- TF inter-op parallelism ----------------------------------------------------------------------

INTER_OP = """
import sys
import threading
import numpy as np
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
inter, intra = int(sys.argv[4]), int(sys.argv[5])
tf.config.threading.set_inter_op_parallelism_threads(inter)
tf.config.threading.set_intra_op_parallelism_threads(intra)
import tf_hps as hps
path, out_file = sys.argv[2:4]
assert tf.config.threading.get_inter_op_parallelism_threads() == inter
layers = [hps.LookupLayer("foo", t, d, tf.float32, path) for t, d in ((0, 8), (1, 4))]
ids = np.random.default_rng(0).integers(0, 2400, size=(6, 20000))

@tf.function
def six_lookups(ids):  # independent of each other: the executor may run them at once
    return [layers[i % 2](ids[i]) for i in range(6)]

results = [None] * 3
def call(i):
    results[i] = [r.numpy() for r in six_lookups(tf.constant(ids))]
threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join(60)
assert not any(t.is_alive() for t in threads), "deadlock"
np.savez(out_file, ids=ids, **{f"c{c}_{i}": r for c, rs in enumerate(results) for i, r in enumerate(rs)})
"""


@pytest.mark.serving
@pytest.mark.parametrize("inter,intra", [(1, 1), (4, 2)])
def test_inter_op_parallelism_with_independent_lookups_in_one_graph(tables, tmp_path, inter, intra):
    tables.table("a", 2000, 8)
    tables.table("b", 1500, 4)
    path = tables.config(tables=("a", "b"), dims=(8, 4), defaults=(0.5, -0.5))
    dense = [tables.dense("a", 0.5, 2399), tables.dense("b", -0.5, 2399)]
    run_python(INTER_OP, ROOT, path, str(tmp_path / "out.npz"), str(inter), str(intra), timeout=120)
    got = np.load(tmp_path / "out.npz")
    for call in range(3):
        for i in range(6):
            np.testing.assert_array_equal(got[f"c{call}_{i}"], reference(dense[i % 2], got["ids"][i]))


# --- several SavedModels in one process -----------------------------------------------------------

SERVE_SEVERAL = """
import json
import sys
import threading
import numpy as np
import tensorflow as tf
ops = tf.load_op_library(sys.argv[1])
exports, ids_file, out_file = sys.argv[2].split(","), sys.argv[3], sys.argv[4]
models = [tf.saved_model.load(e) for e in exports]
ids = dict(np.load(ids_file))  # "m<model>_t<thread>": (iterations, batch...)
results = {}
def serve(name):
    model = models[int(name[1])]
    results[name] = np.stack([model.serve(tf.constant(batch)).numpy() for batch in ids[name]])
threads = [threading.Thread(target=serve, args=(name,), daemon=True) for name in ids]
for t in threads: t.start()  # the first calls of every model race for initialisation
for t in threads: t.join(60)
assert not any(t.is_alive() for t in threads), "deadlock"
np.savez(out_file, **results)
print(json.dumps({"servers": len(ops.tf_hps_stats().numpy())}))
"""


@pytest.mark.serving
def test_several_saved_models_in_one_process_called_from_threads(tables, tmp_path):
    tables.table("t0", 2000, 8)
    tables.table("u0", 300, 4)
    shared = tables.config(dims=(8,), defaults=(-3.0,), name="shared.json")
    other = tables.config(tables=("u0",), dims=(4,), model="bar", defaults=(2.0,), name="other.json")
    dense_foo, dense_bar = tables.dense("t0", -3.0, 2399), tables.dense("u0", 2.0, 2399)

    def export(name, shape, lookup):
        ids = keras.Input(shape=shape, dtype="int64", name="ids")
        keras.Model(ids, lookup(ids)).export(str(tmp_path / name), verbose=False)
        return str(tmp_path / name)

    foo = hps.LookupLayer("foo", 0, 8, tf.float32, shared)
    exports = [
        export("foo_plain", (3,), foo),                                  # same config ...
        export("foo_clipped", (), lambda ids: foo(ids, max_norm=0.25)),  # ... a different export
        export("bar", (2, 2), hps.LookupLayer("bar", 0, 4, tf.float32, other)),  # another config
    ]
    rng = np.random.default_rng(11)
    shapes = [(5, 7, 3), (5, 40), (5, 6, 2, 2)]
    ids = {f"m{m}_t{t}": rng.integers(0, 2400, size=shapes[m]) for m in range(3) for t in range(2)}
    np.savez(tmp_path / "ids.npz", **ids)
    proc = run_python(SERVE_SEVERAL, hps.op_library_path(), ",".join(exports), str(tmp_path / "ids.npz"),
                      str(tmp_path / "out.npz"), timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"servers": 2}  # one per distinct config
    got = np.load(tmp_path / "out.npz")
    for name, batches in ids.items():
        want = {"0": reference(dense_foo, batches), "1": reference(dense_foo, batches, max_norm=0.25),
                "2": reference(dense_bar, batches)}[name[1]]
        np.testing.assert_array_equal(got[name], want, err_msg=name)


# --- refreshes --------------------------------------------------------------------------------------


def test_lookups_stay_exact_while_refreshes_run(table):
    path, dense = table(model="refreshing", gpucacheper=0.5, cache_refresh_percentage_per_iteration=0.2)
    layer = hps.LookupLayer("refreshing", 0, DIM, tf.float32, path)
    stop = threading.Event()
    refreshed = []

    def refresher():
        while not stop.is_set():
            refreshed.append(hps.refresh_cache("refreshing"))
            refreshed.append(hps.refresh_cache())  # every model of every server in the process

    def reader(seed):
        rng = np.random.default_rng(seed)
        bad = 0
        for i in range(10_000):
            if i >= 25 and len(refreshed) >= 10:  # long enough to overlap many refreshes
                break
            ids = np.minimum(rng.zipf(1.2, size=(400,)), 2399)
            bad += mismatches(layer(tf.constant(ids)).numpy(), reference(dense, ids))
        return bad

    layer(tf.constant(np.arange(1000)))  # something cached to refresh from the start
    background = threading.Thread(target=refresher, daemon=True)
    background.start()
    try:
        assert run_threads(reader, [(seed,) for seed in range(4)]) == [0] * 4
    finally:
        stop.set()
        background.join(JOIN_TIMEOUT_S)
    assert not background.is_alive(), "refresh_cache never returned: deadlock?"
    assert len(refreshed) >= 10 and max(refreshed) > 0
    assert hps.stats()[table_tag("refreshing", "sparse_embedding0")]["cache_refreshed"] > 0


def test_rows_written_to_redis_during_lookups_and_refreshes_are_never_torn(tables, redis_standalone):
    """Each row read while a writer flips rows between two versions is one version, whole."""
    model = "torn_rows"
    tables.table("t0", 1000, 64)  # wide rows: a torn copy would show
    vdb = {"type": "redis_cluster", "address": redis_standalone.address, "num_partitions": 4}
    path = tables.config(dims=(64,), model=model, defaults=(0.0,), extra={"volatile_db": vdb},
                         extra_model={"gpucacheper": 1.0, "hit_rate_threshold": 2.0})  # insertions inline
    layer = hps.LookupLayer(model, 0, 64, tf.float32, path)
    keys = np.arange(1000)
    old = tables.rows["t0"][1]
    new = old + 1000.0
    tag = table_tag(model, "sparse_embedding0")
    stop = threading.Event()
    writes = []

    def writer():
        rng = np.random.default_rng(0)
        with Storage("volatile_db", vdb) as redis_db:
            while not stop.is_set():
                chosen = rng.choice(keys, size=200, replace=False)
                redis_db.insert(tag, chosen, (new if len(writes) % 2 else old)[chosen])
                writes.append(len(chosen))
                hps.refresh_cache(model)

    def reader(seed):
        rng = np.random.default_rng(seed)
        bad = saw_new = 0
        for i in range(100_000):
            if i >= 20 and len(writes) >= 10:  # long enough to overlap many writes and refreshes
                break
            ids = rng.integers(0, 1000, size=(300,))
            got = layer(tf.constant(ids)).numpy()
            is_old = np.all(got == old[ids], axis=1)
            is_new = np.all(got == new[ids], axis=1)
            bad += int(np.sum(~(is_old | is_new)))
            saw_new += int(np.sum(is_new))
        return bad, saw_new > 0

    layer(tf.constant(keys))  # every row in L1, so refreshes overwrite rows readers are reading
    background = threading.Thread(target=writer, daemon=True)
    background.start()
    try:
        results = run_threads(reader, [(seed,) for seed in range(4)])
    finally:
        stop.set()
        background.join(JOIN_TIMEOUT_S)
    assert not background.is_alive(), "the writer never finished: deadlock?"
    assert [bad for bad, _ in results] == [0] * 4
    assert any(saw_new for _, saw_new in results)  # the readers did overlap the writes
    with Storage("volatile_db", vdb) as redis_db:  # settle on the new version everywhere
        redis_db.insert(tag, keys, new)
    assert hps.refresh_cache(model) > 500
    np.testing.assert_array_equal(layer(tf.constant(keys)).numpy(), new)


# --- batch sizes and cache sizes -------------------------------------------------------------------


def test_calls_with_more_keys_than_max_batch_size_times_maxnum_per_sample(table):
    path, dense = table(model="small_batches", max_batch_size=2, maxnum_catfeature_query_per_table_per_sample=[3])
    layer = hps.LookupLayer("small_batches", 0, DIM, tf.float32, path, global_batch_size=2)
    by_function = tf.function(lambda ids: layer(ids))
    limit = 2 * 3

    def worker(seed):
        rng = np.random.default_rng(seed)
        bad = 0
        for shape in [(limit + 1,), (limit * 1000 + 1,), (64, 64), (70_000,)]:
            ids = rng.integers(0, 2400, size=shape)
            bad += mismatches(layer(tf.constant(ids)).numpy(), reference(dense, ids))
            bad += mismatches(by_function(tf.constant(ids)).numpy(), reference(dense, ids))
        return bad

    assert run_threads(worker, [(seed,) for seed in range(3)]) == [0] * 3


@pytest.mark.parametrize("hit_rate_threshold", [0.9, 0.0])  # insertions inline / on the background inserter
def test_tiny_cache_with_many_threads_answers_every_row_exactly(tables, hit_rate_threshold):
    model = f"tiny_cache_{int(hit_rate_threshold * 10)}"
    tables.table("t0", 10_000, DIM)
    path = tables.config(dims=(DIM,), model=model, defaults=(7.0,),
                         extra_model={"gpucacheper": 0.01, "hit_rate_threshold": hit_rate_threshold})
    dense = tables.dense("t0", 7.0, 10_999)
    layer = hps.LookupLayer(model, 0, DIM, tf.float32, path)

    def worker(seed):
        rng = np.random.default_rng(seed)
        bad = 0
        for i in range(20):
            ids = np.minimum(rng.zipf(1.1, size=(500,)), 10_999) if i % 2 else rng.integers(0, 11_000, size=(500,))
            bad += mismatches(layer(tf.constant(ids)).numpy(), reference(dense, ids))
        return bad

    assert run_threads(worker, [(seed,) for seed in range(8)]) == [0] * 8
    stats = hps.stats()[table_tag(model, "sparse_embedding0")]
    assert stats["cache_evicted"] > 1000  # the cache (100 rows) really was churned
    assert stats["cache_rows"] <= 128
    if hit_rate_threshold == 0.0:
        assert stats["insert_deferred"] > 0


# --- idle --------------------------------------------------------------------------------------------

IDLE = """
import json
import resource
import sys
import threading
import time
import numpy as np
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
import tf_hps as hps

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def idle_cpu():
    time.sleep(0.3)  # let TF's pool threads finish their short spin before they block
    start = cpu_seconds()
    time.sleep(1.0)
    return cpu_seconds() - start

layer = hps.LookupLayer("idle", 0, 8, tf.float32, sys.argv[2])
after_init = (layer(tf.constant([1])), idle_cpu())[1]
def lookups(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        layer(tf.constant(rng.integers(0, 2400, size=(5000,))))
threads = [threading.Thread(target=lookups, args=(s,), daemon=True) for s in range(4)]
for t in threads: t.start()
for t in threads: t.join(60)
assert not any(t.is_alive() for t in threads)
stats = hps.stats()["hps_et.idle.sparse_embedding0"]
print(json.dumps({"after_init": after_init, "after_lookups": idle_cpu(), "deferred": stats["insert_deferred"]}))
"""


def test_no_busy_spin_while_idle(table):
    """The background inserter, the refresh timer and the stats timer sleep while there is nothing to do."""
    path, _ = table(model="idle", extra={"stats_log_interval_seconds": 30.0}, gpucacheper=0.05,
                    hit_rate_threshold=0.0, refresh_interval=30.0)
    report = json.loads(run_python(IDLE, ROOT, path, timeout=120).stdout.strip().splitlines()[-1])
    assert report["deferred"] > 0  # the background inserter did work before going idle
    assert report["after_init"] < 0.05, report
    assert report["after_lookups"] < 0.05, report
