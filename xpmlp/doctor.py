"""The MLP doctor: name the classic mistakes of an MLP, with the evidence and the fix.

A check looks at the data, the model, the loss or the training run and, when it recognises a
mistake, returns a :class:`Finding`: which check, how serious, what it saw (the numbers that
triggered it) and what to change, in one sentence each. Findings are gathered in a
:class:`Report`, which prints readably, turns into a pandas DataFrame and can be issued as
warnings (:class:`DoctorWarning`).

Severities: ``"error"`` - training cannot work as set up (targets the output cannot produce,
probabilities given where logits are expected); ``"warning"`` - it will train badly or not at
all (unscaled inputs, classes in sorted order, a learning rate that is far off); ``"info"`` -
worth a look, harmless alone.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import is_host, host_array, is_sparse, to_numpy
from .layers import Dropout, Identity, Sigmoid, Softmax, Standardize, Tanh
from .losses import SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy, get_loss
from .train import RAW_INPUT_LIMIT, prepare_X

__all__ = ["Finding", "Report", "DoctorWarning", "SEVERITIES", "CHECKS", "diagnose", "first_nonfinite_layer"]

#: The severities of a :class:`Finding`, most serious first.
SEVERITIES = ("error", "warning", "info")


class DoctorWarning(UserWarning):
    """A finding of the MLP doctor, issued as a warning (``fit(..., diagnose=True)``).

    :meth:`Report.warn` issues each finding as one; filter them with the ``warnings`` module as
    any ``UserWarning``.

    Examples
    --------
    >>> import warnings
    >>> from xpmlp import DoctorWarning, Finding, Report
    >>> report = Report([Finding("unscaled_inputs", "warning", "X looks unscaled.", "Scale X.")])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     report.warn()
    >>> caught[0].category is DoctorWarning
    True
    >>> print(caught[0].message)
    [warning] unscaled_inputs (before training): X looks unscaled. Fix: Scale X.
    """


@dataclass(frozen=True)
class Finding:
    """One recognised mistake.

    The constructor takes the fields below, in this order.

    Parameters
    ----------
    check : str
        The check's name, e.g. ``"unscaled_inputs"`` (stable: tests and filters use it).
    severity : {"error", "warning", "info"}
        How serious it is (:data:`xpmlp.doctor.SEVERITIES`).
    message : str
        What is wrong, in one sentence, with the numbers.
    fix : str
        What to change, in one sentence.
    evidence : dict
        The numbers that triggered it (Python scalars, short lists or strings), by name.
    when : str, default="before training"
        ``"before training"``, or ``"epoch N"`` (1-based) for a check made during training.

    Raises
    ------
    ValueError
        If ``severity`` is not one of :data:`xpmlp.doctor.SEVERITIES`.

    See Also
    --------
    diagnose, Report

    Examples
    --------
    >>> from xpmlp import Finding
    >>> f = Finding("unscaled_inputs", "warning", "X looks unscaled.", "Scale X.", {"max": 1200.0})
    >>> print(f)
    [warning] unscaled_inputs (before training): X looks unscaled. Fix: Scale X.
    >>> f.evidence["max"]
    1200.0
    """

    check: str
    severity: str
    message: str
    fix: str
    evidence: dict = field(default_factory=dict)
    when: str = "before training"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self) -> str:
        return f"[{self.severity}] {self.check} ({self.when}): {self.message} Fix: {self.fix}"


class Report(list):
    """The findings of a diagnosis, most serious first; a list of :class:`Finding`.

    ``print(report)`` shows them one per paragraph with their evidence; ``report.to_frame()``
    gives a pandas DataFrame (one row per finding); ``report.ok`` is True when nothing of
    severity "error" or "warning" was found.

    Parameters
    ----------
    findings : iterable of Finding, default=()
        The findings, in any order; sorted by severity (stable).

    See Also
    --------
    diagnose, Finding

    Examples
    --------
    >>> from xpmlp import Finding, Report
    >>> report = Report([Finding("feature_scales", "info", "Scales differ.", "Scale X."),
    ...                  Finding("label_range", "error", "Labels out of range.", "Use 0..k-1.")])
    >>> report.checks()
    ['label_range', 'feature_scales']
    >>> report.ok
    False
    >>> report.to_frame().shape
    (2, 6)
    """

    def __init__(self, findings: Any = ()) -> None:
        order = {s: i for i, s in enumerate(SEVERITIES)}
        super().__init__(sorted(findings, key=lambda f: order[f.severity]))  # sorted is stable

    @property
    def ok(self) -> bool:
        """True when no finding has severity "error" or "warning"."""
        return not any(f.severity in ("error", "warning") for f in self)

    def checks(self) -> list[str]:
        """The names of the checks that found something, in the report's order.

        Returns
        -------
        list of str
            One name per finding.
        """
        return [f.check for f in self]

    def to_frame(self) -> Any:
        """The findings as a pandas DataFrame, one row per finding.

        Returns
        -------
        pandas.DataFrame of shape (n_findings, 6)
            Columns ``check``, ``severity``, ``when``, ``message``, ``fix`` and ``evidence``.
        """
        import pandas as pd

        return pd.DataFrame([{"check": f.check, "severity": f.severity, "when": f.when, "message": f.message,
                              "fix": f.fix, "evidence": dict(f.evidence)} for f in self],
                            columns=["check", "severity", "when", "message", "fix", "evidence"])

    def warn(self, stacklevel: int = 2) -> None:
        """Issue every finding as a :class:`DoctorWarning`.

        Parameters
        ----------
        stacklevel : int, default=2
            As ``warnings.warn``'s, counted from the caller of this method.
        """
        for f in self:
            warnings.warn(str(f), DoctorWarning, stacklevel=stacklevel + 1)

    def __str__(self) -> str:
        if not self:
            return "MLP doctor: no problems found."
        counts = ", ".join(f"{sum(f.severity == s for f in self)} {s}{'s' if sum(f.severity == s for f in self) != 1 else ''}"
                           for s in SEVERITIES if any(f.severity == s for f in self))
        lines = [f"MLP doctor: {counts}"]
        for i, f in enumerate(self, 1):
            lines += ["", f"{i}. [{f.severity}] {f.check} ({f.when})", f"   {f.message}", f"   Fix: {f.fix}"]
            if f.evidence:
                lines.append("   Evidence: " + ", ".join(f"{k}={_short(v)}" for k, v in f.evidence.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Report({self.checks()!r})"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return "[" + ", ".join(_short(v) for v in value[:8]) + ", ...]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


# -- thresholds -------------------------------------------------------------------------------------
# Inputs: fit's own criterion (xpmlp.train.RAW_INPUT_LIMIT = 100, the largest |x| without a
# Standardize layer), so diagnose and fit never disagree about the same X.
FEATURE_SCALE_RATIO = 50.0  # largest feature std / median feature std (non-constant features). LeCun et al.,
# "Efficient BackProp" (1998), sec. 4.3: inputs should have about equal variances, else the large ones
# dominate the first layer's updates. No paper gives a number; healthy scaled data sits far below it
# (MNIST / 255: 1.8-2.1; a single feature: 1), the median keeps rare one-hot or corner-pixel columns from
# counting, and at 50 one feature pulls on the first layer 50 times harder than a typical one.
TARGET_LIMIT = RAW_INPUT_LIMIT  # regression targets: the same magnitude rule as inputs (|y| > 100)
SORTED_RUNS_FRACTION = 0.25  # shuffle=False: label runs (changes of class + 1) below this fraction of what
# a random order gives, 1 + (n - 1) (1 - sum p_k^2). A random order stays within a few sqrt(n) of that (a
# quarter of it is out of reach by chance beyond ~20 rows); blocks of b rows of one class give a fraction
# 1 / (b (1 - sum p_k^2)), so blocks of 5 (10 classes) to 8 (2 classes) rows and more are caught: a
# 32-row minibatch then holds a handful of one-class blocks.
INIT_LOSS_FACTOR = 5.0  # initial loss above this multiple of its expected value from near-zero logits:
# ln K for softmax cross-entropy (Karpathy, "A Recipe for Training Neural Networks", 2019: "verify loss
# @ init"; CS231n: "expect 2.302 for CIFAR-10"), ln 2 for sigmoid BCE. Measured with xpmlp's default
# init (20 features, 64 ReLU units, K = 2, 3, 10): the ratio is about the inputs' std - 1.3-1.6 for
# standardized inputs, 2.5-3.5 at std 3, 8-11 at std 10, ~85 for raw 0-255 MNIST - so 5 fires from
# inputs about five times unit scale, or weights initialised that much too large.
STAT_ROWS = 2048  # rows (evenly spaced) for feature statistics: a std from 2048 rows is within ~1/sqrt(2n)
# = 1.6% of the full set's, plenty against a limit of 50 (and it keeps diagnose cheap: ~10 ms on MNIST)
INIT_ROWS = 1024  # rows for the initial loss: its mean over 1024 rows is within ~3% of the full-set value
OVERFIT_ROWS = 32  # one small batch (Karpathy 2019: "overfit a single batch of only a few examples")
OVERFIT_STEPS = 1000  # at most this many full-batch Adam steps on it, stopping as soon as the loss reaches
OVERFIT_CHECK_EVERY = 50  # the goal (read every 50 steps): MNIST 784-128-10 and XOR take 50-150 steps,
# 2-D spirals with 32 tanh units up to ~800 (measured, seeds 0-5)
OVERFIT_LR = 1e-2  # Adam's rate for the test: 10x the default, which one small batch tolerates
OVERFIT_FRACTION = 0.1  # pass: the loss's excess over its floor (the targets' own entropy: 0 for hard
# labels) falls below this fraction of the best constant prediction's (the labels' entropy). A working
# classifier gets there in a few dozen steps; broken ones stay above half of it (a double softmax's
# floor is ln((e + K - 1) / e): 66% of ln K for K = 10, 45% of ln 2 for K = 2).
# Classification losses only: a smooth regression target can take an MLP thousands of steps even on a
# few rows (|sin x| on [0, 4 pi] with 64-64 ReLU units stays at 70-99% of the constant's loss after 2000
# steps on 8, 16 or 32 rows, measured), so there a failure would not mean a bug; the regression
# mistakes that cannot be fitted are caught by targets_outside_output_range and unscaled_targets.

_REGRESSION_FIX = "a linear output (no final activation) with loss='mse' for real values"


# -- what the checks look at -----------------------------------------------------------------------
@dataclass
class _Case:
    """Everything the checks read, gathered once: host statistics and samples, never the whole X twice."""

    model: Any
    loss: Any
    n: int
    high: float  # largest and smallest value of X
    low: float
    X_stat: np.ndarray  # up to STAT_ROWS rows of X, float64 on the host
    y: np.ndarray  # all targets, on the host
    labels: np.ndarray | None  # class of each row (int64) for classification losses, when y gives one
    shuffle: bool
    val_labels: np.ndarray | None
    _device_stat: object = None

    def X_device_stat(self):
        """The sampled rows of X on the model's device (made once)."""
        if self._device_stat is None:
            self._device_stat = self.model.backend.from_host(self.X_stat.astype(self.model.dtype))
        return self._device_stat

    @property
    def k(self) -> int:
        return self.model.out_features

    @property
    def last(self):
        """The model's last layer that changes values (Dropout and Identity skipped)."""
        return next(layer for layer in reversed(self.model.layers) if not isinstance(layer, (Dropout, Identity)))

    @property
    def softmax_ce(self) -> bool:
        return isinstance(self.loss, SoftmaxCrossEntropy)

    @property
    def bce(self) -> bool:
        return isinstance(self.loss, SigmoidBinaryCrossEntropy)


