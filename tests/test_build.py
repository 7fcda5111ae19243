"""The make and Bazel builds compile the same sources into libraries that agree."""

import ast
import glob
import os
import re
import subprocess

import numpy as np

from conftest import ROOT, run_python


def source_lists():
    tree = ast.parse(open(os.path.join(ROOT, "sources.bzl")).read())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_every_cpp_file_is_in_the_one_source_list():
    listed = {f for name, files in source_lists().items() if not name.endswith("LINKOPTS") for f in files}
    on_disk = {os.path.relpath(p, ROOT) for d in ("base", "storage", "core", "tools", "ops", "ops/cuda")
               for ext in ("cc", "h", "cu") for p in glob.glob(os.path.join(ROOT, d, f"*.{ext}"))}
    assert listed == on_disk


# What each folder's C++ may include of ours: the layers point one way, base <- storage <- core <- tools, ops.
LAYERS = {
    "base": {"base"},
    "storage": {"base", "storage"},
    "core": {"base", "storage", "core"},
    "tools": {"base", "storage", "core", "tools"},
    "ops": {"base", "storage", "core", "ops"},
    "ops/cuda": {"base", "core", "ops", "ops/cuda"},
}


def test_includes_point_down_the_layers():
    """Draws the include graph of the C++ tree (folder to folder) and checks it has no edge upwards."""
    edges = {}
    for name, files in source_lists().items():
        if name.endswith("LINKOPTS"):
            continue
        for path in files:
            folder = os.path.dirname(path)
            for included in re.findall(r'^#include "([a-z_]+(?:/[a-z_]+)*)/[a-z_0-9]+\.h"',
                                       open(os.path.join(ROOT, path)).read(), re.M):
                if included.split("/")[0] in ("base", "storage", "core", "tools", "ops"):  # ours, not TF's
                    edges.setdefault(folder, set()).add(included)
    assert set(edges) <= set(LAYERS), set(edges) - set(LAYERS)
    upward = {folder: sorted(targets - LAYERS[folder]) for folder, targets in edges.items() if targets - LAYERS[folder]}
    assert not upward, f"includes against the layering: {upward}"
    assert edges["storage"] == {"base", "storage"} and "core" in edges["tools"]


LOOKUP = """
import sys, json, numpy as np, tensorflow as tf
lib = tf.load_op_library(sys.argv[1])
keys = np.arange(-5, 300).astype(np.int64)
json.dump({"supportlonglong": True, "models": [{"model": "m", "sparse_files": [sys.argv[2]],
  "embedding_vecsize_per_table": [8], "maxnum_catfeature_query_per_table_per_sample": [1],
  "default_value_for_each_table": [0.25], "deployed_device_list": [0]}]}, open(sys.argv[3], "w"))
canonical, _ = lib.tf_hps_parse_config(config_file=sys.argv[3])
handle = lib.tf_hps_init(ps_config=canonical.numpy().decode())
out = lib.tf_hps_lookup(keys=keys, ps_handle=handle, model_name="m", table_id=0, emb_vec_size=8)
np.save(sys.argv[4], out.numpy())
"""


def test_bazel_and_make_libraries_give_identical_lookups(tables, tmp_path):
    folder = tables.table("t0", 256, 8)
    results = []
    for name, lib in (("make", os.path.join(ROOT, "tf_hps", "_tf_hps_ops.so")),
                      ("bazel", os.path.join(ROOT, "build", "bazel", "_tf_hps_ops.so"))):
        assert os.path.isfile(lib), f"{name} build missing: {lib} (run `make test`, which builds both)"
        out = str(tmp_path / f"{name}.npy")
        run_python(LOOKUP, lib, folder, str(tmp_path / f"{name}.json"), out)
        results.append(np.load(out))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0][5:261], tables.rows["t0"][1])
    assert (results[0][:5] == 0.25).all() and (results[0][261:] == 0.25).all()


STORAGE = """
import ctypes, sys, numpy as np
lib = ctypes.CDLL(sys.argv[1])
lib.hps_storage_open.restype = ctypes.c_void_p
err = ctypes.create_string_buffer(512)
db = lib.hps_storage_open(b"volatile_db", b'{"type": "hash_map"}', None, err, 512)
assert db, err.value
keys = np.arange(4, dtype=np.int64); values = np.arange(8, dtype=np.float32).reshape(4, 2)
out = np.zeros((5, 2), np.float32); found = np.zeros(5, np.uint8); probe = np.arange(5, dtype=np.int64)
assert lib.hps_storage_insert(ctypes.c_void_p(db), b"t", ctypes.c_int64(4), keys.ctypes.data_as(ctypes.c_void_p),
    values.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(2), err, ctypes.c_size_t(512)) == 4, err.value
lib.hps_storage_fetch.restype = ctypes.c_int64
hits = lib.hps_storage_fetch(ctypes.c_void_p(db), b"t", ctypes.c_int64(5), probe.ctypes.data_as(ctypes.c_void_p),
    out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(2), found.ctypes.data_as(ctypes.c_void_p), err, ctypes.c_size_t(512))
assert hits == 4 and found.tolist() == [1, 1, 1, 1, 0] and (out[:4] == values).all(), (hits, found, out)
print("ok")
"""


def test_bazel_and_make_storage_libraries_both_serve_the_c_abi():
    for lib in (os.path.join(ROOT, "tf_hps", "_tf_hps_storage.so"),
                os.path.join(ROOT, "build", "bazel", "_tf_hps_storage.so")):
        assert run_python(STORAGE, lib).stdout.strip() == "ok"


STATIC_ARCHIVE = os.path.join(ROOT, "build", "bazel", "libtf_hps_ops_static.a")


