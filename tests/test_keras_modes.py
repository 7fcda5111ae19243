"""LookupLayer is exact in every way TensorFlow and Keras run it.

Each result is compared, bit for bit, with ``tf.nn.embedding_lookup`` on the same table: eager calls,
``tf.function`` (retraced per shape, or once for an ``input_signature`` with unknown dimensions), TF1
graphs run by a ``tf.compat.v1.Session`` (also with eager execution disabled, in a fresh process),
``model.predict`` with a ragged last batch, a ``.keras`` file reloaded in a fresh process that only
imports tf_hps, ``keras.layers.TFSMLayer`` over an export, and ``tf.distribute.MirroredStrategy`` over
two logical CPUs (``strategy.run`` and ``model.predict``). SparseLookupLayer rides along in the Keras
paths, compared with ``tf.nn.embedding_lookup_sparse``, also bit for bit. The Keras models' Dense head
is float math TF computes in another order at another batch shape or in another process: it is
compared within float32 rounding (tf_hps.testing.rounding_bound).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_hps as hps
from conftest import ROOT, run_python
from tf_hps import testing

DIM = 8
ROWS = 600
MAX_KEY = 799  # keys ROWS..MAX_KEY are in no tier: they get the default
DEFAULT = 1.5


@pytest.fixture
def served(tables):
    """A 600 x 8 table (keys 0..599); returns (config path, dense reference over keys 0..799)."""
    tables.table("t0", ROWS, DIM)
    return tables.config(dims=(DIM,), defaults=(DEFAULT,)), tables.dense("t0", DEFAULT, MAX_KEY)


def reference(dense, ids, max_norm=None):
    return tf.nn.embedding_lookup(dense, np.asarray(ids, np.int64), max_norm=max_norm).numpy()


def random_ids(seed, shape):
    return np.random.default_rng(seed).integers(0, MAX_KEY + 1, size=shape)


# --- eager and tf.function ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_eager_calls_match_embedding_lookup(served, dtype):
    path, dense = served
    layer = hps.LookupLayer("foo", 0, DIM, tf.float32, path)
    for seed, shape in enumerate([(1,), (9,), (3, 5), (2, 2, 6), (0, 4)]):
        ids = random_ids(seed, shape)
        got = layer(tf.constant(ids, dtype))
        assert got.shape == shape + (DIM,)
        np.testing.assert_array_equal(got.numpy(), reference(dense, ids))


def test_tf_function_retraces_per_shape_and_every_trace_is_exact(served):
    path, dense = served
    layer = hps.LookupLayer("foo", 0, DIM, tf.float32, path)
    lookup = tf.function(lambda ids: layer(ids))
    shapes = [(5,), (2, 3), (4, 1, 2), (7, 7)]
    for seed, shape in enumerate(shapes):
        ids = random_ids(seed, shape)
        np.testing.assert_array_equal(lookup(tf.constant(ids, tf.int64)).numpy(), reference(dense, ids))
    # A traced graph answers new keys of a known shape: the op is neither constant-folded nor cached.
    traced = lookup.experimental_get_tracing_count()
    for seed in range(10, 14):
        ids = random_ids(seed, (7, 7))
        np.testing.assert_array_equal(lookup(tf.constant(ids, tf.int64)).numpy(), reference(dense, ids))
    assert lookup.experimental_get_tracing_count() == traced
    # int32 keys are a new trace of their own.
    ids = random_ids(20, (5,))
    np.testing.assert_array_equal(lookup(tf.constant(ids, tf.int32)).numpy(), reference(dense, ids))
    assert lookup.experimental_get_tracing_count() == traced + 1


@pytest.mark.parametrize("spec_shape", [[None, None], None])
def test_tf_function_with_unknown_dims_in_the_input_signature_traces_once(served, spec_shape):
    path, dense = served
    layer = hps.LookupLayer("foo", 0, DIM, tf.float32, path)

    @tf.function(input_signature=[tf.TensorSpec(spec_shape, tf.int64)])
    def lookup(ids):
        plain = layer(ids)
        clipped = layer(ids, max_norm=0.75)  # the clipping axis is found at run time when the rank is unknown
        if spec_shape is None:
            assert plain.shape.rank is None
        else:
            assert plain.shape.as_list() == [None, None, DIM]
        return plain, clipped

    shapes = [(1, 1), (6, 3), (0, 4), (33, 2)] if spec_shape else [(4,), (2, 3), (2, 1, 3), ()]
    for seed, shape in enumerate(shapes):
        ids = random_ids(seed, shape)
        plain, clipped = lookup(tf.constant(ids, tf.int64))
        assert plain.shape == shape + (DIM,)
        np.testing.assert_array_equal(plain.numpy(), reference(dense, ids))
        np.testing.assert_array_equal(clipped.numpy(), reference(dense, ids, max_norm=0.75))
    assert lookup.experimental_get_tracing_count() == 1


# --- TF1 graphs -----------------------------------------------------------------------------------


def test_tf1_graph_run_by_a_session(served):
    path, dense = served
    layer = hps.LookupLayer("foo", 0, DIM, tf.float32, path)
    for _ in range(2):  # a second graph, a second session: the same parameter server answers
        graph = tf.Graph()
        with graph.as_default():
            ids_in = tf.compat.v1.placeholder(tf.int64, [None, None])
            plain = layer(ids_in)
            clipped = layer(ids_in, max_norm=0.5)
            assert plain.shape.as_list() == [None, None, DIM]
        batches = [random_ids(seed, shape) for seed, shape in enumerate([(3, 4), (1, 1), (17, 2)])]
        want = [(reference(dense, ids), reference(dense, ids, max_norm=0.5)) for ids in batches]
        with tf.compat.v1.Session(graph=graph) as session:  # (the session's graph is the default inside)
            got = [session.run([plain, clipped], {ids_in: ids}) for ids in batches]
        for (got_plain, got_clipped), (want_plain, want_clipped) in zip(got, want):
            np.testing.assert_array_equal(got_plain, want_plain)
            np.testing.assert_array_equal(got_clipped, want_clipped)


def test_layers_and_init_created_inside_a_tf1_graph(served):
    """An HPS-for-TF1 script builds everything inside the default graph, not in eager mode."""
    path, dense = served
    graph = tf.Graph()
    with graph.as_default():
        assert hps.Init(global_batch_size=4, ps_config_file=path) == "OK"
        layer = hps.LookupLayer("foo", 0, DIM, tf.float32, path)
        ids_in = tf.compat.v1.placeholder(tf.int32, [None])
        out = layer(ids_in)
        stats = hps.stats()
        refreshed = hps.refresh_cache("foo")
    assert isinstance(refreshed, int)
    assert "hps_et.foo.sparse_embedding0" in stats
    ids = random_ids(3, (50,))
    want = reference(dense, ids)
    with tf.compat.v1.Session(graph=graph) as session:
        got = session.run(out, {ids_in: ids})
    np.testing.assert_array_equal(got, want)


def test_init_stats_and_refresh_called_while_a_tf_function_traces_run_at_once(tables):
    """hps.Init inside a traced function loads the server then, not in some graph that never runs."""
    tables.table("t0", 100, DIM)
    path = tables.config(dims=(DIM,), model="traced_init")
    tag = "hps_et.traced_init.sparse_embedding0"

    seen_while_tracing = []

    @tf.function
    def setup():
        seen_while_tracing.append(hps.Init(global_batch_size=2, ps_config_file=path))
        seen_while_tracing.append(tag in hps.stats())
        seen_while_tracing.append(hps.refresh_cache("traced_init"))
        return tf.constant(0)

    setup()
    assert seen_while_tracing == ["OK", True, 0]  # the server exists (its L1 is empty: nothing to refresh)
    assert hps.stats()[tag]["lookups"] == 0


TF1_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
tf.compat.v1.disable_eager_execution()
import tf_hps as hps
path, ids_file, out_file = sys.argv[2:5]
assert not tf.executing_eagerly()
assert hps.Init(global_batch_size=4, ps_config_file=path) == "OK"
by_default = hps.LookupLayer("foo", 0, 8, tf.float32)  # the config of hps.Init
explicit = hps.LookupLayer("foo", 0, 8, tf.float32, path)
ids_in = tf.compat.v1.placeholder(tf.int64, [None, None])
plain, clipped = by_default(ids_in), explicit(ids_in, max_norm=0.5)
ids = np.load(ids_file)
with tf.compat.v1.Session() as session:
    got_plain, got_clipped = session.run([plain, clipped], {ids_in: ids})
    got_small = session.run(plain, {ids_in: ids[:2, :1]})
np.savez(out_file, plain=got_plain, clipped=got_clipped, small=got_small)
stats = hps.stats()["hps_et.foo.sparse_embedding0"]
print(json.dumps({"lookups": stats["lookups"], "refreshed": hps.refresh_cache()}))
"""


