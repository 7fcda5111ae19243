"""Keras layers that look embeddings up through the parameter server."""

from __future__ import annotations

import json
import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from tf_hps import _tf_order, api
from tf_hps._ops import ops
from tf_hps.config import PsConfig, load_config

_KEY_DTYPES = (tf.int32, tf.int64)
_OUTPUT_DTYPES = (tf.float32, tf.float16, tf.bfloat16)
_COMBINERS = ("sum", "mean", "sqrtn")


def _check_dtype(emb_vec_dtype) -> tf.DType:
    try:
        dtype = tf.as_dtype(emb_vec_dtype)
    except TypeError:
        raise ValueError(
            f"emb_vec_dtype must be float32, float16 or bfloat16, got {emb_vec_dtype!r}"
        ) from None
    if dtype not in _OUTPUT_DTYPES:
        raise ValueError(f"emb_vec_dtype must be float32, float16 or bfloat16, got {dtype.name}")
    return dtype


def _check_keys(keys, layer: str, what: str) -> tf.DType:
    """The keys' dtype (of a tensor, or of Keras's symbolic one), if int32 or int64."""
    dtype = tf.as_dtype(keys.dtype)
    if dtype not in _KEY_DTYPES:
        raise TypeError(
            f"{layer} {what} must be int32 or int64, got {dtype.name} "
            "(for a Keras input use keras.Input(..., dtype='int64'))"
        )
    return dtype


def _check_max_norm(max_norm):
    """None, a number >= 0, or a float tensor or variable (used as tf.clip_by_norm uses it)."""
    if max_norm is None:
        return None
    if isinstance(max_norm, bool):
        raise TypeError("max_norm must be None, a number or a float tensor, got bool")
    if isinstance(max_norm, numbers.Real):
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
        return float(max_norm)
    if isinstance(max_norm, (tf.Tensor, tf.Variable)) or tf.is_tensor(max_norm):
        if not max_norm.dtype.is_floating:
            raise TypeError(f"max_norm must be a float tensor, got {max_norm.dtype.name}")
        if max_norm.shape.rank not in (None, 0):
            raise ValueError(f"max_norm must be a scalar, got shape {max_norm.shape}")
        return max_norm
    raise TypeError(f"max_norm must be None, a number or a float tensor, got {type(max_norm).__name__}")


def _check_table_id(table_id, what: str) -> None:
    if not isinstance(table_id, int) or isinstance(table_id, bool) or table_id < 0:
        raise ValueError(f"{what} must be a non-negative int, got {table_id!r}")


def _check_emb_vec_size(emb_vec_size, what: str) -> None:
    if not isinstance(emb_vec_size, int) or isinstance(emb_vec_size, bool) or emb_vec_size < 1:
        raise ValueError(f"{what} must be a positive int, got {emb_vec_size!r}")