def _has_standardize(model) -> bool:
    return any(hasattr(layer, "adapt") for layer in model.layers)  # as fit's own check


def _labels(loss, y: np.ndarray, k: int):
    """Each row's class (int64) when the loss takes classes and y names them, else None."""
    if isinstance(loss, SoftmaxCrossEntropy):
        if y.ndim == 2 and y.shape[1] == k and k > 1:
            return np.argmax(y, axis=1)
        if y.ndim == 1 and np.issubdtype(y.dtype, np.number) and np.all(y == np.round(y)):
            return y.astype(np.int64)
    if isinstance(loss, SigmoidBinaryCrossEntropy) and k == 1:
        flat = y.reshape(-1) if y.ndim == 1 or y.shape[1:] == (1,) else None
        if flat is not None and np.all((flat == 0) | (flat == 1)):
            return flat.astype(np.int64)
    return None


# -- the checks --------------------------------------------------------------------------------------
def _unscaled_inputs(c: _Case) -> list[Finding]:
    """Largest |x| above 100 without a Standardize layer (fit's own warning, as a finding)."""
    largest = max(c.high, -c.low)
    if largest <= RAW_INPUT_LIMIT or _has_standardize(c.model):
        return []
    pixels = c.low >= 0 and c.high <= 255
    hint = "divide raw 0-255 pixel values by 255" if pixels else "scale the features (e.g. sklearn's StandardScaler)"
    return [Finding("unscaled_inputs", "warning",
                    f"X looks unscaled: its values run from {c.low:g} to {c.high:g} (largest |x| {largest:g} > "
                    f"{RAW_INPUT_LIMIT:g}{'; raw 0-255 pixels?' if pixels else ''}); networks train best on "
                    "inputs of about unit scale.",
                    f"{hint[0].upper()}{hint[1:]}, or build the model with MLP(..., standardize=True).",
                    {"min": c.low, "max": c.high, "limit": RAW_INPUT_LIMIT})]


