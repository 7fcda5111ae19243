"""The GPU kernels of TfHpsLookup and TfHpsSparseLookup (tf_hps/_tf_hps_ops_gpu.so): built, linked and
loadable anywhere.

What runs here, on a machine without a GPU and with tensorflow-cpu: the library is built, needs
no CUDA runtime of its own, shares the op library's parameter servers (one _tf_hps_ops.so in
the process), resolves every C ABI function it calls from _tf_hps_gpu_cache.so, loads into
tensorflow-cpu after the op library and registers GPU kernels for both key dtypes beside the
CPU ones, and leaves CPU lookups bit-for-bit unchanged. tf_hps's own loader (tf_hps/_ops.py)
skips the library without a GPU and only warns when it cannot load it.

What does not run anywhere in this suite: the GPU kernel itself. Running it needs TensorFlow
with GPU support (the `tensorflow[and-cuda]` wheel, built for CUDA 12) on a machine with a
GPU; the GPU test machine has a GPU but no TF-GPU, and tensorflow-cpu creates no GPU device
to place the op on. On such a machine, check that LookupLayer and SparseLookupLayer (no weights, every
combiner and output dtype) under tf.device("/GPU:0") give the CPU kernel's results (cold and warm cache, int32 and int64 keys, gpucache false, a static
table, a Redis outage), that hps.stats() counts GPU lookups, and that the pipeline's CUDA 13
runtime works beside TF's CUDA 12 one (driver R580 or newer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, child_env, run_python

OP_LIB = os.path.join(ROOT, "tf_hps", "_tf_hps_ops.so")
GPU_OP_LIB = os.path.join(ROOT, "tf_hps", "_tf_hps_ops_gpu.so")
GPU_CACHE_LIB = os.path.join(ROOT, "tf_hps", "_tf_hps_gpu_cache.so")


def dynamic_section(path: str) -> str:
    return subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout


def dynamic_symbols(path: str, *flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, path], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_gpu_kernel_library_is_built():
    assert os.path.isfile(GPU_OP_LIB), f"{GPU_OP_LIB} is missing: run `make gpu` (or `make test`)"


def test_it_links_no_cuda_runtime_and_finds_the_op_library_next_to_itself():
    dynamic = dynamic_section(GPU_OP_LIB)
    assert "libcudart" not in dynamic and "libcuda." not in dynamic, dynamic
    # Both tf_hps libraries by bare name, found through $ORIGIN: the op library already loaded
    # from tf_hps/ is reused, so the kernels see the process's one ParameterServerRegistry.
    assert "[_tf_hps_ops.so]" in dynamic and "[_tf_hps_gpu_cache.so]" in dynamic, dynamic
    assert "$ORIGIN" in dynamic, dynamic
    # It makes no CUDA call of its own: everything goes through the C ABI.
    undefined = dynamic_symbols(GPU_OP_LIB, "--undefined-only")
    assert not {s for s in undefined if s.startswith("cuda") or s.startswith("cu")}


def test_every_gpu_lookup_function_it_calls_is_exported_by_the_gpu_cache_library():
    needed = {s for s in dynamic_symbols(GPU_OP_LIB, "--undefined-only") if s.startswith("hps_gpu")}
    assert needed, "the kernels call no hps_gpu_* function"
    missing = needed - dynamic_symbols(GPU_CACHE_LIB, "--defined-only")
    assert not missing, (f"{GPU_CACHE_LIB} does not export {sorted(missing)} "
                         "(ops/cuda/gpu_lookup_c_api.h); rebuild it with `make gpu`")


def test_it_registers_each_pipeline_for_online_updates_and_refreshes_and_guards_its_insertions():
    undefined = dynamic_symbols(GPU_OP_LIB, "--undefined-only")
    # hps_gpu_lookup_update and hps_gpu_lookup_refresh run through the server's listener and
    # refresher lists (ops/cuda/hps_gpu_kernels.cc, GpuPipelines::GetOrCreate).
    assert {"hps_gpu_lookup_query", "hps_gpu_lookup_update", "hps_gpu_lookup_refresh"} <= undefined
    registered = {name for name in undefined if "ParameterServer" in name}
    assert any("AddCacheListener" in name for name in registered), registered
    assert any("AddCacheRefresher" in name for name in registered), registered


LOAD = """
import json, sys, numpy as np, tensorflow as tf
from tensorflow.python.framework import kernels
op_lib, gpu_lib, table, config, out = sys.argv[1:6]

