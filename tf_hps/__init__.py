"""tf_hps: a hierarchical parameter server for embedding lookups in TensorFlow.

A drop-in successor to HugeCTR's HPS TensorFlow plugin::

    import tf_hps as hps   # instead of: import hierarchical_parameter_server as hps
    hps.Init(global_batch_size=1024, ps_config_file="ps_config.json")
    layer = hps.LookupLayer(model_name="foo", table_id=0, emb_vec_size=16, emb_vec_dtype=tf.float32)

TensorFlow is imported on first use of an API that needs it, so the storage
tools (``tf_hps.storage``, ``python -m tf_hps``) start quickly without it.
Once TensorFlow is imported (before or after ``import tf_hps``), the op
library is loaded, so ``tf.saved_model.load`` reads exports with tf_hps
layers; once Keras is, the layers are registered with it, so
``keras.saving.load_model`` finds them without ``custom_objects``.
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
    "FusedLookupLayer": "tf_hps.layers",
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


def _register_ops(_tensorflow=None, now: bool = False) -> None:
    """Registers the ops with TensorFlow (loads the op library, a few milliseconds), as HPS's import did, so
    that ``tf.saved_model.load`` of an export with tf_hps layers works after ``import tf_hps``.

    A TensorFlow of another minor version than the library was built for fails ``import tf_hps`` with an
    ImportError naming both (``now``: TensorFlow was imported first); found when TensorFlow is imported
    later, it only warns, and the first use raises it."""
    try:
        importlib.import_module("tf_hps._ops").ops()
    except Exception as e:  # noqa: BLE001 - importing TensorFlow must not fail because of tf_hps
        if now and isinstance(e, ImportError):
            raise
        from tf_hps._warn import warn

        warn(f"tf_hps: the op library was not loaded ({e}); exports with tf_hps layers will not load in this "
             "process", RuntimeWarning)


def _register_layers(_keras=None, now: bool = False) -> None:
    """The layers register themselves with Keras when their module is imported (keras.saving finds them)."""
    importlib.import_module("tf_hps.layers")


def _when_imported(module_name: str, hook) -> None:
    """Runs hook now if module_name is imported, else right after it is. TensorFlow is never imported here:
    ``python -m tf_hps --help`` and the storage tools start without it."""
    if module_name in sys.modules:
        hook(sys.modules[module_name], now=True)
        return
    try:
        import wrapt  # a dependency of TensorFlow's; without it there is no TensorFlow to hook either
    except ImportError:
        return
    wrapt.register_post_import_hook(hook, module_name)


_when_imported("tensorflow", _register_ops)
_when_imported("keras", _register_layers)
