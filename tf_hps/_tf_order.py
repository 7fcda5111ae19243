"""The float packet width of this process's TensorFlow build, as its CPU reductions show it.

TfHpsWeightedSparseLookup sums weighted rows and clips rows in the order of the Eigen reductions
behind TF's CPU kernels of ``tf.math.segment_sum`` and ``tf.clip_by_norm``, and that order depends
on the packet width TensorFlow was compiled with (8 floats for the x86 wheels). ``reduction_lanes``
runs both TF ops once on a fixed probe and returns the width whose order gives TF's bits, or
``None`` when none does (SparseLookupLayer then runs TF's own ops). The models here are written
from that order (ops/sparse_combine.h) in numpy float32, one rounding per operation.
"""

from __future__ import annotations

import functools

import numpy as np

f32 = np.float32


def segment_sum_of(x, lanes):
    """tf.math.segment_sum of the rows x (n, dim) into one row."""
    n, dim = x.shape
    if n == 0:
        return np.zeros(dim, f32)
    if n == 1:
        return x[0].copy()
    v = dim // lanes * lanes
    out = np.zeros(dim, f32)
    k = 0
    if n >= 16:
        acc = [np.zeros(v, f32) for _ in range(4)]
        u = n // 4 * 4
        for k in range(0, u, 4):
            for a in range(4):
                acc[a] = acc[a] + x[k + a, :v]
                out[v:] = out[v:] + x[k + a, v:]
        out[:v] = ((acc[0] + acc[1]) + acc[2]) + acc[3]
        k = u
    for j in range(k, n):
        out = out + x[j]
    return out


def squared_norm_of(x, lanes, first=0):
    """tf.reduce_sum(x * x) of one row x, starting at flat index first."""
    n = len(x)
    if n > lanes * 1024:
        split = lanes * -(-(first + -(-n // 2)) // lanes)
        left = min(split - first, n)
        acc = f32(0) + squared_norm_of(x[:left], lanes, first)
        if left < n:
            acc = acc + squared_norm_of(x[left:], lanes, split)
        return acc
    sq = x * x
    p0 = np.zeros(lanes, f32)
    start = 0
    if n >= 4 * lanes:
        v4 = n // (4 * lanes) * 4 * lanes
        p = [np.zeros(lanes, f32) for _ in range(4)]
        for j in range(0, v4, 4 * lanes):
            for a in range(4):
                p[a] = p[a] + sq[j + a * lanes : j + (a + 1) * lanes]
        p0 = ((p[0] + p[1]) + p[2]) + p[3]
        start = v4
    if start <= n - lanes:
        for j in range(start, n // lanes * lanes, lanes):
            p0 = p0 + sq[j : j + lanes]
        start = n // lanes * lanes
    s = f32(0)
    for j in range(start, n):
        s = s + sq[j]
    w = lanes // 2
    while w >= 1:
        p0 = p0[:w] + p0[w : 2 * w]
        w //= 2
    return f32(s + p0[0])


def clip_by_norm_of(x, clip_norm, lanes):
    """tf.clip_by_norm(x, clip_norm, axes=[1]) of the rows x (n, dim)."""
    c = f32(clip_norm)
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        s = squared_norm_of(x[r], lanes, r * x.shape[1])
        norm = np.sqrt(s, dtype=f32) if s > 0 else s
        out[r] = (x[r] * c) / np.maximum(norm, c)
    return out


@functools.cache
def reduction_lanes():
    """4, 8 or 16: the packet width whose order gives this TensorFlow's bits; None if none does."""
    import tensorflow as tf

    rng = np.random.default_rng(20261202)
    x = (rng.standard_normal((21, 45)) * rng.uniform(0.01, 100.0, (21, 1))).astype(f32)
    with tf.device("/CPU:0"):
        summed = tf.math.segment_sum(tf.constant(x), tf.zeros([21], tf.int32)).numpy()[0]
        clipped = tf.clip_by_norm(tf.constant(x), 0.5, axes=[1]).numpy()
    for lanes in (8, 4, 16):
        if np.array_equal(segment_sum_of(x, lanes).view(np.int32), summed.view(np.int32)) and np.array_equal(
            clip_by_norm_of(x, 0.5, lanes).view(np.int32), clipped.view(np.int32)
        ):
            return lanes
    return None


def lanes_for_rows_of(dim):
    """The packet width for rows of dim floats, or None where TF's own ops must combine them.

    A row longer than lanes * 1024 whose length is not a multiple of lanes is summed in halves
    split at packet boundaries of the whole tensor, which depend on the row's place in TF's
    tensor of distinct rows: left to TF.
    """
    lanes = reduction_lanes()
    if lanes is None or (dim > 1024 * lanes and dim % lanes):
        return None
    return lanes
