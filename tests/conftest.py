"""Shared fixtures: small HPS tables and configs written into tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tf_hps as hps  # noqa: E402

# Tests read tf_hps's info lines, also from children started with TF_CPP_MIN_LOG_LEVEL=1 (which would
# hide them: base/log.h); the tests of the levels themselves set the variables they test.
os.environ["TF_HPS_LOG_LEVEL"] = "0"

# Real Redis servers (standalone, 3-node cluster), started once per session.
pytest_plugins = ["redis_servers"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "serving: compares what a child process serves with this process's results; the CI reruns these with "
        "the children on other float kernels ($TF_HPS_TEST_CHILD_ENV, see child_env)",
    )


class Tables:
    """Writes table folders and configs under one tmp dir; remembers the rows."""

    def __init__(self, root):
        self.root = str(root)
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.rng = np.random.default_rng(1234)

    def table(self, name: str, num_rows: int, dim: int, keys=None) -> str:
        if keys is None:
            keys = np.arange(num_rows, dtype=np.int64)
        vectors = self.rng.standard_normal((len(keys), dim)).astype(np.float32)
        folder = os.path.join(self.root, name)
        hps.save_table(folder, keys, vectors)
        self.rows[name] = (np.asarray(keys, np.int64), vectors)
        return folder

    def config(self, tables=("t0",), dims=(16,), model="foo", defaults=(1.5,), extra_model=None,
               extra=None, name="ps_config.json") -> str:
        model_cfg = {
            "model": model,
            "sparse_files": list(tables),
            "embedding_vecsize_per_table": list(dims),
            "maxnum_catfeature_query_per_table_per_sample": [8] * len(tables),
            "default_value_for_each_table": list(defaults),
            "deployed_device_list": [0],
            "max_batch_size": 1024,
            "gpucache": True,
            "gpucacheper": 0.5,
        }
        model_cfg.update(extra_model or {})
        cfg = {"supportlonglong": True, "models": [model_cfg]}
        cfg.update(extra or {})
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def dense(self, name: str, default: float, max_key: int) -> np.ndarray:
        """A dense matrix for tf.nn.embedding_lookup: row k = row of key k, else the default."""
        keys, vectors = self.rows[name]
        dense = np.full((max_key + 1, vectors.shape[1]), default, np.float32)
        dense[keys] = vectors
        return dense


@pytest.fixture
def tables(tmp_path):
    return Tables(tmp_path)


@pytest.fixture
def simple(tables):
    """One model 'foo' with one table of 1000 rows x 16, default 1.5; returns (tables, config path)."""
    tables.table("t0", 1000, 16)
    return tables, tables.config()


CHILD_ENV = "TF_HPS_TEST_CHILD_ENV"


def child_env(**overrides: str) -> dict[str, str]:
    """The environment of a child process whose outputs a test compares with its own.

    os.environ, then the overrides, then the KEY=VALUE words of $TF_HPS_TEST_CHILD_ENV. The CI reruns of
    the serving tests set that to give the children other float kernels than the test process
    (`ONEDNN_MAX_CPU_ISA=AVX2`, `TF_ENABLE_ONEDNN_OPTS=0`), as another machine would: lookups must still
    agree bit for bit, float layers within their rounding bound (rounding.py).
    """
    env = {**os.environ, **overrides}
    for word in os.environ.get(CHILD_ENV, "").split():
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ValueError(f"{CHILD_ENV} wants KEY=VALUE words, got {word!r}")
        env[name] = value
    return env


class Served:
    """What a served export of an embeddings + Dense-head model must answer: its embeddings bit for bit
    (a lookup is exact), its scores within float32 rounding of this process's (tf_hps.testing)."""

    def __init__(self, embeddings, scores, bound):
        self.embeddings, self.scores, self.bound = embeddings, scores, bound

    def check(self, outputs) -> None:
        from tf_hps import testing

        assert sorted(outputs) == ["embeddings", "scores"], sorted(outputs)
        testing.assert_bitwise_equal(outputs["embeddings"], self.embeddings, "served embeddings")
        assert outputs["scores"].dtype == np.float32
        testing.assert_within_rounding(outputs["scores"], self.scores, self.bound, "served scores")


def run_python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter that has NOT imported tf_hps (child_env's environment)."""
    env = child_env(TF_CPP_MIN_LOG_LEVEL="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/")
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
