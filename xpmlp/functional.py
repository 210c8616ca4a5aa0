"""Numerically stable building blocks shared by activations and losses.

Every function takes the namespace ``xp`` explicitly and imports no array library.
"""

from __future__ import annotations

from typing import Any


def inherit_docstrings(klass: type) -> type:
    """Give each method or property of ``klass`` without a docstring the one it overrides.

    Subclasses that implement a base class's hook (``fn``, ``per_sample``, ``scalars``, ...)
    then carry the base's documentation, as help() and the API reference show it.

    Parameters
    ----------
    klass : type
        The class whose own methods and properties are completed in place.

    Returns
    -------
    type
        ``klass`` itself, so this can be used as a class decorator.
    """
    for name, member in list(vars(klass).items()):
        if name.startswith("_"):
            continue
        func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if not (callable(func) or isinstance(func, property)) or getattr(func, "__doc__", None):
            continue
        for base in klass.__mro__[1:]:
            doc = getattr(base.__dict__.get(name), "__doc__", None)
            if isinstance(base.__dict__.get(name), (staticmethod, classmethod)):
                doc = base.__dict__[name].__func__.__doc__
            if doc:
                try:
                    func.__doc__ = doc
                except (AttributeError, TypeError):  # a property's doc is read-only: rebuild it
                    if isinstance(func, property):
                        setattr(klass, name, property(func.fget, func.fset, func.fdel, doc))
                break
    return klass


def sigmoid(xp: Any, x: Any) -> Any:
    """Logistic function that never overflows: 1/(1+exp(-x)) written through tanh.

    ``exp(-x)`` overflows for x < -88 in float32; tanh saturates instead.

    Parameters
    ----------
    xp : module
        The Array API namespace of ``x``.
    x : array
        Any shape.

    Returns
    -------
    array
        ``1 / (1 + exp(-x))``, of the shape of ``x``.
    """
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def probability(xp: Any, x: Any) -> Any:
    """The logistic function with its relative precision in both tails, for reported probabilities.

    ``exp(-|x|)`` never overflows, and ``e / (1 + e)`` for negative x keeps tiny probabilities
    (3e-17 at x = -38) where the tanh form (``sigmoid``) rounds them to exactly 0.

    Parameters
    ----------
    xp : module
        The Array API namespace of ``x``.
    x : array
        Logits, any shape.

    Returns
    -------
    array
        Probabilities in [0, 1], of the shape of ``x``.
    """
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_softmax_rows(xp: Any, z: Any) -> Any:
    """Row-wise log-softmax of a (n, k) array: ``(z - max) - log(sum(exp(z - max)))``.

    Subtracting the row's maximum first keeps exp from overflowing, and keeping the two terms
    apart (never forming ``max + log(sum)``, the log-sum-exp) keeps the precision of very
    confident rows: with logits near 1e4 in float32, ``max + log(sum)`` rounds the small
    ``log(sum)`` to the 1e-3 spacing of numbers near 1e4, while ``z - max`` is exact.

    Parameters
    ----------
    xp : module
        The Array API namespace of ``z``.
    z : array of shape (n, k)
        Logits, one row per sample.

    Returns
    -------
    array of shape (n, k)
        Log-probabilities; each row's exponentials sum to one.
    """
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax_rows(xp: Any, z: Any) -> Any:
    """Row-wise softmax of a (n, k) array: each row sums to one.

    Parameters
    ----------
    xp : module
        The Array API namespace of ``z``.
    z : array of shape (n, k)
        Logits, one row per sample.

    Returns
    -------
    array of shape (n, k)
        Probabilities, each row summing to one.
    """
    e = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def softplus(xp: Any, x: Any) -> Any:
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|)).

    Parameters
    ----------
    xp : module
        The Array API namespace of ``x``.
    x : array
        Any shape.

    Returns
    -------
    array
        ``log(1 + exp(x))``, of the shape of ``x``.
    """
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))