@pytest.mark.serving
def test_tf1_mode_with_eager_execution_disabled(served, tmp_path):
    path, dense = served
    ids = random_ids(4, (12, 3))
    np.save(tmp_path / "ids.npy", ids)
    proc = run_python(TF1_SCRIPT, ROOT, path, str(tmp_path / "ids.npy"), str(tmp_path / "out.npz"))
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(got["plain"], reference(dense, ids))
    np.testing.assert_array_equal(got["clipped"], reference(dense, ids, max_norm=0.5))
    np.testing.assert_array_equal(got["small"], reference(dense, ids[:2, :1]))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["lookups"] == 3  # session runs of two lookups and of one, all seen by hps.stats()
    assert report["refreshed"] > 0


# --- Keras ------------------------------------------------------------------------------------------
#
# The Keras models take dense ids (None, 3) through a LookupLayer (+ a Dense head) and, where the path
# carries sparse inputs, a SparseTensor (None, None) through a SparseLookupLayer (combiner "mean").

def random_sparse(seed, rows, width=5):
    """A (rows, width) SparseTensor of keys in canonical order, at least one key per row."""
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, width)) < 0.5
    mask[:, 0] = True
    keys = rng.integers(0, MAX_KEY + 1, size=(rows, width))
    return tf.SparseTensor(np.argwhere(mask), keys[mask], [rows, width])


