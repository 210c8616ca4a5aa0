"""Small data and models that several test files share (tests/ is on sys.path, as for fake_cupy)."""

import numpy as np

import xpmlp


def three_classes(n: int, n_val: int, seed: int = 0):
    """(X, y, X_val, y_val): 4 standard-normal features and 3 classes from a fixed rule; X, then
    X_val, drawn from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    X, Xv = rng.normal(size=(n, 4)), rng.normal(size=(n_val, 4))

    def labels(A):
        return (A[:, 0] + 0.5 * A[:, 1] > 0).astype(np.int64) + (A[:, 2] > 0.8)

    return X, labels(X), Xv, labels(Xv)


def small_mlp(**kw):
    """MLP 4-8-3, tanh, float64 on the CPU, seed 0 (any of them overridden by ``kw``)."""
    return xpmlp.MLP([4, 8, 3], activation="tanh", **{"device": "cpu", "dtype": "float64", "seed": 0, **kw})


def random_targets(loss: str, n: int, k: int, rng):
    """Targets for ``loss`` and k outputs: labels, 0/1 rows, or real values."""
    if loss == "softmax_cross_entropy":
        return rng.integers(0, k, size=n)
    if loss == "sigmoid_binary_cross_entropy":
        return rng.integers(0, 2, size=(n, k)).astype(float)
    return rng.normal(size=(n, k))
