"""Checks for comparing a model's outputs across batches, processes and machines.

Two kinds of output, two kinds of check:

- **Embedding lookups are exact.** ``LookupLayer`` outputs equal ``tf.nn.embedding_lookup`` on the
  same table, and ``SparseLookupLayer`` outputs equal ``tf.nn.embedding_lookup_sparse``, bit for bit,
  at any batch size, in any process, on any CPU. Compare them with :func:`assert_bitwise_equal`.
- **Other float layers are not.** TensorFlow does not promise the same bits for a ``Dense`` layer's
  matmul at another batch shape, in another process or on another CPU: oneDNN and Eigen choose
  kernels, and so summation orders, by batch shape and instruction set (AVX2, AVX-512, ...). Compare
  those outputs with :func:`assert_within_rounding`, under a bound from :func:`rounding_bound` that
  follows from float32 rounding itself, not a tolerance picked to pass.

Example: a model served elsewhere against the same model in this process::

    emb = lookup(ids)                               # exact
    hps.testing.assert_bitwise_equal(served_emb, emb.numpy(), "embeddings")
    bound = hps.testing.rounding_bound(emb.numpy(), [flatten, dense_1, dense_2])
    hps.testing.assert_within_rounding(served_scores, model(ids).numpy(), bound, "scores")

The bound. For a dot product of ``n`` float32 terms (a ``Dense`` layer with ``K`` inputs and its bias:
``n = K + 1``), any order of summation, with or without fused multiply-adds, is within
``gamma(n) * (|x| @ |W| + |b|)`` of the exact result, ``gamma(n) = n u / (1 - n u)``, ``u = 2**-24``
(Higham, *Accuracy and Stability of Numerical Algorithms*, section 3.1), plus ``n * 2**-149`` for
results in the subnormal range. An input already off by ``e`` adds ``e @ |W|``. ``relu`` and
reshapes add nothing; ``sigmoid`` (slope at most 1/4) adds ``16 u |y|`` for the implementation's
own error: TensorFlow 2.21's CPU sigmoid is within ``8.4 u |y|`` over [-30, 30]. The bound holds for
each computation alone, so two of them differ by at most twice that, which is what
:func:`assert_within_rounding` checks.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

UNIT_ROUNDOFF = 2.0**-24  # float32, round to nearest
_SUBNORMAL_STEP = 2.0**-149
_SIGMOID_ERROR = 16 * UNIT_ROUNDOFF  # relative; TF 2.21's CPU sigmoid measures 8.4 u over [-30, 30]


def _gamma(n: int) -> float:
    return n * UNIT_ROUNDOFF / (1.0 - n * UNIT_ROUNDOFF)


def _as_array(x) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def assert_bitwise_equal(actual, desired, what: str = "values") -> None:
    """Asserts the same shape, dtype and bits in every element (so -0.0 != 0.0, and NaN == NaN only as the
    same NaN). For lookup outputs, which are exact by design."""
    a, d = _as_array(actual), _as_array(desired)
    if a.shape != d.shape:
        raise AssertionError(f"{what}: shape {a.shape} != {d.shape}")
    if a.dtype != d.dtype:
        raise AssertionError(f"{what}: dtype {a.dtype} != {d.dtype}")
    if a.size == 0:
        return
    bits = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else None
    same = (a.view(bits) == d.view(bits)) if bits is not None and a.dtype.kind not in "OUSV" else (a == d)
    if np.all(same):
        return
    where = np.argwhere(~same)
    first = tuple(int(i) for i in where[0])
    detail = ""
    if a.dtype.kind == "f" or "float" in a.dtype.name:
        diff = np.abs(a.astype(np.float64) - d.astype(np.float64))
        detail = f"; max |difference| {float(np.nanmax(diff)):.3g}"
    raise AssertionError(
        f"{what}: {len(where)} of {a.size} elements differ in their bits; first at {first}: "
        f"{a[first]!r} != {d[first]!r}{detail}"
    )


def _layer_kind(layer):
    """('dense', activation), ('activation', name) or ('reshape', None) for the layers the bound knows."""
    kind = type(layer).__name__
    if kind == "Dense":
        return "dense", _activation_name(layer.activation)
    if kind == "ReLU" and getattr(layer, "max_value", None) is None and not getattr(layer, "negative_slope", 0) \
            and not getattr(layer, "threshold", 0):
        return "activation", "relu"
    if kind == "Activation":
        return "activation", _activation_name(layer.activation)
    if kind in ("Flatten", "Reshape"):
        return "reshape", None
    if isinstance(layer, str):
        return "activation", layer
    raise TypeError(
        f"rounding_bound does not know layer {getattr(layer, 'name', layer)!r} ({kind}): it knows Dense, "
        "Flatten, Reshape, ReLU and the activations linear, relu and sigmoid"
    )


def _activation_name(fn) -> str:
    name = getattr(fn, "__name__", str(fn))
    if name not in ("linear", "relu", "sigmoid"):
        raise TypeError(f"rounding_bound knows the activations linear, relu and sigmoid, not {name!r}")
    return name


def _activate(name: str, value: np.ndarray, error: np.ndarray):
    if name == "linear":
        return value, error
    if name == "relu":  # exact, and moves nothing further than its input moved
        return np.maximum(value, 0.0), error
    # sigmoid: slope <= 1/4, plus the implementation's own relative error.
    y = 1.0 / (1.0 + np.exp(-value))
    return y, error / 4.0 + _SIGMOID_ERROR * (y + error / 4.0) + np.finfo(np.float32).tiny


def rounding_bound(inputs, layers: Iterable, input_error=None) -> np.ndarray:
    """The most, per output element, by which any float32 computation of ``layers`` (applied in turn
    to ``inputs``) can differ from the exact result on the same inputs.

    Args:
        inputs: the first layer's input (numpy or tensor), e.g. exact embedding lookups.
        layers: Keras layers applied in sequence: ``Dense`` (activation linear, relu or sigmoid),
            ``Flatten``, ``Reshape``, ``ReLU``, ``Activation``; or the names "relu", "sigmoid".
        input_error: a bound on how far ``inputs`` are from exact already (default: they are exact).

    Returns:
        float64 array of the last layer's output shape.
    """
    value = _as_array(inputs).astype(np.float64)
    error = np.zeros_like(value) if input_error is None else np.broadcast_to(_as_array(input_error), value.shape)
    for layer in layers:
        kind, activation = _layer_kind(layer)
        if kind == "reshape":
            target = (value.shape[0], -1) if type(layer).__name__ == "Flatten" else \
                (value.shape[0],) + tuple(layer.target_shape)
            value, error = value.reshape(target), np.reshape(error, target)
        elif kind == "activation":
            value, error = _activate(activation, value, error)
        else:
            kernel = _as_array(layer.kernel).astype(np.float64)
            bias = _as_array(layer.bias).astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[1])
            terms = kernel.shape[0] + (1 if layer.use_bias else 0)
            magnitude = (np.abs(value) + error) @ np.abs(kernel) + np.abs(bias)
            error = error @ np.abs(kernel) + _gamma(terms) * magnitude + terms * _SUBNORMAL_STEP
            value = value @ kernel + bias
            value, error = _activate(activation, value, error)
    return np.asarray(error, np.float64)


def sum_rounding_bound(terms: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """The most by which a float32 sum of ``terms`` (stacked on axis 0), in any order, can differ
    from the exact sum: ``gamma(n) * sum |terms|`` (n - 1 additions)."""
    stacked = np.asarray(terms, np.float64)
    n = max(stacked.shape[0] - 1, 0)
    return _gamma(n) * np.abs(stacked).sum(axis=0) + n * _SUBNORMAL_STEP


def assert_within_rounding(actual, desired, bound, what: str = "values", desired_is_exact: bool = False) -> None:
    """Asserts ``|actual - desired| <= 2 * bound`` elementwise: two float32 computations of one result,
    each within ``bound`` of the exact value (:func:`rounding_bound`), differ by at most twice it.
    With ``desired_is_exact`` (``desired`` computed in float64 from the same inputs), ``bound`` itself.
    Shapes must match; NaN anywhere fails."""
    a, d = _as_array(actual).astype(np.float64), _as_array(desired).astype(np.float64)
    if a.shape != d.shape:
        raise AssertionError(f"{what}: shape {a.shape} != {d.shape}")
    allowed = (1.0 if desired_is_exact else 2.0) * np.broadcast_to(np.asarray(bound, np.float64), a.shape)
    diff = np.abs(a - d)
    bad = ~(diff <= allowed)
    if not bad.any():
        return
    where = np.argwhere(bad)
    first = tuple(int(i) for i in where[0])
    raise AssertionError(
        f"{what}: {len(where)} of {a.size} elements differ by more than float32 rounding allows; first at "
        f"{first}: {a[first]!r} vs {d[first]!r}, |difference| {diff[first]:.3g} > {allowed[first]:.3g}"
    )