def _feature_scales(c: _Case) -> list[Finding]:
    """Features on very different scales: largest std over the median std above FEATURE_SCALE_RATIO."""
    if _has_standardize(c.model) or c.X_stat.shape[1] < 2:
        return []
    std = c.X_stat.std(axis=0)
    varying = std[std > 0]
    if varying.size < 2:
        return []
    median, i = float(np.median(varying)), int(np.argmax(std))
    ratio = float(std[i]) / median
    if ratio <= FEATURE_SCALE_RATIO:
        return []
    return [Finding("feature_scales", "warning",
                    f"the features are on very different scales: feature {i} has std {float(std[i]):.3g}, "
                    f"{ratio:.0f} times the median feature's {median:.3g} (limit {FEATURE_SCALE_RATIO:g}), so it "
                    "dominates the first layer's updates.",
                    "Standardize each feature (sklearn's StandardScaler), or build the model with "
                    "MLP(..., standardize=True).",
                    {"feature": i, "std": float(std[i]), "median_std": median, "ratio": ratio,
                     "limit": FEATURE_SCALE_RATIO})]


def _single_output_softmax(c: _Case) -> list[Finding]:
    if not c.softmax_ce or c.k != 1:
        return []
    return [Finding("single_output_softmax", "error",
                    "loss='softmax_cross_entropy' on a model with 1 output: the softmax of one value is always 1, "
                    "so the loss is 0 and nothing is learned (fit refuses it).",
                    "For two classes use loss='sigmoid_binary_cross_entropy' with 0/1 targets, or give the model "
                    "one output per class.", {"outputs": 1})]


