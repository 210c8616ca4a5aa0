"""MNIST for the benchmarks: pixels / 255 as float32, int64 labels, read from $XPMLP_DATA."""

from __future__ import annotations

import numpy as np


def mnist_float32(n_train: int | None = None, n_test: int | None = None):
    """((X_train, y_train), (X_test, y_test)), optionally the first n rows of each."""
    from xpmlp.datasets import load_mnist

    (X, y), (Xt, yt) = load_mnist(download=False)
    X, Xt = (X[:n_train] / np.float32(255)).astype(np.float32), (Xt[:n_test] / np.float32(255)).astype(np.float32)
    return (X, y[:n_train].astype(np.int64)), (Xt, yt[:n_test].astype(np.int64))