class _TableLayer(keras.layers.Layer):
    """What both layers share: the table they name, its config, the handle op."""

    def __init__(
        self,
        model_name: str,
        table_id: int,
        emb_vec_size: int,
        emb_vec_dtype=tf.float32,
        ps_config_file: str | os.PathLike = "",
        global_batch_size: int = 1,
        ps_config: str | None = None,
        saved_in: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        _check_table_id(table_id, "table_id")
        _check_emb_vec_size(emb_vec_size, "emb_vec_size")
        if not isinstance(global_batch_size, int) or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
        self.model_name = model_name
        self.table_id = table_id
        self.emb_vec_size = emb_vec_size
        self.emb_vec_dtype = _check_dtype(emb_vec_dtype)
        self.ps_config_file = os.path.abspath(os.fspath(ps_config_file)) if os.fspath(ps_config_file) else ""
        self.global_batch_size = global_batch_size
        # Read now if it exists, so mistakes show at once; else when traced, or by the op at its first
        # run (HPS's way: the model is exported before its config exists, docs/config.md).
        self._ps_config: PsConfig | None = None
        # The canonical config a .keras file carries (get_config), as an export carries it, and whether the
        # file was saved by another process (then the layer is served as an export from elsewhere is).
        self._carried: PsConfig | None = None
        self._from_elsewhere = False
        if ps_config is not None:
            if not isinstance(ps_config, str):
                raise TypeError(f"ps_config must be a canonical config JSON string, got {type(ps_config).__name__}")
            self._carried = PsConfig(path=self.ps_config_file or "(carried by the saved layer)",
                                     canonical_json=ps_config, data=json.loads(ps_config))
            self._check_table(self._carried)
            self._from_elsewhere = saved_in != api.process_token()
        elif self.ps_config_file and os.path.exists(self.ps_config_file):
            self._ps_config = load_config(self.ps_config_file)
            self._check_table(self._ps_config)
        elif not self.ps_config_file:
            try:
                found = api.config_for_model(self.model_name)
            except ValueError:  # two loaded configs name the model: an error when the layer is used
                found = None
            if found is not None:
                self._check_table(found)
        # No weights to create: built now, so Keras never needs the input's shape
        # (inputs of unknown rank work, as tf.nn.embedding_lookup's do).
        self.built = True

    def _tables(self) -> list[tuple[int, int]]:
        """(table_id, emb_vec_size) of each table the layer looks up."""
        return [(self.table_id, self.emb_vec_size)]

    def _check_table(self, config: PsConfig) -> None:
        model = config.model(self.model_name)
        tables = model["embedding_vecsize_per_table"]
        for table_id, emb_vec_size in self._tables():
            if table_id >= len(tables):
                raise ValueError(
                    f"table_id {table_id} is out of range: model {self.model_name!r} has {len(tables)} table(s)"
                )
            if tables[table_id] != emb_vec_size:
                raise ValueError(
                    f"emb_vec_size {emb_vec_size} does not match table {table_id} of model "
                    f"{self.model_name!r}, whose embedding_vecsize_per_table is {tables[table_id]}"
                )

    def _config(self) -> PsConfig | None:
        """The config the graph carries (docs/config.md): the file's, as hps.Init read it if it did; for a layer
        without a file, the config hps.Init loaded that names the model; then the config a .keras file carried.
        A layer restored from another process's .keras file: the config hps.Init loaded that names the model,
        else the carried one. None: resolved when the op runs."""
        if self._from_elsewhere:  # restored from another process's .keras file: served as its export is
            config = api.config_for_model(self.model_name) or self._carried
        elif self.ps_config_file:
            config = api.config_for_file(self.ps_config_file) or self._carried
            if config is None and self._ps_config is None and os.path.exists(self.ps_config_file):
                self._ps_config = load_config(self.ps_config_file)  # written since the layer was made
            config = config or self._ps_config
        else:
            config = api.config_for_model(self.model_name) or self._carried
        if config is not None:
            self._check_table(config)
        return config

    def _handle(self):
        """The TfHpsInit op: finds or loads the model's server on first run, returns its handle."""
        config = self._config()
        return ops().tf_hps_init(
            ps_config=config.canonical_json if config is not None else "",
            ps_config_file=self.ps_config_file,
            model_name=self.model_name,
            # A layer restored from a .keras file is served by the rule of an export from another process.
            traced_in="" if self._from_elsewhere else api.process_token(),
            global_batch_size=self.global_batch_size,
        )

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
        # The config itself, canonical (absolute paths, secrets as $env: references or redacted), as an
        # export carries it: the .keras file loads where the config file is not (docs/config.md).
        try:
            carried = self._config()
        except ValueError:  # two loaded configs name the model: the file cannot say which
            carried = None
        config["ps_config"] = carried.canonical_json if carried is not None else None
        config["saved_in"] = api.process_token()
        return config


@keras.saving.register_keras_serializable(package="tf_hps")
class LookupLayer(_TableLayer):
    """Looks up rows of one table of one model, like ``tf.nn.embedding_lookup``.

    Args:
        model_name: the ``model`` entry of the config.
        table_id: index of the table within that model.
        emb_vec_size: the table's dimension; must equal
            ``embedding_vecsize_per_table[table_id]``.
        emb_vec_dtype: dtype of the output: float32, float16 or bfloat16
            (tables hold float32; rows are rounded to it, after ``max_norm``).
        ps_config_file: HPS JSON config; need not exist until the op first
            runs. Empty: the config ``hps.Init`` loaded that names the model.
            A config known when the model is traced travels inside the
            export; an ``hps.Init`` in the serving process wins over it
            (docs/config.md, "Which config serves a layer").
        global_batch_size: as in HPS; kept for compatibility.

    ``call(ids, max_norm=None)`` takes int32 or int64 keys of any shape and
    returns ``emb_vec_dtype`` of shape ``ids.shape + [emb_vec_size]``; keys
    absent from every tier get the table's ``default_value_for_each_table``.
    A config with ``supportlonglong: false`` takes int32 keys only.

    Example:
        >>> layer = LookupLayer("foo", 0, 16, tf.float32, "ps_config.json")  # doctest: +SKIP
        >>> layer(tf.constant([[1, 2], [3, 4]], tf.int64)).shape             # doctest: +SKIP
        TensorShape([2, 2, 16])
    """

    def call(self, ids, max_norm=None):
        ids = tf.convert_to_tensor(ids)
        _check_keys(ids, "LookupLayer", "ids")
        embeddings = ops().tf_hps_lookup(
            keys=ids,
            ps_handle=self._handle(),
            model_name=self.model_name,
            table_id=self.table_id,
            emb_vec_size=self.emb_vec_size,
        )
        if max_norm is not None:
            # The same clipping as tf.nn.embedding_lookup: the L2 norm of each row.
            rank = ids.shape.rank
            axes = [rank] if rank is not None else tf.reshape(tf.rank(ids), [1])
            embeddings = tf.clip_by_norm(embeddings, max_norm, axes=axes)
        if self.emb_vec_dtype != tf.float32:
            embeddings = tf.cast(embeddings, self.emb_vec_dtype)
        return embeddings

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.emb_vec_size,)

    def compute_output_spec(self, ids, max_norm=None):
        return keras.KerasTensor(self.compute_output_shape(ids.shape), dtype=self.emb_vec_dtype.name)