def _continuous_targets(c: _Case) -> list[Finding]:
    """Real-valued targets given to softmax cross-entropy as class labels."""
    y = c.y
    if not c.softmax_ce or y.ndim != 1 or not np.issubdtype(y.dtype, np.floating):
        return []
    fractional = ~(y == np.round(y))
    if not fractional.any():
        return []
    distinct = np.unique(y).size
    return [Finding("continuous_targets", "error",
                    f"softmax_cross_entropy takes class labels, but y holds continuous values "
                    f"({int(fractional.sum())} of {y.size} not integers, {distinct} distinct, from "
                    f"{float(y.min()):g} to {float(y.max()):g}).",
                    f"For a regression use {_REGRESSION_FIX} and one output; for classes give integer labels "
                    "0..K-1.", {"non_integer": int(fractional.sum()), "distinct": distinct,
                                "min": float(y.min()), "max": float(y.max())})]


def _label_range(c: _Case) -> list[Finding]:
    """Integer labels outside 0..K-1 for K outputs (1-based labels, more classes than outputs)."""
    if not c.softmax_ce or c.k < 2 or c.y.ndim != 1 or c.labels is None:
        return []
    lo, hi = int(c.labels.min()), int(c.labels.max())
    if lo >= 0 and hi < c.k:
        return []
    if lo == 1 and hi == c.k:
        why, fix = "they look 1-based", "Subtract 1 from the labels (y - 1), so they run 0..K-1."
    else:
        distinct = np.unique(c.labels).size
        why = f"there are {distinct} distinct labels"
        fix = (f"Map the labels to 0..K-1 (np.unique(y, return_inverse=True)) and give the model one output per "
               f"class ({distinct} here).")
    return [Finding("label_range", "error",
                    f"the labels run from {lo} to {hi}, but a model with {c.k} outputs takes classes 0..{c.k - 1} "
                    f"({why}); fit refuses them.", fix, {"min": lo, "max": hi, "outputs": c.k})]


def _missing_classes(c: _Case) -> list[Finding]:
    """Output classes that never occur in y (labels that skip classes, or too many outputs)."""
    if c.labels is None or c.labels.min() < 0:
        return []
    k = 2 if c.k == 1 else c.k
    if c.labels.max() >= k:
        return []  # label_range reports it
    missing = np.flatnonzero(np.bincount(c.labels, minlength=k) == 0).tolist()
    if not missing:
        return []
    shown = missing if len(missing) <= 8 else missing[:8] + ["..."]
    return [Finding("missing_classes", "warning",
                    f"{len(missing)} of the model's {k} classes never occur in y (classes {shown}): the "
                    "network learns to never predict them.",
                    "Map the labels that occur to 0..K-1 (np.unique(y, return_inverse=True)) and give the model "
                    "that many outputs, or add examples of the missing classes.",
                    {"missing": missing, "classes": k, "rows": c.n})]


def _targets_outside_output_range(c: _Case) -> list[Finding]:
    """Targets a bounded output cannot reach: outside [0, 1] for sigmoid BCE or a final Sigmoid/Softmax,
    outside [-1, 1] for a final Tanh."""
    if c.softmax_ce or not np.issubdtype(c.y.dtype, np.number):
        return []
    last = c.last
    if c.bce:
        lo, hi, what = 0.0, 1.0, "sigmoid_binary_cross_entropy's sigmoid"
    elif isinstance(last, (Sigmoid, Softmax)):
        lo, hi, what = 0.0, 1.0, f"the final {type(last).__name__} layer"
    elif isinstance(last, Tanh):
        lo, hi, what = -1.0, 1.0, "the final Tanh layer"
    else:
        return []
    ymin, ymax = float(c.y.min()), float(c.y.max())
    if ymin >= lo and ymax <= hi:
        return []
    end = "1" if ymax > hi else f"{lo:g}"
    integers = bool(np.all(c.y == np.round(c.y)))
    fix = (f"For class labels 0..{int(ymax)} use loss='softmax_cross_entropy' with {int(ymax) + 1} outputs and no "
           "final activation" if integers and ymin >= 0 and ymax > 1 else f"Use {_REGRESSION_FIX}")
    return [Finding("targets_outside_output_range", "error",
                    f"the targets run from {ymin:g} to {ymax:g}, but {what} gives values in [{lo:g}, {hi:g}]: "
                    f"the outputs will all pile up at {end}.",
                    fix + ", or scale the targets into that range.",
                    {"min": ymin, "max": ymax, "output_min": lo, "output_max": hi})]


