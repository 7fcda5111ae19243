"""Op tests under AddressSanitizer + UndefinedBehaviorSanitizer (docs/reliability.md).

`make asan` (a dependency of `make test`) builds build/asan/_tf_hps_ops.so from the same sources
as the op library, with -fsanitize=address,undefined. This module runs a set of the suite's op tests
in a child pytest whose Python starts with libasan and libubsan preloaded and loads that library
instead of the normal one (TF_HPS_OP_LIBRARY, tf_hps/_ops.py). Any sanitizer report aborts the
child, which fails the test here with the report.

Why these options:
- LD_PRELOAD: python is not built with ASan, so the runtime must come first in the process, before
  TensorFlow and the op library are loaded; libubsan comes with it (GCC's -fsanitize=undefined
  runtime), so the op library's UBSan handlers bind to the preloaded copy.
- detect_leaks=0: LeakSanitizer runs at exit, where Python, TensorFlow and (by design) tf_hps's
  parameter-server registry still hold memory they never free; every run would "leak".
- abort_on_error=1, halt_on_error=1: the first report kills the child with a non-zero status, so a
  report can never pass unnoticed in a log.
- The child removes LD_PRELOAD (and TF_HPS_OP_LIBRARY) from its environment once the library is
  loaded: the redis-server processes its fixtures start are not built with ASan and need no
  sanitizer runtime.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

ASAN_LIB = os.path.join(ROOT, "build", "asan", "_tf_hps_ops.so")

# Op tests run sanitized: every lookup path (dense, sparse, dtypes), error paths, the tiers
# (hash map, Redis standalone and cluster, RocksDB, write-back), online updates with lookups racing
# them, refreshes, concurrent callers and a Redis server dying. Tests that start another Python
# process which loads the op library are left out: that process would run unsanitized.
SELECTION = [
    "tests/test_lookup.py",
    "tests/test_sparse_lookup.py",
    "tests/test_dtypes_and_models.py",
    "tests/test_keras_modes.py",
    "tests/test_errors.py",
    "tests/test_tiers.py",
    "tests/test_updates.py",
    "tests/test_refresh.py",
    "tests/test_stats.py",
    "tests/test_faults.py",
    "tests/test_concurrency.py",
    # A Redis cluster node killed under lookups; RocksDB on a read-only mount (skips without mount).
    "tests/test_faults_more.py::test_cluster_node_killed_during_lookups_rocksdb_answers_exact_rows",
    "tests/test_faults_more.py::test_rocksdb_on_a_read_only_mount",
]
DESELECT = " and ".join([
    "not test_layer_without_config_and_without_init",       # run_python
    "not test_cli_ingest",                                   # python -m tf_hps
    "not test_persistent_db_resumes_after_a_process_restart",  # serving processes
    "not test_counters_are_logged_at_the_configured_interval",  # run_python
    "not test_inter_op_parallelism",                         # run_python
    "not test_several_saved_models_in_one_process",          # run_python
    "not test_no_busy_spin_while_idle",                      # run_python
    "not test_import_registers_both_layers",                 # run_python
    "not test_tf1_mode_with_eager_execution_disabled",       # run_python
    "not test_keras_file_reloads_in_a_fresh_process",        # run_python
    "not test_mirrored_strategy_over_two_logical_cpus",      # run_python
])

# Runs in the sanitized child: loads the sanitized op library first, then drops LD_PRELOAD and
# TF_HPS_OP_LIBRARY, so that the processes the tests start (redis-server, redis-cli, and Python in a
# test added later that this list does not leave out) run as usual, without the sanitizer runtime.
CHILD = """
import os, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, "tests"))
maps = open("/proc/self/maps").read()
assert "libasan" in maps, "libasan is not loaded: LD_PRELOAD did not take"
from tf_hps import _ops
_ops.ops()
assert {lib!r} in open("/proc/self/maps").read(), "the sanitized op library is not the one loaded"
os.environ.pop("LD_PRELOAD", None)
os.environ.pop("TF_HPS_OP_LIBRARY", None)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def sanitizer_runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), (
        f"gcc does not know {name} (got {path!r}): install GCC's sanitizer runtimes (libasan8, libubsan1)")
    return path


def sanitized_env() -> dict:
    env = dict(os.environ)
    env.update({
        "LD_PRELOAD": f"{sanitizer_runtime('libasan.so')} {sanitizer_runtime('libubsan.so')}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:abort_on_error=1:print_stacktrace=1",
        "TF_HPS_OP_LIBRARY": ASAN_LIB,
        "TF_HPS_GPU_KERNELS": "0",  # the GPU kernel library links the normal op library
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": "",
    })
    return env


@pytest.fixture(scope="module")
def asan_lib():
    assert os.path.isfile(ASAN_LIB), f"{ASAN_LIB} is missing: build it with `make asan` (`make test` does)"
    return ASAN_LIB


def test_the_library_is_instrumented(asan_lib):
    symbols = subprocess.run(["nm", "-D", "--undefined-only", asan_lib], capture_output=True, text=True,
                             check=True).stdout
    assert "__asan_report_load8" in symbols, "not built with -fsanitize=address"
    assert "__ubsan_handle_" in symbols, "not built with -fsanitize=undefined"


# Code built with the same flags as the op library, with one bug each; loaded into a sanitized
# process, each must abort it with the sanitizer's report.
CANARY = r"""
#include <climits>
extern "C" int read_past_the_end(int n) {
  int* p = new int[n];
  for (int i = 0; i < n; ++i) p[i] = i;
  volatile int v = p[n];  // heap-buffer-overflow
  delete[] p;
  return v;
}
extern "C" int add(int a, int b) { return a + b; }  // signed overflow for INT_MAX + 1
"""


@pytest.mark.parametrize("call, report", [
    ("lib.read_past_the_end(4)", "heap-buffer-overflow"),
    ("lib.add(2**31 - 1, 1)", "signed integer overflow"),
], ids=["asan", "ubsan"])
def test_a_bug_in_instrumented_code_fails_the_sanitized_process(asan_lib, tmp_path, call, report):
    """The configuration catches what it should: the child aborts with the report, exit status non-zero."""
    (tmp_path / "canary.cc").write_text(CANARY)
    subprocess.run(["g++", "-shared", "-fPIC", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g",
                    "-O1", str(tmp_path / "canary.cc"), "-o", str(tmp_path / "canary.so")], check=True)
    code = f"import ctypes\nlib = ctypes.CDLL({str(tmp_path / 'canary.so')!r})\nprint({call})\n"
    proc = subprocess.run([sys.executable, "-c", code], env=sanitized_env(), capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert proc.returncode != 0 and report in proc.stderr, proc.stdout + proc.stderr[-3000:]


def test_op_tests_pass_under_asan_and_ubsan(asan_lib, tmp_path):
    args = [*SELECTION, "-q", "-x", "--durations=8", "-p", "no:cacheprovider", "-k", DESELECT,
            f"--basetemp={tmp_path / 'pytest'}"]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT, lib=asan_lib), *args], cwd=ROOT,
                          env=sanitized_env(), capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    reports = [marker for marker in ("ERROR: AddressSanitizer", "runtime error:", "SUMMARY: UndefinedBehavior")
               if marker in output]
    assert proc.returncode == 0 and not reports, (
        f"sanitized op tests failed (exit {proc.returncode}, {elapsed:.0f} s, reports: {reports}):\n"
        f"{output[-12000:]}")
    print(proc.stdout.strip().splitlines()[-1], f"({elapsed:.0f} s)")
