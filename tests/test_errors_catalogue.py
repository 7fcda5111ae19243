"""The bad-input catalogue (docs/errors.md): each case gives the exception type and message it documents.

Cases already checked word for word elsewhere are named in docs/errors.md and not repeated here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import redis_servers
import tf_hps as hps
from conftest import ROOT, run_python
from tf_hps._ops import ops
from tf_hps.storage import Storage, StorageError, table_tag
from tf_hps.updates import UpdatePublisher

redis_standalone = redis_servers.redis_standalone
redis_with_password = redis_servers.redis_with_password


def model(**over):
    m = {
        "model": "foo",
        "sparse_files": ["t0"],
        "embedding_vecsize_per_table": [16],
        "maxnum_catfeature_query_per_table_per_sample": [8],
        "default_value_for_each_table": [1.5],
        "deployed_device_list": [0],
    }
    m.update(over)
    return m


def write(tmp_path, cfg, name="c.json"):
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return str(path)


def config(tmp_path, name="c.json", models=None, **top):
    cfg = {"supportlonglong": True, "models": models or [model()]}
    cfg.update(top)
    return write(tmp_path, cfg, name)


def handle_of(path):
    return ops().tf_hps_init(ps_config=hps.load_config(path).canonical_json)


def dead_address():
    return f"127.0.0.1:{redis_servers.free_port()}"


# --- config file ------------------------------------------------------------------------------


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"config file '{tmp_path}' is a directory, not a JSON file"):
        hps.load_config(str(tmp_path))


def test_config_top_level_is_not_an_object(tmp_path):
    path = write(tmp_path, "[1, 2]")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config \(top level\): expected an object, got array \(in '.*c\.json'\)"):
        hps.load_config(path)


def test_config_with_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"supportlonglong": true, "models": [{"model": "caf\xe9"}]}')
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config is not valid JSON: .*ill-formed UTF-8 byte; last read: '\"caf\\xe9\"'"):
        hps.load_config(str(path))


def test_config_models_is_empty_or_not_an_array(tmp_path):
    with pytest.raises(tf.errors.InvalidArgumentError, match="config models: must hold at least one model"):
        hps.load_config(write(tmp_path, {"supportlonglong": True, "models": []}))
    with pytest.raises(tf.errors.InvalidArgumentError, match="config models: expected an array, got object"):
        hps.load_config(write(tmp_path, {"supportlonglong": True, "models": {"model": "foo"}}, "o.json"))


def test_config_model_entry_is_not_an_object(tmp_path):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"config models\[0\]: expected an object, got string"):
        hps.load_config(write(tmp_path, {"supportlonglong": True, "models": ["foo"]}))


@pytest.mark.parametrize("value, message", [
    (2 ** 63, r"config models\[0\]\.max_batch_size: integer out of range"),
    (-5, r"config models\[0\]\.max_batch_size: must be at least 1, got -5"),
    (1e300, r"config models\[0\]\.max_batch_size: expected an integer, got a fraction"),
    (True, r"config models\[0\]\.max_batch_size: expected an integer, got boolean"),
    (None, r"config models\[0\]\.max_batch_size: expected an integer, got null"),
])
def test_config_extreme_and_wrongly_typed_integers(tmp_path, value, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        hps.load_config(config(tmp_path, models=[model(max_batch_size=value)]))


def test_config_negative_overflow_margin(tmp_path):
    path = config(tmp_path, volatile_db={"type": "hash_map", "overflow_margin": -1})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config volatile_db\.overflow_margin: expected a non-negative integer"):
        hps.load_config(path)


def test_config_unknown_enum_value_lists_the_accepted_ones(tmp_path):
    path = config(tmp_path, volatile_db={"type": "mongo"})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config volatile_db\.type: unknown value 'mongo'; expected one of 'disabled', "
                             r"'hash_map', 'multi_process_hash_map', 'parallel_hash_map', 'redis_cluster'"):
        hps.load_config(path)


def test_config_fraction_outside_its_range(tmp_path):
    path = config(tmp_path, volatile_db={"overflow_resolution_target": 1.5})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config volatile_db\.overflow_resolution_target: value 1\.500000 is outside "
                             r"\[0\.000000, 1\.000000\]"):
        hps.load_config(path)


def test_config_duplicate_table_names(tmp_path):
    path = config(tmp_path, models=[model(sparse_files=["a", "b"], embedding_vecsize_per_table=[4, 4],
                                          maxnum_catfeature_query_per_table_per_sample=[1, 1],
                                          embedding_table_names=["emb", "emb"])])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config models\[0\]\.embedding_table_names\[1\]: duplicate table name 'emb'"):
        hps.load_config(path)


def test_config_empty_table_path_and_negative_device(tmp_path):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"config models\[0\]\.sparse_files\[0\]: empty path"):
        hps.load_config(config(tmp_path, models=[model(sparse_files=[""])]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config models\[0\]\.deployed_device_list\[0\]: device ids are non-negative"):
        hps.load_config(config(tmp_path, "d.json", models=[model(deployed_device_list=[-1])]))


def test_config_negative_max_stream_entries(tmp_path):
    path = config(tmp_path, update_source={"type": "redis_stream", "max_stream_entries": -1})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config update_source\.max_stream_entries: must not be negative, got -1"):
        hps.load_config(path)


def test_config_kafka_update_source_is_not_built(tables):
    tables.table("t0", 10, 16)
    path = tables.config(extra={"update_source": {"type": "kafka"}}, name="kafka.json")
    with pytest.raises(tf.errors.UnimplementedError,
                       match=r"update_source\.type 'kafka_message_queue' is not available in this build; "
                             r"use \"redis_stream\""):
        hps.Init(global_batch_size=1, ps_config_file=path)


# --- names ----------------------------------------------------------------------------------------

NAME_RULE = r"must match \[a-zA-Z0-9_-\]\{1,120\} \(1 to 120 ASCII letters, digits, '_' or '-'\)"


@pytest.mark.parametrize("name", ["a.b", "a/b", "../x", "a{b}", "a b", "a:b", "a*", "é", "a\nb", "", "x" * 121])
def test_model_names_that_could_inject_into_keys_or_paths_are_rejected(tmp_path, name):
    path = config(tmp_path, models=[model(model=name)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"config models\[0\]\.model: name .* {NAME_RULE}"):
        hps.load_config(path)


@pytest.mark.parametrize("name", ["t}", "t.0", "hps_et{x}v", "t\x00"])
def test_table_names_that_could_inject_into_keys_are_rejected(tmp_path, name):
    path = config(tmp_path, models=[model(embedding_table_names=[name])])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"config models\[0\]\.embedding_table_names\[0\]: name .* {NAME_RULE}"):
        hps.load_config(path)


def test_names_at_the_limits_of_the_rule_are_accepted(tmp_path):
    long_name = "Az09_-" * 20
    assert len(long_name) == 120
    path = config(tmp_path, models=[model(model=long_name, embedding_table_names=["-"])])
    assert hps.load_config(path).model(long_name)["embedding_table_names"] == ["-"]


def test_a_huge_bad_name_is_quoted_shortened(tmp_path):
    path = config(tmp_path, models=[model(model="." * 100_000)])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        hps.load_config(path)
    assert "...' (100000 bytes) must match" in str(info.value)
    assert len(str(info.value)) < 1000


# --- secrets ------------------------------------------------------------------------------------


def test_secret_env_reference_with_a_bad_variable_name(tmp_path):
    path = config(tmp_path, volatile_db={"type": "redis", "password": "$env:1X"})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config volatile_db\.password: \"\$env:\" must be followed by the name of an "
                             r"environment variable, matching \[A-Za-z_\]\[A-Za-z0-9_\]\*"):
        hps.load_config(path)


def test_secret_that_is_not_a_string(tmp_path):
    path = config(tmp_path, update_source={"type": "redis_stream", "password": {"env": "X"}})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"config update_source\.password: expected a string, got object"):
        hps.load_config(path)


def test_secret_env_variable_not_set_fails_when_the_server_is_created(tables, monkeypatch):
    monkeypatch.delenv("TF_HPS_TEST_UNSET", raising=False)
    tables.table("t0", 10, 16)
    path = tables.config(extra={"volatile_db": {"type": "redis", "address": dead_address(),
                                                "password": "$env:TF_HPS_TEST_UNSET"}}, name="unset.json")
    cfg = hps.load_config(path)  # reading the file does not need the secret
    assert cfg.data["volatile_db"]["password"] == "$env:TF_HPS_TEST_UNSET"
    with pytest.raises(tf.errors.FailedPreconditionError,
                       match=r"config volatile_db\.password: environment variable 'TF_HPS_TEST_UNSET' is not set "
                             r"\(the config names it with \"\$env:TF_HPS_TEST_UNSET\"\)"):
        hps.Init(global_batch_size=1, ps_config_file=path)


def test_secret_env_variable_that_is_empty(monkeypatch):
    monkeypatch.setenv("TF_HPS_TEST_EMPTY", "")
    with pytest.raises(StorageError, match=r"config volatile_db\.password: environment variable "
                                           r"'TF_HPS_TEST_EMPTY' is empty") as info:
        Storage("volatile_db", {"type": "redis", "address": dead_address(), "password": "$env:TF_HPS_TEST_EMPTY"})
    assert isinstance(info.value, RuntimeError)


def test_secret_env_reference_of_an_unused_section_is_not_needed(tables, monkeypatch):
    monkeypatch.delenv("TF_HPS_TEST_UNSET", raising=False)
    tables.table("t0", 10, 16)
    path = tables.config(extra={"update_source": {"type": "null", "password": "$env:TF_HPS_TEST_UNSET"}},
                         name="unused.json")
    assert hps.Init(global_batch_size=1, ps_config_file=path) == "OK"


def test_secret_redacted_reference_of_another_process(tmp_path):
    with pytest.raises(StorageError, match=r"config volatile_db\.password: '\$redacted:00000000deadbeef' stands for "
                                           r"a literal password that only the process which read the config file "
                                           r"knew.*Write \"\$env:NAME\"") as info:
        Storage("volatile_db", {"type": "redis", "address": dead_address(), "password": "$redacted:00000000deadbeef"})
    assert isinstance(info.value, RuntimeError)


def test_secret_literal_password_warns(tmp_path):
    path = config(tmp_path, volatile_db={"type": "redis", "password": "s3cret"})
    with pytest.warns(UserWarning, match=r"config volatile_db\.password: holds a literal password; tf_hps keeps it "
                                         r"out of the canonical config and of exported SavedModels"):
        cfg = hps.load_config(path)
    assert cfg.data["volatile_db"]["password"].startswith("$redacted:")
    assert "s3cret" not in cfg.canonical_json


def test_wrong_password_through_an_env_reference(tables, redis_with_password, monkeypatch):
    monkeypatch.setenv("TF_HPS_TEST_PW", "not-it")
    tables.table("t0", 10, 16)
    path = tables.config(extra={"volatile_db": {"type": "redis", "address": redis_with_password.address,
                                                "password": "$env:TF_HPS_TEST_PW"}}, name="wrongpw.json")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"redis node {redis_with_password.address}: authentication as user 'default' failed "
                             r"\(.*\); check user_name and password in the config's volatile_db") as info:
        hps.Init(global_batch_size=1, ps_config_file=path)
    assert "not-it" not in str(info.value)


# --- table files ----------------------------------------------------------------------------------


def test_sparse_file_that_is_a_file_not_a_folder(tables):
    open(os.path.join(tables.root, "t0"), "w").close()
    path = tables.config(name="file.json")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"table folder '.*/t0' is a file, not a folder"):
        hps.Init(global_batch_size=1, ps_config_file=path)


# --- keys, shapes, handles, attrs ---------------------------------------------------------------------


def test_empty_and_scalar_key_tensors_give_empty_and_single_rows(simple):
    tables, path = simple
    handle = handle_of(path)
    out = ops().tf_hps_lookup(keys=tf.zeros([0, 3], tf.int64), ps_handle=handle, model_name="foo", table_id=0,
                              emb_vec_size=16)
    assert out.shape == (0, 3, 16)
    out = ops().tf_hps_lookup(keys=tf.constant(7, tf.int32), ps_handle=handle, model_name="foo", table_id=0,
                              emb_vec_size=16)
    np.testing.assert_array_equal(out.numpy(), tables.rows["t0"][1][7])


def test_extreme_int64_keys_get_the_default(simple):
    _, path = simple
    out = ops().tf_hps_lookup(keys=tf.constant([-2 ** 63, 2 ** 63 - 1, -1], tf.int64), ps_handle=handle_of(path),
                              model_name="foo", table_id=0, emb_vec_size=16)
    np.testing.assert_array_equal(out.numpy(), np.full((3, 16), 1.5, np.float32))


def test_ps_handle_that_is_not_a_scalar_or_not_a_server(simple):
    _, path = simple
    handle_of(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ps_handle must be a scalar string"):
        ops().tf_hps_lookup(keys=tf.constant([1], tf.int64), ps_handle=tf.constant([["x"]]), model_name="foo",
                            table_id=0, emb_vec_size=16)
    with pytest.raises(tf.errors.FailedPreconditionError,
                       match="parameter server 'bogus' is not initialised in this process"):
        ops().tf_hps_lookup(keys=tf.constant([1], tf.int64), ps_handle=tf.constant("bogus"), model_name="foo",
                            table_id=0, emb_vec_size=16)


def test_attrs_below_their_minimum_or_far_out_of_range(simple):
    _, path = simple
    handle = handle_of(path)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="Value for attr 'emb_vec_size' of 0 must be at least minimum 1"):
        ops().tf_hps_lookup(keys=tf.constant([1], tf.int64), ps_handle=handle, model_name="foo", table_id=0,
                            emb_vec_size=0)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="Value for attr 'table_id' of -1 must be at least minimum 0"):
        ops().tf_hps_lookup(keys=tf.constant([1], tf.int64), ps_handle=handle, model_name="foo", table_id=-1,
                            emb_vec_size=16)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="table_id 1099511627776 is out of range: model 'foo' has 1 table"):
        ops().tf_hps_lookup(keys=tf.constant([1], tf.int64), ps_handle=handle, model_name="foo", table_id=2 ** 40,
                            emb_vec_size=16)


HUGE_ROWS = (
    "import sys, json, numpy as np, tensorflow as tf\n"
    "sys.path.insert(0, %r)\n"
    "import tf_hps as hps\n"
    "from tf_hps._ops import ops\n"
    "h = ops().tf_hps_init(ps_config=hps.load_config(sys.argv[1]).canonical_json)\n"
    "def run(rows, nnz=1):\n"
    "    return ops().tf_hps_sparse_lookup(keys=tf.range(nnz, dtype=tf.int64), segment_ids=tf.range(nnz, dtype=tf.int64),\n"
    "        num_rows=tf.constant(rows, tf.int64), ps_handle=h, model_name='foo', table_id=0,\n"
    "        emb_vec_size=16)\n"
    "for rows in json.loads(sys.argv[2]):\n"
    "    try:\n"
    "        print('OK', run(rows, nnz=min(rows, 4)).shape)\n"
    "    except tf.errors.OpError as e:\n"
    "        print(type(e).__name__, e.message)\n"
    "print('rows', run(3_000_000, nnz=3_000_000).shape)\n"
) % (ROOT,)


def test_sparse_num_rows_whose_output_size_overflows_int64(simple):
    _, path = simple
    out = run_python(HUGE_ROWS, path, "[4611686018427387904]").stdout
    assert "InvalidArgumentError" in out and "overflow" in out.lower(), out


def test_sparse_num_rows_too_large_to_allocate_then_a_normal_call(simple):
    """The refused allocation leaves the thread's buffers consistent: the next, normal call is exact."""
    _, path = simple
    out = run_python(HUGE_ROWS, path, "[3, 17592186044416]").stdout
    assert "ResourceExhaustedError" in out, out
    assert "rows (3000000, 16)" in out