def _unscaled_targets(c: _Case) -> list[Finding]:
    """Regression targets far beyond unit scale (|y| > 100): the output layer needs a long way to get there."""
    if c.loss.is_classifier or not np.issubdtype(c.y.dtype, np.number) or isinstance(c.last, (Sigmoid, Softmax, Tanh)):
        return []
    largest = float(np.max(np.abs(c.y)))
    if largest <= TARGET_LIMIT:
        return []
    mean, std = float(np.mean(c.y)), float(np.std(c.y))
    return [Finding("unscaled_targets", "warning",
                    f"the targets are far from unit scale (mean {mean:.4g}, std {std:.4g}, largest |y| {largest:.4g} "
                    f"> {TARGET_LIMIT:g}): the outputs start near 0 and the loss's gradients are huge.",
                    "Standardize y ((y - mean) / std) and undo it on the predictions (sklearn's "
                    "TransformedTargetRegressor does both).", {"mean": mean, "std": std, "max_abs": largest,
                                                               "limit": TARGET_LIMIT})]


def _probabilities_as_logits(c: _Case) -> list[Finding]:
    """A final Softmax/Sigmoid layer before a loss that applies its own (double softmax)."""
    last = c.last
    if not (c.softmax_ce or c.bce) or not isinstance(last, (Softmax, Sigmoid)):
        return []
    name = type(last).__name__
    own = "softmax" if c.softmax_ce else "sigmoid"
    return [Finding("probabilities_as_logits", "error",
                    f"the model ends with a {name} layer, but {c.loss.name} takes logits and applies its own "
                    f"{own}: it gets probabilities in [0, 1], so its outputs stay near "
                    + ("1/K" if c.softmax_ce else "0.5-0.73") + " and the gradients are tiny.",
                    f"Remove the final {name} layer (MLP's output is linear); apply loss.link or predict's "
                    "probabilities afterwards.", {"last_layer": name, "loss": c.loss.name})]


def _sorted_classes(c: _Case) -> list[Finding]:
    """shuffle=False with rows grouped by class: every minibatch holds one or two classes."""
    if c.shuffle or c.labels is None or c.n < 2:
        return []
    p = np.bincount(c.labels - c.labels.min()) / c.n
    if np.count_nonzero(p) < 2:
        return []
    runs = 1 + int(np.count_nonzero(c.labels[1:] != c.labels[:-1]))
    expected = 1 + (c.n - 1) * (1 - float(np.sum(p * p)))
    if runs >= SORTED_RUNS_FRACTION * expected:
        return []
    return [Finding("sorted_classes", "warning",
                    f"the rows are grouped by class and shuffle=False: the label changes {runs - 1} times in "
                    f"{c.n} rows where a random order changes it about {expected - 1:.0f} times, so each "
                    "minibatch pulls the network towards one class.",
                    "Pass shuffle=True (fit's default), or shuffle the rows once before training.",
                    {"runs": runs, "expected_runs": expected, "rows": c.n})]


def _validation_one_class(c: _Case) -> list[Finding]:
    if c.val_labels is None or c.val_labels.size == 0 or np.unique(c.val_labels).size > 1:
        return []
    if c.labels is not None and np.unique(c.labels).size < 2:
        return []
    cls = int(c.val_labels[0])
    return [Finding("validation_one_class", "warning",
                    f"the validation data holds one class only (class {cls}, {c.val_labels.size} rows): its "
                    "accuracy and loss say nothing about the others.",
                    "Draw the validation rows at random or stratified by class (validation_split does, or "
                    "xpmlp.datasets.train_test_split).", {"class": cls, "rows": int(c.val_labels.size)})]


_STATIC_CHECKS = (_unscaled_inputs, _feature_scales, _single_output_softmax, _continuous_targets, _label_range,
                  _missing_classes, _targets_outside_output_range, _unscaled_targets, _probabilities_as_logits,
                  _sorted_classes, _validation_one_class)
#: Every check's name, in the order :func:`diagnose` runs them.
CHECKS = ("unscaled_inputs", "feature_scales", "single_output_softmax", "continuous_targets", "label_range",
          "missing_classes", "targets_outside_output_range", "unscaled_targets", "probabilities_as_logits",
          "sorted_classes", "validation_one_class", "initial_loss", "overfit")


