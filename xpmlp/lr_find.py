"""The learning-rate range test (Smith 2017), bound as ``Sequential.lr_find``.

Leslie Smith's range test ("Cyclical Learning Rates for Training Neural Networks", WACV 2017,
section 3.3), run as fastai's ``lr_find`` and torch-lr-finder's ``range_test`` run it: train from
the model's current weights for ``num_steps`` steps, one optimiser step per learning rate, the
rates growing exponentially from ``start_lr`` to ``end_lr``, on successive batches. The loss
first stays flat (rates too small to move), then falls, then climbs and diverges (rates too
large); a good rate lies on the steep descent, well before the climb.

Each step is fit's own train step (:func:`xpmlp.step.make_train_step`), on batches drawn as
``fit`` draws them (a seeded shuffle per pass, the model's generator unless ``seed`` is given;
more steps than batches start a new shuffled pass). The loss recorded for a rate is the
batch's loss measured by the step that then applies that rate (fastai's convention: the weights
as the earlier, smaller rates left them). Reading it costs one host read per step.

Then everything the sweep changed is put back: the weights and the gradient buffer, the
Dropout counters, Standardize statistics it learned, the host generators, ``model.loss``,
``model.optimizer``, ``model.history`` and ``model.stop_training``. The optimiser stepped is a
copy with fresh state, so the caller's optimiser (and the model's) never moves.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from typing import Any

import numpy as np

from .backend import to_numpy
from .losses import get_loss
from .optim import Adam, Optimizer, get_optimizer
from .step import make_train_step
from .train import ArrayData, positive_int, prepare_data

__all__ = ["LRFinderResult", "lr_find", "suggest_lr"]

#: The suggestion leaves out the curve's first SKIP_START points (torch-lr-finder's default
#: skip_start=10 in LRFinder.plot): there the moving average is still settling on a flat loss.
SKIP_START = 10


class LRFinderResult:
    """The curve of a learning-rate range test and the rate it suggests.

    :meth:`xpmlp.Sequential.lr_find` returns one; ``print(result)`` summarises it.

    Parameters
    ----------
    lrs : array-like of shape (m,)
        The learning rates tried.
    losses : array-like of shape (m,)
        The smoothed loss at each rate.
    raw_losses : array-like of shape (m,)
        Each step's mean batch loss.
    stop_reason : str, optional
        Why the sweep ended early, or None.
    num_steps : int, optional
        The steps asked for; by default ``len(lrs)``.

    Attributes
    ----------
    lrs : ndarray of shape (m,)
        The learning rates tried, in order: ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``
        for the m <= num_steps steps that ran with a finite loss.
    losses : ndarray of shape (m,)
        The smoothed loss at each rate: an exponential moving average of ``raw_losses`` with
        weight ``smoothing`` on each new loss, bias-corrected (divided by ``1 - (1 - smoothing)**k``
        after k steps, as fastai does), so the first point is the first raw loss.
    raw_losses : ndarray of shape (m,)
        Each step's mean batch loss, measured before that step's update.
    suggestion : float or None
        The rate at the steepest descent of the smoothed curve towards its lowest point (see
        :func:`xpmlp.lr_find.suggest_lr`); None when the curve is too short or never descends.
    stop_reason : str or None
        Why the sweep ended before ``num_steps`` (divergence, a NaN or infinite loss), or None.
    num_steps : int
        The steps asked for.

    See Also
    --------
    xpmlp.Sequential.lr_find : Runs the test and returns one.
    xpmlp.lr_find.suggest_lr : How the suggestion is chosen.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(256, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], seed=0)
    >>> result = model.lr_find(X, y, loss="softmax_cross_entropy", num_steps=50, seed=0)
    >>> result.lrs.shape, result.losses.shape
    ((50,), (50,))
    >>> 0 < result.suggestion < 10
    True
    """

    def __init__(self, lrs: Any, losses: Any, raw_losses: Any, stop_reason: str | None = None,
                 num_steps: int | None = None) -> None:
        self.lrs = np.asarray(lrs, dtype=float)
        self.losses = np.asarray(losses, dtype=float)
        self.raw_losses = np.asarray(raw_losses, dtype=float)
        self.stop_reason = stop_reason
        self.num_steps = len(self.lrs) if num_steps is None else int(num_steps)
        self.suggestion = suggest_lr(self.lrs, self.losses)

    def plot(self, path: str | os.PathLike | None = None, *, ax: Any = None) -> Any:
        """Draw the smoothed loss (and, faintly, the raw loss) against the rate, log-scaled, with
        the suggestion marked.

        Parameters
        ----------
        path : str or path-like, optional
            Write the figure to this file (the format from its suffix: .png, .pdf, .svg...).
            Without it the curve is drawn with pyplot (shown in a notebook, or by ``plt.show()``).
        ax : matplotlib Axes, optional
            Draw into it instead of a new figure.

        Returns
        -------
        matplotlib.axes.Axes
            The axes drawn into. Needs matplotlib (``pip install xpmlp[plot]``).

        Raises
        ------
        ImportError
            If matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("LRFinderResult.plot needs matplotlib: pip install matplotlib "
                              "(or xpmlp[plot]); the curve itself is in .lrs and .losses") from None
        if ax is None:
            if path is not None:  # a figure of its own, outside pyplot: no window, no global state
                ax = Figure(figsize=(6, 4), layout="tight").subplots()
            else:
                import matplotlib.pyplot as plt

                ax = plt.subplots(figsize=(6, 4))[1]
        ax.plot(self.lrs, self.raw_losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.losses, color="C0", label="smoothed loss")
        if self.suggestion is not None:
            i = int(np.argmin(np.abs(self.lrs - self.suggestion)))
            ax.plot([self.suggestion], [self.losses[i]], "o", color="C3",
                    label=f"suggestion {self.suggestion:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("learning-rate range test")
        ax.legend()
        if path is not None:
            ax.figure.savefig(path)
        return ax

    def __repr__(self) -> str:
        if not len(self.lrs):
            return f"LRFinderResult(no finite loss: {self.stop_reason})"
        shown = "none" if self.suggestion is None else f"{self.suggestion:.3g}"
        text = (f"LRFinderResult(suggestion={shown}, {len(self.lrs)} of {self.num_steps} steps, "
                f"lr {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}, smoothed loss {self.losses[0]:.4g} "
                f"-> lowest {self.losses.min():.4g} at lr {self.lrs[np.argmin(self.losses)]:.3g}")
        return text + (f"; stopped: {self.stop_reason})" if self.stop_reason else ")")


def suggest_lr(lrs: Any, losses: Any) -> float | None:
    """The rate where the smoothed loss falls fastest against log(lr), on its way to its lowest point.

    The slope is ``np.gradient(losses, log10(lrs))`` (central differences). Its most negative
    value is taken from the curve's point ``SKIP_START`` (point 0 when the lowest loss comes
    sooner than that) up to the lowest smoothed loss: torch-lr-finder takes the steepest slope of
    the whole curve less its last 5 points, which can land past the minimum, where the loss of an
    Adam run that never quite diverged falls back from a bump at large rates (on scikit-learn's
    digits that rule suggested 3.3 and 3.9 for two seeds, and one epoch at them reached 8% and 10%
    accuracy); the descent that leads to the lowest loss is the one Smith's test reads.

    Parameters
    ----------
    lrs : array-like of shape (m,)
        The learning rates, increasing.
    losses : array-like of shape (m,)
        The smoothed loss at each rate.

    Returns
    -------
    float or None
        The suggested rate; None when fewer than 3 points lead to the lowest one, or none of them
        descends.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.lr_find import suggest_lr
    >>> lrs = np.geomspace(1e-4, 1.0, 5)
    >>> float(suggest_lr(lrs, [1.0, 0.9, 0.5, 0.4, 2.0]))
    0.001
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lrs) < 3:
        return None
    lowest = int(np.argmin(losses))
    first = SKIP_START if lowest - SKIP_START >= 2 else 0
    if lowest - first < 2:
        return None
    slope = np.gradient(losses, np.log10(lrs))
    i = first + int(np.argmin(slope[first:lowest + 1]))
    return float(lrs[i]) if slope[i] < 0 else None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rate(value, name: str) -> float:
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a positive finite learning rate, got {value!r}")
    return float(value)


def _fresh_optimizer(model, optimizer) -> Optimizer:
    """A copy of the optimiser to sweep (given, else the model's, else Adam()), with fresh state."""
    from .lbfgs import LBFGS  # lbfgs imports the training loop

    spec = optimizer if optimizer is not None else model.optimizer
    if spec is None:
        return Adam()
    if isinstance(spec, LBFGS):
        raise ValueError("lr_find sweeps the learning rate of a gradient-descent optimiser; LBFGS has none "
                         "(its line search chooses each step): give optimizer='adam', 'sgd' or an instance")
    if isinstance(spec, str):
        return get_optimizer(spec)
    if not isinstance(spec, Optimizer):
        raise TypeError(f"optimizer must be a name or an xpmlp Optimizer, got {type(spec).__name__}")
    opt = copy.copy(spec)  # same configuration (momentum, betas, weight decay, clipnorm)...
    opt.load_state_dict({"t": 0, "state": None})  # ...but fresh state, and the original untouched
    return opt


def lr_find(model: Any, X: Any, y: Any, *, loss: Any = None, optimizer: Any = None, start_lr: float = 1e-7,
            end_lr: float = 10.0,
            num_steps: int = 100, batch_size: int = 32, smoothing: float = 0.05, diverge: float = 4.0,
            seed: int | None = None) -> LRFinderResult:
    """Run the learning-rate range test and put the model back as it was.

    One optimiser step per learning rate, the rates growing exponentially from ``start_lr`` to
    ``end_lr`` over ``num_steps`` successive batches of (X, y), from the model's current weights;
    the sweep stops early once the smoothed loss exceeds ``diverge`` times its lowest value, or a
    loss is NaN or infinite (not an error: the curve up to there is returned).

    Parameters
    ----------
    model : Sequential
        The model; an unbuilt one is built from X's width first (as ``fit`` would build it).
    X : array-like of shape (n_samples, n_features)
        The training inputs, as ``fit`` takes them.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        The targets, as ``fit`` takes them.
    loss : str or Loss, optional
        By default the model's loss (the one it was fitted with).
    optimizer : str or Optimizer, optional
        The optimiser whose learning rate is swept: by default the model's, else Adam(). A copy
        with fresh state (step count 0, no moments) is stepped; its other settings are kept.
    start_lr, end_lr : float, 0 < start_lr < end_lr
        The first and the last rate (both tried when the sweep runs to the end).
    num_steps : int >= 2
        Steps, one rate each. Past one epoch of batches the data is reshuffled and gone through again.
    batch_size : int >= 1
        Rows per step.
    smoothing : float in (0, 1]
        The weight of each new loss in the moving average (torch-lr-finder's ``smooth_f``); 1 turns
        smoothing off.
    diverge : float > 1 (inf allowed)
        Stop once the smoothed loss exceeds this many times its lowest value (fastai's 4);
        ``math.inf`` runs every step unless a loss is NaN or infinite.
    seed : int, optional
        Seeds the shuffles; by default they come from the model's generator (restored afterwards).

    Returns
    -------
    LRFinderResult
        ``lrs``, ``losses`` (smoothed), ``raw_losses``, ``suggestion``, ``stop_reason``, ``plot()``.

    Raises
    ------
    ValueError
        If a rate, ``num_steps``, ``batch_size``, ``smoothing`` or ``diverge`` is out of range,
        there is no loss, or the optimiser is LBFGS.
    TypeError
        If a rate is not a number or ``optimizer`` is neither a name nor an xpmlp Optimizer.

    Notes
    -----
    Afterwards the model is as it was: weights, gradient buffer, optimiser (``model.optimizer``
    and the one given are never stepped), Dropout counters, Standardize statistics, host generator
    states, ``loss``, ``history`` and ``stop_training``; so a later ``fit`` is exactly the fit
    without the test. Costs ``num_steps`` training steps and one host read per step.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(256, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], seed=0)
    >>> result = model.lr_find(X, y, loss="softmax_cross_entropy", num_steps=50, seed=0)
    >>> len(result.lrs) <= 50, float(result.lrs[0])
    (True, 1e-07)
    """
    start_lr, end_lr = _rate(start_lr, "start_lr"), _rate(end_lr, "end_lr")
    if not start_lr < end_lr:
        raise ValueError(f"start_lr must be smaller than end_lr, got start_lr={start_lr:g} and end_lr={end_lr:g}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2 (a curve needs two points at least), got {num_steps!r}")
    batch_size = positive_int(batch_size, "batch_size")
    if not _is_number(smoothing) or not 0.0 < float(smoothing) <= 1.0:
        raise ValueError(f"smoothing must be in (0, 1]: the weight of each new loss in the moving average "
                         f"(1 turns smoothing off), got {smoothing!r}")
    if not _is_number(diverge) or not float(diverge) > 1.0:
        raise ValueError(f"diverge must be a number > 1 (stop once the smoothed loss exceeds diverge x its "
                         f"lowest; math.inf never stops early), got {diverge!r}")
    if loss is None and model.loss is None:
        raise ValueError("lr_find needs a loss: pass loss=... (e.g. 'softmax_cross_entropy' or 'mse') "
                         "or fit the model first")
    loss = model.loss if loss is None else get_loss(loss)
    opt = _fresh_optimizer(model, optimizer)
    num_steps, smoothing, diverge = int(num_steps), float(smoothing), float(diverge)

    # builds an unbuilt model (as fit does): everything is recorded after that
    Xd, yd, weights, Xv, yv, rng = prepare_data(model, loss, X, y, seed, None, 0.0, None, None)
    data = ArrayData(model, Xd, yd, weights, Xv, yv, rng, batch_size, True)
    attributes = (model.loss, model.optimizer, model.history, model.stop_training)
    rng_state = model.get_rng_state()
    unadapted = [layer for layer in model.layers if hasattr(layer, "adapt") and not layer.adapted]
    step = make_train_step(model, loss, opt)
    saved, grad = step.snapshot(), model.xp.asarray(model.flat.grad, copy=True)
    lrs = np.geomspace(start_lr, end_lr, num_steps)  # exact at both ends
    try:
        data.adapt()
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is expected: the sweep seeks it
            raw, smoothed, stop = _sweep(model, step, opt, data, lrs, smoothing, diverge)
    finally:
        step.restore(saved)
        model.flat.grad[...] = grad
        for layer in unadapted:
            layer.load_state_dict({})
        model.set_rng_state(rng_state)
        model.loss, model.optimizer, model.history, model.stop_training = attributes
    return LRFinderResult(lrs[:len(raw)], smoothed, raw, stop, num_steps)


def _sweep(model, step, opt, data, lrs, smoothing: float, diverge: float):
    """One step per rate on successive batches: (raw losses, smoothed losses, why it stopped or None)."""
    raw: list[float] = []
    smoothed: list[float] = []
    average, best, batches = 0.0, math.inf, _cycle(data)
    for i, lr in enumerate(lrs):
        xb, yb, wb, row_loss = next(batches)
        opt.lr = float(lr)
        step(xb, yb, wb, row_loss)
        value = float(to_numpy(model.xp.sum(row_loss))) / xb.shape[0]  # the step's one host read
        if not math.isfinite(value):
            return raw, smoothed, f"the loss became {value} at lr {lr:.3g} (step {i + 1}; left out of the curve)"
        average = (1.0 - smoothing) * average + smoothing * value
        smooth = average / (1.0 - (1.0 - smoothing) ** (i + 1))  # bias correction: the average starts at 0
        raw.append(value)
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge * best:
            return raw, smoothed, (f"the smoothed loss {smooth:.4g} exceeded {diverge:g} x its lowest {best:.4g} "
                                   f"at lr {lr:.3g} (step {i + 1})")
    return raw, smoothed, None


def _cycle(data):
    """Batches of one shuffled pass over the data after another, without end."""
    while True:
        yield from data.epoch()