@keras.saving.register_keras_serializable(package="tf_hps")
class FusedLookupLayer(_TableLayer):
    """Looks up several tables of one model in one op: ``LookupLayer`` of each, in one call.

    Args:
        model_name: the ``model`` entry of the config.
        table_ids: the tables, by index within that model (a table may be named
            more than once).
        emb_vec_sizes: each table's dimension (one int for all, or one per
            table); must equal ``embedding_vecsize_per_table``.
        emb_vec_dtype, ps_config_file, global_batch_size: as ``LookupLayer``'s.

    ``call(ids)`` takes a list (or tuple) of int32 or int64 key tensors, one per
    table in ``table_ids`` order, each of any shape and all of one dtype, and
    returns the list of ``ids[i].shape + [emb_vec_sizes[i]]`` outputs, equal
    to a ``LookupLayer`` of each table bit for bit. It also takes one tensor
    whose last dimension has a column per table (a model's ``(batch, N)``
    categorical input); output ``i`` then looks up column ``i``, of shape
    ``ids.shape[:-1] + [emb_vec_sizes[i]]``.

    Where the config sets ``fuse_embedding_table`` (top level, and not turned
    off for the model), the L1 probes of all the tables are one pass over the
    CPU workers, split by position across tables, and each table's misses
    then go through its databases; the tables keep their own caches, so their
    widths may differ and their keys may overlap. Without it the op looks the
    tables up one after another. Either way no thread waits for another, and a
    model with 26 tables runs 1 lookup op instead of 26. The op runs on the CPU
    (a GPU model's ``LookupLayer`` runs on its GPU).

    Example:
        >>> layer = FusedLookupLayer("foo", [0, 1], 16, tf.float32, "ps_config.json")  # doctest: +SKIP
        >>> a, b = layer([tf.constant([1, 2], tf.int64), tf.constant([[3]], tf.int64)])  # doctest: +SKIP
        >>> a.shape, b.shape                                                            # doctest: +SKIP
        (TensorShape([2, 16]), TensorShape([1, 1, 16]))
    """

    def __init__(
        self,
        model_name: str,
        table_ids,
        emb_vec_sizes,
        emb_vec_dtype=tf.float32,
        ps_config_file: str | os.PathLike = "",
        global_batch_size: int = 1,
        **kwargs,
    ):
        if isinstance(table_ids, (str, bytes)) or not hasattr(table_ids, "__iter__"):
            raise ValueError(f"table_ids must be a list of table indices, got {table_ids!r}")
        table_ids = list(table_ids)
        if not table_ids:
            raise ValueError("table_ids must name at least one table")
        for t in table_ids:
            _check_table_id(t, "each of table_ids")
        if isinstance(emb_vec_sizes, int) and not isinstance(emb_vec_sizes, bool):
            emb_vec_sizes = [emb_vec_sizes] * len(table_ids)
        elif isinstance(emb_vec_sizes, (str, bytes)) or not hasattr(emb_vec_sizes, "__iter__"):
            raise ValueError(f"emb_vec_sizes must be an int or a list of ints, got {emb_vec_sizes!r}")
        emb_vec_sizes = list(emb_vec_sizes)
        if len(emb_vec_sizes) != len(table_ids):
            raise ValueError(
                f"emb_vec_sizes has {len(emb_vec_sizes)} entries for {len(table_ids)} table_ids: give one per table "
                "(or one int for all)"
            )
        for d in emb_vec_sizes:
            _check_emb_vec_size(d, "each of emb_vec_sizes")
        self.table_ids = table_ids
        self.emb_vec_sizes = emb_vec_sizes
        super().__init__(model_name, table_ids[0], emb_vec_sizes[0], emb_vec_dtype, ps_config_file,
                         global_batch_size, **kwargs)

    def _tables(self) -> list[tuple[int, int]]:
        return list(zip(self.table_ids, self.emb_vec_sizes))

    def _check_ids(self, ids) -> bool:
        """Checks call's ids (tensors or Keras's symbolic ones); True for one tensor with a column per table."""
        n = len(self.table_ids)
        if isinstance(ids, (list, tuple)):
            if len(ids) != n:
                raise ValueError(
                    f"FusedLookupLayer got {len(ids)} key tensors for {n} tables (table_ids {self.table_ids}): "
                    "give one per table"
                )
            dtypes = [_check_keys(keys, "FusedLookupLayer", f"ids[{i}]") for i, keys in enumerate(ids)]
            if len(set(dtypes)) != 1:
                raise TypeError(
                    "FusedLookupLayer ids must all have one dtype, got " + ", ".join(d.name for d in dtypes)
                    + " (cast them to int64)"
                )
            return False
        if not hasattr(ids, "shape") or not hasattr(ids, "dtype"):
            raise TypeError(
                f"FusedLookupLayer takes a list of {n} key tensors, one per table of table_ids, or one tensor "
                f"with a column per table in its last dimension, got {type(ids).__name__}"
            )
        _check_keys(ids, "FusedLookupLayer", "ids")
        shape = tf.TensorShape(ids.shape)
        last = shape[-1] if shape.rank is not None and shape.rank >= 1 else None
        if (shape.rank is not None and shape.rank < 2) or (last is not None and last != n):
            raise ValueError(
                f"FusedLookupLayer got one ids tensor of shape {shape}: it needs rank >= 2 and a last dimension "
                f"with one column per table ({n}, table_ids {self.table_ids}), e.g. (batch, {n}); or pass a "
                f"list of {n} key tensors"
            )
        return True

    def call(self, ids):
        n = len(self.table_ids)
        if tf.is_tensor(ids) or isinstance(ids, (tf.Variable, np.ndarray)):
            ids = tf.convert_to_tensor(ids)
        elif isinstance(ids, (list, tuple)):
            ids = [tf.convert_to_tensor(i) for i in ids]
        if self._check_ids(ids):
            # One tensor, a column per table in its last dimension (a model's (batch, N) categorical input):
            # one unstack instead of N slices.
            ids = tf.unstack(ids, num=n, axis=-1)
        outputs = ops().tf_hps_fused_lookup(
            keys=ids,
            ps_handle=self._handle(),
            model_name=self.model_name,
            table_ids=self.table_ids,
            emb_vec_sizes=self.emb_vec_sizes,
        )
        if self.emb_vec_dtype != tf.float32:
            outputs = [tf.cast(o, self.emb_vec_dtype) for o in outputs]
        return list(outputs)

    def compute_output_shape(self, input_shape):
        one = all(isinstance(d, (int, type(None))) for d in input_shape) if isinstance(input_shape, (list, tuple)) \
            else isinstance(input_shape, tf.TensorShape)
        if one:  # one tensor, a column per table
            dims = tuple(tf.TensorShape(input_shape).as_list())
            if len(dims) < 2:
                raise ValueError(f"FusedLookupLayer: one ids tensor needs rank >= 2, got shape {dims}")
            return [dims[:-1] + (d,) for d in self.emb_vec_sizes]
        return [tuple(tf.TensorShape(s).as_list()) + (d,) for s, d in zip(input_shape, self.emb_vec_sizes, strict=True)]

    def compute_output_spec(self, ids):
        if self._check_ids(ids):
            return [keras.KerasTensor(tuple(ids.shape[:-1]) + (d,), dtype=self.emb_vec_dtype.name)
                    for d in self.emb_vec_sizes]
        return [keras.KerasTensor(tuple(i.shape) + (d,), dtype=self.emb_vec_dtype.name)
                for i, d in zip(ids, self.emb_vec_sizes)]

    def get_config(self) -> dict:
        config = super().get_config()
        del config["table_id"], config["emb_vec_size"]
        config.update(table_ids=list(self.table_ids), emb_vec_sizes=list(self.emb_vec_sizes))
        return config


