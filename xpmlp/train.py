"""The training loop: ``fit``, ``predict`` and ``evaluate`` (bound as Sequential methods).

The whole training set is copied to the model's device once; each epoch draws one seeded
permutation on the host, copies it over, and gathers every batch on the device with
``xp.take``. The loss is summed on the device and read once per epoch, so the loop never waits
for the device between batches.
"""

from __future__ import annotations

import time

import numpy as np

from .losses import get_loss
from .optim import Adam, get_optimizer

__all__ = ["History", "fit", "predict", "evaluate"]


class History:
    """What ``fit`` records: ``history["loss"][i]`` is the mean training loss of epoch i."""

    def __init__(self):
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {"loss": []}

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = {k: v[-1] for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _prepare_X(model, X):
    """Validate X (2-D, numeric, finite, the model's width) and copy it to the device."""
    Xd = model.backend.asarray(X, dtype=model.dtype, what="X")
    if Xd.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if Xd.ndim == 1 else ""
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(Xd.shape)}{hint}")
    if Xd.shape[0] == 0:
        raise ValueError("X has no samples")
    if model.built and Xd.shape[1] != model.in_features:
        raise ValueError(f"X has {Xd.shape[1]} features but the model expects {model.in_features}")
    if not bool(model.xp.all(model.xp.isfinite(Xd))):
        raise ValueError(f"X contains NaN or infinity (checked after conversion to {model.dtype})")
    return Xd


def _prepare_y(model, loss, y, n_samples):
    xp = model.xp
    yd = loss.prepare_targets(y, model.backend, model.dtype, model.out_features)
    if yd.shape[0] != n_samples:
        raise ValueError(f"X and y have different lengths: {n_samples} and {yd.shape[0]}")
    if xp.isdtype(yd.dtype, "real floating") and not bool(xp.all(xp.isfinite(yd))):
        raise ValueError("y contains NaN or infinity")
    return yd


def _adapt(model, Xd) -> None:
    """Let layers that learn statistics from data (Standardize) see the inputs that reach them."""
    pending = [layer for layer in model.layers if hasattr(layer, "adapt") and not layer.adapted]
    h = Xd
    for layer in model.layers:
        if not pending:
            return
        if layer is pending[0]:
            layer.adapt(h)
            pending.pop(0)
        h = layer.forward(h)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)  # clamp: slicing past the end is not portable


def fit(model, X, y, *, loss=None, optimizer=None, epochs: int = 1, batch_size: int = 32,
        shuffle: bool = True, seed: int | None = None, verbose: int = 0) -> History:
    """Train the model with minibatch gradient descent.

    Parameters
    ----------
    X : array (n_samples, n_features)
        NumPy (or pandas, lists) for any backend, or an array of the model's own library/device.
    y : array
        (n,) integer labels or (n, k) one-hot rows for softmax cross-entropy; (n,) or (n, k)
        targets for the other losses.
    loss : str or Loss
        Required on the first call; None reuses the previous one.
    optimizer : str, Optimizer or None
        None continues with the previous optimiser and its state (Adam(lr=1e-3) at first);
        a name creates a fresh one with default settings.
    epochs, batch_size : int >= 1
    shuffle : bool
        A fresh permutation every epoch.
    seed : int, optional
        Seeds this call's shuffles; by default they come from the model's seed.
    verbose : 0 silent, 1 or more one line per epoch.

    Returns
    -------
    History, also kept as ``model.history``.
    """
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    if loss is None and model.loss is None:
        raise ValueError("fit needs a loss on its first call, e.g. loss='softmax_cross_entropy' "
                         "for classes or loss='mse' for regression")
    loss = model.loss if loss is None else get_loss(loss)
    if optimizer is None:
        optimizer = model.optimizer if model.optimizer is not None else Adam()
    else:
        optimizer = get_optimizer(optimizer)

    Xd = _prepare_X(model, X)
    if not model.built:
        model.build(Xd.shape[1])
    yd = _prepare_y(model, loss, y, Xd.shape[0])
    _adapt(model, Xd)
    model.loss, model.optimizer = loss, optimizer

    xp, n = model.xp, Xd.shape[0]
    rng = np.random.default_rng(seed) if seed is not None else model.shuffle_rng
    slots = model.slots()
    history = History()
    for epoch in range(epochs):
        started = time.perf_counter()
        order = model.backend.from_host(rng.permutation(n)) if shuffle else None
        total = 0.0
        for start, stop in _batches(n, batch_size):
            if order is None:
                xb, yb = Xd[start:stop, ...], yd[start:stop, ...]
            else:
                idx = order[start:stop]
                xb, yb = xp.take(Xd, idx, axis=0), xp.take(yd, idx, axis=0)
            batch_loss = loss.forward(model.forward(xb, training=True), yb)
            model.backward(loss.backward())
            optimizer.step(slots)
            total = total + batch_loss * float(stop - start)
        epoch_loss = float(total) / n  # the one host sync of the epoch
        history.epoch.append(epoch)
        history.history["loss"].append(epoch_loss)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs} - loss {epoch_loss:.6g} - {time.perf_counter() - started:.2f}s")
    model.history = history
    return history


def _outputs(model, Xd, batch_size):
    if batch_size is None:
        return model.forward(Xd)
    batch_size = _positive_int(batch_size, "batch_size")
    parts = [model.forward(Xd[a:b, ...]) for a, b in _batches(Xd.shape[0], batch_size)]
    return model.xp.concat(parts, axis=0)


def predict(model, X, *, batch_size: int | None = None):
    """Predictions for X (n, n_features) -> (n, n_outputs), as arrays of the model's library.

    The loss's link is applied: class probabilities (rows summing to one) for softmax
    cross-entropy, probabilities for sigmoid cross-entropy, raw outputs for regression.
    Batching (``batch_size``) only bounds memory; each row's prediction does not depend on it.
    """
    if not model.built:
        raise ValueError("the model has no weights yet: call fit first or give in_features")
    out = _outputs(model, _prepare_X(model, X), batch_size)
    return out if model.loss is None else model.loss.link(model.xp, out)


def evaluate(model, X, y, *, loss=None, batch_size: int | None = None) -> float:
    """Mean loss over (X, y), by default with the loss the model was trained with."""
    if not model.built:
        raise ValueError("the model has no weights yet: call fit first or give in_features")
    if loss is None and model.loss is None:
        raise ValueError("evaluate needs a loss: pass loss=... or fit the model first")
    loss = model.loss if loss is None else get_loss(loss)
    Xd = _prepare_X(model, X)
    yd = _prepare_y(model, loss, y, Xd.shape[0])
    n = Xd.shape[0]
    size = n if batch_size is None else _positive_int(batch_size, "batch_size")
    total = 0.0
    for start, stop in _batches(n, size):
        total = total + loss.forward(model.forward(Xd[start:stop, ...]), yd[start:stop, ...]) * float(stop - start)
    return float(total) / n
