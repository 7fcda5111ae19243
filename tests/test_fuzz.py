"""Property-based fuzzing (hypothesis) of the ops' inputs and of the JSON config.

Every outcome must be a result or a clean Python exception, never a crash or a hang. Each fuzz
run happens in a child process (this file, run as a script), so that a segfault or an abort
fails the test instead of killing pytest, under a timeout, so that a hang fails it too. The
child writes each input to a file before trying it: a crash reports the input that caused it.
Runs are derandomized (the same examples every time) and small enough for CI (about 10 s each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 180


def run_fuzz(kind: str, tmp_path) -> str:
    last = tmp_path / "last_input.txt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), kind, str(tmp_path)], capture_output=True,
                              text=True, timeout=TIMEOUT_S, env=env, cwd=str(tmp_path))
    except subprocess.TimeoutExpired:
        pytest.fail(f"fuzz {kind} hung (more than {TIMEOUT_S} s); last input:\n"
                    f"{last.read_text() if last.exists() else '(none)'}")
    if proc.returncode != 0:
        pytest.fail(f"fuzz {kind} failed with exit status {proc.returncode} "
                    f"({'a crash' if proc.returncode < 0 else 'an unexpected result'}); last input:\n"
                    f"{last.read_text() if last.exists() else '(none)'}\n--- stdout\n{proc.stdout[-4000:]}"
                    f"\n--- stderr\n{proc.stderr[-6000:]}")
    assert f"FUZZ {kind} OK" in proc.stdout, proc.stdout[-2000:]
    return proc.stdout


def test_fuzz_dense_lookup_op(tmp_path):
    out = run_fuzz("dense", tmp_path)
    assert "results:" in out


def test_fuzz_sparse_lookup_op_and_layer(tmp_path):
    out = run_fuzz("sparse", tmp_path)
    assert "results:" in out


def test_fuzz_config_json(tmp_path):
    out = run_fuzz("config", tmp_path)
    assert "parsed:" in out


def test_the_harness_reports_a_crash(tmp_path):
    """A child that aborts must fail the test, naming the input it was trying."""
    with pytest.raises(pytest.fail.Exception, match=r"exit status -6 \(a crash\); last input:\nabort-me"):
        run_fuzz("abort", tmp_path)


# --- the child process ------------------------------------------------------------------------------

ROWS = 64
DIM = 4
DEFAULT = 0.25


class Recorder:
    """Writes each input to a file before it is tried; counts outcomes."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "last_input.txt")
        self.outcomes: dict[str, int] = {}

    def trying(self, description: str) -> None:
        with open(self.path, "w") as f:
            f.write(description)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def hypothesis_settings(max_examples: int):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def setup_server(workdir):
    import numpy as np

    import tf_hps as hps

    keys = np.arange(ROWS, dtype=np.int64) * 3 - 10  # some negative keys, gaps between them
    vectors = np.random.default_rng(7).standard_normal((ROWS, DIM)).astype(np.float32)
    hps.save_table(os.path.join(workdir, "t0"), keys, vectors)
    cfg = {"supportlonglong": True, "models": [{
        "model": "fz", "sparse_files": ["t0"], "embedding_vecsize_per_table": [DIM],
        "maxnum_catfeature_query_per_table_per_sample": [4], "default_value_for_each_table": [DEFAULT],
        "deployed_device_list": [0], "gpucacheper": 0.3}]}
    path = os.path.join(workdir, "fz.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    table = dict(zip(keys.tolist(), vectors))
    return path, table


def expected_rows(table, flat_keys):
    import numpy as np

    return np.stack([table.get(int(k), np.full(DIM, DEFAULT, np.float32)) for k in flat_keys]) if len(flat_keys) \
        else np.zeros((0, DIM), np.float32)


def key_values(st):
    """Integers that hit the table, miss it, and sit at the edges of int32 and int64."""
    return st.one_of(st.integers(-12, 3 * ROWS), st.sampled_from([-2 ** 63, 2 ** 63 - 1, -2 ** 31, 2 ** 31 - 1, 2 ** 32]),
                     st.integers(-2 ** 63, 2 ** 63 - 1))


def fuzz_dense(workdir):
    import numpy as np
    import tensorflow as tf
    from hypothesis import given, strategies as st

    import tf_hps as hps
    from tf_hps._ops import ops

    path, table = setup_server(workdir)
    handle = ops().tf_hps_init(ps_config=hps.load_config(path).canonical_json)
    layer = hps.LookupLayer("fz", 0, DIM, tf.float32, path)
    rec = Recorder(workdir)
    allowed = (tf.errors.OpError, ValueError, TypeError, OverflowError)
    dtypes = ["int32", "int64", "uint8", "int8", "int16", "uint16", "uint32", "uint64", "float16", "float32",
              "float64", "bool", "string", "complex64"]

    @hypothesis_settings(300)
    @given(shape=st.lists(st.integers(0, 4), max_size=4), dtype=st.sampled_from(dtypes), data=st.data(),
           model=st.one_of(st.just("fz"), st.text(max_size=12)),
           table_id=st.one_of(st.just(0), st.integers(-3, 3), st.integers(0, 2 ** 63 - 1)),
           emb_vec_size=st.one_of(st.just(DIM), st.integers(-3, 9), st.integers(0, 2 ** 63 - 1)),
           handle_kind=st.sampled_from(["real", "real", "real", "bogus", "matrix"]))
    def check(shape, dtype, data, model, table_id, emb_vec_size, handle_kind):
        n = int(np.prod(shape)) if shape else 1
        raw = data.draw(st.lists(key_values(st), min_size=n, max_size=n))
        if dtype == "string":
            keys = tf.constant(np.array([str(v) for v in raw], dtype=object).reshape(shape))
        else:
            keys = tf.constant(np.array(raw, dtype=np.int64).astype(dtype).reshape(shape))  # wraps around
        h = {"real": handle, "bogus": tf.constant("tf_hps:999999"), "matrix": tf.constant([["x"]])}[handle_kind]
        rec.trying(f"dense op: keys {dtype}{shape} {raw!r}; model {model!r} table_id {table_id} "
                   f"emb_vec_size {emb_vec_size} handle {handle_kind}")
        try:
            out = ops().tf_hps_lookup(keys=keys, ps_handle=h, model_name=model, table_id=table_id,
                                      emb_vec_size=emb_vec_size)
        except allowed as e:
            rec.count(type(e).__name__)
        else:
            assert (model, table_id, emb_vec_size, handle_kind) == ("fz", 0, DIM, "real"), "accepted bad attrs"
            assert dtype in ("int32", "int64"), dtype
            assert out.shape == tuple(shape) + (DIM,)
            flat = keys.numpy().reshape(-1)
            np.testing.assert_array_equal(out.numpy().reshape(-1, DIM), expected_rows(table, flat))
            rec.count("result")
        rec.trying(f"LookupLayer: keys {dtype}{shape} {raw!r}")
        try:
            out = layer(keys)
        except allowed as e:
            assert dtype not in ("int32", "int64"), e
            rec.count("layer " + type(e).__name__)
        else:
            assert out.shape == tuple(shape) + (DIM,)
            rec.count("layer result")

    check()
    print("results:", rec.outcomes)


def fuzz_sparse(workdir):
    import numpy as np
    import tensorflow as tf
    from hypothesis import given, strategies as st

    import tf_hps as hps
    from tf_hps._ops import ops

    path, table = setup_server(workdir)
    handle = ops().tf_hps_init(ps_config=hps.load_config(path).canonical_json)
    rec = Recorder(workdir)
    allowed = (tf.errors.OpError, ValueError, TypeError, OverflowError)
    layers = {d: hps.SparseLookupLayer("fz", 0, DIM, d, path) for d in (tf.float32, tf.float16, tf.bfloat16)}
    # num_rows: negative, small, a few thousand, too large to allocate, and past int64 once multiplied.
    num_rows_values = st.one_of(st.integers(-3, 12), st.sampled_from([5000, 70000, 2**44, 2**62]))

    @hypothesis_settings(250)
    @given(data=st.data(), nnz=st.integers(0, 20), num_rows=num_rows_values, key_dtype=st.sampled_from(["int32", "int64"]),
           seg_dtype=st.sampled_from(["int32", "int64"]), combiner=st.sampled_from(["sum", "mean", "sqrtn"]),
           dtype=st.sampled_from([tf.float32, tf.float16, tf.bfloat16]),
           emb_vec_size=st.one_of(st.just(DIM), st.integers(1, 8)))
    def check_op(data, nnz, num_rows, key_dtype, seg_dtype, combiner, dtype, emb_vec_size):
        keys = data.draw(st.lists(key_values(st), min_size=nnz, max_size=nnz))
        top = min(num_rows, 14)
        segments = data.draw(st.lists(st.integers(-2, max(top, 0) + 1), min_size=nnz, max_size=nnz))
        rec.trying(f"sparse op: keys {key_dtype} {keys!r} segments {seg_dtype} {segments!r} num_rows {num_rows} "
                   f"combiner {combiner} dtype {dtype.name} emb_vec_size {emb_vec_size}")
        try:
            out = ops().tf_hps_sparse_lookup(
                keys=tf.constant(np.array(keys, np.int64).astype(key_dtype)),
                segment_ids=tf.constant(np.array(segments, np.int64).astype(seg_dtype)),
                num_rows=tf.constant(num_rows, tf.int64),
                ps_handle=handle, model_name="fz", table_id=0, emb_vec_size=emb_vec_size, combiner=combiner,
                dtype=dtype)
        except allowed as e:
            rec.count(type(e).__name__)
        else:
            assert emb_vec_size == DIM and num_rows >= 0
            assert all(0 <= s < num_rows for s in segments)
            assert out.shape == (num_rows, DIM) and out.dtype == dtype
            rec.count("result")

    @hypothesis_settings(120)
    @given(data=st.data(), lengths=st.lists(st.integers(0, 4), max_size=6), kind=st.sampled_from(["ragged", "sparse"]),
           key_dtype=st.sampled_from([tf.int32, tf.int64, tf.float32, tf.string]),
           with_weights=st.sampled_from([None, "match", "short", "other_kind", "strings"]),
           combiner=st.sampled_from(["sum", "mean", "sqrtn", None, "max", 3]),
           max_norm=st.one_of(st.none(), st.floats(allow_nan=True), st.booleans(), st.just("1")),
           dtype=st.sampled_from([tf.float32, tf.float16, tf.bfloat16]), extra_rows=st.integers(0, 3))
    def check_layer(data, lengths, kind, key_dtype, with_weights, combiner, max_norm, dtype, extra_rows):
        nnz = sum(lengths)
        raw = data.draw(st.lists(st.integers(-12, 3 * ROWS), min_size=nnz, max_size=nnz))
        values = tf.constant([str(v) for v in raw], tf.string) if key_dtype == tf.string else \
            tf.constant(np.array(raw, np.int64), key_dtype) if nnz else tf.zeros([0], key_dtype)
        ragged = tf.RaggedTensor.from_row_lengths(values, tf.constant(lengths, tf.int64))
        ids = ragged if kind == "ragged" else tf.SparseTensor(
            ragged.to_sparse().indices, values, [len(lengths) + extra_rows, max(lengths + [0]) + 1])
        weights = None
        if with_weights is not None:
            n = nnz if with_weights != "short" else max(nnz - 1, 0)
            w = tf.constant(np.linspace(-1, 2, n).astype(np.float32)) if with_weights != "strings" else \
                tf.constant(["w"] * n, tf.string)
            w_lengths = lengths if with_weights != "short" else ([*lengths[:-1], max(lengths[-1] - 1, 0)]
                                                                 if lengths and lengths[-1] else lengths)
            if sum(w_lengths) != n:
                w_lengths = [n] + [0] * max(len(lengths) - 1, 0) if lengths else []
            if not lengths:
                w = w[:0]
            wr = tf.RaggedTensor.from_row_lengths(w, tf.constant(w_lengths, tf.int64)) if lengths else \
                tf.RaggedTensor.from_row_lengths(w, tf.zeros([0], tf.int64))
            weights = wr.to_sparse() if (kind == "ragged") == (with_weights == "other_kind") else wr
        rec.trying(f"SparseLookupLayer: {kind} lengths {lengths} keys {key_dtype.name} {raw!r} weights {with_weights} "
                   f"combiner {combiner!r} max_norm {max_norm!r} dtype {dtype.name} extra_rows {extra_rows}")
        try:
            out = layers[dtype](ids, weights, combiner=combiner, max_norm=max_norm)
        except allowed as e:
            rec.count("layer " + type(e).__name__)
        else:
            rows = len(lengths) + (extra_rows if kind == "sparse" else 0)
            assert out.shape == (rows, DIM), (out.shape, rows)
            assert key_dtype in (tf.int32, tf.int64)
            rec.count("layer result")

    check_op()
    check_layer()
    print("results:", rec.outcomes)


def fuzz_config(workdir):
    from hypothesis import given, strategies as st

    from tf_hps import storage

    rec = Recorder(workdir)
    os.makedirs(os.path.join(workdir, "t0"), exist_ok=True)
    base = {
        "supportlonglong": True,
        "models": [{"model": "m", "sparse_files": ["t0", "t1"], "embedding_table_names": ["a", "b"],
                    "embedding_vecsize_per_table": [4, 8], "maxnum_catfeature_query_per_table_per_sample": [2, 3],
                    "default_value_for_each_table": [0.5, 1.0], "deployed_device_list": [0], "max_batch_size": 64,
                    "gpucacheper": 0.5, "hit_rate_threshold": 0.9, "embedding_cache_type": "dynamic"}],
        "volatile_db": {"type": "redis_cluster", "address": "127.0.0.1:7000", "password": "$env:FUZZ_UNSET",
                        "num_partitions": 8, "overflow_margin": 1000, "overflow_policy": "evict_oldest",
                        "overflow_resolution_target": 0.8, "initial_cache_rate": 1.0, "update_filters": ["^hps_.+$"]},
        "persistent_db": {"type": "rocks_db", "path": "rdb", "num_threads": 2, "read_only": False},
        "update_source": {"type": "redis_stream", "address": "127.0.0.1:6379", "password": "lit",
                          "max_stream_entries": 10},
    }
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
        st.sampled_from([0, -1, 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, -2 ** 63, 120, 121]),
        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -0.0, 5e-324, 0.5, 1.5, 2.0 ** 63]),
        st.text(max_size=20), st.sampled_from(["", "$env:", "$env:X Y", "$redacted:1", "x" * 121, "a.b", "é", "\x00"]))
    json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                              max_size=4), max_leaves=12)
    known_keys = ["model", "sparse_files", "embedding_table_names", "embedding_vecsize_per_table", "type", "address",
                  "password", "num_partitions", "overflow_margin", "max_batch_size", "path", "read_only", "gpucacheper",
                  "default_value_for_each_table", "deployed_device_list", "update_filters", "models", "supportlonglong",
                  "max_stream_entries", "overflow_policy", "user_name", "node_id", "refresh_interval"]

    def containers(doc, prefix=()):
        yield prefix, doc
        items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
        for k, v in items:
            if isinstance(v, (dict, list)):
                yield from containers(v, prefix + (k,))

    sys.setrecursionlimit(10000)  # for json.dumps of the nested values

    @hypothesis_settings(600)
    @given(data=st.data(), n_mutations=st.integers(1, 4))
    def check(data, n_mutations):
        doc = json.loads(json.dumps(base))
        for _ in range(n_mutations):
            where = data.draw(st.sampled_from(list(containers(doc))))[1]
            op = data.draw(st.sampled_from(["replace", "delete", "add", "nest", "replace"]))
            if isinstance(where, dict):
                key = data.draw(st.sampled_from(sorted(where) + known_keys) if where else st.sampled_from(known_keys))
                if op == "delete":
                    where.pop(key, None)
                elif op == "nest":
                    value = where.get(key, 1)
                    for _ in range(data.draw(st.sampled_from([1, 2, 50, 500]))):
                        value = [value]
                    where[key] = value
                else:
                    where[key if op != "add" else data.draw(st.text(max_size=8))] = data.draw(json_values)
            elif isinstance(where, list):
                if where and op == "delete":
                    where.pop(data.draw(st.integers(0, len(where) - 1)))
                elif where and op == "replace":
                    where[data.draw(st.integers(0, len(where) - 1))] = data.draw(json_values)
                else:
                    where.append(data.draw(json_values))
        text = json.dumps(doc, ensure_ascii=data.draw(st.booleans()))
        raw = text.encode("utf-8", "surrogatepass")
        edit = data.draw(st.sampled_from(["none", "none", "none", "truncate", "byte", "deep"]))
        if edit == "truncate":
            raw = raw[:data.draw(st.integers(0, len(raw)))]
        elif edit == "byte":
            at = data.draw(st.integers(0, len(raw)))
            raw = raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at:]
        elif edit == "deep":  # far deeper than Python's own parser goes
            depth = data.draw(st.sampled_from([10_000, 200_000]))
            raw = raw[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
        path = os.path.join(workdir, "cfg.json")
        with open(path, "wb") as f:
            f.write(raw)
        rec.trying(f"config file bytes: {raw[:20000]!r}")
        try:
            canonical = storage.canonical_config(path)
        except (storage.StorageError, ValueError, FileNotFoundError) as e:
            assert isinstance(e, (ValueError, FileNotFoundError)), e
            str(e).encode("utf-8")  # a readable message
            rec.count(type(e).__name__)
            return
        # The canonical form parses back to itself, and never holds the literal secret.
        again = os.path.join(workdir, "canonical.json")
        with open(again, "w") as f:
            json.dump(canonical, f)
        assert storage.canonical_config(again) == canonical
        for section in ("volatile_db", "update_source"):
            secret = canonical[section]["password"]
            assert secret == "" or secret.startswith(("$env:", "$redacted:")), secret
        rec.count("parsed")

    check()
    print("parsed:", rec.outcomes.get("parsed", 0), "outcomes:", rec.outcomes)


if __name__ == "__main__":
    kind, workdir = sys.argv[1], sys.argv[2]
    if kind == "abort":
        Recorder(workdir).trying("abort-me")
        os.abort()
    {"dense": fuzz_dense, "sparse": fuzz_sparse, "config": fuzz_config}[kind](workdir)
    print(f"FUZZ {kind} OK")