def sparse_reference(dense, sp_ids):
    return tf.nn.embedding_lookup_sparse(dense, sp_ids, None, combiner="mean").numpy()


def lookup_model(path, sparse):
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    emb = hps.LookupLayer("foo", 0, DIM, tf.float32, path, name="lookup")(ids)
    head = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(emb))
    if not sparse:
        return keras.Model(ids, [emb, head])
    sp_ids = keras.Input(shape=(None,), dtype="int64", sparse=True, name="sp_ids")
    combined = hps.SparseLookupLayer("foo", 0, DIM, tf.float32, path, name="sparse_lookup")(sp_ids, combiner="mean")
    return keras.Model([ids, sp_ids], [emb, head, combined])


def check_head(model, emb, head):
    """The Dense head's outputs against float64 arithmetic on the exact embeddings, within float32 rounding."""
    layer = model.get_layer("head")
    kernel, bias = (w.numpy().astype(np.float64) for w in layer.weights)
    exact = emb.reshape(len(emb), -1).astype(np.float64) @ kernel + bias
    bound = testing.rounding_bound(emb, [keras.layers.Flatten(), layer])
    testing.assert_within_rounding(head, exact, bound, "Dense head", desired_is_exact=True)


def test_model_predict_with_a_batch_size_that_does_not_divide_the_data(served):
    path, dense = served
    model = lookup_model(path, sparse=True)
    ids, sp_ids = random_ids(5, (103, 3)), random_sparse(5, 103)  # 6 batches of 16 and one of 7
    emb, head, combined = model.predict([ids, sp_ids], batch_size=16, verbose=0)
    np.testing.assert_array_equal(emb, reference(dense, ids))
    check_head(model, emb, head)
    testing.assert_bitwise_equal(combined, sparse_reference(dense, sp_ids))
    dense_only = lookup_model(path, sparse=False)
    dataset = tf.data.Dataset.from_tensor_slices(ids).batch(10)  # a ragged last batch from a dataset
    np.testing.assert_array_equal(dense_only.predict(dataset, verbose=0)[0], reference(dense, ids))
    # The predict function traced for batches of 16 and 7 keeps answering new keys exactly.
    again = random_ids(6, (41, 3))
    np.testing.assert_array_equal(dense_only.predict(again, batch_size=16, verbose=0)[0], reference(dense, again))