def _entropy_terms(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """-t log q, with 0 log 0 = 0."""
    return -np.where(t > 0, t * np.log(np.where(t > 0, np.maximum(q, 1e-300), 1.0)), 0.0)


def _class_rows(loss, y: np.ndarray, k: int) -> np.ndarray:
    """Targets as the cross-entropies see them, (n, k) float64 on the host (label smoothing applied)."""
    t = np.asarray(y, dtype=np.float64)
    if isinstance(loss, SoftmaxCrossEntropy):
        if t.ndim == 1:
            t = (t.astype(np.int64)[:, None] == np.arange(k)).astype(np.float64)
        return (1.0 - loss.label_smoothing) * t + loss.label_smoothing / k
    return t.reshape(t.shape[0], -1)


def _floor_and_baseline(c: _Case, loss, y_rows: np.ndarray) -> tuple[float, float]:
    """(the least loss any logits reach on these targets, the loss of the best constant logits):
    the targets' own entropy, and their cross-entropy with the mean target row."""
    t = _class_rows(loss, y_rows, c.k)
    mean = t.mean(axis=0, keepdims=True)
    if c.softmax_ce:
        return float(_entropy_terms(t, t).sum(axis=1).mean()), float(_entropy_terms(t, mean).sum(axis=1).mean())

    def bernoulli(q):
        return float((_entropy_terms(t, q) + _entropy_terms(1 - t, 1 - q)).mean())

    return bernoulli(t), bernoulli(mean)


def _infer(model, x):
    """Inference outputs; a Standardize layer not adapted yet uses the statistics of x (fit adapts it so)."""
    xp = model.xp
    for layer in model.layers:
        if isinstance(layer, Standardize) and not layer.adapted:
            std = xp.std(x, axis=0)
            x = (x - xp.mean(x, axis=0)) / xp.where(std > 0, std, 1.0)
        else:
            x = layer.forward(x, training=False)
    return x


def _initial_loss(c: _Case, loss, Xd, yd) -> list[Finding]:
    """The loss at initialisation against its value for near-zero logits: ln K, or ln 2 for sigmoid BCE."""
    if not (c.softmax_ce or c.bce):
        return []  # a regression loss at init depends on the targets' scale: no fixed expectation
    value = float(to_numpy(copy.copy(loss).forward(_infer(c.model, Xd), yd)))
    expected, formula = (math.log(c.k), f"ln({c.k})") if c.softmax_ce else (math.log(2.0), "ln(2)")
    if value <= INIT_LOSS_FACTOR * expected:  # False for NaN: reported
        return []
    ratio = value / expected
    return [Finding("initial_loss", "warning",
                    f"the loss at initialisation is {value:.4g}, {ratio:.3g} times the {expected:.3g} = {formula} "
                    f"that near-zero logits give (limit {INIT_LOSS_FACTOR:g}x): the network starts confidently "
                    "wrong, usually from unscaled inputs or weights initialised too large.",
                    "Scale the inputs to about unit range (or MLP(..., standardize=True)) and keep the default "
                    "initialisers (He for ReLU, Glorot otherwise); a final layer's weights may start smaller.",
                    {"loss": value, "expected": expected, "ratio": ratio, "limit": INIT_LOSS_FACTOR,
                     "rows": int(Xd.shape[0])})]


def _overfit(c: _Case, loss, Xd, yd, y_rows) -> list[Finding]:
    """Train a copy of the model on one small batch; a working classifier drives its loss to about zero."""
    if not (c.softmax_ce or c.bce):
        return []  # see OVERFIT_FRACTION: for regression a failure would not mean a bug
    from .model import Sequential  # the model module imports the training loop, which imports this one's users
    from .optim import Adam
    from .step import make_train_step
    from .train import adapt_inputs

    model = c.model
    clone = Sequential.from_config(model.get_config(), device=model.backend)
    clone.load_state_dict(model.state_dict())  # copies: the model's buffers are never written
    clone.tf32 = model.tf32
    for layer in clone.layers:
        if isinstance(layer, Dropout):
            layer.rate = 0.0  # one batch, memorised: dropout would only slow the test down
    with clone.backend.activate(), clone.backend.matmul_precision(clone.tf32):
        adapt_inputs(clone, c.X_device_stat())
        loss = copy.copy(loss)
        xp = clone.xp
        step = make_train_step(clone, loss, Adam(lr=OVERFIT_LR))
        row_loss = xp.zeros(Xd.shape[0], dtype=clone.backend.dtype(clone.dtype), device=clone.backend.device)
        z = clone.forward(Xd)
        start = float(to_numpy(loss.forward(z, yd)))
        floor, baseline = _floor_and_baseline(c, loss, y_rows)
        if baseline - floor <= 1e-12 * max(1.0, abs(baseline)):
            return []  # targets all alike: nothing to learn, nothing to test
        goal = floor + OVERFIT_FRACTION * (baseline - floor)
        steps = 0
        while steps < OVERFIT_STEPS:
            for _ in range(OVERFIT_CHECK_EVERY):
                step(Xd, yd, None, row_loss)
            steps += OVERFIT_CHECK_EVERY
            if float(to_numpy(xp.mean(row_loss))) <= goal:  # one host read per OVERFIT_CHECK_EVERY steps
                break
        final = float(to_numpy(loss.forward(clone.forward(Xd), yd)))
    reached = (final - floor) / (baseline - floor) if math.isfinite(final) else math.inf
    if reached <= OVERFIT_FRACTION:
        return []
    return [Finding("overfit", "error",
                    f"a copy of the model trained {steps} Adam steps (lr {OVERFIT_LR:g}) on one batch of "
                    f"{Xd.shape[0]} rows and its loss only went from {start:.4g} to {final:.4g}, where predicting "
                    f"a constant already gives {baseline:.4g} (and {floor:.3g} is reachable): it cannot even "
                    "memorise a few rows, so something between the data and the loss is broken.",
                    "Check that the targets match the output and loss (the other findings may say how), that the "
                    "model ends with a linear layer, and that X and y rows belong together.",
                    {"rows": int(Xd.shape[0]), "steps": steps, "lr": OVERFIT_LR, "start": start,
                     "final": final, "constant": baseline, "floor": floor, "fraction": reached,
                     "limit": OVERFIT_FRACTION})]


# -- entry points -----------------------------------------------------------------------------------
def _check_shape(model, shape, what="X") -> None:
    if len(shape) != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if len(shape) == 1 else ""
        raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {tuple(shape)}{hint}")
    if shape[0] == 0:
        raise ValueError(f"{what} has no samples")
    if model.built and shape[1] != model.in_features:
        raise ValueError(f"{what} has {shape[1]} features but the model expects {model.in_features}")


def _host_targets(y, what="y") -> np.ndarray:
    t = host_array(y, what) if is_host(y) else to_numpy(y)
    if t.ndim == 0 or t.ndim > 2:
        raise ValueError(f"{what} must hold one target per row, shape (n,) or (n, k); got shape {t.shape}")
    if t.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers, got dtype {t.dtype} (xpmlp.MLPClassifier takes other labels)")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{what} contains NaN or infinity")
    return t


