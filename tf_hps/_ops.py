"""Loads the op library once and exposes its raw ops.

The op library (``_tf_hps_ops.so``) registers the ops and their CPU kernels.
The GPU kernels of ``TfHpsLookup`` live in a second library,
``_tf_hps_ops_gpu.so``, built by ``make gpu``; it links against the op library.
The op library loads it by itself into a TensorFlow built with CUDA on a
machine with a CUDA driver (docs/serving.md), so servers name one library.
:func:`ops` loads it too, but only where it can be used: when the file
exists, TensorFlow sees a GPU, and the environment variable
``TF_HPS_GPU_KERNELS`` is not ``0``. A CPU-only process never loads
it (it would register kernels that cannot run and pull a CUDA runtime into
the process for nothing), and a failure to load it only warns: lookups then
run on the CPU kernels, as before.

``TF_HPS_OP_LIBRARY``, when set, names another build of the op library to
load instead of ``_tf_hps_ops.so`` (e.g. ``build/asan/_tf_hps_ops.so`` from
``make asan``; docs/reliability.md). Set ``TF_HPS_GPU_KERNELS=0`` with it:
the GPU kernel library links against the default op library.
"""

from __future__ import annotations

import functools
import json
import os

import tensorflow as tf

from tf_hps._warn import warn

_LIBRARY_NAME = "_tf_hps_ops.so"
_GPU_LIBRARY_NAME = "_tf_hps_ops_gpu.so"
# Set to "0" to keep lookups on the CPU kernels on a machine with a GPU.
_GPU_KERNELS_ENV = "TF_HPS_GPU_KERNELS"
# Path of another op library build to load instead of _tf_hps_ops.so (sanitizer builds).
_OP_LIBRARY_ENV = "TF_HPS_OP_LIBRARY"


def _library_file(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def op_library_path() -> str:
    """Absolute path of the tf_hps op library.

    A process that serves a SavedModel using tf_hps layers must load this
    library before loading the model, e.g. ``tf.load_op_library(path)`` in
    Python or ``dlopen(path, RTLD_NOW | RTLD_GLOBAL)`` in C++.

    Example:
        >>> import tf_hps as hps
        >>> hps.op_library_path().endswith("_tf_hps_ops.so")
        True
    """
    override = os.environ.get(_OP_LIBRARY_ENV)
    if override:
        path = os.path.abspath(override)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tf_hps op library not found at {path} (named by ${_OP_LIBRARY_ENV})")
        return path
    path = _library_file(_LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tf_hps op library not found at {path}; build it with `make lib` in the repository root, or install "
            "a built tf_hps (pip install .)"
        )
    return path


def gpu_op_library_path() -> str:
    """Absolute path of the library of tf_hps's GPU kernels.

    It adds GPU kernels to the ops of :func:`op_library_path` and needs that
    library loaded first (it links against it). ``import tf_hps`` loads it by
    itself on a machine where TensorFlow sees a GPU; a process that serves a
    SavedModel without importing tf_hps loads both, in this order::

        tf.load_op_library(hps.op_library_path())
        tf.load_library(hps.gpu_op_library_path())

    (``dlopen`` both with ``RTLD_NOW | RTLD_GLOBAL`` in C++.) Without it,
    lookups run on the CPU kernels.

    Example:
        >>> import tf_hps as hps
        >>> hps.gpu_op_library_path().endswith("_tf_hps_ops_gpu.so")  # doctest: +SKIP
        True
    """
    path = _library_file(_GPU_LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tf_hps GPU kernel library not found at {path}; build it with `make gpu` in the repository root"
        )
    return path


def _load_gpu_kernels() -> bool:
    """Loads the GPU kernels where they can run; True if they were loaded.

    Never raises: the CPU kernels serve every lookup when this returns False.
    """
    path = _library_file(_GPU_LIBRARY_NAME)
    if not os.path.isfile(path) or os.environ.get(_GPU_KERNELS_ENV, "1") == "0":
        return False
    try:
        # Lists devices without creating them, so users can still configure
        # them (memory growth, visibility) afterwards.
        if not tf.config.list_physical_devices("GPU"):
            return False
        tf.load_library(path)
    except Exception as e:  # noqa: BLE001 - any failure must leave CPU lookups working
        warn(
            f"tf_hps: could not load the GPU kernels from {path} ({e}); lookups run on the CPU kernels. "
            f"Rebuild with `make gpu`, or set {_GPU_KERNELS_ENV}=0 to skip them.",
            RuntimeWarning,
        )
        return False
    return True


def check_tensorflow_version() -> None:
    """Raises ImportError when this process's TensorFlow is not the minor version the op library was built
    for (``_build_info.json``, written by the build beside the library): it links that version's
    libtensorflow_framework.so.2, whose C++ ABI changes between minor versions."""
    info = _library_file("_build_info.json")
    if not os.path.isfile(info):
        return
    with open(info) as f:
        built = json.load(f)["tensorflow"]
    found = tf.__version__
    want = built.split(".")[:2]
    if found.split(".")[:2] != want:
        major, minor = int(want[0]), int(want[1])
        raise ImportError(
            f"tf_hps was built for TensorFlow {built}, but this process has TensorFlow {found} "
            f"({os.path.dirname(tf.__file__)}): install TensorFlow {major}.{minor} "
            f"(pip install 'tensorflow>={major}.{minor},<{major}.{minor + 1}', or tensorflow-cpu), "
            "or build tf_hps against yours (pip install --no-binary tf_hps tf_hps, or make lib in a checkout)"
        )


@functools.lru_cache(maxsize=None)
def ops():
    """The generated op wrappers (tf_hps_init, tf_hps_lookup, tf_hps_parse_config).

    Checks TensorFlow's version, loads the op library and then, where they can run, the GPU kernels.
    """
    check_tensorflow_version()
    module = tf.load_op_library(op_library_path())
    _load_gpu_kernels()  # after the op library, which it links against
    return module


def evaluate(build):
    """Runs the ops that ``build()`` creates, now, on the CPU, and returns their values as numpy.

    Eagerly where TensorFlow executes eagerly, also when called while a ``tf.function`` traces or
    inside a ``tf.Graph`` (``init_scope`` steps out of them); in TF1 mode (eager execution disabled)
    in a private graph and session, so the caller's graph gets no nodes from it.
    """
    with tf.init_scope():
        if tf.executing_eagerly():
            with tf.device("/CPU:0"):
                return tf.nest.map_structure(lambda t: t.numpy(), build())
    graph = tf.Graph()
    with graph.as_default(), tf.device("/CPU:0"):
        fetches = build()
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetches)
