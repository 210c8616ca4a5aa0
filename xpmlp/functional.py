"""Numerically stable building blocks shared by activations and losses.

Every function takes the namespace ``xp`` explicitly and imports no array library.
"""

from __future__ import annotations


def sigmoid(xp, x):
    """Logistic function that never overflows: 1/(1+exp(-x)) written through tanh.

    ``exp(-x)`` overflows for x < -88 in float32; tanh saturates instead.
    """
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def probability(xp, x):
    """The logistic function with its relative precision in both tails, for reported probabilities.

    ``exp(-|x|)`` never overflows, and ``e / (1 + e)`` for negative x keeps tiny probabilities
    (3e-17 at x = -38) where the tanh form (:func:`sigmoid`) rounds them to exactly 0.
    """
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_softmax_rows(xp, z):
    """Row-wise log-softmax of a (n, k) array: ``(z - max) - log(sum(exp(z - max)))``.

    Subtracting the row's maximum first keeps exp from overflowing, and keeping the two terms
    apart (never forming ``max + log(sum)``, the log-sum-exp) keeps the precision of very
    confident rows: with logits near 1e4 in float32, ``max + log(sum)`` rounds the small
    ``log(sum)`` to the 1e-3 spacing of numbers near 1e4, while ``z - max`` is exact.
    """
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax_rows(xp, z):
    """Row-wise softmax of a (n, k) array: each row sums to one."""
    e = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def softplus(xp, x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))