def _sparse_parts(sp, what: str):
    """(values, row of each value, number of rows, static number of rows) of a rank-2 sparse or ragged tensor."""
    if isinstance(sp, tf.compat.v1.SparseTensorValue):
        sp = tf.SparseTensor.from_value(sp)
    if isinstance(sp, tf.SparseTensor):
        rank = sp.shape.rank
        if rank is not None and rank != 2:
            raise ValueError(f"{what} must have rank 2, got a SparseTensor of rank {rank}")
        return sp.values, sp.indices[:, 0], sp.dense_shape[0], sp.shape[0]
    if isinstance(sp, tf.RaggedTensor):
        if sp.shape.rank != 2 or sp.ragged_rank != 1:
            raise ValueError(
                f"{what} must have rank 2 (one ragged dimension), got a RaggedTensor of shape {sp.shape}"
            )
        return sp.values, sp.value_rowids(), sp.nrows(out_type=tf.int64), sp.shape[0]
    hint = ""
    if tf.is_tensor(sp):
        hint = (
            " (a dense tensor: to export a model with sparse or ragged inputs, give the serving function an "
            "input_signature of tf.SparseTensorSpec or tf.RaggedTensorSpec, e.g. through "
            "keras.export.ExportArchive; Keras's model.export makes dense specs)"
        )
    raise TypeError(f"{what} must be a tf.SparseTensor or tf.RaggedTensor, got {type(sp).__name__}{hint}")


