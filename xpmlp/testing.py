"""Gradient checking by central differences, for layers, losses and whole models.

Use it to check a layer of your own::

    from xpmlp.testing import gradcheck
    errors = gradcheck(MyLayer(), x)        # x: float64 array (n, in_features)

Perturbations are built with Array API operations only (a one-hot mask times eps), so the
check runs on every backend; it needs float64, where central differences are accurate to ~1e-9.
"""

from __future__ import annotations

import numpy as np

from .backend import device_of, namespace_of, resolve, to_numpy
from .layers import Layer
from .losses import Loss, get_loss

__all__ = ["GradcheckError", "gradcheck", "numeric_gradient"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its central-difference estimate."""


def numeric_gradient(f, a, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of a scalar function ``f(array) -> float`` at ``a``.

    Returns a NumPy array of a's shape. Costs 2 * a.size calls of f. Runs with a's device
    current (CuPy allocates on the current device).
    """
    with resolve(xp=namespace_of(a), device=device_of(a)).activate():
        return _numeric_gradient(f, a, eps)


def _numeric_gradient(f, a, eps):
    xp = namespace_of(a)
    size = int(np.prod(a.shape))
    positions = xp.reshape(xp.arange(size, device=device_of(a)), a.shape)
    grad = np.empty(size)
    for i in range(size):
        step = xp.astype(positions == i, a.dtype) * eps
        grad[i] = (float(f(a + step)) - float(f(a - step))) / (2.0 * eps)
    return grad.reshape(tuple(a.shape))


def gradcheck(target, x, y=None, *, loss=None, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8,
              training: bool = True, seed: int = 0) -> dict[str, float]:
    """Compare a target's backward pass with central differences.

    Parameters
    ----------
    target : Layer, Loss or Sequential
        A Layer is built on x's backend if it has not been. For a Layer (or a model without a
        loss) the checked scalar is ``sum(forward(x) * R)`` for a fixed random R; for a Loss it
        is ``loss(x, y)`` with x the logits; for a model with ``loss`` it is ``loss(model(x), y)``.
    x : float64 array (n, features)
    y : targets, for a Loss or a model with ``loss``.
    loss : str or Loss, optional, for a model.
    eps, rtol, atol : step and tolerances (|analytic - numeric| <= atol + rtol * |numeric|).
    training : forward mode, True by default: only a training pass keeps what backward needs.
        Every evaluation draws the same Dropout masks (each layer's ``counter`` is put back before
        each pass, and restored at the end), so Dropout is checked in training mode too.
        ``training=False`` checks an inference pass, which works only for layers that keep
        nothing for backward (Dropout: the identity, Standardize).

    Returns
    -------
    dict mapping "input" and each parameter ("W", or "2.W" for layer 2 of a model) to the
    largest absolute difference found.

    Raises
    ------
    GradcheckError if any entry exceeds the tolerance; ValueError if x is not float64.
    """
    backend = resolve(xp=namespace_of(x), device=device_of(x))
    with backend.activate():  # x's GPU current (CuPy)
        return _gradcheck(backend, target, x, y, loss, eps, rtol, atol, training, seed)


def _gradcheck(backend, target, x, y, loss, eps, rtol, atol, training, seed):
    xp = namespace_of(x)
    if x.dtype != xp.float64:
        raise ValueError(f"gradcheck needs float64 inputs for accurate differences, got {x.dtype}")
    if isinstance(target, Layer) and target.xp is None:
        target.build(x.shape[1], backend, "float64", np.random.default_rng(seed))
    scalar, backward, params, counters = _wire(target, x, y, loss, training, seed)
    try:
        return _check(scalar, backward, params, x, eps, rtol, atol)
    finally:
        for layer, counter in counters:  # gradcheck leaves no trace in the layers' mask streams
            layer.counter = counter


def _check(scalar, backward, params, x, eps, rtol, atol):
    scalar(x)
    analytic = {"input": to_numpy(backward())}
    analytic.update({name: to_numpy(p.grad).copy() for name, p in params.items()})

    errors = {"input": _compare("input", analytic["input"], _numeric_gradient(scalar, x, eps), rtol, atol)}
    for name, p in params.items():
        original = p.value  # the view of the model's buffer: rebound to perturbed copies, then put back

        def with_param(value, p=p):
            p.value = value
            return scalar(x)

        try:
            errors[name] = _compare(name, analytic[name], _numeric_gradient(with_param, original, eps), rtol, atol)
        finally:
            p.value = original
    return errors


def _wire(target, x, y, loss, training, seed):
    """(scalar(x) -> 0-d array, backward() -> d scalar/dx, {name: Parameter}, Dropout counters)."""
    if isinstance(target, Loss):
        return (lambda a: target.forward(a, y)), target.backward, {}, []
    if isinstance(target, Layer):
        layers, prefix = [target], False
    elif hasattr(target, "layers"):
        layers, prefix = target.layers, True
    else:
        raise TypeError(f"gradcheck takes a Layer, a Loss or a Sequential model, got {type(target).__name__}")

    # Dropout's mask is a function of its counter: the same counter at every pass, the same mask.
    counters = [(layer, layer.counter) for layer in layers if isinstance(getattr(layer, "counter", None), int)]

    def forward(a):
        for layer, counter in counters:
            layer.counter = counter
        for layer in layers:
            a = layer.forward(a, training)
        return a

    def backward_from(g):
        for layer in reversed(layers):
            g = layer.backward(g)
        return g

    params = {(f"{i}.{k}" if prefix else k): p for i, layer in enumerate(layers) for k, p in layer.parameters.items()}
    if loss is not None:
        fn = get_loss(loss)
        return (lambda a: fn.forward(forward(a), y)), (lambda: backward_from(fn.backward())), params, counters
    xp = namespace_of(x)
    out = forward(x)
    weights = xp.asarray(np.random.default_rng(seed).normal(size=tuple(out.shape)), device=device_of(x))
    return (lambda a: xp.sum(forward(a) * weights)), (lambda: backward_from(weights)), params, counters


def _compare(name, analytic, numeric, rtol, atol) -> float:
    if analytic.shape != numeric.shape:
        raise GradcheckError(f"gradient of {name}: shape {analytic.shape}, expected {numeric.shape}")
    diff = np.abs(analytic - numeric)
    bad = diff > atol + rtol * np.abs(numeric)
    if bad.any():
        i = np.unravel_index(np.argmax(diff - rtol * np.abs(numeric)), diff.shape)
        raise GradcheckError(f"gradient of {name} disagrees with central differences at {i}: "
                             f"analytic {analytic[i]:.10g}, numeric {numeric[i]:.10g} "
                             f"({int(bad.sum())} of {bad.size} entries off)")
    return float(diff.max(initial=0.0))
