"""tf_hps.testing: the bit-for-bit check, and the float32 rounding bound the serving tests rely on.

The bound is checked against float32 computations in several summation orders (TF at several batch
shapes, numpy, sequential sums forwards and backwards) and against the float64 result, and shown to
be small enough that a wrong embedding row cannot hide under it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_hps import testing


def test_bitwise_equal_tells_signed_zeros_nans_dtypes_and_shapes_apart():
    testing.assert_bitwise_equal(np.array([1.0, -0.0, np.nan], np.float32), np.array([1.0, -0.0, np.nan], np.float32))
    with pytest.raises(AssertionError, match=r"1 of 2 elements differ in their bits; first at \(1,\)"):
        testing.assert_bitwise_equal(np.array([1.0, 0.0], np.float32), np.array([1.0, -0.0], np.float32))
    with pytest.raises(AssertionError, match="dtype float32 != float64"):
        testing.assert_bitwise_equal(np.zeros(2, np.float32), np.zeros(2, np.float64))
    with pytest.raises(AssertionError, match=r"shape \(2,\) != \(1, 2\)"):
        testing.assert_bitwise_equal(np.zeros(2, np.float32), np.zeros((1, 2), np.float32))
    one_ulp = np.nextafter(np.float32(1.0), np.float32(2.0))
    with pytest.raises(AssertionError, match="rows: 1 of 1 elements"):
        testing.assert_bitwise_equal(np.array([one_ulp]), np.array([1.0], np.float32), "rows")
    # Tensors and bfloat16 compare too.
    testing.assert_bitwise_equal(tf.constant([1.5], tf.bfloat16), tf.constant([1.5], tf.bfloat16))
    with pytest.raises(AssertionError):
        testing.assert_bitwise_equal(tf.constant([1.5], tf.bfloat16), tf.constant([1.25], tf.bfloat16))


def dense(inputs, units, activation=None, seed=0):
    layer = keras.layers.Dense(units, activation=activation, kernel_initializer=keras.initializers.GlorotUniform(seed),
                               bias_initializer=keras.initializers.RandomNormal(seed=seed + 1))
    layer.build((None, inputs))
    return layer


def exact(x, layers):
    """float64 arithmetic on float32 inputs: the result the bound is about."""
    value = np.asarray(x, np.float64).reshape(len(x), -1)
    for layer in layers:
        kernel, bias = (w.numpy().astype(np.float64) for w in layer.weights)
        value = value @ kernel + bias
        name = layer.activation.__name__
        value = np.maximum(value, 0) if name == "relu" else 1 / (1 + np.exp(-value)) if name == "sigmoid" else value
    return value


def sequential_float32(x, layer, reverse=False):
    """x @ W + b in float32, one term at a time, in index order or backwards: a worst-ish case order."""
    kernel, bias = (w.numpy() for w in layer.weights)
    out = np.zeros((len(x), kernel.shape[1]), np.float32)
    order = range(kernel.shape[0] - 1, -1, -1) if reverse else range(kernel.shape[0])
    for k in order:
        out = out + x[:, k:k + 1] * kernel[k]  # products and sums rounded separately
    return out + bias


@pytest.mark.parametrize("width", [16, 832])
def test_one_dense_layer_in_any_summation_order_is_within_the_bound(width):
    rng = np.random.default_rng(width)
    x = rng.standard_normal((96, width)).astype(np.float32)
    layer = dense(width, 5)
    bound = testing.rounding_bound(x, [layer])
    want = exact(x, [layer])
    computed = {
        "tf batch 96": layer(x).numpy(),
        "tf batch 1": np.concatenate([layer(x[i:i + 1]).numpy() for i in range(len(x))]),
        "tf batch 32": np.concatenate([layer(x[i:i + 32]).numpy() for i in range(0, len(x), 32)]),
        "numpy": x @ layer.kernel.numpy() + layer.bias.numpy(),
        "forwards": sequential_float32(x, layer),
        "backwards": sequential_float32(x, layer, reverse=True),
    }
    for name, got in computed.items():
        testing.assert_within_rounding(got, want, bound, name, desired_is_exact=True)
    testing.assert_within_rounding(computed["forwards"], computed["backwards"], bound)
    # The orders do differ here, or the check would prove nothing.
    assert not np.array_equal(computed["forwards"], computed["backwards"])


def test_a_chain_with_relu_and_sigmoid_is_within_the_bound():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((200, 26, 32)).astype(np.float32)
    layers = [keras.layers.Flatten(), dense(26 * 32, 8, "relu", seed=4), dense(8, 1, "sigmoid", seed=6)]
    bound = testing.rounding_bound(emb, layers)
    assert bound.shape == (200, 1)
    want = exact(emb, layers[1:])
    model = keras.Sequential([keras.Input((26, 32)), *layers])
    for batch in (200, 7, 1):
        got = model.predict(emb, batch_size=batch, verbose=0)
        testing.assert_within_rounding(got, want, bound, f"predict at batch {batch}", desired_is_exact=True)


def test_the_bound_is_far_below_what_a_wrong_row_changes():
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((64, 4, 16)).astype(np.float32)
    layers = [keras.layers.Flatten(), dense(64, 3)]
    bound = testing.rounding_bound(emb, layers)
    right = layers[1](emb.reshape(64, -1)).numpy()
    wrong_rows = emb.copy()
    wrong_rows[10, 2] = emb[11, 2]  # one lookup answered with another key's row
    wrong = layers[1](wrong_rows.reshape(64, -1)).numpy()
    with pytest.raises(AssertionError, match="differ by more than float32 rounding allows; first at \\(10, "):
        testing.assert_within_rounding(wrong, right, bound)
    assert bound.max() < 1e-4 * np.abs(right).max()
    # An input already off adds its own part.
    assert (testing.rounding_bound(emb, layers, input_error=1e-3) > bound + 1e-3).all()


def test_layers_the_bound_does_not_know_are_refused():
    with pytest.raises(TypeError, match="does not know layer 'drop' \\(Dropout\\)"):
        testing.rounding_bound(np.zeros((1, 4), np.float32), [keras.layers.Dropout(0.5, name="drop")])
    with pytest.raises(TypeError, match="knows the activations linear, relu and sigmoid, not 'tanh'"):
        testing.rounding_bound(np.zeros((1, 4), np.float32), [dense(4, 2, "tanh")])


def test_within_rounding_refuses_nans_and_other_shapes():
    with pytest.raises(AssertionError, match="1 of 2 elements"):
        testing.assert_within_rounding(np.array([1.0, np.nan]), np.array([1.0, 1.0]), 1.0)
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_within_rounding(np.zeros(2), np.zeros(3), 1.0)


def test_sum_rounding_bound_holds_for_a_sum_in_any_order():
    rng = np.random.default_rng(8)
    terms = (rng.standard_normal((1000, 50)) * 10.0 ** rng.integers(-3, 4, size=(1000, 50))).astype(np.float32)
    want = terms.astype(np.float64).sum(axis=0)
    bound = testing.sum_rounding_bound(terms)
    forwards = np.zeros(50, np.float32)
    for t in terms:
        forwards = forwards + t
    backwards = np.zeros(50, np.float32)
    for t in terms[::-1]:
        backwards = backwards + t
    for got in (forwards, backwards, terms.sum(axis=0)):
        testing.assert_within_rounding(got, want, bound, desired_is_exact=True)