def archive_member(name: str) -> bytes:
    return subprocess.run(["ar", "p", STATIC_ARCHIVE, name], capture_output=True, check=True).stdout


def member_symbols(name: str) -> str:
    """`nm -C` lines (defined and undefined symbols) of one member of the archive."""
    out = subprocess.run(["nm", "-C", "-A", STATIC_ARCHIVE], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if f":{name}:" in line)


def test_static_op_archive_holds_the_core_and_every_registered_op():
    """//:tf_hps_ops_static (alwayslink), built by scripts/bazel_build.sh, for linking into a model server."""
    assert os.path.isfile(STATIC_ARCHIVE), f"missing {STATIC_ARCHIVE}: run `make bazel` (scripts/bazel_build.sh)"
    lists = source_lists()
    members = subprocess.run(["ar", "t", STATIC_ARCHIVE], capture_output=True, text=True, check=True).stdout.split()
    expected = {os.path.splitext(os.path.basename(f))[0] + ".o" for f in lists["HPS_CORE_SRCS"] + lists["HPS_OP_SRCS"]}
    assert sorted(members) == sorted(expected)

    # Every op ops/hps_ops.cc registers (including ones added later) is in the archive, registered from
    # the objects' static initialisers, which alwayslink keeps in a binary that never refers to them.
    ops_source = open(os.path.join(ROOT, "ops", "hps_ops.cc")).read()
    op_names = re.findall(r'REGISTER_OP\("(\w+)"\)', ops_source)
    assert {"TfHpsInit", "TfHpsLookup"} <= set(op_names)
    ops_object, kernels_object = archive_member("hps_ops.o"), archive_member("hps_kernels.o")
    for op in op_names:
        assert op.encode() + b"\0" in ops_object, f"op {op} is not registered in hps_ops.o"
        assert op.encode() + b"\0" in kernels_object, f"no kernel for {op} in hps_kernels.o"
    ops_symbols, kernel_symbols = member_symbols("hps_ops.o"), member_symbols("hps_kernels.o")
    assert "_GLOBAL__sub_I_hps_ops.cc" in ops_symbols
    assert "tensorflow::register_op::OpDefBuilderWrapper::operator()()" in ops_symbols  # called at start-up
    assert "_GLOBAL__sub_I_hps_kernels.cc" in kernel_symbols
    assert "tensorflow::kernel_factory::OpKernelRegistrar::InitInternal" in kernel_symbols


def test_bazel_builds_the_static_library_with_alwayslink():
    build = open(os.path.join(ROOT, "BUILD")).read()
    rule = re.search(r'tf_hps_cc_library\(\s*name = "tf_hps_ops_static",(.*?)\n\)', build, re.S)
    assert rule and "alwayslink = 1" in rule.group(1)
    assert "//:tf_hps_ops_static" in open(os.path.join(ROOT, "scripts", "bazel_build.sh")).read()


def test_the_tf_serving_recipe_builds_from_the_one_source_list():
    """docs/serving.md's BUILD for tensorflow_model_server takes its files and link options from sources.bzl
    (the lists //:tf_hps_ops_static, built in every test run, is made of), copies every folder they name, and
    its apt line holds every -dev package the core builds against."""
    text = open(os.path.join(ROOT, "docs", "serving.md")).read()
    recipe = text[text.index("## TensorFlow Serving"):text.index("## Triton")]
    lists = source_lists()
    (build,) = [block for block in re.findall(r"```python\n(.*?)```", recipe, re.S) if "cc_library" in block]
    for name in ("HPS_CORE_SRCS", "HPS_OP_SRCS", "HPS_CORE_HDRS", "HPS_OP_HDRS", "HPS_CORE_LINKOPTS"):
        assert name in build and name in lists, name
    assert 'load(":sources.bzl"' in build and "alwayslink = 1" in build and "-ffp-contract=off" in build
    copy = re.search(r"cp -r ([^\n]+) tensorflow_serving/custom_ops/tf_hps/", recipe).group(1).split()
    folders = {f.split("/")[0] for name in ("HPS_CORE_SRCS", "HPS_OP_SRCS", "HPS_CORE_HDRS", "HPS_OP_HDRS")
               for f in lists[name]}
    assert folders | {"sources.bzl"} <= set(copy), copy
    bootstrap = open(os.path.join(ROOT, "scripts", "bootstrap.sh")).read()
    dev_packages = {p for p in re.search(r"APT_PACKAGES=\(([^)]*)\)", bootstrap).group(1).split() if p.endswith("-dev")}
    apt = re.search(r"apt-get install ([^`]+)`", recipe).group(1).split()
    assert dev_packages <= set(apt), (dev_packages, apt)


def test_the_device_check_builds_and_runs_without_tensorflow_or_a_gpu(tmp_path):
    """scripts/device_check.sh as a GPU machine without TensorFlow runs it: here, with no CUDA device, it
    builds, runs the GPU tests that need none, and names what it did not run."""
    import sys

    fake = tmp_path / "mods"
    fake.mkdir()
    (fake / "tensorflow.py").write_text("raise ImportError('no TensorFlow on the device machine')\n")
    proc = subprocess.run(["scripts/device_check.sh", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable,
                                                       "PYTHONPATH": str(fake)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert summary == proc.stdout
    assert "| build (make gpu-tf-free) | ok |" in summary
    assert re.search(r"\| tests \(test_gpu_cache.py, test_gpu_lookup.py\) \| \d+ passed", summary)
    devices = int(re.search(r"\((\d+) CUDA device\(s\)\)", summary).group(1))
    if devices == 0:
        assert "GPU: **none**" in summary
        assert "- benchmarks/gpu_cache.py and benchmarks/gpu_lookup.py: no CUDA device" in summary
        assert re.search(r"\d+ tests, skipped: (.*; )?no CUDA device", summary), summary
