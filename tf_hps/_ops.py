"""Loads the op library once and exposes its raw ops."""

from __future__ import annotations

import functools
import os

import tensorflow as tf

_LIBRARY_NAME = "_tf_hps_ops.so"


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
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tf_hps op library not found at {path}; build it with `make lib` in the repository root"
        )
    return path


@functools.lru_cache(maxsize=None)
def ops():
    """The generated op wrappers (tf_hps_init, tf_hps_lookup, tf_hps_parse_config)."""
    return tf.load_op_library(op_library_path())
