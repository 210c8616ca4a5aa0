"""Gradient checking by central differences, for layers, losses and whole models.

Use it to check a layer of your own::

    from xpmlp.testing import gradcheck
    errors = gradcheck(MyLayer(), x)        # x: float64 array (n, in_features)

Perturbations are built with Array API operations only (a one-hot mask times eps), so the
check runs on every backend; it needs float64, where central differences are accurate to ~1e-9.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .backend import device_of, namespace_of, resolve, to_numpy
from .layers import Layer
from .losses import Loss, get_loss

__all__ = ["GradcheckError", "gradcheck", "numeric_gradient"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its central-difference estimate.

    Raised by :func:`gradcheck`; the message names the array, the first entry off and how many
    entries are off. A subclass of AssertionError, so a test that calls ``gradcheck`` fails.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import ReLU
    >>> from xpmlp.testing import GradcheckError, gradcheck
    >>> class WrongReLU(ReLU):
    ...     def grad_from(self, xp, grad_out, x, y):
    ...         return 2.0 * grad_out * (x > 0)
    >>> x = np.array([[0.5, -1.0]])
    >>> try:
    ...     gradcheck(WrongReLU(), x)
    ... except GradcheckError as e:
    ...     print(str(e)[:43])
    gradient of input disagrees with central di
    """


def numeric_gradient(f: Callable[[Any], Any], a: Any, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of a scalar function ``f(array) -> float`` at ``a``.

    Costs 2 * a.size calls of f. Runs with a's device current (CuPy allocates on the current
    device).

    Parameters
    ----------
    f : callable
        ``f(array) -> float`` (or a 0-d array), called with arrays of a's shape, library and device.
    a : array
        The point, any shape; float64 for accurate differences.
    eps : float, default 1e-6
        The step of the central differences.

    Returns
    -------
    numpy.ndarray
        The estimated gradient, of a's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.testing import numeric_gradient
    >>> numeric_gradient(lambda a: float((a ** 2).sum()), np.array([1.0, -2.0])).round(6)
    array([ 2., -4.])
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


def gradcheck(target: Any, x: Any, y: Any = None, *, loss: Any = None, eps: float = 1e-6, rtol: float = 1e-6,
              atol: float = 1e-8, training: bool = True, seed: int = 0) -> dict[str, float]:
    """Compare a target's backward pass with central differences.

    Parameters
    ----------
    target : Layer, Loss or Sequential
        A Layer is built on x's backend if it has not been. For a Layer (or a model without a
        loss) the checked scalar is ``sum(forward(x) * R)`` for a fixed random R; for a Loss it
        is ``loss(x, y)`` with x the logits; for a model with ``loss`` it is ``loss(model(x), y)``.
    x : array of shape (n_samples, n_features)
        A float64 array of any Array API library.
    y : array, optional
        Targets, for a Loss or a model with ``loss``.
    loss : str or Loss, optional
        For a model: the loss whose gradient is checked.
    eps : float, default 1e-6
        The step of the central differences.
    rtol : float, default 1e-6
        Relative tolerance: ``|analytic - numeric| <= atol + rtol * |numeric|``.
    atol : float, default 1e-8
        Absolute tolerance.
    training : bool, default True
        Forward mode: only a training pass keeps what backward needs.
        Every evaluation draws the same Dropout masks (each layer's ``counter`` is put back before
        each pass, and restored at the end), so Dropout is checked in training mode too.
        ``training=False`` checks an inference pass, which works only for layers that keep
        nothing for backward (Dropout: the identity, Standardize).
    seed : int, default 0
        Seeds the random R of the checked scalar (and the weights of a Layer built here).

    Returns
    -------
    dict of str to float
        Maps "input" and each parameter ("W", or "2.W" for layer 2 of a model) to the largest
        absolute difference found.

    Raises
    ------
    GradcheckError
        If any entry exceeds the tolerance.
    ValueError
        If x is not float64.
    TypeError
        If ``target`` is not a Layer, a Loss or a model.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Dense, SoftmaxCrossEntropy
    >>> from xpmlp.testing import gradcheck
    >>> x = np.random.default_rng(0).normal(size=(4, 3))
    >>> errors = gradcheck(Dense(2), x)
    >>> sorted(errors), max(errors.values()) < 1e-6
    (['W', 'b', 'input'], True)
    >>> sorted(gradcheck(SoftmaxCrossEntropy(), x, np.array([0, 1, 2, 0])))
    ['input']
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
