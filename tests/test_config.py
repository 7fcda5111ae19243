"""The HPS JSON config: parsed once in C++, checked with errors naming the JSON path."""

import json
import os
import warnings

import pytest
import tensorflow as tf

import tf_hps as hps


def write(tmp_path, cfg, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg) if not isinstance(cfg, str) else cfg)
    return str(path)


def base_model(**over):
    m = {
        "model": "foo",
        "sparse_files": ["t0"],
        "embedding_vecsize_per_table": [16],
        "maxnum_catfeature_query_per_table_per_sample": [8],
        "default_value_for_each_table": [1.0],
        "deployed_device_list": [0],
    }
    m.update(over)
    return m


def test_unknown_keys_warn_once_each(tmp_path):
    path = write(tmp_path, {"supportlonglong": True, "shiny": 1,
                            "models": [base_model(colour="red")], "volatile_db": {"type": "hash_map", "x": 2}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hps.load_config(path)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "config models[0].colour: unknown key, ignored",
        "config shiny: unknown key, ignored",
        "config volatile_db.x: unknown key, ignored",
    ]


@pytest.mark.parametrize("key", ["embedding_vecsize_per_table", "sparse_files", "deployed_device_list",
                                 "maxnum_catfeature_query_per_table_per_sample", "default_value_for_each_table"])
def test_missing_required_model_key_names_its_json_path(tmp_path, key):
    model = base_model()
    del model[key]
    path = write(tmp_path, {"supportlonglong": True, "models": [model]})
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"models\[0\]\.{key}: required key is missing"):
        hps.load_config(path)


def test_missing_supportlonglong_is_an_error(tmp_path):
    path = write(tmp_path, {"models": [base_model()]})
    with pytest.raises(tf.errors.InvalidArgumentError, match="supportlonglong: required key is missing"):
        hps.load_config(path)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"embedding_vecsize_per_table": "16"}, r"models\[1\]\.embedding_vecsize_per_table: expected an array, got string"),
        ({"embedding_vecsize_per_table": [16.5]}, r"models\[1\]\.embedding_vecsize_per_table\[0\]: expected an integer, got a fraction"),
        ({"gpucache": "yes"}, r"models\[1\]\.gpucache: expected a boolean, got string"),
        ({"gpucacheper": 1.5}, r"models\[1\]\.gpucacheper: value 1.5"),
        ({"max_batch_size": 0}, r"models\[1\]\.max_batch_size: must be at least 1"),
        ({"model": "bad name!"}, r"models\[1\]\.model: name 'bad name!' must match"),
        ({"embedding_cache_type": "fancy"}, r"models\[1\]\.embedding_cache_type: unknown value 'fancy'"),
        ({"maxnum_catfeature_query_per_table_per_sample": [1, 2]}, r"has 2 entries but sparse_files has 1"),
        ({"default_value_for_each_table": [1.0, 2.0]}, r"default_value_for_each_table: has 2 entries"),
    ],
)
def test_wrong_types_and_values_name_their_json_path(tmp_path, over, message):
    second = base_model(model="bar", **over) if "model" not in over else base_model(**over)
    path = write(tmp_path, {"supportlonglong": True, "models": [base_model(), second]})
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        hps.load_config(path)


def test_duplicate_model_names_are_an_error(tmp_path):
    path = write(tmp_path, {"supportlonglong": True, "models": [base_model(), base_model()]})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"models\[1\]\.model: duplicate model name 'foo'"):
        hps.load_config(path)


def test_malformed_json_is_an_error(tmp_path):
    path = write(tmp_path, '{"supportlonglong": true, "models": [')
    with pytest.raises(tf.errors.InvalidArgumentError, match="not valid JSON"):
        hps.load_config(path)


def test_nonexistent_config_is_not_found(tmp_path):
    with pytest.raises(tf.errors.NotFoundError, match="cannot be opened"):
        hps.load_config(str(tmp_path / "nope.json"))


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", {"supportlonglong": True, "models": [base_model(sparse_files=["../tables/t0"])],
                                     "persistent_db": {"type": "disabled", "path": "rdb"}})
    monkeypatch.chdir("/")
    cfg = hps.load_config(path)
    assert cfg.data["models"][0]["sparse_files"] == [str(tmp_path / "tables" / "t0")]
    assert cfg.data["persistent_db"]["path"] == str(tmp_path / "conf" / "rdb")


def test_defaults_are_filled_in_as_hps_does(tmp_path):
    path = write(tmp_path, {"supportlonglong": False,
                            "models": [base_model(sparse_files=["a", "b"], embedding_vecsize_per_table=[4, 8],
                                                  maxnum_catfeature_query_per_table_per_sample=[1, 1],
                                                  default_value_for_each_table=[0.5])]})
    model = hps.load_config(path).model("foo")
    assert model["embedding_table_names"] == ["sparse_embedding0", "sparse_embedding1"]
    assert model["default_value_for_each_table"] == [0.5, 0.0]
    assert model["max_batch_size"] == 64
    assert model["gpucacheper"] == 0.2
    assert model["hit_rate_threshold"] == 0.9
    assert model["embedding_cache_type"] == "dynamic"


def test_aliases_are_canonicalised(tmp_path):
    path = write(tmp_path, {"supportlonglong": True, "models": [base_model()],
                            "volatile_db": {"type": "HashMap", "overflow_policy": "least_used"},
                            "persistent_db": {"type": "rocksdb"}})
    data = hps.load_config(path).data
    assert data["volatile_db"]["type"] == "hash_map"
    assert data["volatile_db"]["overflow_policy"] == "evict_least_used"
    assert data["persistent_db"]["type"] == "rocks_db"


def test_canonical_config_parses_back_to_itself_without_warnings(tmp_path):
    first = hps.load_config(write(tmp_path, {"supportlonglong": True, "models": [base_model(extra=1)]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = hps.load_config(write(tmp_path, first.canonical_json, name="canonical.json"))
    assert second.canonical_json == first.canonical_json
    assert "extra" not in first.canonical_json


def test_backends_not_in_this_build_fail_loudly_at_init(simple):
    tables, _ = simple
    path = tables.config(extra={"volatile_db": {"type": "multi_process_hash_map"}}, name="mp.json")
    with pytest.raises(tf.errors.UnimplementedError, match="volatile_db.type 'multi_process_hash_map' is not"):
        hps.Init(global_batch_size=1, ps_config_file=path)


def test_no_database_tier_at_all_is_an_error(simple):
    tables, _ = simple
    path = tables.config(extra={"volatile_db": {"type": "disabled"}}, name="none.json")
    with pytest.raises(tf.errors.InvalidArgumentError, match="both disabled"):
        hps.Init(global_batch_size=1, ps_config_file=path)


@pytest.mark.parametrize("key", ["refresh_interval", "refresh_delay"])
def test_timer_seconds_beyond_a_billion_are_refused(tables, key):
    """1e10 s overflowed the timer's clock arithmetic, which then refreshed back to back."""
    tables.table("t0", 10, 16)
    path = tables.config(model="timer", extra_model={key: 1e10})
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"config models\[0\]\.{key}: value 10000000000\.0+ is "
                                                              r"outside \[-1000000000\.0+, 1000000000\.0+\]"):
        hps.load_config(path)
