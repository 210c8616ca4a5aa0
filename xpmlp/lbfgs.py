"""L-BFGS: a full-batch quasi-Newton optimiser, written against the Array API.

:class:`LBFGS` minimises a smooth function of one flat vector (an array of any Array API
library, on any device): the two-loop recursion over the last ``history_size`` pairs of steps
and gradient changes (Nocedal and Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.4),
and a line search that ends at a step meeting the strong Wolfe conditions (their Algorithms
3.5 and 3.6, with cubic interpolation). Its options and stopping rules are those of SciPy's
L-BFGS-B without bounds, as scikit-learn's ``solver="lbfgs"`` uses it (see :class:`LBFGS`).

``model.fit(X, y, optimizer=LBFGS(...))`` trains a model with it (:func:`fit_lbfgs`): the
vector is the model's flat parameter buffer (:mod:`xpmlp.params`) and the function is
scikit-learn's MLP objective, computed over the whole training set in row chunks by the model's
own forward and backward passes (:func:`loss_and_gradient`, which ``model.gradients`` uses too).

Host reads: the line search decides on the host, so each evaluation makes two small reads (the
objective; the directional derivative) and each iteration two more (the direction's slope and
length; the largest gradient entry and the two curvature products). The two-loop recursion
keeps its scalars on the device. An evaluation is a pass over the whole training set, so
these few waits cost little beside it.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable

import numpy as np

from .backend import namespace_of, to_numpy
from .callbacks import Callback, History, LearningRateScheduler, ProgbarLogger, ReduceLROnPlateau
from .layers import Dropout
from .metrics import CallableMetric
from .train import adapt_inputs, check_options, report_divergence, evaluate_set, epoch_log_keys, prepare_data, end_training
from .train import fit as _fit

__all__ = ["LBFGS", "loss_and_gradient", "fit_lbfgs"]

FTOL = 2.220446049250313e-09  # SciPy's default ftol (factr 1e7 times float64's epsilon)
CHUNK_ROWS = 4096
C1, C2 = 1e-3, 0.9  # the line search's sufficient decrease and curvature constants (L-BFGS-B's)
MAX_EVALS = 20  # evaluations per line search (L-BFGS-B's limit)
MAX_STEP = 1e10


def _read(xp, *scalars) -> list[float]:
    """Several 0-d device arrays as Python floats, in one device-to-host copy."""
    return [float(v) for v in to_numpy(xp.stack(scalars))]


def _dot(xp, a, b):
    return xp.sum(a * b)


def _cubic_min(a, fa, ga, b, fb, gb) -> float:
    """The minimiser of the cubic through (a, fa, slope ga) and (b, fb, slope gb); NaN if none."""
    d1 = ga + gb - 3.0 * (fa - fb) / (a - b)
    rad = d1 * d1 - ga * gb
    if not (math.isfinite(rad) and rad >= 0.0):
        return math.nan
    d2 = math.copysign(math.sqrt(rad), b - a)
    denom = gb - ga + 2.0 * d2
    return b - (b - a) * (gb + d2 - d1) / denom if denom != 0.0 else math.nan


class LBFGS:
    """Limited-memory BFGS over the whole training set, with SciPy's L-BFGS-B stopping rules.

    Parameters
    ----------
    max_iter : int, default 200
        Stop after this many iterations (scipy's ``maxiter``, scikit-learn's ``max_iter``).
    max_fun : int, default 15000
        Stop at the end of the first iteration after which the objective has been evaluated
        more than ``max_fun`` times (scipy's ``maxfun``: a line search is never cut short).
    tol : float, default 1e-4
        Converged when the largest absolute gradient entry is <= tol (scipy's ``gtol``: without
        bounds the projected gradient is the gradient; scikit-learn passes its ``tol``).
    ftol : float, default 2.220446049250313e-09 (scipy's)
        Converged when ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``.
    history_size : int, default 10
        Pairs kept for the inverse Hessian estimate (scipy's ``maxcor``).
    l2 : float, default 0
        With a model: the L2 penalty of the objective (scikit-learn's ``alpha``, see below).
    chunk_size : int, default 4096
        With a model: rows per forward and backward pass, so memory holds one chunk's
        activations; the objective does not depend on it beyond rounding.

    Attributes
    ----------
    n_iter_ : int
        Iterations done (scikit-learn's ``n_iter_``).
    n_fun_ : int
        Evaluations of the objective and its gradient, the starting point's included.
    converged_ : bool
        True when the gradient or the ftol test stopped it (scipy's status 0).
    message_ : str or None
        Why it stopped (None while it runs).
    loss_ : float
        The objective at ``x_`` (scikit-learn's ``loss_``).
    x_ : array
        The current (in the end, final) point.

    The attributes describe the last run: after :meth:`minimize`, or a ``fit``; :meth:`reset`
    and :meth:`step` update them.

    Raises
    ------
    ValueError
        If a count is not a positive integer, or ``tol``, ``ftol`` or ``l2`` is not a finite
        number >= 0.

    See Also
    --------
    xpmlp.lbfgs.fit_lbfgs : What ``model.fit(..., optimizer=LBFGS(...))`` runs.

    Notes
    -----
    The tests run in scipy's order after each iteration: ``max_iter``, ``max_fun``, then the
    gradient, then the reduction of f; so a run that converges at its last allowed iteration
    reports ``max_iter`` and ``converged_`` False, as scipy (and so scikit-learn) does. Before the
    first iteration the gradient alone is tested. When a line search finds no decrease, the
    history is dropped and the steepest descent direction is tried; if that fails too, the run
    stops (``converged_`` False, scipy's "ABNORMAL_TERMINATION_IN_LNSRCH").

    With a model (``model.fit(X, y, loss=..., optimizer=LBFGS(...))``) the objective is
    scikit-learn's MLP objective::

        [sum_i w_i * loss_i + (l2 / 2) * sum over Dense kernels W of ||W||^2] / sum_i w_i

    with ``loss_i`` the loss of row i, ``w_i`` its sample weight times its class weight (1
    without: the divisor is then n). Biases are not penalised.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import LBFGS
    >>> target = np.array([1.0, -2.0])
    >>> def fun(x):
    ...     return float(((x - target) ** 2).sum()), 2.0 * (x - target)
    >>> opt = LBFGS(tol=1e-8)
    >>> opt.minimize(fun, np.zeros(2)).round(6), opt.converged_
    (array([ 1., -2.]), True)

    With a model, full batch:

    >>> import xpmlp
    >>> X, y = xpmlp.datasets.make_xor(200, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], activation="tanh", seed=0, dtype="float64")
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS(max_iter=50),
    ...                     verbose=0)
    >>> len(history.history["loss"]) <= 50
    True
    """

    def __init__(self, max_iter: int = 200, max_fun: int = 15000, tol: float = 1e-4, history_size: int = 10,
                 l2: float = 0.0, *, ftol: float = FTOL, chunk_size: int = CHUNK_ROWS) -> None:
        for name, value in (("max_iter", max_iter), ("max_fun", max_fun), ("history_size", history_size),
                            ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LBFGS {name} must be a positive integer, got {value!r}")
        for name, real in (("tol", tol), ("ftol", ftol), ("l2", l2)):
            number = isinstance(real, (int, float, np.integer, np.floating)) and not isinstance(real, bool)
            if not (number and math.isfinite(real) and real >= 0):
                raise ValueError(f"LBFGS {name} must be a finite number >= 0, got {real!r}")
        self.max_iter, self.max_fun, self.history_size, self.chunk_size = (int(max_iter), int(max_fun),
                                                                           int(history_size), int(chunk_size))
        self.tol, self.ftol, self.l2 = float(tol), float(ftol), float(l2)
        self.n_iter_: int = 0
        self.n_fun_: int = 0
        self.converged_: bool = False
        self.message_: str | None = None
        self.loss_: float | None = None
        self.x_: Any = None
        self._pairs: list[tuple[Any, Any, float]] = []
        self._fun: Callable | None = None
        self._g: Any = None

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this optimiser (used for repr).

        Returns
        -------
        dict
            Keyword arguments of the constructor.
        """
        return {"max_iter": self.max_iter, "max_fun": self.max_fun, "tol": self.tol, "history_size": self.history_size,
                "l2": self.l2, "ftol": self.ftol, "chunk_size": self.chunk_size}

    def __repr__(self):
        return "LBFGS(" + ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()) + ")"

    # -- the algorithm -------------------------------------------------------------------------
    def minimize(self, fun: Callable[[Any], tuple[Any, Any]], x0: Any,
                 callback: Callable[[LBFGS], bool] | None = None) -> Any:
        """Minimise ``fun`` from ``x0``; return the final point (also ``x_``).

        Parameters
        ----------
        fun : callable ``fun(x) -> (f, g)``
            The objective at a 1-D array x (a Python float or 0-d array) and its gradient (an
            array like x). It may keep x's memory only until it returns.
        x0 : array of shape (n,)
            The starting point: a floating dtype, of any Array API library; not modified.
        callback : callable ``callback(optimizer) -> bool``, optional
            Called after each iteration (read ``x_``, ``loss_``, ``n_iter_``); True stops the run.

        Returns
        -------
        array of shape (n,)
            The final point, in x0's library and on its device.
        """
        self.reset(fun, x0)
        while self.message_ is None:
            if self.step() and callback is not None and callback(self) and self.message_ is None:
                self.stop("stopped by the callback")
        return self.x_

    def reset(self, fun: Callable[[Any], tuple[Any, Any]], x0: Any) -> None:
        """Start a run at ``x0``: evaluate it, clear the history, and test its gradient.

        Parameters
        ----------
        fun : callable ``fun(x) -> (f, g)``
            The objective and its gradient, as for :meth:`minimize`.
        x0 : array of shape (n,)
            The starting point; not modified.
        """
        self._fun, self._xp = fun, namespace_of(x0)
        self.n_iter_ = self.n_fun_ = 0
        self.converged_, self.message_, self._pairs = False, None, []
        self.x_ = self._xp.asarray(x0, copy=True)
        loss, self._g = self._evaluate(self.x_)
        self.loss_ = loss
        (gmax,) = _read(self._xp, self._xp.max(self._xp.abs(self._g)))
        if not (math.isfinite(loss) and math.isfinite(gmax)):
            self.stop(f"the objective ({loss:g}) or its gradient is not finite at the starting point")
        elif gmax <= self.tol:
            self.stop(f"converged: the largest gradient entry {gmax:.3g} <= tol={self.tol:g}", converged=True)

    def stop(self, message: str, converged: bool = False) -> None:
        """End the run with ``message``; let go of the function and history.

        Parameters
        ----------
        message : str
            Why the run ends (``message_``).
        converged : bool, default False
            The value of ``converged_``.
        """
        self.message_, self.converged_ = message, converged
        self._fun, self._g, self._pairs = None, None, []  # fun may hold the training set on a device

    def step(self) -> bool:
        """One iteration: direction, line search, history update, stopping tests.

        Returns
        -------
        bool
            True when an iteration was done (False if the run had ended, or ends now because no
            step along the steepest descent direction decreases the objective).
        """
        if self.message_ is not None:
            return False
        xp, x, g, f = self._xp, self.x_, self._g, self.loss_
        assert f is not None  # a run is on: reset evaluated the starting point
        while True:
            d = self._direction(g)
            (gd, dd) = _read(xp, _dot(xp, g, d), _dot(xp, d, d))
            if not gd < 0:  # not a descent direction (rounding): steepest descent instead
                self._pairs, d = [], -g
                (gd, dd) = _read(xp, _dot(xp, g, d), _dot(xp, d, d))
            # A fresh history has no scale: a first step of unit length, as L-BFGS-B's first iteration.
            t0 = 1.0 if self._pairs else (min(1.0 / math.sqrt(dd), MAX_STEP) if dd > 0 else MAX_STEP)
            found = self._line_search(x, f, gd, d, t0)
            if found is not None:
                break
            if not self._pairs:
                self.stop("stopped: the line search found no decrease along the steepest descent direction "
                          "(rounding errors, or a non-smooth objective)")
                return False
            self._pairs = []  # drop the history and try the steepest descent direction
        x_new, f_new, g_new = found
        s, y = x_new - x, g_new - g
        gmax, sy, yy = _read(xp, xp.max(xp.abs(g_new)), _dot(xp, s, y), _dot(xp, y, y))
        if sy > xp.finfo(x.dtype).eps * yy:  # positive curvature (else the pair would spoil H): keep it
            self._pairs.append((s, y, 1.0 / sy))
            del self._pairs[:-self.history_size]
            self._gamma = sy / yy
        self.x_, self.loss_, self._g = x_new, f_new, g_new
        self.n_iter_ += 1
        if self.n_iter_ >= self.max_iter:
            self.stop(f"stopped: max_iter={self.max_iter} iterations reached")
        elif self.n_fun_ > self.max_fun:
            self.stop(f"stopped: {self.n_fun_} evaluations of the objective exceed max_fun={self.max_fun}")
        elif gmax <= self.tol:
            self.stop(f"converged: the largest gradient entry {gmax:.3g} <= tol={self.tol:g}", converged=True)
        elif (f - f_new) <= self.ftol * max(abs(f), abs(f_new), 1.0):
            self.stop(f"converged: the relative reduction of the objective "
                      f"{(f - f_new) / max(abs(f), abs(f_new), 1.0):.3g} <= ftol={self.ftol:g}", converged=True)
        return True

    def _evaluate(self, x: Any) -> tuple[float, Any]:
        self.n_fun_ += 1
        assert self._fun is not None  # only while a run is on
        f, g = self._fun(x)
        return float(to_numpy(f)), g

    def _direction(self, g):
        """-H g by the two-loop recursion, H the inverse Hessian estimate from the kept pairs."""
        xp, q, alphas = self._xp, g, []
        for s, y, rho in reversed(self._pairs):
            a = rho * _dot(xp, s, q)
            q = q - a * y
            alphas.append(a)
        if not self._pairs:
            return -g
        r = self._gamma * q  # H0 = (s'y / y'y) I from the newest pair
        for (s, y, rho), a in zip(self._pairs, reversed(alphas)):
            r = r + (a - rho * _dot(xp, y, r)) * s
        return -r

    def _line_search(self, x, f0, gd0, d, t):
        """A step t > 0 along d meeting the strong Wolfe conditions: (x + t d, f, g), or None.

        Bracketing, then zoom (Nocedal and Wright, Algorithms 3.5 and 3.6), unified: ``lo`` is
        the best point so far with sufficient decrease (t = 0 at first), ``hi`` (once found) the
        other end of an interval holding acceptable steps. A NaN or infinite value counts as too
        large. After MAX_EVALS evaluations without the curvature condition, ``lo`` is taken if it
        moved (L-BFGS-B also accepts its line search's warnings); else None.
        """
        xp = self._xp
        lo, hi, best = (0.0, f0, gd0), None, None
        for _ in range(MAX_EVALS):
            xt = x + t * d
            ft, gt = self._evaluate(xt)
            (gdt,) = _read(xp, _dot(xp, gt, d))
            point = (t, ft, gdt)
            if not (ft <= f0 + C1 * t * gd0 and ft < lo[1] and math.isfinite(gdt)):
                hi = point
            else:
                if abs(gdt) <= -C2 * gd0:
                    return xt, ft, gt
                if hi is None and gdt < 0:  # still going down: extrapolate, at most four times further
                    c = _cubic_min(*lo, *point)
                    lo, best = point, (xt, ft, gt)
                    t = min(max(c, 1.1 * t), 4.0 * t, MAX_STEP) if c > t else min(4.0 * t, MAX_STEP)
                    continue
                if hi is None or gdt * (hi[0] - lo[0]) >= 0:  # the minimum lies between lo and t
                    hi = lo
                lo, best = point, (xt, ft, gt)
            a, b = lo[0], hi[0]
            if abs(b - a) <= 1e-12 * max(abs(a), abs(b)):  # the interval has collapsed
                break
            c = _cubic_min(*lo, *hi) if math.isfinite(hi[1]) and math.isfinite(hi[2]) else math.nan
            low, high = min(a, b), max(a, b)
            margin = 0.1 * (high - low)  # keep trials off the ends, else bisect
            t = c if low + margin <= c <= high - margin else 0.5 * (a + b)
        return best


# -- with a model -----------------------------------------------------------------------------------
def loss_and_gradient(model: Any, loss: Any, X: Any, y: Any, sample_weight: Any = None, *, denominator: float,
                      chunk_size: int = CHUNK_ROWS) -> tuple[Any, Any]:
    """``sum_i w_i * loss_i / denominator`` over all rows, and its gradient, ``chunk_size`` rows a pass.

    Dropout layers run as in inference (they pass inputs through and draw no mask); every other
    layer runs its training pass, which keeps what ``backward`` needs. Each chunk's backward
    writes the model's flat gradient buffer (``model.flat.grad``), which is left holding the last
    chunk's part; ``fit`` rewrites that buffer at every step before reading it.

    Parameters
    ----------
    model : Sequential
        A built model; its current weights are used.
    loss : Loss
        The loss.
    X : array of shape (n_samples, n_features)
        Inputs on the model's device, as ``fit`` prepares them.
    y : array
        Targets as ``loss.prepare_targets`` gives them.
    sample_weight : array of shape (n_samples,), optional
        Each row's weight.
    denominator : float
        n for the mean (``model.gradients``), the sum of the weights for scikit-learn's objective.
    chunk_size : int, default 4096
        Rows per forward and backward pass.

    Returns
    -------
    value : 0-d array
        The objective.
    grad : array of shape (model.flat.size,)
        Its gradient in the order of ``model.flat`` (a new array).
    """
    xp, n = model.xp, X.shape[0]
    total = grad = None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        z = X[start:stop, ...]
        for layer in model.layers:
            z = layer.forward(z, training=not isinstance(layer, Dropout))
        w = None if sample_weight is None else sample_weight[start:stop]
        value = xp.sum(loss.row_losses(z, y[start:stop, ...], w)) / denominator
        # backward gives the gradient of this chunk's mean: scaled to its share (exactly 1.0 for one chunk of n)
        model.backward(loss.backward() * ((stop - start) / denominator), input_grad=False)
        total = value if total is None else total + value
        grad = xp.asarray(model.flat.grad, copy=True) if grad is None else grad + model.flat.grad
    return total, grad


def _kernel_mask(model):
    """1.0 over the Dense kernels in the flat buffer, 0.0 over the biases: the parameters marked
    ``decay``, which the buffer holds first (``flat.n_decay``), as weight decay with
    ``decay_bias=False`` takes them."""
    flat, mask = model.flat, np.zeros(model.flat.size, dtype=model.dtype)
    mask[:flat.n_decay] = 1.0
    return model.backend.from_host(mask)


def _objective(model, loss, X, y, weights, l2: float, chunk_size: int):
    """scikit-learn's MLP objective as ``fun(x) -> (f, g)`` of the flat parameters (written into the model)."""
    xp = model.xp
    denominator = float(X.shape[0]) if weights is None else _read(xp, xp.sum(weights))[0]
    if not denominator > 0:
        raise ValueError("the sample weights (times the class weights) sum to zero: nothing to fit")
    mask = _kernel_mask(model) if l2 else None

    def fun(x):
        model.flat.data[...] = x
        f, g = loss_and_gradient(model, loss, X, y, weights, denominator=denominator, chunk_size=chunk_size)
        if l2:
            kx = mask * x
            f, g = f + (0.5 * l2 / denominator) * _dot(xp, kx, x), g + (l2 / denominator) * kx
        return _read(xp, f)[0], g

    return fun


def fit_lbfgs(model: Any, optimizer: LBFGS, X: Any, y: Any, *, loss: Any = None, epochs: int = 1,
              batch_size: int = 32, shuffle: bool = True, seed: int | None = None, verbose: Any = 0,
              validation_data: Any = None, validation_split: float = 0.0, metrics: Any = None,
              class_weight: Any = None, sample_weight: Any = None, callbacks: Any = None,
              on_divergence: str = "raise") -> History:
    """``model.fit`` with an :class:`LBFGS` optimiser: full batch, one History entry per iteration.

    Parameters
    ----------
    model : Sequential
        The model to train.
    optimizer : LBFGS
        The optimiser and its stopping rules.
    X : array-like of shape (n_samples, n_features)
        Inputs, as ``fit`` takes arrays.
    y : array-like
        Targets, as ``fit`` takes them.
    loss : str or Loss, optional
        As for ``fit``.
    epochs : int, default 1
        Refused unless 1: use ``LBFGS(max_iter=...)``.
    batch_size : int, default 32
        Refused unless 32: use ``LBFGS(chunk_size=...)``.
    shuffle : bool, default True
        Ignored.
    seed : int, optional
        Draws ``validation_split``.
    verbose : int or str, default 0
        Print one line per iteration when true.
    validation_data : tuple, optional
        ``(X_val, y_val)``, as for ``fit``.
    validation_split : float, default 0
        As for ``fit``.
    metrics : list, optional
        As for ``fit``.
    class_weight : dict or "balanced", optional
        As for ``fit``.
    sample_weight : array-like of shape (n_samples,), optional
        As for ``fit``.
    callbacks : list of Callback, optional
        As for ``fit``; those that set a learning rate are refused.
    on_divergence : {"raise", "warn"}, default "raise"
        As for ``fit``.

    Returns
    -------
    History
        One entry per iteration; also ``model.history``.

    Raises
    ------
    ValueError
        For ``epochs`` or ``batch_size`` given, Dropout with a rate > 0, a callback that sets a
        learning rate, and the checks of ``fit``.
    DivergenceError
        If the objective is not finite at the starting weights and ``on_divergence="raise"``.

    Notes
    -----
    Each L-BFGS iteration is an "epoch" for History and the callbacks: ``on_epoch_begin`` before
    it, ``on_epoch_end`` after it with ``loss`` (the objective, penalty included), each metric and
    ``val_*`` (computed as in ``fit``, with ``val_loss`` the plain mean loss), ``epoch_time`` and
    ``samples_per_s``; ``model.stop_training`` ends the run after the iteration. A line search that
    finds no decrease is not an iteration (no ``on_epoch_end``). ``verbose`` prints one line per
    iteration. ``epochs`` and ``batch_size`` do not apply and are refused when given (use
    ``LBFGS(max_iter=...)``, and ``chunk_size`` for memory); ``shuffle`` is ignored (the order of
    rows does not change the objective); ``seed`` only draws ``validation_split``. Models with
    Dropout (rate > 0) are refused: the objective must be deterministic. Callbacks that set a
    learning rate are refused: L-BFGS has none.

    The model's ``optimizer`` is left as it was: L-BFGS keeps nothing between fits (each starts
    with an empty history), so it is not saved with the model. ``model.loss`` and
    ``model.history`` are set as by ``fit``. The optimiser's ``n_iter_``, ``n_fun_``,
    ``converged_``, ``message_`` and ``loss_`` describe the run.

    If the objective or its gradient is not finite at the starting weights, the weights are
    kept and the run is a divergence, handled as ``fit`` handles one (callbacks'
    ``on_divergence``, then ``on_divergence="raise"`` or ``"warn"``); later iterates are always
    finite (the line search accepts only finite decreases). Whatever ends the run (an exception
    too), the model is left at the last accepted iterate and ``on_train_end`` runs.
    """
    defaults = inspect.signature(_fit).parameters
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value != defaults[name].default:
            raise ValueError(f"fit with LBFGS uses the whole training set at each iteration: {name} does not apply "
                             f"(got {name}={value!r}); LBFGS(max_iter=...) bounds the iterations and "
                             "LBFGS(chunk_size=...) the rows per pass")
    for layer in model.layers:
        if isinstance(layer, Dropout) and layer.rate > 0:
            raise ValueError(f"LBFGS needs a deterministic objective, but the model has Dropout(rate={layer.rate}): "
                             "remove the Dropout layers (or set their rate to 0), or use a stochastic optimiser")
    for cb in callbacks or []:
        if isinstance(cb, (LearningRateScheduler, ReduceLROnPlateau)):
            raise ValueError(f"{type(cb).__name__} sets a learning rate, which LBFGS does not have")
    # fit's own checks (the optimiser they give back is fit's, unused here)
    loss, _, metrics, callbacks = check_options(model, loss, None, metrics, callbacks, on_divergence,
                                                 validation_data, validation_split)
    Xd, yd, weights, Xv, yv, _ = prepare_data(model, loss, X, y, seed, validation_data, validation_split,
                                               class_weight, sample_weight)
    adapt_inputs(model, Xd)
    fun = _objective(model, loss, Xd, yd, weights, optimizer.l2, optimizer.chunk_size)
    history = History()
    callbacks = [history, *([ProgbarLogger()] if verbose else []), *callbacks]
    keys = [k for k in epoch_log_keys(metrics, Xv is not None) if k != "lr"]
    # as fit: streamed metrics on the training set; the others on the validation set when there is one
    train_metrics = [m for m in metrics if Xv is None or not isinstance(m, CallableMetric)]
    params = {"verbose": 2 if verbose else 0, "epochs": optimizer.max_iter, "steps": 1}
    for cb in callbacks:
        cb.model, cb.params = model, params
        cb.check(keys)
    model.loss, model.stop_training, model.history = loss, False, history
    begun, start, running = [], model.flat.snapshot(), False
    try:
        for cb in callbacks:
            cb.on_train_begin()
            begun.append(cb)
        optimizer.reset(fun, start)
        running = True
        if not optimizer.converged_ and optimizer.message_ is not None:  # not finite at the start
            message = (f"the training objective is {optimizer.loss_:g} at the starting weights (it or its gradient "
                       "is not finite), so L-BFGS cannot start; the weights this fit started from were kept. "
                       "Likely causes: unscaled inputs (scale them or use MLP(..., standardize=True)), or targets "
                       "that do not match the loss")
            report_divergence(callbacks, on_divergence, 0, message)
        while optimizer.message_ is None:
            for cb in callbacks:
                cb.on_epoch_begin(optimizer.n_iter_)
            started = time.perf_counter()
            if not optimizer.step():
                break
            model.flat.data[...] = optimizer.x_  # the callbacks see the accepted iterate
            logs = {"loss": optimizer.loss_}
            if train_metrics:
                logs.update({k: v for k, v in evaluate_set(model, loss, train_metrics, Xd, yd).items() if k != "loss"})
            if Xv is not None:
                logs.update({"val_" + k: v for k, v in evaluate_set(model, loss, metrics, Xv, yv).items()})
            seconds = time.perf_counter() - started
            logs.update({"epoch_time": seconds, "samples_per_s": Xd.shape[0] / seconds})
            for cb in callbacks:
                cb.on_epoch_end(optimizer.n_iter_ - 1, logs)
            if model.stop_training and optimizer.message_ is None:
                optimizer.stop("stopped by a callback (model.stop_training)")
    except BaseException as error:
        if running and optimizer.message_ is None:
            optimizer.stop(f"interrupted by {type(error).__name__}")
        model.flat.data[...] = optimizer.x_ if running else start
        end_training(begun, error)
        raise
    model.flat.data[...] = optimizer.x_
    end_training(begun)
    return history
