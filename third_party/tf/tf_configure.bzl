"""Repository rule exposing the TensorFlow of a Python installation to Bazel.

The interpreter is taken from PYTHON_BIN_PATH, passed with
`--repo_env=PYTHON_BIN_PATH=/abs/path/to/python`. The generated repository
(`@local_config_tf` in WORKSPACE) provides:

  :tf_header_lib            TF headers plus the -D flags TF was built with
  :libtensorflow_framework  libtensorflow_framework.so.2 (what custom ops link)
  :libtensorflow_cc         libtensorflow_cc.so.2 (C++ API, for programs)
"""

# Prints three lines: include dir, lib dir, the -D compile flags without "-D".
_QUERY = """
import tensorflow as tf
flags = tf.sysconfig.get_compile_flags()
print(tf.sysconfig.get_include())
print(tf.sysconfig.get_lib())
print(" ".join(f[2:] for f in flags if f.startswith("-D")))
"""

_LIBS = ["libtensorflow_framework.so.2", "libtensorflow_cc.so.2"]

_BUILD = """\
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**"], exclude = ["include/**/*.py"]),
    includes = ["include"],
    defines = {defines},
)

cc_library(
    name = "libtensorflow_framework",
    srcs = ["libtensorflow_framework.so.2"],
)

cc_library(
    name = "libtensorflow_cc",
    srcs = ["libtensorflow_cc.so.2"],
)
"""

def _tf_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH", "")
    if not python:
        fail("PYTHON_BIN_PATH is not set: pass " +
             "--repo_env=PYTHON_BIN_PATH=/abs/path/to/python (with TensorFlow)")
    result = ctx.execute(
        [python, "-c", _QUERY],
        environment = {"TF_CPP_MIN_LOG_LEVEL": "3"},
        quiet = True,
    )
    lines = result.stdout.strip().split("\n")
    if result.return_code != 0 or len(lines) != 3:
        fail("Could not query TensorFlow with %s:\n%s%s" %
             (python, result.stdout, result.stderr))
    include_dir, lib_dir, define_line = lines
    defines = [d for d in define_line.split(" ") if d]

    ctx.symlink(include_dir, "include")
    for lib in _LIBS:
        path = ctx.path(lib_dir + "/" + lib)
        if not path.exists:
            fail("%s not found (from %s)" % (path, python))
        ctx.symlink(path, lib)
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD", _BUILD.format(defines = repr(defines)))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