def _rows_reader(model, X):
    """(shape, high, low, read(rows) -> float64 host rows): X validated as fit validates it, read sparingly.

    Host data is read where it is (its largest and smallest value, then only sampled rows); device
    arrays and sparse matrices go through fit's own check (``xpmlp.train.prepare_X``).
    """
    if is_host(X) and not is_sparse(X):
        Xh = host_array(X, "X")
        _check_shape(model, Xh.shape)
        if Xh.dtype.kind not in "biuf":
            raise ValueError(f"X must hold numbers, got dtype {Xh.dtype}")
        high, low = float(np.max(Xh)), float(np.min(Xh))
        if not (math.isfinite(high) and math.isfinite(low)):
            raise ValueError("X contains NaN or infinity")
        return Xh.shape, high, low, lambda rows: np.asarray(Xh[rows], dtype=np.float64)
    if is_sparse(X):
        _check_shape(model, X.shape)
    Xd, high, low = prepare_X(model, X, stats=True)
    backend = model.backend

    def read(rows):
        if is_sparse(Xd):
            part = Xd[backend.from_host(rows)].toarray()
        else:
            part = model.xp.take(Xd, backend.from_host(rows), axis=0)
        return np.asarray(to_numpy(part), dtype=np.float64)

    return tuple(Xd.shape), high, low, read


def _spread(n: int, m: int) -> np.ndarray:
    """min(n, m) row indices spread evenly over n rows (sorted data is sampled across all its classes)."""
    return np.unique(np.linspace(0, n - 1, min(n, m)).round().astype(np.int64))


