"""The training loop: ``fit``, ``predict`` and ``evaluate`` (bound as Sequential methods).

The whole training set is copied to the model's device once; each epoch draws one seeded
permutation on the host, copies it over, and gathers every batch on the device with
``xp.take``. The loss, the metrics' running sums and the index of the first diverging batch
all stay on the device and are read once per epoch, together with a check of the epoch's last
update, so the loop never waits for the device between batches (the progress bar only counts
batches).

Divergence. A batch diverges when its loss is NaN, infinite or above ``sqrt(finfo(dtype).max)``
(1.3e154 in float64, 1.8e19 in float32; see :func:`_divergence_limit`). Each batch's loss is
taken before its update, so the epoch's last update is checked on its own: the updated weights'
loss on the last batch (an inference pass) and their norm must stay within the same limit. Either failure stops training and restores the snapshot taken at the start of the
epoch. That snapshot is "verified": it is the start of training, or weights that passed the
previous epoch's check (finite, a norm within the limit, a loss within the limit on a
training batch), so the model kept never holds NaN, infinite or overflowing weights.

Early ends. Until an epoch is recorded in the history, an exception (``KeyboardInterrupt``
inside an update, a failing metric) restores that same snapshot: the model is left at the end
of the last recorded epoch (weights, optimiser state and step count, Dropout counters), never
with half of an update applied. A snapshot per step would make every step also copy every
parameter and optimiser buffer; the per-epoch one is needed anyway for divergence. Then every
callback's ``on_train_end`` runs (CSVLogger closes its file), ``model.history`` holds the
recorded epochs, and the exception propagates unchanged.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
import warnings

import numpy as np

from .backend import to_numpy
from .callbacks import Callback, TerminateOnNaN
from .losses import get_loss
from .metrics import CallableMetric, get_metric
from .optim import Adam, get_optimizer
from .step import make_train_step

__all__ = ["History", "DivergenceError", "fit", "predict", "evaluate"]

EVAL_BATCH = 4096  # rows per inference batch: bounds memory, does not change results


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite."""


