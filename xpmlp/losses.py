"""Losses on raw network outputs (logits), with the output activation fused in.

Fusing softmax or sigmoid with cross-entropy gives the stable log-sum-exp form and the simple
gradient ``(p - y) / n``; the network's last layer stays linear. ``link`` turns outputs into
predictions (probabilities for the cross-entropies, the outputs themselves for regression).

Each loss: ``forward(z, y) -> 0-d array`` (mean over the batch, so any batch size, including 1
and a short last batch, is scaled the same), then ``backward() -> dL/dz`` of z's shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import device_of, namespace_of
from .functional import inherit_docstrings, log_softmax_rows, probability, sigmoid, softmax_rows

__all__ = ["Loss", "SoftmaxCrossEntropy", "SigmoidBinaryCrossEntropy", "MeanSquaredError",
           "MeanAbsoluteError", "Huber", "LOSSES", "get_loss"]


class Loss:
    """Base class. Subclasses give per-sample losses and the gradient of their mean.

    ``forward(z, y, sample_weight=None)`` returns the mean over the batch of
    ``sample_weight[i] * loss_i`` (Keras's convention: weights scale each sample's pull, the
    divisor stays the batch size); ``backward()`` returns its gradient with respect to z.
    Calling a loss is calling its ``forward``. :data:`~xpmlp.LOSSES` maps names to the classes.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import MeanSquaredError
    >>> loss = MeanSquaredError()
    >>> z = np.array([[1.0], [3.0]])
    >>> y = np.array([[0.0], [1.0]])
    >>> float(loss(z, y))
    2.5
    >>> loss.backward()
    array([[1.],
           [2.]])
    """

    name = ""
    is_classifier = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherit_docstrings(cls)  # an override of a hook carries the hook's documentation

    def per_sample(self, xp: Any, z: Any, y: Any) -> Any:
        """Loss of each row; caches what ``mean_grad`` needs.

        Parameters
        ----------
        xp : module
            The Array API namespace of ``z``.
        z : array of shape (n_samples, n_outputs)
            The network's raw outputs.
        y : array
            Targets on the device, as :meth:`~xpmlp.Loss.prepare_targets` gives them.

        Returns
        -------
        array of shape (n_samples,)
            Each row's loss.
        """
        raise NotImplementedError

    def mean_grad(self, xp: Any) -> Any:
        """Gradient of the unweighted batch mean with respect to z.

        Parameters
        ----------
        xp : module
            The Array API namespace of the last :meth:`~xpmlp.Loss.per_sample` call.

        Returns
        -------
        array of shape (n_samples, n_outputs)
            d(mean loss)/dz, of the shape of z.
        """
        raise NotImplementedError

    def forward(self, z: Any, y: Any, sample_weight: Any = None) -> Any:
        """The batch's loss: the mean of each sample's loss times its weight.

        Parameters
        ----------
        z : array of shape (n_samples, n_outputs)
            The network's raw outputs (logits).
        y : array
            Targets on z's device, as :meth:`~xpmlp.Loss.prepare_targets` gives them.
        sample_weight : array of shape (n_samples,), optional
            Each sample's weight; the divisor stays ``n_samples``.

        Returns
        -------
        0-d array
            The loss, in z's namespace and dtype.
        """
        xp = namespace_of(z)
        self._xp, self._w = xp, sample_weight
        losses = self.per_sample(xp, z, y)
        if sample_weight is None:
            return xp.mean(losses)
        return xp.sum(losses * sample_weight) / z.shape[0]

    def row_losses(self, z: Any, y: Any, sample_weight: Any = None) -> Any:
        """Each row's loss times its weight.

        :meth:`~xpmlp.Loss.backward` then gives the gradient of their mean, as after :meth:`~xpmlp.Loss.forward` (whose
        value is that mean).

        Parameters
        ----------
        z : array of shape (n_samples, n_outputs)
            The network's raw outputs (logits).
        y : array
            Targets on z's device, as :meth:`~xpmlp.Loss.prepare_targets` gives them.
        sample_weight : array of shape (n_samples,), optional
            Each sample's weight.

        Returns
        -------
        array of shape (n_samples,)
            Each row's weighted loss.
        """
        xp = namespace_of(z)
        self._xp, self._w = xp, sample_weight
        losses = self.per_sample(xp, z, y)
        return losses if sample_weight is None else losses * sample_weight

    def backward(self) -> Any:
        """The gradient of the last :meth:`~xpmlp.Loss.forward` (or :meth:`~xpmlp.Loss.row_losses` mean) with respect to z.

        Returns
        -------
        array of shape (n_samples, n_outputs)
            d(loss)/dz, sample weights applied.
        """
        g = self.mean_grad(self._xp)
        return g if self._w is None else g * self._xp.expand_dims(self._w, axis=1)

    def __call__(self, z: Any, y: Any, sample_weight: Any = None) -> Any:
        return self.forward(z, y, sample_weight)

    def link(self, xp: Any, z: Any) -> Any:
        """Predictions from outputs z: identity unless the loss fuses an activation.

        Parameters
        ----------
        xp : module
            The Array API namespace of ``z``.
        z : array of shape (n_samples, n_outputs)
            The network's raw outputs.

        Returns
        -------
        array of shape (n_samples, n_outputs)
            Probabilities for the cross-entropies, ``z`` itself for regression losses.
        """
        return z

    def prepare_targets(self, y: Any, backend: Any, dtype: str, n_outputs: int, what: str = "y") -> Any:
        """Validate targets and bring them to the device in the shape ``forward`` expects.

        Parameters
        ----------
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets, as the user gave them.
        backend : Backend
            The model's backend (:class:`~xpmlp.Backend`).
        dtype : str
            The model's dtype.
        n_outputs : int
            The model's output width.
        what : str, default "y"
            Names the targets in error messages ("y", "y_val").

        Returns
        -------
        array
            The targets on the device: (n_samples, n_outputs) floats, or int64 labels of shape
            (n_samples,) for :class:`SoftmaxCrossEntropy`.

        Raises
        ------
        ValueError
            If the targets do not fit the loss or the model's outputs (shape, values, dtype).
        """
        return _regression_targets(y, backend, dtype, n_outputs, what)

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this loss (used for saving and repr).

        Returns
        -------
        dict
            Keyword arguments of the constructor, JSON-able.
        """
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, from logits.

    Targets: integer labels of shape (n,) in [0, k), or class probabilities / one-hot rows of
    shape (n, k). The model needs at least 2 outputs.

    Parameters
    ----------
    label_smoothing : float in [0, 1), default 0
        Mixes the targets with the uniform distribution.

    Raises
    ------
    ValueError
        If ``label_smoothing`` is not in [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import SoftmaxCrossEntropy
    >>> loss = SoftmaxCrossEntropy()
    >>> z = np.array([[2.0, 0.0], [0.0, 0.0]])
    >>> round(float(loss(z, np.array([0, 1]))), 3)
    0.41
    >>> loss.link(np, z).round(3)
    array([[0.881, 0.119],
           [0.5  , 0.5  ]])
    """

    name = "softmax_cross_entropy"
    is_classifier = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _targets(self, xp, z, y):
        k = z.shape[1]
        if y.ndim == 1:  # integer labels -> one-hot, built by comparison (no fancy setitem)
            y = xp.astype(xp.expand_dims(y, axis=1) == xp.arange(k, dtype=y.dtype, device=device_of(z)), z.dtype)
        if self.label_smoothing:
            y = (1.0 - self.label_smoothing) * y + self.label_smoothing / k
        return y

    def per_sample(self, xp: Any, z: Any, y: Any) -> Any:
        _check_softmax_outputs(z.shape[1])
        t = self._targets(xp, z, y)
        logp = log_softmax_rows(xp, z)
        self._p, self._t = xp.exp(logp), t
        return -xp.sum(t * logp, axis=1)

    def mean_grad(self, xp: Any) -> Any:
        return (self._p - self._t) / self._p.shape[0]

    def link(self, xp: Any, z: Any) -> Any:
        return softmax_rows(xp, z)

    def prepare_targets(self, y: Any, backend: Any, dtype: str, n_outputs: int, what: str = "y") -> Any:
        _check_softmax_outputs(n_outputs)
        return _class_targets(y, backend, dtype, n_outputs, what)

    def get_config(self) -> dict:
        return {"label_smoothing": self.label_smoothing}


class SigmoidBinaryCrossEntropy(Loss):
    """Sigmoid followed by binary cross-entropy, from logits, mean over all entries.

    Targets in [0, 1], shape (n,) for one output or (n, k) for k independent labels.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import SigmoidBinaryCrossEntropy
    >>> loss = SigmoidBinaryCrossEntropy()
    >>> z = np.array([[0.0], [2.0]])
    >>> round(float(loss(z, np.array([[1.0], [1.0]]))), 3)
    0.41
    >>> loss.link(np, z).round(3)
    array([[0.5  ],
           [0.881]])
    """

    name = "sigmoid_binary_cross_entropy"
    is_classifier = True

    def per_sample(self, xp: Any, z: Any, y: Any) -> Any:
        self._z, self._y = z, y
        # log(1 + exp(z)) - z*y, with the log1p term bounded: never overflows.
        per_entry = xp.maximum(z, 0.0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
        return xp.mean(per_entry, axis=1)

    def mean_grad(self, xp: Any) -> Any:
        return (sigmoid(xp, self._z) - self._y) / _count(self._z)

    def link(self, xp: Any, z: Any) -> Any:
        return probability(xp, z)  # reported probabilities: never exactly 0 or 1 short of the dtype's range

    def prepare_targets(self, y: Any, backend: Any, dtype: str, n_outputs: int, what: str = "y") -> Any:
        t = _regression_targets(y, backend, dtype, n_outputs, what)
        xp = backend.xp
        if not bool(xp.all((t >= 0.0) & (t <= 1.0))):
            raise ValueError(f"binary cross-entropy targets must lie in [0, 1]; {what} holds values from "
                             f"{float(xp.min(t)):g} to {float(xp.max(t)):g}")
        return t


class MeanSquaredError(Loss):
    """Mean squared error, mean((z - y)**2) over all entries (name ``"mse"``).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import MeanSquaredError
    >>> float(MeanSquaredError()(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])))
    2.5
    """

    name = "mse"

    def per_sample(self, xp: Any, z: Any, y: Any) -> Any:
        self._d = z - y
        return xp.mean(self._d * self._d, axis=1)

    def mean_grad(self, xp: Any) -> Any:
        return 2.0 * self._d / _count(self._d)


class MeanAbsoluteError(Loss):
    """Mean absolute error, ``mean(|z - y|)`` over all entries (gradient sign(z - y), zero at a tie).

    Its name is ``"mae"``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import MeanAbsoluteError
    >>> float(MeanAbsoluteError()(np.array([[1.0, -2.0]]), np.array([[0.0, 0.0]])))
    1.5
    """

    name = "mae"

    def per_sample(self, xp: Any, z: Any, y: Any) -> Any:
        self._d = z - y
        return xp.mean(xp.abs(self._d), axis=1)

    def mean_grad(self, xp: Any) -> Any:
        # sign by two comparisons: array-api-compat's CuPy sign() fixes NaNs with a boolean mask,
        # which copies a count to the host (a sync per step)
        d = self._d
        return (xp.astype(d > 0, d.dtype) - xp.astype(d < 0, d.dtype)) / _count(d)


class Huber(Loss):
    """Quadratic within ``delta`` of the target, linear beyond (torch's HuberLoss).

    Parameters
    ----------
    delta : float, default 1.0
        Where the loss turns from quadratic to linear; positive.

    Raises
    ------
    ValueError
        If ``delta`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Huber
    >>> float(Huber(delta=1.0)(np.array([[0.5, 3.0]]), np.array([[0.0, 0.0]])))
    1.3125
    """

    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        if float(delta) <= 0:
            raise ValueError(f"Huber delta must be positive, got {delta!r}")
        self.delta = float(delta)

    def per_sample(self, xp: Any, z: Any, y: Any) -> Any:
        d = z - y
        a = xp.abs(d)
        self._d = d
        return xp.mean(xp.where(a <= self.delta, 0.5 * d * d, self.delta * (a - 0.5 * self.delta)), axis=1)

    def mean_grad(self, xp: Any) -> Any:
        # minimum/maximum, not clip: array-api-compat's CuPy clip uses boolean masks (a host sync)
        return xp.minimum(xp.maximum(self._d, -self.delta), self.delta) / _count(self._d)

    def get_config(self) -> dict:
        return {"delta": self.delta}


def _count(a) -> int:
    n = 1
    for s in a.shape:
        n *= s
    return n


def _check_softmax_outputs(n_outputs):
    if n_outputs < 2:
        raise ValueError(
            f"loss='softmax_cross_entropy' needs a model with at least 2 outputs, but it has {n_outputs}: the "
            "softmax of a single output is always 1, so the loss would be 0 and nothing would be learned. "
            "For two classes use loss='sigmoid_binary_cross_entropy' with 0/1 targets, or give the model 2 outputs")


def _check_not_scalar(t, y, what):
    if t.ndim == 0:
        raise ValueError(f"{what} must be an array with one target per sample, of shape (n,) or (n, k); "
                         f"got a scalar ({y!r})")


def _regression_targets(y, backend, dtype, n_outputs, what="y"):
    t = backend.asarray(y, dtype=dtype, what=what)
    _check_not_scalar(t, y, what)
    if t.ndim == 1 and n_outputs == 1:
        t = backend.xp.reshape(t, (t.shape[0], 1))
    if t.ndim != 2 or t.shape[1] != n_outputs:
        n = t.shape[0]
        # (n,) is only valid for a one-output model: never offer it to a model with several
        expected = f"({n},) or ({n}, 1)" if n_outputs == 1 else f"({n}, {n_outputs}), one column per output"
        raise ValueError(f"{what} has shape {tuple(t.shape)} but the model has {n_outputs} output(s): "
                         f"{what} must have shape {expected}")
    return t


def _class_targets(y, backend, dtype, n_classes, what="y"):
    """Integer labels (n,) -> int64 on the device; probability rows (n, k) -> float."""
    xp = backend.xp
    t = backend.asarray(y, what=what)
    _check_not_scalar(t, y, what)
    if t.ndim == 2:
        if t.shape[1] != n_classes:
            raise ValueError(f"{what} has {t.shape[1]} columns but the model has {n_classes} outputs: one-hot or "
                             f"probability rows need {n_classes} columns, or give integer labels of shape "
                             f"({t.shape[0]},)")
        return xp.astype(t, backend.dtype(dtype))
    if t.ndim != 1:
        raise ValueError(f"{what} must be class labels of shape (n,) or one-hot rows (n, {n_classes}); "
                         f"got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        return xp.astype(t, xp.int64)
    if xp.isdtype(t.dtype, "real floating"):
        if not bool(xp.all(t == xp.round(t))):
            raise ValueError(f"class labels must be integers; {what} holds non-integer values "
                             "(for class probabilities pass a 2-D array of shape (n, n_classes))")
    elif not xp.isdtype(t.dtype, "integral"):
        raise ValueError(f"class labels must be integers, got dtype {t.dtype}")
    lo, hi = float(xp.min(t)), float(xp.max(t))
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"class labels must be integers in [0, {n_classes}) for a model with "
                         f"{n_classes} outputs; {what} holds values from {lo:g} to {hi:g}")
    return xp.astype(t, xp.int64)


#: The loss classes by name (``"softmax_cross_entropy"``, ``"mse"``, ...), as ``fit(loss=...)``
#: takes them; :func:`~xpmlp.losses.get_loss` also accepts aliases such as ``"cross_entropy"``.
LOSSES = {cls.name: cls for cls in (SoftmaxCrossEntropy, SigmoidBinaryCrossEntropy, MeanSquaredError,
                                     MeanAbsoluteError, Huber)}
_ALIASES = {"cross_entropy": "softmax_cross_entropy", "categorical_crossentropy": "softmax_cross_entropy",
            "binary_cross_entropy": "sigmoid_binary_cross_entropy", "bce": "sigmoid_binary_cross_entropy",
            "binary_crossentropy": "sigmoid_binary_cross_entropy", "mean_squared_error": "mse",
            "mean_absolute_error": "mae"}


def get_loss(spec: Any) -> Loss:
    """A loss from its name (see :data:`~xpmlp.LOSSES` and aliases such as "cross_entropy") or an instance.

    Parameters
    ----------
    spec : str or Loss
        A name or alias, or an instance (returned as it is).

    Returns
    -------
    Loss
        A new loss for a name, else ``spec`` itself.

    Raises
    ------
    ValueError
        If ``spec`` names no loss.

    Examples
    --------
    >>> from xpmlp.losses import get_loss
    >>> get_loss("cross_entropy")
    SoftmaxCrossEntropy(label_smoothing=0.0)
    """
    if isinstance(spec, Loss):
        return spec
    key = _ALIASES.get(spec, spec) if isinstance(spec, str) else None
    if key not in LOSSES:
        valid = sorted(set(LOSSES) | set(_ALIASES))
        raise ValueError(f"unknown loss {spec!r}; valid names: {', '.join(valid)}")
    return LOSSES[key]()