def registered():
    return sorted((k.device_type, k.constraint[0].allowed_values.list.type[0], tuple(k.host_memory_arg))
                  for k in kernels.get_registered_kernels_for_op("TfHpsLookup").kernel)

def registered_sparse():
    return sorted((k.device_type, sorted((c.name, c.allowed_values.list.type[0]) for c in k.constraint),
                   sorted(k.host_memory_arg)) for k in kernels.get_registered_kernels_for_op("TfHpsSparseLookup").kernel)

lib = tf.load_op_library(op_lib)
json.dump({"supportlonglong": True, "models": [{"model": "m", "sparse_files": [table],
  "embedding_vecsize_per_table": [8], "maxnum_catfeature_query_per_table_per_sample": [1],
  "default_value_for_each_table": [0.25], "deployed_device_list": [0], "gpucacheper": 0.1}]}, open(config, "w"))
canonical, _ = lib.tf_hps_parse_config(config_file=config)
handle = lib.tf_hps_init(ps_config=canonical.numpy().decode())
keys = np.concatenate([np.arange(-5, 300), np.arange(0, 300, 7)]).astype(np.int64)

def lookups():
    return [lib.tf_hps_lookup(keys=keys.astype(dt), ps_handle=handle, model_name="m", table_id=0,
                              emb_vec_size=8).numpy() for dt in (np.int64, np.int32)]

segments = np.arange(len(keys)) % 50

def sparse():
    return lib.tf_hps_sparse_lookup(keys=keys, segment_ids=segments, num_rows=np.int64(53), ps_handle=handle,
                                    model_name="m", table_id=0, emb_vec_size=8, combiner="mean").numpy()

before_kernels, before_sparse_kernels = registered(), registered_sparse()
before, before_sparse = lookups(), sparse()
tf.load_library(gpu_lib)
after_kernels, after_sparse_kernels = registered(), registered_sparse()
after, after_sparse = lookups(), sparse()
# Without a GPU device, a lookup asked for on the GPU is placed on the CPU (soft placement).
with tf.device("/GPU:0"):
    placed = lib.tf_hps_lookup(keys=keys, ps_handle=handle, model_name="m", table_id=0, emb_vec_size=8).numpy()
    placed_sparse = sparse()
maps = [line.split()[-1] for line in open("/proc/self/maps") if "_tf_hps_" in line]
np.savez(out, keys=keys, before64=before[0], before32=before[1], after64=after[0], after32=after[1], placed=placed,
         segments=segments, before_sparse=before_sparse, after_sparse=after_sparse, placed_sparse=placed_sparse)
print(json.dumps({"before": before_kernels, "after": after_kernels, "mapped": sorted(set(maps)),
                  "before_sparse": before_sparse_kernels, "after_sparse": after_sparse_kernels}))