def test_sparse_keys_that_are_not_a_vector(simple):
    _, path = simple
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="must be rank 1|keys must be a vector"):
        ops().tf_hps_sparse_lookup(keys=tf.constant([[1]], tf.int64), segment_ids=tf.constant([0], tf.int64),
                                   num_rows=tf.constant(1, tf.int64),
                                   ps_handle=handle_of(path), model_name="foo", table_id=0, emb_vec_size=16)


# --- backends -------------------------------------------------------------------------------------------


def test_redis_down_when_the_server_is_created(tables, capfd):
    """A serving node starts without it (tests/test_faults_start_up.py); a tool that needs it fails."""
    from tf_hps.storage import Storage

    tables.table("t0", 10, 16)
    address = dead_address()
    path = tables.config(model="redis_down_at_init", extra={"volatile_db": {"type": "redis", "address": address}},
                         name="down.json")
    assert hps.Init(global_batch_size=1, ps_config_file=path) == "OK"
    assert (f"volatile_db: starting without it: redis_cluster: no server in volatile_db.address answered (redis node "
            f"{address}: cannot connect (Connection refused") in capfd.readouterr().err
    with pytest.raises(ConnectionError, match=rf"no server in volatile_db\.address answered \(redis node {address}"):
        Storage("volatile_db", {"type": "redis_cluster", "address": address})


