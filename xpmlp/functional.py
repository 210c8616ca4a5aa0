"""Numerically stable building blocks shared by activations and losses.

Every function takes the namespace ``xp`` explicitly and imports no array library.
"""

from __future__ import annotations


def sigmoid(xp, x):
    """Logistic function that never overflows: 1/(1+exp(-x)) written through tanh.

    ``exp(-x)`` overflows for x < -88 in float32; tanh saturates instead.
    """
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def logsumexp_rows(xp, z):
    """log(sum(exp(z), axis=1)) of a (n, k) array, keepdims -> (n, 1), without overflow."""
    m = xp.max(z, axis=1, keepdims=True)
    return m + xp.log(xp.sum(xp.exp(z - m), axis=1, keepdims=True))


def softmax_rows(xp, z):
    """Row-wise softmax of a (n, k) array: each row sums to one."""
    e = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def softplus(xp, x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))