def diagnose(model: Any, X: Any, y: Any, *, loss: Any = None, shuffle: bool = True, validation_data: Any = None,
             overfit: bool = True, seed: int | None = None) -> Report:
    """Look for the classic mistakes in data, model and loss before training; nothing is changed.

    Parameters
    ----------
    model : Sequential
        Built from X's width first if it is not built yet (as ``fit`` would, with the same weights).
    X : array-like of shape (n_samples, n_features)
        The training inputs, as ``fit`` takes them.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        The targets, as ``fit`` takes them.
    loss : str or Loss, optional
        By default the model's loss (from its last fit); required otherwise.
    shuffle : bool
        The ``shuffle`` fit will use (``sorted_classes`` looks at the row order only without it).
    validation_data : tuple of (X_val, y_val), optional
        The validation set fit will use (``validation_one_class`` looks at it).
    overfit : bool, default True
        Include the overfit test (``overfit``), on a copy of the model with Dropout off: for a
        784-128-10 network on one CPU core, 0.06 s when it passes (50 steps), 1.1 s when it fails
        (all ``OVERFIT_STEPS``). Classification losses only (see ``OVERFIT_FRACTION``).
    seed : int, optional
        Picks the overfit test's batch (default 0); the model's generators are not used.

    Returns
    -------
    Report
        The findings, most serious first; ``report.ok`` when none is an error or a warning. The
        checks, in :data:`xpmlp.doctor.CHECKS` order: inputs (``unscaled_inputs``, ``feature_scales``),
        targets against output and loss (``single_output_softmax``, ``continuous_targets``,
        ``label_range``, ``missing_classes``, ``targets_outside_output_range``,
        ``unscaled_targets``), the model's end (``probabilities_as_logits``), order and
        validation (``sorted_classes``, ``validation_one_class``), the loss at initialisation
        (``initial_loss``) and ``overfit``. Thresholds: the module's constants.

    Raises
    ------
    TypeError
        If ``model`` is not an xpmlp model.
    ValueError
        If no loss is given and the model has none, ``validation_data`` is not a pair, ``seed``
        is not an integer, X and y (or X_val and y_val) differ in length, or the targets do not
        suit the loss in a way no check names.

    See Also
    --------
    xpmlp.Sequential.fit : ``fit(..., diagnose=True)`` runs this before training.

    Notes
    -----
    Cost: one pass over X for its largest and smallest value, statistics on at most
    ``STAT_ROWS`` rows spread evenly over X, one inference pass over ``INIT_ROWS`` rows, all of y
    on the host: with ``overfit=False``, 0.05 s on MNIST's 60000 rows (float32 pixels / 255,
    784-128-10, one CPU core), against 2.1 s for one epoch of fit at batch size 32. The overfit
    test adds up to ``OVERFIT_STEPS`` steps on ``OVERFIT_ROWS`` rows of a copy.
    The model's weights, optimiser, loss, generators and Dropout counters, and the caller's
    arrays, are left as they were.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> report = xpmlp.diagnose(model, X * 1000, y, loss="softmax_cross_entropy", overfit=False)
    >>> report.ok, report.checks()
    (False, ['unscaled_inputs', 'initial_loss'])
    >>> xpmlp.diagnose(model, X, y, loss="softmax_cross_entropy").ok
    True
    """
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"diagnose takes an xpmlp model (Sequential or MLP), got {type(model).__name__}")
    if loss is None and model.loss is None:
        raise ValueError("diagnose needs a loss: pass loss=... (e.g. 'softmax_cross_entropy') or fit the model first")
    loss = copy.copy(get_loss(model.loss if loss is None else loss))  # the loss caches its last batch: a copy
    if validation_data is not None and (not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    with model.backend.activate(), model.backend.matmul_precision(model.tf32):
        (n, width), high, low, read = _rows_reader(model, X)
        if not model.built:
            model.build(int(width))
        yh = _host_targets(y)
        if yh.shape[0] != n:
            raise ValueError(f"X and y have different lengths: {n} and {yh.shape[0]}")
        val_labels = None
        if validation_data is not None:
            Xv, yv = validation_data
            yvh = _host_targets(yv, "y_val")
            nv = host_array(Xv).shape[0] if is_host(Xv) and not is_sparse(Xv) else Xv.shape[0]
            if nv != yvh.shape[0]:
                raise ValueError(f"X_val and y_val have different lengths: {nv} and {yvh.shape[0]}")
            val_labels = _labels(loss, yvh, model.out_features)
        stat_rows = _spread(n, STAT_ROWS)
        case = _Case(model, loss, n, high, low, read(stat_rows), yh, _labels(loss, yh, model.out_features),
                     bool(shuffle), val_labels)
        findings = [f for check in _STATIC_CHECKS for f in check(case)]

        def targets(rows):
            """These rows' targets as the loss takes them; None when a finding already says why it cannot."""
            try:
                return loss.prepare_targets(yh[rows], model.backend, model.dtype, model.out_features)
            except ValueError:
                if any(f.severity == "error" for f in findings):
                    return None
                raise  # a mistake no check names (the wrong number of columns): fit's own error

        def inputs(rows):
            return model.backend.from_host(read(rows).astype(model.dtype))

        rows = _spread(n, INIT_ROWS)
        yd = targets(rows)
        if yd is not None:
            findings += _initial_loss(case, loss, inputs(rows), yd)
            rows = np.sort(np.random.default_rng(0 if seed is None else seed).choice(n, min(n, OVERFIT_ROWS),
                                                                                    replace=False))
            yd = targets(rows) if overfit else None
            if yd is not None:
                findings += _overfit(case, loss, inputs(rows), yd, yh[rows])
    return Report(findings)


def first_nonfinite_layer(model: Any, X: Any) -> tuple[int, str] | None:
    """The first layer whose output on X is NaN or infinite, in an inference pass: (index, class name) or None.

    Parameters
    ----------
    model : Sequential
        A built model.
    X : array of shape (n_samples, in_features)
        Finite inputs (NumPy, or the model's library).

    Returns
    -------
    tuple of (int, str) or None
        ``(i, name)`` with ``i`` the index in ``model.layers`` and ``name`` its class
        (``(2, "Dense")``), or None when every layer's output is finite. All layers are checked in
        one host read; the model is not changed (Dropout passes inputs through, nothing is kept
        for backward).

    Raises
    ------
    ValueError
        If the model is not built.
    """
    if not model.built:
        raise ValueError("the model has no weights yet: fit it (or give in_features) before you look for "
                         "non-finite values")
    with model.backend.activate(), model.backend.matmul_precision(model.tf32):
        x = prepare_X(model, X)
        xp, flags = model.xp, []
        for layer in model.layers:
            x = layer.forward(x, training=False)
            flags.append(xp.all(xp.isfinite(x)))
        finite = to_numpy(xp.stack(flags))
    bad = np.flatnonzero(~finite)
    if bad.size == 0:
        return None
    return int(bad[0]), type(model.layers[int(bad[0])]).__name__
