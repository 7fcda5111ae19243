"""Keras layers that look embeddings up through the parameter server."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tf_hps import api
from tf_hps._ops import ops
from tf_hps.config import PsConfig, load_config

_KEY_DTYPES = (tf.int32, tf.int64)


def _check_dtype(emb_vec_dtype) -> tf.DType:
    dtype = tf.as_dtype(emb_vec_dtype)
    if dtype != tf.float32:
        raise ValueError(f"emb_vec_dtype must be float32, got {dtype.name}")
    return dtype


@keras.saving.register_keras_serializable(package="tf_hps")
class LookupLayer(keras.layers.Layer):
    """Looks up rows of one table of one model, like ``tf.nn.embedding_lookup``.

    Args:
        model_name: the ``model`` entry of the config.
        table_id: index of the table within that model.
        emb_vec_size: the table's dimension; must equal
            ``embedding_vecsize_per_table[table_id]``.
        emb_vec_dtype: dtype of the output (float32).
        ps_config_file: HPS JSON config. Empty: the config of the last
            ``hps.Init`` call. The config travels inside the exported model.
        global_batch_size: as in HPS; kept for compatibility.

    ``call(ids, max_norm=None)`` takes int32 or int64 keys of any shape and
    returns float32 of shape ``ids.shape + [emb_vec_size]``; keys absent from
    every tier get the table's ``default_value_for_each_table``.

    Example:
        >>> layer = LookupLayer("foo", 0, 16, tf.float32, "ps_config.json")  # doctest: +SKIP
        >>> layer(tf.constant([[1, 2], [3, 4]], tf.int64)).shape             # doctest: +SKIP
        TensorShape([2, 2, 16])
    """

    def __init__(
        self,
        model_name: str,
        table_id: int,
        emb_vec_size: int,
        emb_vec_dtype=tf.float32,
        ps_config_file: str = "",
        global_batch_size: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        if not isinstance(table_id, int) or isinstance(table_id, bool) or table_id < 0:
            raise ValueError(f"table_id must be a non-negative int, got {table_id!r}")
        if not isinstance(emb_vec_size, int) or isinstance(emb_vec_size, bool) or emb_vec_size < 1:
            raise ValueError(f"emb_vec_size must be a positive int, got {emb_vec_size!r}")
        if not isinstance(global_batch_size, int) or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
        self.model_name = model_name
        self.table_id = table_id
        self.emb_vec_size = emb_vec_size
        self.emb_vec_dtype = _check_dtype(emb_vec_dtype)
        self.ps_config_file = os.fspath(ps_config_file)
        self.global_batch_size = global_batch_size
        self._ps_config: PsConfig | None = None
        if self.ps_config_file:
            self._ps_config = load_config(self.ps_config_file)
        else:
            self._ps_config = api.default_config()
        if self._ps_config is not None:
            self._check_table(self._ps_config)

    def _check_table(self, config: PsConfig) -> None:
        model = config.model(self.model_name)
        tables = model["embedding_vecsize_per_table"]
        if self.table_id >= len(tables):
            raise ValueError(
                f"table_id {self.table_id} is out of range: model {self.model_name!r} has {len(tables)} table(s)"
            )
        if tables[self.table_id] != self.emb_vec_size:
            raise ValueError(
                f"emb_vec_size {self.emb_vec_size} does not match table {self.table_id} of model "
                f"{self.model_name!r}, whose embedding_vecsize_per_table is {tables[self.table_id]}"
            )

    def _config(self) -> PsConfig:
        if self._ps_config is None:
            self._ps_config = api.default_config()
            if self._ps_config is None:
                raise RuntimeError(
                    "LookupLayer has no config: pass ps_config_file=..., or call hps.Init(...) first"
                )
            self._check_table(self._ps_config)
        return self._ps_config

    def call(self, ids, max_norm=None):
        ids = tf.convert_to_tensor(ids)
        if ids.dtype not in _KEY_DTYPES:
            raise TypeError(
                f"LookupLayer ids must be int32 or int64, got {ids.dtype.name} "
                "(for a Keras input use keras.Input(..., dtype='int64'))"
            )
        handle = ops().tf_hps_init(
            ps_config=self._config().canonical_json, global_batch_size=self.global_batch_size
        )
        embeddings = ops().tf_hps_lookup(
            keys=ids,
            ps_handle=handle,
            model_name=self.model_name,
            table_id=self.table_id,
            emb_vec_size=self.emb_vec_size,
        )
        if max_norm is not None:
            # The same clipping as tf.nn.embedding_lookup: the L2 norm of each row.
            rank = ids.shape.rank
            axes = [rank] if rank is not None else tf.reshape(tf.rank(ids), [1])
            embeddings = tf.clip_by_norm(embeddings, max_norm, axes=axes)
        return embeddings

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.emb_vec_size,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            model_name=self.model_name,
            table_id=self.table_id,
            emb_vec_size=self.emb_vec_size,
            emb_vec_dtype=self.emb_vec_dtype.name,
            ps_config_file=self.ps_config_file,
            global_batch_size=self.global_batch_size,
        )
        return config