class History:
    """What ``fit`` records, one entry per epoch: ``history["loss"][i]`` and so on.

    Keys: ``loss``, each metric, ``val_loss`` and ``val_<metric>`` with validation data,
    ``lr`` (at the end of the epoch), ``epoch_time`` (s) and ``samples_per_s``.
    """

    def __init__(self):
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key):
        return self.history[key]

    def to_frame(self):
        """The history as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(self.history, index=pd.Index(self.epoch, name="epoch"))

    def plot(self, path=None):
        """Loss and metric curves (train and validation) as a matplotlib Figure; saved as PNG if ``path``.

        Needs matplotlib (``pip install 'xpmlp[plot]'``).
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install 'xpmlp[plot]' "
                              "(or pip install matplotlib)") from None
        names = ["loss"] + [k for k in self.history if k not in ("loss", "lr", "epoch_time", "samples_per_s")
                            and not k.startswith("val_")]
        fig = Figure(figsize=(4.5 * len(names), 3.2))
        FigureCanvasAgg(fig)
        epochs = [e + 1 for e in self.epoch]
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            for key, label in ((name, "train"), ("val_" + name, "validation")):
                if key in self.history:
                    ax.plot(epochs, self.history[key], marker="o", ms=3, label=label)
            ax.set_xlabel("epoch")
            ax.set_title(name)
            if name == "loss" and all(v > 0 for v in self.history["loss"] if math.isfinite(v)):
                ax.set_yscale("log")
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig

    def __repr__(self):
        last = {k: v[-1] for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


# -- input checks ---------------------------------------------------------------------------------
def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _prepare_X(model, X, what="X", *, stats=False):
    """Validate X (2-D, numeric, finite, the model's width) and copy it to the device.

    With ``stats``, also return X's largest and smallest values, taken in the same single read
    as the finiteness check (reductions only: no temporary the size of X).
    """
    Xd = model.backend.asarray(X, dtype=model.dtype, what=what)
    if Xd.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if Xd.ndim == 1 else ""
        raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {tuple(Xd.shape)}{hint}")
    if Xd.shape[0] == 0:
        raise ValueError(f"{what} has no samples")
    if model.built and Xd.shape[1] != model.in_features:
        raise ValueError(f"{what} has {Xd.shape[1]} features but the model expects {model.in_features}")
    xp = model.xp
    if not stats:
        if not bool(xp.all(xp.isfinite(Xd))):
            raise ValueError(f"{what} contains NaN or infinity (checked after conversion to {model.dtype})")
        return Xd
    # max and min propagate NaN and are inf for an infinity: one read answers "finite?" and "how large?"
    high, low = (float(v) for v in to_numpy(xp.stack([xp.max(Xd), xp.min(Xd)])))
    if not (math.isfinite(high) and math.isfinite(low)):
        raise ValueError(f"{what} contains NaN or infinity (checked after conversion to {model.dtype})")
    return Xd, high, low


RAW_INPUT_LIMIT = 100.0  # fit warns above this largest |x| when no Standardize layer scales the inputs


def _warn_if_unscaled(model, high: float, low: float, what="X") -> None:
    """Warn when inputs look unscaled: largest |x| above RAW_INPUT_LIMIT and no Standardize layer.

    The default initialisers assume inputs of about unit scale; inputs a hundred times larger
    make the first layer's pre-activations and gradients as much larger, so a learning rate
    that suits scaled data overshoots (or saturates tanh and sigmoid). The criterion is the
    magnitude, not the type: values within [-100, 100] (z-scores, ratios, percentages, counts
    of a few dozen) pass quietly, while 0-255 pixels, years or sums of money get the warning,
    which only suggests, never changes anything.
    """
    largest = max(high, -low)
    if largest <= RAW_INPUT_LIMIT or any(hasattr(layer, "adapt") for layer in model.layers):
        return
    if low >= 0 and high <= 255:
        hint = "raw 0-255 pixel values? Divide them by 255"
    else:
        hint = "scale the features (e.g. sklearn.preprocessing.StandardScaler)"
    warnings.warn(f"{what} looks unscaled: its largest absolute value is {largest:g}. Networks train best "
                  f"on inputs of about unit scale: {hint}, or build the model with "
                  "MLP(..., standardize=True), which learns the scaling from the training data.",
                  UserWarning, stacklevel=4)


def _prepare_y(model, loss, y, n_samples, what="y"):
    xp = model.xp
    names = inspect.signature(loss.prepare_targets).parameters  # a user Loss may not take what=
    yd = loss.prepare_targets(y, model.backend, model.dtype, model.out_features,
                              **({"what": what} if "what" in names else {}))
    if yd.shape[0] != n_samples:
        x_name = "X" if what == "y" else what.replace("y", "X")
        raise ValueError(f"{x_name} and {what} have different lengths: {n_samples} and {yd.shape[0]}")
    if xp.isdtype(yd.dtype, "real floating") and not bool(xp.all(xp.isfinite(yd))):
        raise ValueError(f"{what} contains NaN or infinity")
    return yd


def _class_index(model, yd):
    """Class of each row as int64 (n,), for class weights and stratified splits."""
    xp = model.xp
    if yd.ndim == 1:
        return yd
    if yd.shape[1] == 1:  # a single sigmoid output: classes 0 and 1
        return xp.astype(yd[:, 0] > 0.5, xp.int64)
    return xp.argmax(yd, axis=1)


def _sample_weights(model, loss, yd, class_weight, sample_weight):
    """Per-row weights on the device (n,), or None: sample_weight times class_weight[class]."""
    xp, n = model.xp, yd.shape[0]
    weights = None
    if sample_weight is not None:
        weights = model.backend.asarray(sample_weight, dtype=model.dtype, what="sample_weight")
        if tuple(weights.shape) != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {tuple(weights.shape)}")
        if not bool(xp.all(xp.isfinite(weights) & (weights >= 0))):
            raise ValueError("sample_weight must be finite and non-negative")
    if class_weight is None:
        return weights
    if not loss.is_classifier or (yd.ndim == 2 and yd.shape[1] > 1 and loss.name != "softmax_cross_entropy"):
        raise ValueError("class_weight needs a classification loss with one label per row "
                         "(softmax_cross_entropy, or sigmoid_binary_cross_entropy with one output)")
    k = 2 if model.out_features == 1 else model.out_features  # one sigmoid output: classes 0 and 1
    labels = _class_index(model, yd)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
        counts = np.bincount(to_numpy(labels), minlength=k).astype(float)
        table = np.where(counts > 0, n / (k * np.maximum(counts, 1)), 1.0)
    else:
        unknown = [c for c in class_weight if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k]
        if unknown:
            raise ValueError(f"class_weight names unknown classes {unknown}; the model's classes are 0..{k - 1}")
        table = np.ones(k)
        for c, w in class_weight.items():
            if not (math.isfinite(float(w)) and float(w) >= 0):
                raise ValueError(f"class_weight[{c}] must be finite and non-negative, got {w!r}")
            table[int(c)] = float(w)
    per_row = xp.take(model.backend.from_host(table.astype(model.dtype)), labels, axis=0)
    return per_row if weights is None else weights * per_row


def _split(model, loss, yd, fraction, rng):
    """Shuffled train/validation row indices (host), stratified by class for classification."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {fraction!r}")
    from .datasets import train_test_split

    n = yd.shape[0]
    stratify = loss.is_classifier
    labels = to_numpy(_class_index(model, yd)) if stratify else np.zeros(n)
    train, val, _, _ = train_test_split(np.arange(n), labels, test_size=fraction, stratify=stratify,
                                        seed=int(rng.integers(2**63)))
    if len(val) == 0 or len(train) == 0:
        raise ValueError(f"validation_split={fraction} leaves an empty part of {n} rows")
    return np.sort(train), np.sort(val)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)  # clamp: slicing past the end is not portable


def _add(acc, stats):
    return list(stats) if acc is None else [a + s for a, s in zip(acc, stats)]


def _result(metric, acc) -> float:
    return metric.result([s if isinstance(s, float) else to_numpy(s) for s in acc])


class _Progress:
    """verbose=1: a tqdm bar per epoch on a terminal (one line per epoch otherwise); 2: one line; 0: quiet."""

    def __init__(self, verbose, epochs, n_batches):
        self.mode = 0 if not verbose else (1 if verbose == 1 and sys.stdout.isatty() else 2)
        self.epochs, self.n_batches, self.bar = epochs, n_batches, None

    def begin(self, epoch):
        if self.mode == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.n_batches, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                            leave=True, file=sys.stdout)

    def step(self):
        if self.bar is not None:
            self.bar.update(1)  # counts only: reading the loss here would wait for the device

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, epoch, logs):
        text = " - ".join(f"{k} {v:.4g}" for k, v in logs.items() if k not in ("epoch_time", "samples_per_s"))
        timing = f"{logs['epoch_time']:.1f}s, {logs['samples_per_s']:,.0f} samples/s"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} - {timing}")
            self.bar.close()
            self.bar = None
        elif self.mode == 2:
            print(f"epoch {epoch + 1}/{self.epochs} - {text} - {timing}", flush=True)


# -- fit ------------------------------------------------------------------------------------------
def fit(model, X, y, *, loss=None, optimizer=None, epochs: int = 1, batch_size: int = 32,
        shuffle: bool = True, seed: int | None = None, verbose: int = 0, validation_data=None,
        validation_split: float = 0.0, metrics=None, class_weight=None, sample_weight=None,
        callbacks=None, on_divergence: str = "raise") -> History:
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
        Seeds this call's shuffles and validation split; by default they come from the model's seed.
    verbose : 0 quiet; 1 a progress bar per epoch (one line per epoch when not on a terminal);
        2 one line per epoch.
    validation_data : (X_val, y_val), optional
    validation_split : float in (0, 1), optional
        Hold out this fraction of (X, y), shuffled and (for classification) stratified by class,
        drawn from the seed. Standardize layers learn only from the training part.
    metrics : list of names ("accuracy", "top_5_accuracy", "mse", "mae", "r2"), Metric objects or
        callables ``fn(y_true, y_pred) -> float`` (run once per epoch on NumPy arrays of the
        validation set, or of the training set without one).
    class_weight : dict {class: weight} or "balanced", optional
    sample_weight : array (n,), optional
        Each row's loss is multiplied by its weight (and by its class's weight).
    callbacks : list of :class:`xpmlp.callbacks.Callback`
    on_divergence : "raise" (default) or "warn"
        What to do when training diverges (a loss NaN, infinite or beyond the dtype's limit, or a
        last update that makes the weights overflow; see the module notes): raise
        :class:`DivergenceError`, or warn and stop. Either way the weights from the end of the last
        good epoch (or those fit started from) are kept.

    Whatever ends fit early (divergence, ``KeyboardInterrupt``, an exception in a callback), the
    model is left at the end of the last epoch in ``model.history``, every callback's
    ``on_train_end`` runs, and the exception propagates.

    Returns
    -------
    History, also kept as ``model.history``.
    """
    # Every option is checked before the first update.
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
    metrics = [get_metric(m) for m in (metrics or [])]
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback objects, got {type(cb).__name__}")
    if on_divergence not in ("raise", "warn"):
        raise ValueError(f"on_divergence must be 'raise' or 'warn', got {on_divergence!r}")
    if validation_data is not None and validation_split:
        raise ValueError("give validation_data or validation_split, not both")
    if validation_data is not None and (not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
        raise ValueError("validation_data must be a pair (X_val, y_val)")

    Xd, high, low = _prepare_X(model, X, stats=True)
    if not model.built:
        model.build(Xd.shape[1])
    _warn_if_unscaled(model, high, low)
    yd = _prepare_y(model, loss, y, Xd.shape[0])
    weights = _sample_weights(model, loss, yd, class_weight, sample_weight)
    xp = model.xp
    rng = np.random.default_rng(seed) if seed is not None else model.shuffle_rng
    Xv = yv = None
    if validation_split:
        train_rows, val_rows = _split(model, loss, yd, validation_split, rng)
        train_idx, val_idx = model.backend.from_host(train_rows), model.backend.from_host(val_rows)
        Xv, yv = xp.take(Xd, val_idx, axis=0), xp.take(yd, val_idx, axis=0)
        Xd, yd = xp.take(Xd, train_idx, axis=0), xp.take(yd, train_idx, axis=0)
        weights = None if weights is None else xp.take(weights, train_idx, axis=0)
    elif validation_data is not None:
        Xv = _prepare_X(model, validation_data[0], what="X_val")
        yv = _prepare_y(model, loss, validation_data[1], Xv.shape[0], what="y_val")

    streamed = [m for m in metrics if not isinstance(m, CallableMetric)]
    called = [m for m in metrics if isinstance(m, CallableMetric)]
    log_keys = ["loss", *(m.name for m in streamed)]
    log_keys += [m.name for m in called] if Xv is None else []
    if Xv is not None:
        log_keys += ["val_loss", *("val_" + m.name for m in metrics)]
    log_keys += ["lr", "epoch_time", "samples_per_s"]
    for cb in callbacks:
        cb.model = model
        cb.check(log_keys)

    _adapt(model, Xd)
    model.loss, model.optimizer = loss, optimizer
    model.stop_training = False
    n = Xd.shape[0]
    step = make_train_step(model, loss, optimizer)
    n_batches = math.ceil(n / batch_size)
    # Each row's loss goes here, batch by batch; rows past n stay 0, so a reshape gives the
    # per-batch sums, read once per epoch (the short last batch's size is in `sizes`).
    row_loss = xp.zeros(n_batches * batch_size, dtype=model.backend.dtype(model.dtype), device=model.backend.device)
    sizes = np.array([stop - start for start, stop in _batches(n, batch_size)], dtype=float)
    history = History()
    progress = _Progress(verbose, epochs, n_batches)
    quiet_on_nan = any(isinstance(cb, TerminateOnNaN) for cb in callbacks)
    limit = _divergence_limit(model.dtype)
    begun = []  # callbacks whose on_train_begin ran: only they get on_train_end
    try:
        for cb in callbacks:
            cb.on_train_begin()
            begun.append(cb)
        for epoch in range(epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            snapshot = None
            try:
                snapshot = step.snapshot()
                started = time.perf_counter()
                progress.begin(epoch)
                order = model.backend.from_host(rng.permutation(n)) if shuffle else None
                sums = [None] * len(streamed)
                for start, stop in _batches(n, batch_size):
                    if order is None:
                        xb, yb = Xd[start:stop, ...], yd[start:stop, ...]
                        wb = None if weights is None else weights[start:stop]
                    else:
                        idx = order[start:stop]
                        xb, yb = xp.take(Xd, idx, axis=0), xp.take(yd, idx, axis=0)
                        wb = None if weights is None else xp.take(weights, idx, axis=0)
                    z = step(xb, yb, wb, row_loss[start:stop])
                    if streamed:
                        p = loss.link(xp, z)
                        sums = [_add(acc, m.stats(xp, yb, p)) for m, acc in zip(streamed, sums)]
                    progress.step()
                # The epoch's one host read: each batch's loss sum, and a check of the last update
                # (never evaluated by the batches' losses, which come before each update): the
                # loss of the updated weights on the last batch and their norm.
                after = loss.forward(model.forward(xb), yb)
                norm2 = xp.sum(step.flat.data * step.flat.data)  # inf beyond the limit
                batch_sums = xp.sum(xp.reshape(row_loss, (n_batches, batch_size)), axis=1)
                read = to_numpy(xp.concat([batch_sums, xp.stack([after, norm2])])).astype(float)
                epoch_loss, after, norm = float(read[:-2].sum()) / n, float(read[-2]), math.sqrt(float(read[-1]))
                # NaN fails the comparison too: one test for "not finite or beyond the limit"
                bad = np.flatnonzero(~(read[:-2] / sizes <= limit))
                bad_batch = int(bad[0]) if bad.size else -1

                if bad_batch >= 0 or not (after <= limit and norm <= limit):
                    step.restore(snapshot)
                    progress.close()
                    message = _divergence_message(epoch, bad_batch, epoch_loss, after, norm, limit, model.dtype,
                                                  optimizer)
                    if quiet_on_nan:
                        if verbose:
                            print(message)
                        break
                    if on_divergence == "warn":
                        warnings.warn(message, RuntimeWarning, stacklevel=3)
                        break
                    raise DivergenceError(message)

                logs = {"loss": epoch_loss}
                logs.update({m.name: _result(m, acc) for m, acc in zip(streamed, sums)})
                if Xv is not None:
                    logs.update({"val_" + k: v for k, v in _evaluate(model, loss, metrics, Xv, yv).items()})
                elif called:
                    p = to_numpy(loss.link(xp, _outputs(model, Xd, EVAL_BATCH)))
                    logs.update({m.name: float(m.fn(to_numpy(yd), p)) for m in called})
                seconds = time.perf_counter() - started
                logs.update({"lr": optimizer.current_lr(), "epoch_time": seconds, "samples_per_s": n / seconds})
                history.append(epoch, logs)
            except DivergenceError:
                raise
            except BaseException:
                # Until the epoch is recorded, any exit (KeyboardInterrupt in the middle of an
                # update, a failing metric) puts back its start: never a half-applied step.
                # (Asked of the history, not of a flag: an interrupt may land just after append.)
                if snapshot is not None and history.epoch[-1:] != [epoch]:
                    step.restore(snapshot)
                raise
            progress.end(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    except BaseException as error:
        progress.close()
        model.history = history
        _train_end(begun, error)
        raise
    model.history = history
    _train_end(begun)
    return history


def _train_end(callbacks, error=None) -> None:
    """Call every callback's on_train_end, even when one raises (CSVLogger must close its file).

    While ``error`` propagates, a failing on_train_end is noted on it (never hidden, never in its
    place); otherwise the first failure is raised once all have run.
    """
    first = None
    for cb in callbacks:
        try:
            cb.on_train_end()
        except Exception as e:
            if error is not None:
                error.add_note(f"then {type(cb).__name__}.on_train_end raised {type(e).__name__}: {e}")
            elif first is None:
                first = e
    if first is not None:
        raise first


def _divergence_limit(dtype: str) -> float:
    """The largest loss (and parameter norm) fit accepts: the square root of the dtype's largest value.

    Beyond it, squaring overflows: Adam's second moment of such a gradient, an MSE of such an
    error, the squared norm of such weights (so the norm's check is that their sum of squares
    stays finite). A loss that climbs past it (1e160 in float64, 1e20 in float32) is diverging
    even before it reaches inf.
    """
    return math.sqrt(float(np.finfo(dtype).max))


def _divergence_message(epoch, batch, value, after, norm, limit, dtype, optimizer) -> str:
    """Why training stopped and which weights were kept; epochs and batches are 1-based."""
    if batch >= 0:
        what = (f"the training loss became {value:g} in epoch {epoch + 1} (first at batch {batch + 1}: "
                f"not finite, or above {limit:.3g}, the limit for {dtype})")
        if epoch == 0 and batch == 0:
            what += "; already the starting weights gave it, so the inputs or targets are likely too large"
    else:
        what = (f"the last update of epoch {epoch + 1} made the weights diverge (the updated weights give a "
                f"loss of {after:g} on the last batch and have a norm of {norm:g}; fit accepts up to "
                f"{limit:.3g} for both in {dtype}) although the epoch's training loss was {value:g}")
    kept = f"the weights from the end of epoch {epoch}" if epoch else "the weights this fit started from"
    return (f"{what}; training stopped and {kept} were kept. Usual causes: "
            f"a learning rate too high (now {optimizer.current_lr():g}: try 10x smaller), unscaled inputs "
            "(scale them or use MLP(..., standardize=True)), or an output/loss that does not match the "
            "targets (classes need softmax_cross_entropy, 0/1 labels sigmoid_binary_cross_entropy, "
            "real values mse with a linear output).")


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


def _outputs(model, Xd, batch_size):
    """Raw outputs for all rows, ``batch_size`` rows at a time (None: one pass), in inference mode."""
    if batch_size is None:
        return model.forward(Xd)
    parts = [model.forward(Xd[a:b, ...]) for a, b in _batches(Xd.shape[0], batch_size)]
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)


def _evaluate(model, loss, metrics, Xd, yd, batch_size=EVAL_BATCH) -> dict:
    """Mean loss and metrics over a whole set, in inference mode; one host sync per quantity."""
    xp, n = model.xp, Xd.shape[0]
    total, sums, preds = 0.0, [None] * len(metrics), []
    called = any(isinstance(m, CallableMetric) for m in metrics)
    for start, stop in _batches(n, batch_size):
        z = model.forward(Xd[start:stop, ...])
        yb = yd[start:stop, ...]
        total = total + loss.forward(z, yb) * float(stop - start)
        if metrics:
            p = loss.link(xp, z)
            sums = [acc if isinstance(m, CallableMetric) else _add(acc, m.stats(xp, yb, p))
                    for m, acc in zip(metrics, sums)]
            if called:
                preds.append(to_numpy(p))
    out = {"loss": float(total) / n}
    for m, acc in zip(metrics, sums):
        out[m.name] = float(m.fn(to_numpy(yd), np.concatenate(preds))) if isinstance(m, CallableMetric) else _result(m, acc)
    return out


def predict(model, X, *, batch_size: int | None = EVAL_BATCH):
    """Predictions for X (n, n_features) -> (n, n_outputs), as arrays of the model's library.

    The loss's link is applied: class probabilities (rows summing to one) for softmax
    cross-entropy, probabilities for sigmoid cross-entropy, raw outputs for regression. A model
    without a loss (never fitted) returns raw outputs (logits), with a warning the first time.
    Rows go through the network ``batch_size`` at a time (None: all at once), so memory holds
    one batch's activations, not all of them; each row's prediction does not depend on it.
    """
    if not model.built:
        raise ValueError("the model has no weights yet: call fit first or give in_features")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    Xd = _prepare_X(model, X)
    if model.loss is None and not getattr(model, "_warned_raw_outputs", False):
        model._warned_raw_outputs = True
        warnings.warn("this model has no loss (it was never fitted), so predict returns its raw outputs "
                      "(logits), not probabilities. To get probabilities, fit it with a loss, or give it "
                      "one: model.loss = xpmlp.losses.get_loss('softmax_cross_entropy') (classes; or "
                      "'sigmoid_binary_cross_entropy' for 0/1 labels)", UserWarning, stacklevel=3)
    out = _outputs(model, Xd, batch_size)
    return out if model.loss is None else model.loss.link(model.xp, out)


def evaluate(model, X, y, *, loss=None, metrics=None, batch_size: int | None = EVAL_BATCH):
    """Mean loss over (X, y), by default with the loss the model was trained with.

    Rows go through the network ``batch_size`` at a time (None: all at once), which bounds
    memory and changes the result only by rounding.
    Returns a float, or with ``metrics`` a dict {"loss": ..., "<metric>": ...}.
    """
    if not model.built:
        raise ValueError("the model has no weights yet: call fit first or give in_features")
    if loss is None and model.loss is None:
        raise ValueError("evaluate needs a loss: pass loss=... or fit the model first")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    loss = model.loss if loss is None else get_loss(loss)
    metric_objs = [get_metric(m) for m in (metrics or [])]
    Xd = _prepare_X(model, X)
    yd = _prepare_y(model, loss, y, Xd.shape[0])
    result = _evaluate(model, loss, metric_objs, Xd, yd, Xd.shape[0] if batch_size is None else batch_size)
    return result if metrics else result["loss"]
