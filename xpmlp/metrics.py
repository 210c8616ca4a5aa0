"""Metrics as running sums: each batch adds device-side statistics, read once per epoch.

A metric gives ``stats(xp, y, p)`` - a tuple of arrays summed over the batch's rows - and
``result(stats)`` - the value from the summed statistics (NumPy, on the host). Summing is what
lets training metrics stream over batches without a host sync, and makes the epoch value equal
the metric of the whole data (not a mean of batch means).

``y`` is the target as ``fit`` prepared it (int labels (n,), one-hot or probabilities (n, k), or
real targets (n, k)); ``p`` is the prediction after the loss's link (probabilities, or outputs).
A plain callable ``fn(y_true, y_pred) -> float`` is also accepted: it is called once per epoch on
NumPy arrays of the whole validation set.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .backend import device_of
from .functional import inherit_docstrings

__all__ = ["Metric", "Accuracy", "TopKAccuracy", "MeanSquaredErrorMetric", "MeanAbsoluteErrorMetric", "R2",
           "get_metric", "METRICS"]


class Metric:
    """Base class. ``stats`` returns sums whose first is a total and whose last is its count.

    Attributes
    ----------
    name : str
        The key of the metric in ``fit``'s logs and ``evaluate``'s dict.
    higher_is_better : bool
        Whether a larger value is better (callbacks that monitor it use this).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.metrics import Metric
    >>> class MaxError(Metric):
    ...     name = "max_error"
    ...     def stats(self, xp: Any, y: Any, p: Any) -> tuple:
    ...         return (xp.max(xp.abs(p - y)), 1.0)
    >>> m = MaxError()
    >>> m.result(m.stats(np, np.zeros((2, 1)), np.array([[0.5], [-2.0]])))
    2.0
    """

    name = ""
    higher_is_better = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherit_docstrings(cls)

    def stats(self, xp: Any, y: Any, p: Any) -> tuple:
        """One batch's sufficient statistics, summed over its rows, on the device.

        Parameters
        ----------
        xp : module
            The Array API namespace of ``y`` and ``p``.
        y : array of shape (n_samples,) or (n_samples, n_outputs)
            Targets as ``fit`` prepared them.
        p : array of shape (n_samples, n_outputs)
            Predictions after the loss's link.

        Returns
        -------
        tuple
            Arrays (or floats) that add up over batches; the first a total, the last its count.
        """
        raise NotImplementedError

    def result(self, stats: Any) -> float:
        """The metric's value from statistics summed over batches.

        Parameters
        ----------
        stats : tuple
            The element-wise sum of :meth:`~xpmlp.metrics.Metric.stats` over batches (host values).

        Returns
        -------
        float
            The metric over all the rows.
        """
        return float(stats[0]) / stats[-1]  # divide on the host: a float32 quotient would round


def _labels(xp, y, p):
    """(true class, predicted class) per row, for labels, one-hot rows or single-output probabilities."""
    if p.shape[1] == 1:  # one sigmoid output: threshold at 1/2
        return xp.astype(y[:, 0] > 0.5, xp.int64), xp.astype(p[:, 0] > 0.5, xp.int64)
    true = y if y.ndim == 1 else xp.argmax(y, axis=1)
    return true, xp.argmax(p, axis=1)


class Accuracy(Metric):
    """Fraction of rows whose predicted class (argmax, or p > 1/2 for one output) is the true one.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.metrics import Accuracy
    >>> m = Accuracy()
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> round(m.result(m.stats(np, np.array([0, 1, 1]), p)), 3)
    0.667
    """

    name = "accuracy"
    higher_is_better = True

    def stats(self, xp: Any, y: Any, p: Any) -> tuple:
        true, pred = _labels(xp, y, p)
        return (xp.sum(xp.astype(true == xp.astype(pred, true.dtype), p.dtype)), float(p.shape[0]))


class TopKAccuracy(Metric):
    """Fraction of rows whose true class is among the k most probable.

    Its name is ``top_{k}_accuracy``.

    Parameters
    ----------
    k : int, default 5
        How many of the most probable classes count as a hit; positive.

    Raises
    ------
    ValueError
        If ``k`` is not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.metrics import TopKAccuracy
    >>> m = TopKAccuracy(k=2)
    >>> p = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    >>> m.name, m.result(m.stats(np, np.array([1, 2]), p))
    ('top_2_accuracy', 0.5)
    """

    higher_is_better = True

    def __init__(self, k: int = 5) -> None:
        # int(k) would take 2.7 as 2 and True as 1: a k that is not a positive integer is refused
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"TopKAccuracy's k must be a positive integer (the number of most probable "
                             f"classes that count as a hit), got {k!r}")
        self.k = int(k)
        self.name = f"top_{self.k}_accuracy"

    def stats(self, xp: Any, y: Any, p: Any) -> tuple:
        k = p.shape[1]
        onehot = y if y.ndim == 2 else xp.astype(
            xp.expand_dims(y, axis=1) == xp.arange(k, dtype=y.dtype, device=device_of(p)), p.dtype)
        p_true = xp.sum(p * onehot, axis=1, keepdims=True)
        # rank of the true class = number of classes more probable than it (no topk in the standard)
        rank = xp.sum(xp.astype(p > p_true, p.dtype), axis=1)
        return (xp.sum(xp.astype(rank < self.k, p.dtype)), float(p.shape[0]))


class _MeanOfErrors(Metric):
    """Mean of ``error(p - y)`` over every entry."""

    def error(self, xp: Any, d: Any) -> Any:
        """Each entry's error.

        Parameters
        ----------
        xp : module
            The Array API namespace of ``d``.
        d : array of shape (n_samples, n_outputs)
            Prediction minus target.

        Returns
        -------
        array of shape (n_samples, n_outputs)
            The error of each entry.
        """
        raise NotImplementedError

    def stats(self, xp: Any, y: Any, p: Any) -> tuple:
        d = p - _as_2d(xp, y, p)
        return (xp.sum(self.error(xp, d)), float(d.shape[0] * d.shape[1]))


class MeanSquaredErrorMetric(_MeanOfErrors):
    """Mean squared error over every entry (name ``"mse"``).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.metrics import MeanSquaredErrorMetric
    >>> m = MeanSquaredErrorMetric()
    >>> m.result(m.stats(np, np.array([0.0, 1.0]), np.array([[1.0], [3.0]])))
    2.5
    """

    name = "mse"

    def error(self, xp: Any, d: Any) -> Any:
        return d * d


class MeanAbsoluteErrorMetric(_MeanOfErrors):
    """Mean absolute error over every entry (name ``"mae"``).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.metrics import MeanAbsoluteErrorMetric
    >>> m = MeanAbsoluteErrorMetric()
    >>> m.result(m.stats(np, np.array([0.0, 1.0]), np.array([[1.0], [3.0]])))
    1.5
    """

    name = "mae"

    def error(self, xp: Any, d: Any) -> Any:
        return xp.abs(d)


class R2(Metric):
    """Coefficient of determination, per output column, averaged (scikit-learn's default).

    A constant target column scores 1 if fitted exactly, else 0.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.metrics import R2
    >>> m = R2()
    >>> m.result(m.stats(np, np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [4.0]])))
    0.5
    """

    name = "r2"
    higher_is_better = True

    def stats(self, xp: Any, y: Any, p: Any) -> tuple:
        y = _as_2d(xp, y, p)
        d = p - y
        return (xp.sum(d * d, axis=0), xp.sum(y, axis=0), xp.sum(y * y, axis=0), float(y.shape[0]))

    def result(self, stats: Any) -> float:
        ss_res, s1, s2, n = (np.asarray(s, dtype=np.float64) for s in stats)
        return r2_from_sums(ss_res, s2 - s1 * s1 / n)


def r2_from_sums(ss_res: Any, ss_tot: Any) -> float:
    """Mean over columns of 1 - ss_res/ss_tot; a constant column scores 1 if fitted exactly, else 0."""
    ss_res, ss_tot = np.asarray(ss_res, dtype=np.float64), np.asarray(ss_tot, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_column = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(per_column.mean())


class CallableMetric(Metric):
    """A user function ``fn(y_true, y_pred) -> float`` on NumPy arrays of the whole set."""

    def __init__(self, fn: Callable[[Any, Any], float], higher_is_better: bool = True) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "metric")
        self.higher_is_better = higher_is_better


def _as_2d(xp, y, p):
    return xp.reshape(y, (y.shape[0], 1)) if y.ndim == 1 else xp.astype(y, p.dtype)


#: The metric classes by name (``"accuracy"``, ``"mse"``, ``"mae"``, ``"r2"`` and aliases), as
#: ``fit(metrics=[...])`` takes them; ``"top_K_accuracy"`` names are parsed by ``get_metric``.
METRICS = {"accuracy": Accuracy, "acc": Accuracy, "mse": MeanSquaredErrorMetric,
           "mean_squared_error": MeanSquaredErrorMetric, "mae": MeanAbsoluteErrorMetric,
           "mean_absolute_error": MeanAbsoluteErrorMetric, "r2": R2}


def get_metric(spec: Any) -> Metric:
    """A metric from a name ("accuracy", "top_5_accuracy", "mse", "mae", "r2"), an instance, or a callable.

    Parameters
    ----------
    spec : str, Metric or callable
        A name of :data:`~xpmlp.metrics.METRICS` or ``"top_K_accuracy"`` (any case), an instance
        (returned as it is), or a function ``fn(y_true, y_pred) -> float`` on NumPy arrays.

    Returns
    -------
    Metric
        The metric.

    Raises
    ------
    ValueError
        If ``spec`` names no metric.
    TypeError
        If ``spec`` is neither a name, a Metric nor a callable.

    Examples
    --------
    >>> from xpmlp.metrics import get_metric
    >>> get_metric("top_3_accuracy").name
    'top_3_accuracy'
    """
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key in METRICS:
            return METRICS[key]()
        if key.startswith("top_") and key.endswith("_accuracy") and key[4:-9].isdecimal():
            if int(key[4:-9]) < 1:
                raise ValueError(f"metric {spec!r}: k in top_K_accuracy must be a positive integer, "
                                 "e.g. 'top_5_accuracy'")
            return TopKAccuracy(int(key[4:-9]))
        raise ValueError(f"unknown metric {spec!r}; valid names: {', '.join(sorted(METRICS))}, "
                         "top_K_accuracy (e.g. top_5_accuracy), or a callable fn(y_true, y_pred)")
    if callable(spec):
        return CallableMetric(spec)
    raise TypeError(f"a metric is a name, a Metric or a callable, got {type(spec).__name__}")
