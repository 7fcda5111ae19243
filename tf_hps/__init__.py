"""tf_hps: a hierarchical parameter server for embedding lookups in TensorFlow.

A drop-in successor to HugeCTR's HPS TensorFlow plugin::

    import tf_hps as hps   # instead of: import hierarchical_parameter_server as hps
    hps.Init(global_batch_size=1024, ps_config_file="ps_config.json")
    layer = hps.LookupLayer(model_name="foo", table_id=0, emb_vec_size=16, emb_vec_dtype=tf.float32)
"""

from tf_hps._ops import op_library_path
from tf_hps.api import Init
from tf_hps.config import PsConfig, load_config
from tf_hps.layers import LookupLayer
from tf_hps.tables import load_table, save_embedding_layer, save_table

__version__ = "0.1.0"

__all__ = [
    "Init",
    "LookupLayer",
    "PsConfig",
    "load_config",
    "load_table",
    "op_library_path",
    "save_embedding_layer",
    "save_table",
    "__version__",
]
