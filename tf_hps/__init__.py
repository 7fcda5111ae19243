"""tf_hps: a hierarchical parameter server for embedding lookups in TensorFlow.

A drop-in successor to HugeCTR's HPS TensorFlow plugin::

    import tf_hps as hps   # instead of: import hierarchical_parameter_server as hps
    hps.Init(global_batch_size=1024, ps_config_file="ps_config.json")
    layer = hps.LookupLayer(model_name="foo", table_id=0, emb_vec_size=16, emb_vec_dtype=tf.float32)

TensorFlow is imported on first use of an API that needs it, so the storage
tools (``tf_hps.storage``, ``python -m tf_hps``) start quickly without it. In
a process that has already imported TensorFlow or Keras, ``import tf_hps``
registers the layers with Keras at once, so ``keras.saving.load_model`` finds
them without ``custom_objects`` (import tf_hps after keras, or touch
``tf_hps.LookupLayer`` before loading, in a process that imports keras later).
"""

import importlib
import sys

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "Init": "tf_hps.api",
    "stats": "tf_hps.api",
    "refresh_cache": "tf_hps.api",
    "LookupLayer": "tf_hps.layers",
    "SparseLookupLayer": "tf_hps.layers",
    "PsConfig": "tf_hps.config",
    "load_config": "tf_hps.config",
    "op_library_path": "tf_hps._ops",
    "gpu_op_library_path": "tf_hps._ops",
    "plan_memory": "tf_hps.plan",
    "UpdatePublisher": "tf_hps.updates",
    "PublishChangedRows": "tf_hps.callbacks",
    "load_table": "tf_hps.tables",
    "save_table": "tf_hps.tables",
    "save_embedding_layer": "tf_hps.tables",
}

# Submodules reachable as attributes (hps.testing) without an import of their own.
_SUBMODULES = ("testing",)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"tf_hps.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_hps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


# The layers register themselves with Keras when their module is imported.
if "keras" in sys.modules or "tensorflow" in sys.modules:
    importlib.import_module("tf_hps.layers")