"""


def test_it_loads_into_tensorflow_cpu_after_the_op_library_and_adds_gpu_kernels(tables, tmp_path):
    folder = tables.table("t0", 256, 8)
    out = str(tmp_path / "lookups.npz")
    proc = run_python(LOAD, OP_LIB, GPU_OP_LIB, folder, str(tmp_path / "ps.json"), out)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    int32, int64 = 3, 9  # DataType enum values
    assert report["before"] == [["CPU", int32, []], ["CPU", int64, []]]
    # GPU kernels for both key dtypes, with the server handle kept in host memory.
    assert report["after"] == [["CPU", int32, []], ["CPU", int64, []],
                               ["GPU", int32, ["ps_handle"]], ["GPU", int64, ["ps_handle"]]]
    # One copy of the op library in the process: the GPU kernels use its registry of servers.
    mapped = report["mapped"]
    assert sorted(os.path.basename(p) for p in mapped) == ["_tf_hps_gpu_cache.so", "_tf_hps_ops.so",
                                                          "_tf_hps_ops_gpu.so"], mapped
    assert all(os.path.dirname(p) == os.path.dirname(OP_LIB) for p in mapped), mapped

    # CPU lookups are unchanged by loading it, and right.
    r = np.load(out)
    keys, rows = r["keys"], tables.rows["t0"][1]
    expected = np.full((len(keys), 8), 0.25, np.float32)
    held = (keys >= 0) & (keys < 256)
    expected[held] = rows[keys[held]]
    for name in ("before64", "before32", "after64", "after32", "placed"):
        np.testing.assert_array_equal(r[name], expected, err_msg=name)

    # TfHpsSparseLookup: GPU kernels for every key, segment and output dtype, with the segment ids,
    # the row count and the handle in host memory (the host groups the keys by row).
    types = {"int32": 3, "int64": 9, "float": 1, "half": 19, "bfloat16": 14}
    cpu = [kernel for kernel in report["after_sparse"] if kernel[0] == "CPU"]
    gpu = [kernel for kernel in report["after_sparse"] if kernel[0] == "GPU"]
    assert report["before_sparse"] == cpu and len(cpu) == 12
    want = sorted(["GPU", sorted([["Tkeys", types[k]], ["Tsegments", types[s]], ["dtype", types[d]]]),
                   ["num_rows", "ps_handle", "segment_ids"]]
                  for k in ("int32", "int64") for s in ("int32", "int64") for d in ("float", "half", "bfloat16"))
    assert gpu == want
    # Sparse lookups too are unchanged by loading it, and placed on the CPU without a GPU device.
    segments = r["segments"]
    mean = np.zeros((53, 8), np.float32)
    for row in range(50):
        mine = expected[segments == row]
        mean[row] = mine.sum(axis=0) / len(mine)
    for name in ("before_sparse", "after_sparse", "placed_sparse"):
        np.testing.assert_array_equal(r[name], r["before_sparse"], err_msg=name)
    np.testing.assert_allclose(r["before_sparse"], mean, rtol=1e-6)


# tf_hps's loader: never loads the GPU kernels where they cannot run, and never breaks CPU users.
LOADER = """
import json, os, sys, warnings
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorflow as tf
import tf_hps as hps
from tf_hps import _ops
mode = sys.argv[2]
if mode == "broken":
    # Pretend TensorFlow sees a GPU, and give the loader a file that is no library.
    tf.config.list_physical_devices = lambda kind=None: ["fake GPU"] if kind == "GPU" else []
    _ops._GPU_LIBRARY_NAME = sys.argv[3]
    _ops.ops.cache_clear()  # import tf_hps loaded the libraries already: load them again, broken
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    lib = _ops.ops()
keys = np.arange(4, dtype=np.int64)
canonical, _ = lib.tf_hps_parse_config(config_file=sys.argv[4])
handle = lib.tf_hps_init(ps_config=canonical.numpy().decode())
out = lib.tf_hps_lookup(keys=keys, ps_handle=handle, model_name="foo", table_id=0, emb_vec_size=16).numpy()
maps = {os.path.basename(line.split()[-1]) for line in open("/proc/self/maps") if "_tf_hps_" in line}
print(json.dumps({"warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
                  "gpu_loaded": "_tf_hps_ops_gpu.so" in maps, "row0": out[0].tolist(),
                  "gpu_path": _ops.gpu_op_library_path()}))
