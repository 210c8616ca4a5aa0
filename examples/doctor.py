"""The MLP doctor on the classic mistakes
======================================

The MLP doctor on the classic mistakes: each case breaks a small MNIST network in one of the ways
from-scratch MLPs fail, prints what the doctor finds, then trains the fixed version.

Mistakes a look at the data, model and loss reveals are named by ``xpmlp.diagnose`` before any
training; the others show up while training, with ``fit(..., diagnose=True)`` (a few
statistics once per epoch). A learning rate that is far off is fixed with ``model.lr_find``.

    python examples/doctor.py                 # 5000 MNIST rows, 3 epochs per run: about a minute
"""

from __future__ import annotations

import warnings

import numpy as np

import xpmlp
from xpmlp import Dense, ReLU, Sequential, Softmax

LOSS = "softmax_cross_entropy"


def _mnist(n: int):
    (X, y), (Xt, yt) = xpmlp.datasets.load_mnist(progress=False)
    rng = np.random.default_rng(0)
    train, test = rng.choice(len(X), n, replace=False), rng.choice(len(Xt), 2000, replace=False)
    return X[train], y[train].astype(np.int64), Xt[test], yt[test].astype(np.int64)


def _net(seed=0):
    return xpmlp.MLP([784, 128, 10], seed=seed)


def _train(model, X, y, *, loss=LOSS, optimizer=None, epochs=3, shuffle=True):
    """fit with diagnose=True: the findings before and during training, without printing warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(X, y, loss=loss, optimizer=optimizer or xpmlp.Adam(), epochs=epochs, batch_size=64,
                            shuffle=shuffle, verbose=0, diagnose=True, on_divergence="warn")
    return history.doctor


def _accuracy(model, X, y) -> float:
    p = xpmlp.to_numpy(model.predict(X))
    return float(np.mean(p.argmax(axis=1) == y))


def cases(X, y, epochs, print_fn):
    """(name, what goes wrong, broken run -> Report, fixed run -> (Report, model))."""
    Xs = X / 255.0
    order = np.argsort(y, kind="stable")

    def before(model, Xb, yb, loss=LOSS, **kw):
        return lambda: xpmlp.diagnose(model, Xb, yb, loss=loss, **kw)

    def fixed(shuffle=True, lr_find=False):
        def run():
            model, optimizer = _net(), None
            if lr_find:  # the range test's suggestion for the same SGD
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = model.lr_find(Xs, y, loss=LOSS, optimizer=xpmlp.SGD(lr=0.1), seed=0)
                print_fn(f"lr_find: {found!r}")
                optimizer = xpmlp.SGD(lr=found.suggestion)
            return _train(model, Xs, y, optimizer=optimizer, epochs=epochs, shuffle=shuffle), model
        return run

    yield ("raw pixels", "0..255 pixels go in unscaled",
           before(_net(), X, y), fixed())
    yield ("sorted classes", "the rows are sorted by class and shuffling is off",
           before(_net(), Xs[order], y[order], shuffle=False), fixed())
    yield ("sigmoid for ten classes", "labels 0..9 with a sigmoid output: every output goes to 1",
           before(_net(), Xs, y.astype(float)[:, None], loss="sigmoid_binary_cross_entropy"), fixed())
    yield ("double softmax", "a Softmax layer before a loss that takes logits (softmax over probabilities)",
           before(Sequential([Dense(128, in_features=784), ReLU(), Dense(10), Softmax()], seed=0), Xs, y),
           fixed())
    yield ("labels from 1", "labels 1..10 for ten outputs",
           before(_net(), Xs, y + 1), fixed())
    yield ("learning rate far too high", "SGD at lr=5",
           lambda: _train(_net(), Xs, y, optimizer=xpmlp.SGD(lr=5.0), epochs=epochs), fixed(lr_find=True))
    yield ("learning rate far too low", "SGD at lr=1e-6: nothing moves",
           lambda: _train(_net(), Xs, y, optimizer=xpmlp.SGD(lr=1e-6), epochs=epochs), fixed(lr_find=True))


def main(n: int = 5000, epochs: int = 3, print_fn=print) -> dict:
    """Run every case; returns {case: {"found": checks, "fixed_found": checks, "fixed_accuracy": float}}."""
    X, y, Xt, yt = _mnist(n)
    results = {}
    for name, what, broken, fix in cases(X, y, epochs, print_fn):
        print_fn(f"\n=== {name}: {what}")
        report = broken()
        print_fn(str(report))
        fixed_report, model = fix()
        accuracy = _accuracy(model, Xt / 255.0, yt)
        print_fn(f"--- fixed: {'no problems found' if fixed_report.ok else fixed_report.checks()}; "
                 f"test accuracy {accuracy:.3f}")
        results[name] = {"found": report.checks(), "fixed_found": fixed_report.checks(), "fixed_accuracy": accuracy}
    return results


if __name__ == "__main__":
    main()
