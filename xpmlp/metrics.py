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

import numpy as np

from .backend import device_of

__all__ = ["Metric", "Accuracy", "TopKAccuracy", "MeanSquaredErrorMetric", "MeanAbsoluteErrorMetric", "R2",
           "get_metric", "METRICS"]


class Metric:
    """Base class. ``stats`` returns sums whose first is a total and whose last is its count."""

    name = ""
    higher_is_better = False

    def stats(self, xp, y, p) -> tuple:
        raise NotImplementedError

    def result(self, stats) -> float:
        return float(stats[0]) / stats[-1]  # divide on the host: a float32 quotient would round


def _labels(xp, y, p):
    """(true class, predicted class) per row, for labels, one-hot rows or single-output probabilities."""
    if p.shape[1] == 1:  # one sigmoid output: threshold at 1/2
        return xp.astype(y[:, 0] > 0.5, xp.int64), xp.astype(p[:, 0] > 0.5, xp.int64)
    true = y if y.ndim == 1 else xp.argmax(y, axis=1)
    return true, xp.argmax(p, axis=1)


class Accuracy(Metric):
    """Fraction of rows whose predicted class (argmax, or p > 1/2 for one output) is the true one."""

    name = "accuracy"
    higher_is_better = True

    def stats(self, xp, y, p):
        true, pred = _labels(xp, y, p)
        return (xp.sum(xp.astype(true == xp.astype(pred, true.dtype), p.dtype)), float(p.shape[0]))


class TopKAccuracy(Metric):
    """Fraction of rows whose true class is among the k most probable."""

    higher_is_better = True

    def __init__(self, k: int = 5):
        # int(k) would take 2.7 as 2 and True as 1: a k that is not a positive integer is refused
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"TopKAccuracy's k must be a positive integer (the number of most probable "
                             f"classes that count as a hit), got {k!r}")
        self.k = int(k)
        self.name = f"top_{self.k}_accuracy"

    def stats(self, xp, y, p):
        k = p.shape[1]
        onehot = y if y.ndim == 2 else xp.astype(
            xp.expand_dims(y, axis=1) == xp.arange(k, dtype=y.dtype, device=device_of(p)), p.dtype)
        p_true = xp.sum(p * onehot, axis=1, keepdims=True)
        # rank of the true class = number of classes more probable than it (no topk in the standard)
        rank = xp.sum(xp.astype(p > p_true, p.dtype), axis=1)
        return (xp.sum(xp.astype(rank < self.k, p.dtype)), float(p.shape[0]))


class _MeanOfErrors(Metric):
    """Mean of ``error(p - y)`` over every entry."""

    def error(self, xp, d):
        raise NotImplementedError

    def stats(self, xp, y, p):
        d = p - _as_2d(xp, y, p)
        return (xp.sum(self.error(xp, d)), float(d.shape[0] * d.shape[1]))


class MeanSquaredErrorMetric(_MeanOfErrors):
    name = "mse"

    def error(self, xp, d):
        return d * d


class MeanAbsoluteErrorMetric(_MeanOfErrors):
    name = "mae"

    def error(self, xp, d):
        return xp.abs(d)


class R2(Metric):
    """Coefficient of determination, per output column, averaged (scikit-learn's default)."""

    name = "r2"
    higher_is_better = True

    def stats(self, xp, y, p):
        y = _as_2d(xp, y, p)
        d = p - y
        return (xp.sum(d * d, axis=0), xp.sum(y, axis=0), xp.sum(y * y, axis=0), float(y.shape[0]))

    def result(self, stats):
        ss_res, s1, s2, n = (np.asarray(s, dtype=np.float64) for s in stats)
        return r2_from_sums(ss_res, s2 - s1 * s1 / n)


def r2_from_sums(ss_res, ss_tot) -> float:
    """Mean over columns of 1 - ss_res/ss_tot; a constant column scores 1 if fitted exactly, else 0."""
    ss_res, ss_tot = np.asarray(ss_res, dtype=np.float64), np.asarray(ss_tot, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_column = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(per_column.mean())


class CallableMetric(Metric):
    """A user function ``fn(y_true, y_pred) -> float`` on NumPy arrays of the whole set."""

    def __init__(self, fn, higher_is_better: bool = True):
        self.fn = fn
        self.name = getattr(fn, "__name__", "metric")
        self.higher_is_better = higher_is_better


def _as_2d(xp, y, p):
    return xp.reshape(y, (y.shape[0], 1)) if y.ndim == 1 else xp.astype(y, p.dtype)


METRICS = {"accuracy": Accuracy, "acc": Accuracy, "mse": MeanSquaredErrorMetric,
           "mean_squared_error": MeanSquaredErrorMetric, "mae": MeanAbsoluteErrorMetric,
           "mean_absolute_error": MeanAbsoluteErrorMetric, "r2": R2}


def get_metric(spec) -> Metric:
    """A metric from a name ("accuracy", "top_5_accuracy", "mse", "mae", "r2"), an instance, or a callable."""
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