LOAD_KERAS = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import keras
import tensorflow as tf
import tf_hps  # all it takes: no custom_objects
model = keras.saving.load_model(sys.argv[2])
for name in ("lookup", "sparse_lookup"):
    assert type(model.get_layer(name)).__module__.startswith("tf_hps"), type(model.get_layer(name))
data = np.load(sys.argv[3])
sp_ids = tf.SparseTensor(data["indices"], data["values"], data["dense_shape"])
emb, head, combined = model.predict([data["ids"], sp_ids], batch_size=5, verbose=0)
np.savez(sys.argv[4], emb=emb, head=head, combined=combined)
"""


@pytest.mark.serving
def test_keras_file_reloads_in_a_fresh_process_that_only_imports_tf_hps(served, tmp_path):
    path, dense = served
    model = lookup_model(path, sparse=True)
    ids, sp_ids = random_ids(7, (13, 3)), random_sparse(7, 13)
    want_emb, want_head, _ = model.predict([ids, sp_ids], verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "in.npz", ids=ids, indices=sp_ids.indices.numpy(), values=sp_ids.values.numpy(),
             dense_shape=sp_ids.dense_shape.numpy())
    run_python(LOAD_KERAS, ROOT, str(tmp_path / "m.keras"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(got["emb"], reference(dense, ids))
    # The Dense weights came back: the head agrees with this process's within float32 rounding.
    bound = testing.rounding_bound(want_emb, [keras.layers.Flatten(), model.get_layer("head")])
    testing.assert_within_rounding(got["head"], want_head, bound, "reloaded Dense head")
    testing.assert_bitwise_equal(got["combined"], sparse_reference(dense, sp_ids))


def test_tfsmlayer_over_a_model_export_inside_a_new_keras_model(served, tmp_path):
    path, dense = served
    model = lookup_model(path, sparse=False)
    model.export(str(tmp_path / "export"), verbose=False)
    served_layer = keras.layers.TFSMLayer(str(tmp_path / "export"), call_endpoint="serve")
    ids_in = keras.Input(shape=(3,), dtype="int64")
    emb, head = served_layer(ids_in)
    wrapper = keras.Model(ids_in, [keras.layers.Rescaling(2.0)(emb), head])
    ids = random_ids(8, (21, 3))
    doubled, head_out = wrapper.predict(ids, batch_size=8, verbose=0)
    np.testing.assert_array_equal(doubled, 2.0 * reference(dense, ids))  # times 2: exact
    check_head(model, reference(dense, ids), head_out)
    emb_eager, _ = served_layer(tf.constant(ids[:4]))  # called directly, eagerly
    np.testing.assert_array_equal(emb_eager.numpy(), reference(dense, ids[:4]))


def test_tfsmlayer_over_an_export_with_a_sparse_input_inside_a_new_keras_model(served, tmp_path):
    """model.export makes dense input specs only, so the sparse model goes out through an ExportArchive."""
    path, dense = served
    model = lookup_model(path, sparse=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", tf.function(
        lambda inputs: model(list(inputs)),
        input_signature=[(tf.TensorSpec([None, 3], tf.int64), tf.SparseTensorSpec([None, None], tf.int64))]))
    archive.write_out(str(tmp_path / "export"), verbose=False)
    served_layer = keras.layers.TFSMLayer(str(tmp_path / "export"), call_endpoint="serve")
    ids_in = keras.Input(shape=(3,), dtype="int64")
    sp_in = keras.Input(shape=(None,), dtype="int64", sparse=True)
    emb, _, combined = served_layer((ids_in, sp_in))
    wrapper = keras.Model([ids_in, sp_in], [emb, keras.layers.Rescaling(-1.0)(combined)])
    ids, sp_ids = random_ids(9, (11, 3)), random_sparse(9, 11)
    got_emb, negated = wrapper.predict([ids, sp_ids], batch_size=4, verbose=0)
    np.testing.assert_array_equal(got_emb, reference(dense, ids))
    testing.assert_bitwise_equal(-negated, sparse_reference(dense, sp_ids))  # times -1: exact


MIRRORED = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import tf_hps as hps
path, in_file, out_file = sys.argv[2:5]
data = np.load(in_file)  # ids (2, 4, 3) and a SparseTensor per replica; predict_ids (37, 3)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    assert hps.Init(global_batch_size=8, ps_config_file=path) == "OK"
    by_default = hps.LookupLayer("foo", 0, 8, tf.float32)  # the config of hps.Init
    explicit = hps.LookupLayer("foo", 0, 8, tf.float32, path)
    sparse = hps.SparseLookupLayer("foo", 0, 8, tf.float32, path)

def replica_inputs(ctx):
    r = ctx.replica_id_in_sync_group
    sp_ids = tf.SparseTensor(data[f"indices{r}"], data[f"values{r}"], data[f"dense_shape{r}"])
    return tf.constant(data["ids"][r]), sp_ids

inputs = strategy.experimental_distribute_values_from_function(replica_inputs)

@tf.function
def step(inputs):
    def replica_fn(inputs):
        ids, sp_ids = inputs
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return by_default(ids), explicit(ids, max_norm=0.5), sparse(sp_ids, combiner="mean"), replica
    return strategy.run(replica_fn, args=(inputs,))

plain, clipped, combined, replicas = (strategy.experimental_local_results(v) for v in step(inputs))
with strategy.scope():
    ids_in = keras.Input(shape=(3,), dtype="int64")
    model = keras.Model(ids_in, explicit(ids_in))
predicted = model.predict(data["predict_ids"], batch_size=8, verbose=0)
np.savez(out_file, plain=np.stack([p.numpy() for p in plain]), clipped=np.stack([c.numpy() for c in clipped]),
         combined0=combined[0].numpy(), combined1=combined[1].numpy(),
         replicas=np.array([int(r) for r in replicas]), predicted=predicted)
print(json.dumps({"devices": len(tf.config.list_logical_devices("CPU"))}))
"""


@pytest.mark.serving
def test_mirrored_strategy_over_two_logical_cpus(served, tmp_path):
    path, dense = served
    ids = random_ids(9, (2, 4, 3))
    sp_ids = [random_sparse(30 + r, 4 + r) for r in range(2)]
    predict_ids = random_ids(10, (37, 3))  # batches of 8 split over 2 replicas, the last one of 5
    np.savez(tmp_path / "in.npz", ids=ids, predict_ids=predict_ids,
             **{f"{part}{r}": getattr(sp, part).numpy() for r, sp in enumerate(sp_ids)
                for part in ("indices", "values", "dense_shape")})
    proc = run_python(MIRRORED, ROOT, path, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"devices": 2}
    got = np.load(tmp_path / "out.npz")
    assert got["replicas"].tolist() == [0, 1]
    for replica in range(2):  # each replica answered its own keys
        np.testing.assert_array_equal(got["plain"][replica], reference(dense, ids[replica]))
        np.testing.assert_array_equal(got["clipped"][replica], reference(dense, ids[replica], max_norm=0.5))
        testing.assert_bitwise_equal(got[f"combined{replica}"], sparse_reference(dense, sp_ids[replica]))
    np.testing.assert_array_equal(got["predicted"], reference(dense, predict_ids))