def test_rocksdb_path_that_is_a_file(tables):
    tables.table("t0", 10, 16)
    target = os.path.join(tables.root, "plainfile")
    open(target, "w").close()
    path = tables.config(extra={"persistent_db": {"type": "rocks_db", "path": target}}, name="rfile.json")
    with pytest.raises(tf.errors.InternalError,
                       match=rf"cannot create persistent_db\.path '{target}': Not a directory"):
        hps.Init(global_batch_size=1, ps_config_file=path)


# --- online updates ----------------------------------------------------------------------------------


def test_publisher_with_redis_down(tables):
    tables.table("t0", 10, 16)
    address = dead_address()
    path = tables.config(extra={"update_source": {"type": "redis_stream", "address": address}}, name="pdown.json")
    with pytest.raises(ConnectionError, match=rf"redis node {address}: cannot connect"):
        UpdatePublisher(path)


def test_publisher_table_index_out_of_range(tables, redis_standalone):
    tables.table("t0", 10, 16)
    path = tables.config(extra={"update_source": {"type": "redis_stream", "address": redis_standalone.address}},
                         name="pidx.json")
    with UpdatePublisher(path) as publisher:
        with pytest.raises(ValueError, match="table 3 is out of range: model 'foo' has 1 table"):
            publisher.publish("foo", 3, [1], np.ones((1, 16)))