"""


def test_the_loader_skips_the_gpu_kernels_without_a_gpu(simple):
    tables, config = simple
    report = json.loads(run_python(LOADER, ROOT, "cpu", "", config).stdout.strip().splitlines()[-1])
    assert not report["gpu_loaded"] and report["warnings"] == []
    assert report["gpu_path"] == GPU_OP_LIB
    np.testing.assert_array_equal(np.float32(report["row0"]), tables.rows["t0"][1][0])


def test_a_gpu_kernel_library_that_cannot_load_only_warns(simple, tmp_path):
    tables, config = simple
    broken = tmp_path / "_tf_hps_ops_gpu.so"
    broken.write_bytes(b"not a shared library")
    report = json.loads(run_python(LOADER, ROOT, "broken", str(broken), config).stdout.strip().splitlines()[-1])
    assert not report["gpu_loaded"]
    assert len(report["warnings"]) == 1 and "could not load the GPU kernels" in report["warnings"][0]
    assert str(broken) in report["warnings"][0]
    np.testing.assert_array_equal(np.float32(report["row0"]), tables.rows["t0"][1][0])


# One library to load: the op library loads its GPU kernels by itself (ops/hps_ops.cc, GpuKernelLoader).
ALONE = """
import json, sys, numpy as np, tensorflow as tf
from tensorflow.python.framework import kernels
lib = tf.load_op_library(sys.argv[1])  # the op library alone, as TF Serving's custom-op path loads it
registered = sorted((k.device_type, k.constraint[0].allowed_values.list.type[0])
                    for k in kernels.get_registered_kernels_for_op("TfHpsLookup").kernel)
canonical, _ = lib.tf_hps_parse_config(config_file=sys.argv[2])
handle = lib.tf_hps_init(ps_config=canonical.numpy().decode())
row = lib.tf_hps_lookup(keys=np.arange(3, dtype=np.int64), ps_handle=handle, model_name="foo", table_id=0,
                        emb_vec_size=16).numpy()[2]
maps = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps") if "_tf_hps_" in line})
print(json.dumps({"kernels": registered, "mapped": maps, "row2": row.tolist()}))
"""


@pytest.mark.parametrize("setting, loads", [("1", True), (None, False), ("0", False)])
def test_the_op_library_alone_loads_its_gpu_kernels_where_they_can_run(simple, setting, loads):
    """TF_HPS_GPU_KERNELS=1 stands for a CUDA TensorFlow with a driver (this machine has neither): the op
    library then brings the GPU kernels in by itself; by default, on tensorflow-cpu, and with 0 it never
    does."""
    tables, config = simple
    env = child_env(TF_CPP_MIN_LOG_LEVEL="1", PYTHONPATH="")
    env.pop("TF_HPS_GPU_KERNELS", None)
    if setting is not None:
        env["TF_HPS_GPU_KERNELS"] = setting
    proc = subprocess.run([sys.executable, "-c", ALONE, OP_LIB, config], capture_output=True, text=True,
                          timeout=300, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    int32, int64 = 3, 9  # DataType enum values
    cpu = [["CPU", int32], ["CPU", int64]]
    assert report["kernels"] == (cpu + [["GPU", int32], ["GPU", int64]] if loads else cpu)
    gpu_libs = ["_tf_hps_gpu_cache.so", "_tf_hps_ops_gpu.so"]
    assert report["mapped"] == sorted(["_tf_hps_ops.so"] + (gpu_libs if loads else [])), report["mapped"]
    np.testing.assert_array_equal(np.float32(report["row2"]), tables.rows["t0"][1][2])


def test_a_gpu_kernel_library_that_will_not_load_beside_the_op_library_only_warns(simple, tmp_path):
    tables, config = simple
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    shutil.copy(OP_LIB, lib_dir / "_tf_hps_ops.so")
    (lib_dir / "_tf_hps_ops_gpu.so").write_bytes(b"not a shared library")
    env = child_env(TF_CPP_MIN_LOG_LEVEL="1", PYTHONPATH="", TF_HPS_GPU_KERNELS="1")
    proc = subprocess.run([sys.executable, "-c", ALONE, str(lib_dir / "_tf_hps_ops.so"), config],
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [k[0] for k in report["kernels"]] == ["CPU", "CPU"]
    assert f"could not load the GPU kernels from {lib_dir}/_tf_hps_ops_gpu.so" in proc.stderr
    np.testing.assert_array_equal(np.float32(report["row2"]), tables.rows["t0"][1][2])