@keras.saving.register_keras_serializable(package="tf_hps")
class SparseLookupLayer(_TableLayer):
    """Looks up and combines rows of one table per sample, like ``tf.nn.embedding_lookup_sparse``.

    Args:
        model_name: the ``model`` entry of the config.
        table_id: index of the table within that model.
        emb_vec_size: the table's dimension; must equal
            ``embedding_vecsize_per_table[table_id]``.
        emb_vec_dtype: dtype of the output: float32, float16 or bfloat16.
            Rows are combined in float32 and rounded once (TF's float32
            result, cast).
        ps_config_file: HPS JSON config; need not exist until the op first
            runs. Empty: the config ``hps.Init`` loaded that names the model.
            A config known when the model is traced travels inside the
            export; an ``hps.Init`` in the serving process wins over it
            (docs/config.md, "Which config serves a layer").
        global_batch_size: as in HPS; kept for compatibility.

    ``call(sp_ids, sp_weights=None, combiner="mean", max_norm=None, name=None)``:

    - ``sp_ids``: a rank-2 ``tf.SparseTensor`` or ``tf.RaggedTensor`` of int32
      or int64 keys (int32 only for a config with ``supportlonglong: false``).
      Output row ``i`` combines the keys of row ``i``; rows with no keys give
      zeros. Unlike ``tf.nn.embedding_lookup_sparse``, indices need not be in
      canonical order, and the output always has ``sp_ids.shape[0]`` rows
      (trailing empty rows included).
    - ``sp_weights``: ``None`` (every weight 1) or a tensor of the same kind and
      indices as ``sp_ids`` with a float weight per key (its values pair with
      ``sp_ids``' values in order).
    - ``combiner``: ``"sum"`` (of weight × row), ``"mean"`` (sum / sum of
      weights) or ``"sqrtn"`` (sum / sqrt(sum of squared weights)); a divisor
      of 0 gives zeros. ``None`` means ``"mean"``.
    - ``max_norm``: if not ``None``, a number >= 0, or a float scalar tensor or
      variable: each row whose L2 norm exceeds it is scaled down to it before
      combining (as ``tf.clip_by_norm``).
    - ``name``: accepted for compatibility with HPS, unused.

    Returns ``emb_vec_dtype`` of shape ``[sp_ids.shape[0], emb_vec_size]``,
    equal to ``tf.nn.embedding_lookup_sparse`` on the same table bit for bit
    (run the same way: eagerly, or both traced). Without weights and
    ``max_norm`` one op combines: each distinct key is looked up once, no
    per-key rows are materialised, and rows are summed in the order of TF's
    sparse segment kernels. With either, one op too: it clips each distinct
    row once and sums weighted rows in the order of TF's own reductions,
    whose float packet width depends on TF's build and is measured once per
    process (where no known width matches, TF's own clipping and segment
    ops combine the looked-up rows).

    Example:
        >>> layer = SparseLookupLayer("foo", 0, 16, tf.float32, "ps_config.json")  # doctest: +SKIP
        >>> ids = tf.ragged.constant([[1, 2, 2], [], [7]], tf.int64)              # doctest: +SKIP
        >>> layer(ids, combiner="sum").shape                                      # doctest: +SKIP
        TensorShape([3, 16])
    """

    def call(self, sp_ids, sp_weights=None, combiner="mean", max_norm=None, name=None):
        del name  # HPS's call takes one; Keras names the layer's ops.
        if combiner is None:
            combiner = "mean"
        if combiner not in _COMBINERS:
            raise ValueError(f"combiner must be one of 'sum', 'mean' or 'sqrtn', got {combiner!r}")
        max_norm = _check_max_norm(max_norm)
        keys, segments, num_rows, static_rows = _sparse_parts(sp_ids, "SparseLookupLayer sp_ids")
        _check_keys(keys, "SparseLookupLayer", "sp_ids")
        weights = None
        if sp_weights is not None:
            if isinstance(sp_weights, tf.compat.v1.SparseTensorValue):
                sp_weights = tf.SparseTensor.from_value(sp_weights)
            if type(sp_weights) is not type(sp_ids):
                raise TypeError(
                    f"sp_weights must be None or a {type(sp_ids).__name__} like sp_ids, got {type(sp_weights).__name__}"
                )
            weights, _, _, _ = _sparse_parts(sp_weights, "SparseLookupLayer sp_weights")
            if not (weights.dtype.is_floating or weights.dtype.is_integer):
                raise TypeError(f"sp_weights must hold numbers, got {weights.dtype.name}")
            if not weights.shape.is_compatible_with(keys.shape):
                raise ValueError(
                    f"sp_weights has {weights.shape[0]} values but sp_ids has {keys.shape[0]}: "
                    "they must have the same indices"
                )
            weights = tf.cast(weights, tf.float32)
        num_rows = tf.cast(num_rows, tf.int64)
        if weights is None and max_norm is None:
            embeddings = ops().tf_hps_sparse_lookup(
                keys=keys,
                segment_ids=segments,
                num_rows=num_rows,
                ps_handle=self._handle(),
                model_name=self.model_name,
                table_id=self.table_id,
                emb_vec_size=self.emb_vec_size,
                combiner=combiner,
                dtype=self.emb_vec_dtype,
            )
        elif _tf_order.lanes_for_rows_of(self.emb_vec_size):
            embeddings = self._weighted_sparse_lookup(keys, segments, num_rows, weights, combiner, max_norm)
        else:
            embeddings = self._combine_with_tf_ops(keys, segments, num_rows, weights, combiner, max_norm)
        embeddings.set_shape([static_rows, self.emb_vec_size])
        return embeddings

    def _weighted_sparse_lookup(self, keys, segments, num_rows, weights, combiner, max_norm):
        """Weights or max_norm in one op, in the order of this TensorFlow's own reductions.

        What TF computes with a per-mode rewrite stays TF's: the clip norm is cast as
        tf.clip_by_norm casts it, and sqrtn's squared weights are TF's tf.pow(weights, 2)
        (eagerly Eigen's pow, traced grappler's square), which the op sums.
        """
        empty = tf.zeros([0], tf.float32)
        divisor_weights = empty
        if weights is not None and combiner == "mean":
            divisor_weights = weights
        elif weights is not None and combiner == "sqrtn":
            divisor_weights = tf.pow(weights, 2)
        if max_norm is None:
            clip_norm = tf.constant(0.0, tf.float32)
        elif isinstance(max_norm, float):
            clip_norm = tf.constant(max(max_norm, 0.0), tf.float32)
        else:
            clip_norm = tf.cast(tf.maximum(max_norm, 0), tf.float32)
        return ops().tf_hps_weighted_sparse_lookup(
            keys=keys,
            segment_ids=segments,
            num_rows=num_rows,
            ps_handle=self._handle(),
            weights=empty if weights is None else weights,
            divisor_weights=divisor_weights,
            max_norm=clip_norm,
            model_name=self.model_name,
            table_id=self.table_id,
            emb_vec_size=self.emb_vec_size,
            combiner=combiner,
            weighted=weights is not None,
            clip=max_norm is not None,
            lanes=_tf_order.lanes_for_rows_of(self.emb_vec_size),
            dtype=self.emb_vec_dtype,
        )

    def _combine_with_tf_ops(self, keys, segments, num_rows, weights, combiner, max_norm):
        """Weights or max_norm: the rows combined by TF's own ops, as tf.nn.embedding_lookup_sparse does.

        TF clips rows and sums weighted rows with reductions whose order depends on how TensorFlow was
        built, so only its own kernels give its bits. The lookup still reads each distinct key once.
        """
        segments = tf.cast(segments, tf.int64)
        checks = [
            tf.debugging.assert_non_negative(segments, message="SparseLookupLayer: a row index of sp_ids is below 0"),
            tf.debugging.assert_less(
                segments, num_rows, message="SparseLookupLayer: a row index of sp_ids is out of range (dense_shape[0])"
            ),
        ]
        if weights is not None:
            checks.append(tf.debugging.assert_equal(
                tf.size(weights), tf.size(keys),
                message="SparseLookupLayer: sp_weights must have as many values as sp_ids (the same indices)"))
        with tf.control_dependencies(checks):
            segments = tf.identity(segments)
        # TF's segment kernels take keys in row order: a SparseTensor in another order is sorted by row,
        # stably, which keeps each row's keys in their order.
        parts = (keys, segments) if weights is None else (keys, segments, weights)
        in_order = tf.reduce_all(segments[1:] >= segments[:-1])
        parts = tf.cond(
            in_order,
            lambda: parts,
            lambda: tuple(tf.gather(p, tf.argsort(segments, stable=True)) for p in parts),
        )
        keys, segments = parts[0], parts[1]
        if max_norm is None:  # a row per key: equal to TF's gather of the distinct rows
            lookup_keys, index = keys, tf.range(tf.shape(keys, out_type=tf.int64)[0])
        else:  # the distinct rows, clipped once each, as TF clips them
            lookup_keys, index = tf.unique(keys, out_idx=tf.int64)
        rows = ops().tf_hps_lookup(
            keys=lookup_keys,
            ps_handle=self._handle(),
            model_name=self.model_name,
            table_id=self.table_id,
            emb_vec_size=self.emb_vec_size,
        )
        if max_norm is not None:
            rows = tf.clip_by_norm(rows, max_norm, axes=[1])
        if weights is None:
            reduce = {"sum": tf.sparse.segment_sum, "mean": tf.sparse.segment_mean, "sqrtn": tf.sparse.segment_sqrt_n}
            embeddings = reduce[combiner](rows, index, segments, num_segments=num_rows)
        else:
            weights = tf.reshape(parts[2], [-1, 1])
            segments = tf.cast(segments, tf.int32)
            if max_norm is not None:
                rows = tf.gather(rows, index)
            embeddings = tf.math.segment_sum(rows * weights, segments)
            if combiner == "mean":
                embeddings = tf.math.divide_no_nan(embeddings, tf.math.segment_sum(weights, segments))
            elif combiner == "sqrtn":
                divisor = tf.sqrt(tf.math.segment_sum(tf.pow(weights, 2), segments))
                embeddings = tf.math.divide_no_nan(embeddings, divisor)
            # segment_sum ends at the last row with keys; the rows after it are empty: zeros.
            missing = num_rows - tf.shape(embeddings, out_type=tf.int64)[0]
            embeddings = tf.pad(embeddings, tf.stack([tf.stack([tf.constant(0, tf.int64), missing]), [0, 0]]))
        if self.emb_vec_dtype != tf.float32:
            embeddings = tf.cast(embeddings, self.emb_vec_dtype)
        return embeddings

    def compute_output_shape(self, sp_ids_shape, sp_weights_shape=None):
        return (tuple(sp_ids_shape)[0], self.emb_vec_size)

    def compute_output_spec(self, sp_ids, sp_weights=None, combiner="mean", max_norm=None, name=None):
        return keras.KerasTensor((sp_ids.shape[0], self.emb_vec_size), dtype=self.emb_vec_dtype.name)