def test_publisher_env_password_not_set(tables, monkeypatch):
    monkeypatch.delenv("TF_HPS_TEST_UNSET", raising=False)
    tables.table("t0", 10, 16)
    path = tables.config(extra={"update_source": {"type": "redis_stream", "address": dead_address(),
                                                  "password": "$env:TF_HPS_TEST_UNSET"}}, name="penv.json")
    with pytest.raises(RuntimeError, match=r"config update_source\.password: environment variable "
                                           r"'TF_HPS_TEST_UNSET' is not set"):
        UpdatePublisher(path)


def test_malformed_update_messages_are_skipped_with_a_warning(tables, redis_standalone, capfd):
    tables.table("upd_cat", 20, 4)
    path = tables.config(tables=("upd_cat",), dims=(4,), model="upd_cat", defaults=(0.0,), name="updcat.json",
                         extra={"update_source": {"type": "redis_stream", "address": redis_standalone.address,
                                                  "poll_timeout_ms": 200}})
    layer = hps.LookupLayer("upd_cat", 0, 4, tf.float32, path)
    layer(tf.constant([1], tf.int64))
    tag = table_tag("upd_cat", "sparse_embedding0")
    stream = f"hps_upd{{{tag}}}"
    good = {"v": "1", "model": "upd_cat", "table": "sparse_embedding0", "key_type": "int64", "value_type": "float32",
            "dim": "4", "count": "1", "keys": np.array([2], "<i8").tobytes(), "vectors": np.ones(4, "<f4").tobytes()}
    bad = [
        ({**good, "count": "abc"}, "update message: bad count"),
        ({k: v for k, v in good.items() if k != "keys"}, "update message: no field 'keys'"),
        ({**good, "key_type": "int32"}, "update message: key_type must be int64"),
        ({**good, "count": "9" * 19}, "update message: bad count"),
        ({**good, "dim": "0"}, "update message: dim must be positive"),
        ({**good, "count": "2"}, "update message: 'keys' holds 8 bytes, not count * 8 = 16"),
    ]
    for fields, _ in bad:
        redis_standalone.client.xadd(stream, fields)
    redis_standalone.client.xadd(stream, {**good, "vectors": np.full(4, 7, "<f4").tobytes()})
    import time

    deadline = time.monotonic() + 20
    while hps.stats()[tag]["rows_updated"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hps.stats()[tag]["updates_rejected"] == len(bad)
    np.testing.assert_array_equal(layer(tf.constant([2], tf.int64)).numpy(), np.full((1, 4), 7, np.float32))
    err = capfd.readouterr().err
    for _, message in bad:
        assert f"skipped: {message}" in err


# --- SavedModel and secrets -------------------------------------------------------------------------------


def _export(tables, tmp_path, address, password):
    """Exports a model reading a password-protected Redis; checks it serves here first."""
    import keras

    tables.table("t0", 50, 16)
    path = tables.config(extra={"volatile_db": {"type": "redis", "address": address, "password": password}},
                         name="export.json")
    layer = hps.LookupLayer("foo", 0, 16, tf.float32, path)
    inputs = keras.Input(shape=(2,), dtype="int64")
    net = keras.Model(inputs, layer(inputs))
    expected = tables.rows["t0"][1][[3, 4]]
    np.testing.assert_array_equal(net.predict(np.array([[3, 4]]), verbose=0)[0], expected)
    out = str(tmp_path / "export")
    net.export(out, verbose=False)
    return out, expected


SERVE = (
    "import sys, numpy as np, tensorflow as tf\n"
    "sys.path.insert(0, %r)\n"
    "import tf_hps\n"
    "tf.load_op_library(tf_hps.op_library_path())\n"
    "m = tf.saved_model.load(sys.argv[1])\n"
    "try:\n"
    "    print('OK', m.serve(tf.constant([[3, 4]], tf.int64)).numpy()[0, 1, :2].tolist())\n"
    "except Exception as e:\n"
    "    print(type(e).__name__, e)\n"
) % (ROOT,)


def test_literal_password_is_not_exported(tables, tmp_path, redis_with_password):
    with pytest.warns(UserWarning, match="literal password"):
        out, _ = _export(tables, tmp_path, redis_with_password.address, "s3cret")
    pb = open(os.path.join(out, "saved_model.pb"), "rb").read()
    assert b"$redacted:" in pb
    assert b"s3cret" not in pb
    for root, _, files in os.walk(out):
        for f in files:
            assert b"s3cret" not in open(os.path.join(root, f), "rb").read(), f
    # Another process cannot use it, and says why.
    result = run_python(SERVE, out).stdout
    assert result.startswith("FailedPreconditionError")
    assert "stands for a literal password that only the process which read the config file knew" in result
    assert "s3cret" not in result


def test_env_password_is_exported_as_its_reference_and_resolved_where_served(tables, tmp_path, redis_with_password,
                                                                            monkeypatch):
    monkeypatch.setenv("TF_HPS_TEST_REDIS_PW", "s3cret")
    out, expected = _export(tables, tmp_path, redis_with_password.address, "$env:TF_HPS_TEST_REDIS_PW")
    pb = open(os.path.join(out, "saved_model.pb"), "rb").read()
    assert b"$env:TF_HPS_TEST_REDIS_PW" in pb
    assert b"s3cret" not in pb
    served = run_python(SERVE, out).stdout  # the variable is inherited
    assert served.strip() == f"OK {expected[1, :2].tolist()}"
    monkeypatch.delenv("TF_HPS_TEST_REDIS_PW")
    unset = run_python(SERVE, out).stdout
    assert unset.startswith("FailedPreconditionError")
    assert "environment variable 'TF_HPS_TEST_REDIS_PW' is not set" in unset


def test_acl_user_password_from_the_environment(tables, redis_with_password, monkeypatch):
    monkeypatch.setenv("TF_HPS_TEST_ALICE_PW", "alice-pw")
    tables.table("t0", 50, 16)
    path = tables.config(extra={"volatile_db": {"type": "redis", "address": redis_with_password.address,
                                                "user_name": "alice", "password": "$env:TF_HPS_TEST_ALICE_PW",
                                                "num_partitions": 3}}, model="alice_model", name="alice.json")
    layer = hps.LookupLayer("alice_model", 0, 16, tf.float32, path)
    np.testing.assert_array_equal(layer(tf.constant([5], tf.int64)).numpy(), tables.rows["t0"][1][[5]])
    tag = table_tag("alice_model", "sparse_embedding0")
    assert sum(redis_with_password.client.hlen(f"hps_et{{{tag}/p{p}}}v")
               for p in range(3)) == 50


HUGE_DIM = (
    "import sys, json, numpy as np, tensorflow as tf\n"
    "sys.path.insert(0, %r)\n"
    "import tf_hps as hps\n"
    "layer = hps.LookupLayer('huge', 0, 2**62, tf.float32, sys.argv[1])\n"
    "try:\n"
    "    layer(tf.constant([1, 2, 3, 4], tf.int64))\n"
    "except tf.errors.OpError as e:\n"
    "    print(type(e).__name__, e.message)\n"
) % (ROOT,)


def test_a_huge_dimension_over_a_prefilled_rocksdb_is_an_error_not_an_abort(tables, tmp_path):
    from tf_hps.storage import Storage

    rocks = str(tmp_path / "rocks")
    with Storage("persistent_db", {"type": "rocks_db", "path": rocks}) as db:
        db.insert(table_tag("huge", "sparse_embedding0"), [1], np.zeros((1, 4), np.float32))
    path = tables.config(tables=("absent",), model="huge", dims=(2**62,), extra_model={"gpucache": False}, extra={
        "volatile_db": {"type": "hash_map", "initialize_after_startup": False},
        "persistent_db": {"type": "rocks_db", "path": rocks, "read_only": True}})
    out = run_python(HUGE_DIM, path).stdout
    assert "InvalidArgumentError" in out and ("Shape" in out or "shape" in out or "dimension" in out), out


def test_a_huge_dimension_with_an_empty_vector_file_is_refused(tables):
    folder = os.path.join(tables.root, "one_key")
    os.makedirs(folder)
    np.array([7], "<i8").tofile(os.path.join(folder, "key"))
    open(os.path.join(folder, "emb_vector"), "wb").close()  # 0 bytes: 1 x 2**62 x 4 wraps to 0
    path = tables.config(tables=(folder,), model="huge_file", dims=(2**62,), name="huge_file.json")
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 keys of dimension 4611686018427387904 are more floats "
                                                              "than a file can hold"):
        hps.Init(1, path)


def test_an_unreachable_update_source_is_named_as_such(tables):
    tables.table("t0", 10, 16)
    address = dead_address()
    path = tables.config(model="dead_source", extra={"update_source": {"type": "redis_stream", "address": address}},
                         name="dead_source.json")
    with pytest.raises(ConnectionError, match=rf"no server in update_source\.address answered \(redis node {address}"):
        UpdatePublisher(path)
