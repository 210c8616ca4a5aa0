"""The training loop: ``fit``, ``predict`` and ``evaluate`` (bound as Sequential methods).

The whole training set is copied to the model's device once; each epoch draws one seeded
permutation on the host, copies it over, and gathers every batch on the device with
``xp.take``. The loss, the metrics' running sums and the index of the first diverging batch
all stay on the device and are read once per epoch, together with a check of the epoch's last
update, so the loop never waits for the device between batches (the progress bar only counts
batches).

Batches from an iterable (``fit(x)`` with ``y=None``: a list of chunks, a generator, a PyTorch
``DataLoader``) are not held: each is checked and copied to the device when its turn comes (its
finiteness check is one host read per batch, next to the host-to-device copy it follows), and
its rows' losses are summed on the device and read with the rest at the end of the epoch. Both
sources give fit the same thing, an epoch's batches (``ArrayData``, ``_IterableData``),
so the loop, its callbacks, divergence checks and snapshots are the same for both.

Divergence. A batch diverges when its loss is NaN, infinite or above ``sqrt(finfo(dtype).max)``
(1.3e154 in float64, 1.8e19 in float32; see ``_divergence_limit``). Each batch's loss is
taken before its update, so the epoch's last update is checked on its own: the updated weights'
loss on the last batch (an inference pass) and their norm must stay within the same limit.
Either failure stops training and restores the snapshot taken at the start of the epoch. That
snapshot is "verified": it is the start of training, or weights that passed the previous
epoch's check (finite, a norm within the limit, a loss within the limit on a training batch),
so the model kept never holds NaN, infinite or overflowing weights. Then every callback's
``on_divergence`` is told; if one returns True (as ``TerminateOnNaN`` does) training ends
quietly, else fit raises :class:`DivergenceError` (or warns, with ``on_divergence="warn"``).

Callbacks. ``fit`` records each epoch with a :class:`~xpmlp.callbacks.History` and shows progress
with a :class:`~xpmlp.callbacks.ProgbarLogger` (when ``verbose``): ordinary callbacks, called
before the user's, in the same way.

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
import time
import warnings
import weakref
from typing import Any

import numpy as np

from .backend import is_sparse, sparse_rows, to_numpy
from .callbacks import Callback, History, ProgbarLogger
from .layers import Dense, Dropout, Standardize
from .losses import get_loss
from .metrics import CallableMetric, get_metric
from .optim import Adam, get_optimizer
from .step import make_train_step

# The public API. The other names without a leading underscore (prepare_X, prepare_y, ArrayData,
# check_options, evaluate_set, ...) are the package's internal interface to fit's parts, which
# model, chunked, lbfgs, lr_find, vitals and doctor use; names with one are this module's own.
__all__ = ["History", "DivergenceError", "fit", "predict", "evaluate"]  # History lives in callbacks

_WARNED_RAW_OUTPUTS: weakref.WeakSet = weakref.WeakSet()  # models whose predict has warned about raw outputs (once each)
#: Rows per inference batch of ``predict`` and ``evaluate``: bounds memory, does not change results.
EVAL_BATCH = 4096


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite.

    Raised by ``fit`` when an epoch diverges (a batch's loss NaN, infinite or above
    ``sqrt(finfo(dtype).max)``, or a last update that makes the weights overflow) and no
    callback's ``on_divergence`` handles it. The message says what diverged, where, and the usual
    causes. The weights from the start of that epoch are kept. A subclass of
    ``FloatingPointError``. ``fit(..., on_divergence="warn")`` warns instead;
    :class:`xpmlp.callbacks.TerminateOnNaN` ends training quietly.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_sine
    >>> X, y = make_sine(64, seed=0)
    >>> model = xpmlp.MLP([1, 8, 1], seed=0)
    >>> try:
    ...     model.fit(X, y * 1000, loss="mse", optimizer=xpmlp.SGD(lr=10.0), epochs=5, verbose=0)
    ... except xpmlp.DivergenceError as e:
    ...     print(str(e).split(" (")[0])
    the training loss became ... in epoch 1
    """


# -- input checks ---------------------------------------------------------------------------------
def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def prepare_X(model, X, what="X", *, stats=False):
    """Validate X (2-D, numeric, finite, the model's width) and copy it to the device.

    With ``stats``, also return X's largest and smallest values, taken in the same single read
    as the finiteness check (reductions only: no temporary the size of X).

    A sparse X (SciPy, or cupyx on CuPy) stays sparse: see ``_prepare_sparse_X``.
    """
    if is_sparse(X):
        return _prepare_sparse_X(model, X, what, stats)
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


def warn_if_unscaled(model, high: float, low: float, what="X", stacklevel=4) -> None:
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
                  UserWarning, stacklevel=stacklevel)


def prepare_y(model, loss, y, n_samples, what="y"):
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


def class_index(model, yd):
    """Class of each row as int64 (n,), for class weights and stratified splits."""
    xp = model.xp
    if yd.ndim == 1:
        return yd
    if yd.shape[1] == 1:  # a single sigmoid output: classes 0 and 1
        return xp.astype(yd[:, 0] > 0.5, xp.int64)
    return xp.argmax(yd, axis=1)


def sample_weights(model, loss, yd, class_weight, sample_weight):
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
    labels = class_index(model, yd)
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
    labels = to_numpy(class_index(model, yd)) if stratify else np.zeros(n)
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


def _result(metric, acc, data=None) -> float:
    if isinstance(data, _ShardedData):  # this rank's statistics: sum them over the ranks
        acc = data.sum_stats(acc)
    return metric.result([s if isinstance(s, float) else to_numpy(s) for s in acc])


# -- fit ------------------------------------------------------------------------------------------
def fit(model: Any, X: Any, y: Any = None, *, loss: Any = None, optimizer: Any = None, epochs: int = 1,
        batch_size: int = 32, shuffle: bool = True, seed: int | None = None, verbose: str | int = "auto",
        validation_data: Any = None, validation_split: float = 0.0, validation_freq: Any = 1, metrics: Any = None,
        class_weight: Any = None, sample_weight: Any = None, callbacks: Any = None, on_divergence: str = "raise",
        initial_epoch: int = 0, steps_per_epoch: int | None = None, diagnose: bool = False,
        comm: Any = None) -> History:
    """Train the model with minibatch gradient descent.

    Bound as :meth:`xpmlp.Sequential.fit` (``model.fit(X, y, ...)``), where ``model`` is the
    model itself.

    Parameters
    ----------
    model : Sequential
        The model to train (``self`` of :meth:`xpmlp.Sequential.fit`); built from X's width if
        it is not built yet.
    X : array-like of shape (n_samples, n_features), or an iterable of batches
        NumPy (or pandas, lists) for any backend, or an array of the model's own library/device.
        With ``y=None``, an iterable of ``(X, y)`` or ``(X, y, sample_weight)`` batches (a list of
        chunks, a PyTorch ``DataLoader``, a generator): see "Batches from an iterable" below.
        Data larger than memory - a NumPy memmap, a Dask array, a list of ``.npy`` chunk files or
        an :class:`xpmlp.chunked.Chunked` - is streamed in blocks (see :mod:`xpmlp.chunked`).
    y : array-like of shape (n_samples,) or (n_samples, n_outputs), optional
        (n,) integer labels or (n, k) one-hot rows for softmax cross-entropy; (n,) or (n, k)
        targets for the other losses. None when X yields the batches.
    loss : str or Loss, optional
        Required on the first call; None reuses the previous one.
    optimizer : str, Optimizer, LBFGS or None
        None continues with the previous optimiser and its state (Adam(lr=1e-3) at first);
        a name creates a fresh one with default settings. An :class:`xpmlp.LBFGS` trains full
        batch instead (see :func:`xpmlp.lbfgs.fit_lbfgs`: no epochs or batches).
    epochs : int, default=1
        The index of the last epoch, >= 1 (as in Keras): epochs ``initial_epoch .. epochs - 1`` run.
    batch_size : int, default=32
        Rows per batch of arrays, >= 1 (an iterable brings its own batches).
    shuffle : bool, default=True
        A fresh permutation every epoch (arrays only: an iterable yields batches in its own order).
    seed : int, optional
        Seeds this call's shuffles and validation split; by default they come from the model's seed.
    verbose : {"auto", 0, 1, 2}, default="auto"
        "auto" (as 1), 0 quiet, 1 a progress bar per epoch (one line per epoch when stdout is not
        a terminal), 2 one line per epoch (shown by a :class:`xpmlp.callbacks.ProgbarLogger`).
    validation_data : tuple of (X_val, y_val), optional
        A validation set, evaluated at the end of validated epochs (``val_*`` logs).
    validation_split : float, default=0.0
        In (0, 1): hold out this fraction of (X, y), shuffled and (for classification) stratified by class,
        drawn from the seed. Standardize layers learn only from the training part. Arrays only.
    validation_freq : int or collection of int, default=1
        Validate after epochs whose 1-based number is a multiple of it (or is in it), as Keras
        does; the other epochs' logs (and ``History``) have no ``val_*`` entries, and callbacks
        that monitor one skip those epochs.
    metrics : list, optional
        Names ("accuracy", "top_5_accuracy", "mse", "mae", "r2"), :class:`xpmlp.metrics.Metric`
        objects or callables ``fn(y_true, y_pred) -> float`` (run once per epoch on NumPy arrays
        of the validation set, or of the training set without one: arrays only).
    class_weight : dict or "balanced", optional
        ``{class: weight}``, or "balanced" (arrays only): each row's loss is multiplied by its
        class's weight.
    sample_weight : array-like of shape (n_samples,), optional
        Each row's loss is multiplied by its weight (and by its class's weight). An iterable's
        batches carry their own, as a third element.
    callbacks : list of Callback, optional
        :class:`xpmlp.callbacks.Callback` objects, called after fit's own History (and ProgbarLogger), with the same hooks.
    on_divergence : {"raise", "warn"}, default="raise"
        What to do when training diverges (a loss NaN, infinite or beyond the dtype's limit, or a
        last update that makes the weights overflow; see the module notes) and no callback's
        ``on_divergence`` handles it (``TerminateOnNaN`` ends training quietly): raise
        :class:`DivergenceError`, or warn and stop. Either way the weights from the end of the last
        good epoch (or those fit started from) are kept.
    initial_epoch : int, default=0
        The epoch to start at, >= 0 (to resume a training): callbacks, the history, schedules by epoch
        and the progress display see the true epoch numbers. Nothing runs when it is >= epochs.
    steps_per_epoch : int, optional
        Batches per epoch, >= 1, drawn from an iterable X (required when X has no length, e.g. a
        generator): they come from one iterator that carries on from epoch to epoch.
    diagnose : bool, default=False
        Run the MLP doctor: before training, the cheap checks of :func:`xpmlp.diagnose` on X and y
        (arrays only: an iterable of batches skips them), and during training the checks of
        :class:`xpmlp.vitals.Vitals` (once per epoch, on a fixed sample of 256 training rows, or
        of the first batch of an iterable). Each finding is issued as a
        :class:`xpmlp.DoctorWarning`; all of them are kept in ``history.doctor`` (a
        :class:`xpmlp.Report`; None without ``diagnose``). Training itself is unchanged.
    comm : Communicator, optional
        An :class:`xpmlp.distributed.Communicator`.
        Data-parallel training over the processes of ``comm`` (e.g. ``xpmlp.distributed.mpi()``
        under ``mpiexec -n N``), arrays X, y only, the same on every process. ``batch_size`` stays
        the global batch: each batch of the epoch's permutation (the same on every rank: without
        ``seed``, rank 0's is broadcast) is split into ``comm.size`` contiguous shards (sizes
        differing by at most one), each rank runs forward and backward on its shard, and one
        all-reduce per step gives every rank the gradient of the whole batch (weighted by shard
        size), so the optimiser runs identically everywhere and the run equals one process with
        the same batch (up to rounding; each rank's Dropout masks are its rows of the whole batch's
        masks, so Dropout too). The weights start as rank 0's.
        Each epoch's logs (loss and metrics summed over ranks, validation on the whole validation
        set) are rank 0's on every rank, so callbacks decide the same; only rank 0 shows progress.
        An exception on one rank prints it and aborts every rank (``comm.fail``), never a hang.
        None or a single-process communicator: the ordinary fit.

    Returns
    -------
    History
        One entry per epoch (``history.history["loss"]`` and so on), also kept as ``model.history``.

    Raises
    ------
    DivergenceError
        When training diverges and neither a callback nor ``on_divergence="warn"`` handles it.
    ValueError
        For a bad option or bad data (shapes, non-finite values, labels that do not suit the
        loss, a monitored name that is not logged, ...), before training starts.
    TypeError
        For data or options of the wrong type.
    DeviceMismatchError
        For arrays of another library or device than the model's.

    See Also
    --------
    predict, evaluate, xpmlp.callbacks

    Notes
    -----
    Batches from an iterable: each batch is checked (as X and y are) and copied to the device
    when it is used, so the data never has to fit on the device. An iterable with a length (a
    list, a ``DataLoader``) is read afresh each epoch; otherwise ``steps_per_epoch`` batches are
    drawn per epoch from one iterator, and if it runs out, fit warns and ends training after that
    epoch (as Keras does). PyTorch CPU tensors are read as NumPy arrays on models of other
    libraries. Standardize layers must be adapted beforehand (``layer.adapt(X_sample)``).

    Whatever ends fit early (divergence, ``KeyboardInterrupt``, an exception in a callback), the
    model is left at the end of the last epoch in ``model.history``, every callback's
    ``on_train_end`` runs, and the exception propagates.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(256, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], seed=0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01),
    ...                     epochs=20, verbose=0, validation_split=0.2, metrics=["accuracy"])
    >>> sorted(history.history)
    ['accuracy', 'epoch_time', 'loss', 'lr', 'samples_per_s', 'val_accuracy', 'val_loss']
    >>> len(history.epoch), history["val_accuracy"][-1] > 0.9
    (20, True)
    """
    from .lbfgs import LBFGS, fit_lbfgs  # here: lbfgs imports this module

    if isinstance(optimizer, LBFGS):  # full batch: its own loop, one History entry per iteration
        if y is None or initial_epoch or steps_per_epoch is not None or validation_freq != 1:
            raise ValueError("LBFGS trains on arrays X, y, all rows at once: it takes no iterable of batches, "
                             "initial_epoch, steps_per_epoch or validation_freq")
        history = fit_lbfgs(model, optimizer, X, y, loss=loss, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                            seed=seed, verbose=verbose, validation_data=validation_data,
                            validation_split=validation_split, metrics=metrics, class_weight=class_weight,
                            sample_weight=sample_weight, on_divergence=on_divergence,
                            callbacks=[*(callbacks or []), *_doctor(diagnose, None, X, y, shuffle, validation_data)])
        return history
    epochs, batch_size = positive_int(epochs, "epochs"), positive_int(batch_size, "batch_size")
    loss, optimizer, metrics, callbacks = check_options(model, loss, optimizer, metrics, callbacks, on_divergence,
                                                         validation_data, validation_split)
    verbose, validates = _check_keras_options(verbose, initial_epoch, epochs, validation_freq, validation_data,
                                              validation_split)
    comm, seed, verbose = _distributed(comm, model, y, steps_per_epoch, seed, verbose)
    data = _ShardedData.of(comm, _training_data(model, loss, X, y, batch_size, shuffle, seed, validation_data,
                                                validation_split, class_weight, sample_weight, steps_per_epoch, metrics))
    xp, streamed = model.xp, [m for m in metrics if not isinstance(m, CallableMetric)]
    history = History()  # with diagnose, fit's Vitals puts its Report in history.doctor as training ends
    callbacks = [history, *([ProgbarLogger()] if verbose else []),
                 *_doctor(diagnose, data, X, y, shuffle, validation_data), *callbacks]
    params, log_keys = _params(verbose, epochs, data.steps, comm), epoch_log_keys(metrics, data.Xv is not None)
    for cb in callbacks:
        cb.model, cb.params = model, params
        cb.check(log_keys)
    # per batch, only the callbacks that define on_batch_end: the others' calls would do nothing
    batch_hooks = [cb for cb in callbacks if type(cb).on_batch_end is not Callback.on_batch_end]

    data.adapt()
    model.loss, model.optimizer, model.stop_training, model.history = loss, optimizer, False, history
    step = make_train_step(model, loss, optimizer)
    _ShardedData.start(data, step)  # with comm: rank 0's weights, the all-reduce between backward and update
    begun = []  # callbacks whose on_train_begin ran: only they get on_train_end
    try:
        for cb in callbacks:
            cb.on_train_begin()
            begun.append(cb)
        for epoch in range(initial_epoch, epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            saved = step.snapshot()
            try:
                started = time.perf_counter()
                sums = [None] * len(streamed)
                for batch, (xb, yb, wb, row_loss) in enumerate(data.epoch()):
                    z = step(xb, yb, wb, row_loss)
                    if streamed:
                        p = loss.link(xp, z)
                        sums = [_add(acc, m.stats(xp, yb, p)) for m, acc in zip(streamed, sums)]
                    for cb in batch_hooks:
                        cb.on_batch_end(batch)  # counts only: reading the loss would wait for the device
                if not data.rows:
                    break  # an iterator that ran out before this epoch's first batch (fit warned)
                epoch_loss, message = _read_epoch(model, loss, step, data, xb, yb, epoch, initial_epoch)
                if message is not None:
                    step.restore(saved)
                    report_divergence(callbacks, on_divergence, epoch, message)  # raises, unless told to stop
                    break

                logs = {"loss": epoch_loss, **{m.name: _result(m, acc, data) for m, acc in zip(streamed, sums)}}
                logs.update(_whole_set_logs(model, loss, metrics, data, validates(epoch)))
                seconds = time.perf_counter() - started
                logs.update({"lr": optimizer.current_lr(), "epoch_time": seconds, "samples_per_s": data.rows / seconds})
                logs = data.same_logs(logs) if comm is not None else logs  # callbacks decide the same everywhere
                for cb in callbacks:  # History first: from there on the epoch is recorded
                    cb.on_epoch_end(epoch, logs)
            except DivergenceError:
                raise  # its epoch is already put back
            except BaseException:
                # Until the epoch is recorded, any exit (KeyboardInterrupt in the middle of an
                # update, a failing metric) puts back its start: never a half-applied step.
                # (Asked of the history, not of a flag: an interrupt may land just after append.)
                if history.epoch[-1:] != [epoch]:
                    step.restore(saved)
                raise
            if model.stop_training:
                break
    except BaseException as error:
        end_training(begun, error)
        _ShardedData.fail(data, error)
        raise
    end_training(begun)
    return history


def _params(verbose, epochs, steps, comm) -> dict:
    """The callbacks' ``params``: with ``comm``, this process's ``rank`` of ``size`` (only rank 0 writes files)."""
    return {"verbose": verbose, "epochs": epochs, "steps": steps, "rank": 0 if comm is None else comm.rank,
            "size": 1 if comm is None else comm.size}


def _distributed(comm, model, y, steps_per_epoch, seed, verbose):
    """fit's ``comm``, checked: (None for one process, else the communicator; the seed, the same on every
    rank; verbose, 0 except on rank 0)."""
    comm = _check_comm(comm, y, steps_per_epoch)
    if comm is None:
        return None, seed, verbose
    if seed is None:  # every rank must draw the same permutations and validation split
        seed = _shared_seed(comm, model)
    return comm, seed, verbose if comm.rank == 0 else 0


def _check_comm(comm, y, steps_per_epoch):
    if comm is None:
        return None
    missing = [a for a in ("rank", "size", "allreduce_mean", "broadcast", "allreduce_sum_host", "fail")
               if not hasattr(comm, a)]
    if missing:
        raise TypeError(f"comm must be an xpmlp.distributed.Communicator (e.g. xpmlp.distributed.mpi()), "
                        f"got {type(comm).__name__} without {', '.join(missing)}")
    if comm.size == 1:
        return None
    if y is None or steps_per_epoch is not None:
        raise ValueError("fit with comm over several processes trains on arrays X, y (the same on every process), "
                         "not an iterable of batches")
    return comm


def _shared_seed(comm, model) -> int:
    """A seed drawn by rank 0 from the model's shuffling generator, the same on every rank."""
    seed = np.array([model.shuffle_rng.integers(2**62) if comm.rank == 0 else 0], dtype=np.int64)
    comm.broadcast(seed, 0)
    return int(seed[0])


class _ShardedData:
    """An ``ArrayData`` (or out-of-core ``xpmlp.chunked.ChunkedData``) seen by one rank of a
    data-parallel fit: each global batch of the epoch's permutation is cut into ``comm.size``
    contiguous shards, and this rank trains on its own (the inner data's ``epoch(shard=)`` gives it).

    Each row's loss lands in the global batch's place of ``row_loss``, so the per-batch sums,
    summed over ranks, are the one-process sums; ``reduce_grad`` (the train step's hook) weights
    this rank's gradient (its shard's mean) by its share of the batch before the all-reduce.
    """

    def __init__(self, data, comm):
        if data.rows < comm.size:
            raise ValueError(f"fit over {comm.size} processes needs at least as many training rows, got {data.rows}")
        self.inner, self.comm = data, comm
        self.scale, self.last_rows = 1.0, None

    @classmethod
    def of(cls, comm, data):
        """data, or with a communicator of several ranks this rank's view of it."""
        return data if comm is None else cls(data, comm)

    @staticmethod
    def start(data, step) -> None:
        """As training starts: rank 0's weights everywhere, and the step's all-reduce hook (no-op for
        other data)."""
        if isinstance(data, _ShardedData):
            data.comm.broadcast(step.flat.data, 0)
            dropouts = [layer for layer in data.inner.model.layers if isinstance(layer, Dropout)]
            if dropouts:  # rank 0's mask streams too (keys are below 2**63: int64 holds them)
                state = np.array([[layer.key, layer.counter] for layer in dropouts], dtype=np.int64)
                data.comm.broadcast(state, 0)
                for layer, (key, counter) in zip(dropouts, state.tolist()):
                    layer.key, layer.counter = int(key), int(counter)
            step.reduce_grad = data.reduce_grad

    @staticmethod
    def fail(data, error) -> None:
        """fit raised on this rank: abort every rank (the others may wait in a collective). Not for a
        divergence, which every rank detects together and raises."""
        if isinstance(data, _ShardedData) and not isinstance(error, DivergenceError):
            data.comm.fail(error)

    def __getattr__(self, name):  # rows, steps, X, y, Xv, yv, adapt: the whole set's
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _shard(self, start: int, stop: int):
        n, size, rank = stop - start, self.comm.size, self.comm.rank
        q, r = divmod(n, size)  # the first r shards have one row more
        lo = start + rank * q + min(rank, r)
        return lo, lo + q + (rank < r)

    def epoch(self):
        d = self.inner
        dropouts = [layer for layer in d.model.layers if isinstance(layer, Dropout)]
        try:
            # the inner data yields this rank's rows of each global batch, in the global batches' order
            # the inner epoch first in zip: it is run to its end (its clean-up included) before zip stops
            for batch, (start, stop) in zip(d.epoch(shard=self._shard), _batches(d.rows, d.batch_size)):
                lo, hi = self._shard(start, stop)
                # allreduce_mean divides by size: size * n_r / B makes it the batch's mean gradient
                self.scale = self.comm.size * (hi - lo) / (stop - start)
                for layer in dropouts:  # this shard's rows of the whole batch's masks
                    layer.row_offset = lo - start
                if hi > lo:
                    self.last_rows = batch[0], batch[1]
                yield batch
        finally:
            for layer in dropouts:
                layer.row_offset = 0

    def reduce_grad(self, grad) -> None:
        if self.scale != 1.0:
            grad *= self.scale
        self.comm.allreduce_mean(grad)

    def batch_losses(self):
        sums, sizes = self.inner.batch_losses()
        host = self.comm.allreduce_sum_host(to_numpy(sums).astype(np.float64))
        return self.inner.model.backend.from_host(host.astype(to_numpy(sums).dtype)), sizes

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` on every rank."""
        return not self.comm.allreduce_sum_host(np.array([not ok], dtype=np.float64))[0]

    def sum_stats(self, acc):
        """A streamed metric's statistics, summed over ranks (host floats)."""
        if acc is None:
            return acc
        return [self.comm.allreduce_sum_host(np.asarray(s if isinstance(s, float) else to_numpy(s), dtype=np.float64))
                for s in acc]

    def same_logs(self, logs: dict) -> dict:
        """Rank 0's logs on every rank (the validation metrics agree up to rounding already)."""
        values = np.array([float(v) for v in logs.values()], dtype=np.float64)
        self.comm.broadcast(values, 0)
        return dict(zip(logs, (float(v) for v in values)))


def _doctor(diagnose: bool, data, X, y, shuffle, validation_data) -> list:
    """fit(diagnose=True)'s callback: a :class:`xpmlp.vitals.Vitals` that, as training begins, also runs
    the pre-training checks (arrays only) and, as it ends, keeps every finding in ``history.doctor``."""
    if not diagnose:
        return []
    from .vitals import FitVitals

    if data is None:  # L-BFGS: the arrays as given
        return [FitVitals(None, (X, y, shuffle, validation_data), X, y)]
    if data.X is None:  # an iterable: the sample comes from its first batch; no checks before training
        return [FitVitals((data.pending[0], data.pending[1], data.pending[2] is not None))]
    return [FitVitals((data.X, data.y, data.weights is not None), (X, y, shuffle, validation_data))]


def check_options(model, loss, optimizer, metrics, callbacks, on_divergence, validation_data, validation_split):
    """fit's options, each checked before the first update: (loss, optimizer, metrics, callbacks) as objects."""
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
    return loss, optimizer, metrics, callbacks


def prepare_data(model, loss, X, y, seed, validation_data, validation_split, class_weight, sample_weight,
                  stacklevel=5):
    """Check the data, build the model if needed, and copy the data to the device.

    Returns (X, y, sample weights or None, X_val or None, y_val or None, the shuffling rng).
    """
    Xd, high, low = prepare_X(model, X, stats=True)
    if not model.built:
        model.build(Xd.shape[1])
    warn_if_unscaled(model, high, low, stacklevel=stacklevel)
    yd = prepare_y(model, loss, y, Xd.shape[0])
    weights = sample_weights(model, loss, yd, class_weight, sample_weight)
    xp = model.xp
    rng = np.random.default_rng(seed) if seed is not None else model.shuffle_rng
    Xv = yv = None
    if validation_split:
        train_rows, val_rows = _split(model, loss, yd, validation_split, rng)
        train_idx, val_idx = model.backend.from_host(train_rows), model.backend.from_host(val_rows)
        Xv, yv = take_rows(xp, Xd, val_idx), xp.take(yd, val_idx, axis=0)
        Xd, yd = take_rows(xp, Xd, train_idx), xp.take(yd, train_idx, axis=0)
        weights = None if weights is None else xp.take(weights, train_idx, axis=0)
    elif validation_data is not None:
        Xv, yv = validation_arrays(model, loss, validation_data)
    return Xd, yd, weights, Xv, yv, rng


def validation_arrays(model, loss, validation_data):
    """``validation_data`` (X_val, y_val) checked and on the device, or (None, None)."""
    if validation_data is None:
        return None, None
    Xv = prepare_X(model, validation_data[0], what="X_val")
    return Xv, prepare_y(model, loss, validation_data[1], Xv.shape[0], what="y_val")


def refuse_unadapted(model, source: str) -> None:
    """Standardize layers learn their scaling from the whole training set: refuse one not adapted yet
    when the data comes in parts (``source`` says how, with its verb: "X read in chunks does")."""
    pending = [i for i, layer in enumerate(model.layers) if hasattr(layer, "adapt") and not layer.adapted]
    if pending:
        raise ValueError(f"model.layers[{pending[0]}] ({type(model.layers[pending[0]]).__name__}) learns its "
                         f"scaling from the whole training set, which {source} not give at once: call "
                         f"model.layers[{pending[0]}].adapt(sample) first, with a representative sample of its "
                         "inputs as an array of the model's library and dtype")


def _check_keras_options(verbose, initial_epoch, epochs, validation_freq, validation_data, validation_split):
    """fit's Keras options, checked: (verbose as 0, 1 or 2; validates(epoch) -> bool, epochs from 0)."""
    if isinstance(verbose, str) and verbose == "auto":
        verbose = 1  # as Keras 3: a bar on a terminal, and ProgbarLogger prints lines elsewhere
    if isinstance(verbose, str) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
        raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
    if isinstance(validation_freq, (int, np.integer)) and not isinstance(validation_freq, bool):
        freq = positive_int(validation_freq, "validation_freq")
        validates = lambda epoch: (epoch + 1) % freq == 0  # noqa: E731 (1-based epochs, as Keras)
        any_validated = epochs // freq > initial_epoch // freq
    elif isinstance(validation_freq, (list, tuple, set, frozenset, range)):
        chosen = {positive_int(e, "each epoch of validation_freq") for e in validation_freq}
        validates = lambda epoch: epoch + 1 in chosen  # noqa: E731
        any_validated = any(initial_epoch < e <= epochs for e in chosen)
    else:
        raise ValueError(f"validation_freq must be a positive integer or a list of epoch numbers (from 1), "
                         f"got {validation_freq!r}")
    if (validation_data is not None or validation_split) and initial_epoch < epochs and not any_validated:
        warnings.warn(f"validation_freq={validation_freq!r} validates none of the epochs this fit runs "
                      f"({initial_epoch + 1} to {epochs}, counting from 1), so nothing is validated",
                      UserWarning, stacklevel=4)
    return int(verbose), validates


def _training_data(model, loss, X, y, batch_size, shuffle, seed, validation_data, validation_split, class_weight,
                   sample_weight, steps_per_epoch, metrics):
    """fit's data as batches for each epoch: an ``ArrayData`` (X and y) or an ``_IterableData`` (y None)."""
    if steps_per_epoch is not None:
        steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
    if y is None:
        return _IterableData(model, loss, X, steps_per_epoch, validation_data, validation_split, class_weight,
                             sample_weight, metrics)
    if steps_per_epoch is not None:
        raise ValueError("steps_per_epoch is for x given as an iterable of batches (with y=None); "
                         "with arrays, batch_size sets the batches per epoch")
    from .chunked import ChunkedData, is_out_of_core  # here: chunked imports this module

    if is_out_of_core(X):  # a memmap, a Dask array, .npy chunk files: streamed (see xpmlp.chunked)
        return ChunkedData(model, loss, X, y, batch_size, shuffle, seed, validation_data, validation_split,
                            class_weight, sample_weight, metrics)
    return ArrayData(model, *prepare_data(model, loss, X, y, seed, validation_data, validation_split,
                                            class_weight, sample_weight, stacklevel=6), batch_size, shuffle)


class ArrayData:
    """Training arrays copied to the device once; each epoch's batches gathered from one seeded permutation.

    The interface fit uses, shared with ``_IterableData``: ``epoch()`` yields each batch's
    (X, y, weights or None, the array that receives its rows' losses); then ``batch_losses()``
    gives each batch's loss sum (on the device) and size (on the host), and ``rows`` the rows
    trained on; ``Xv, yv`` the validation set (or None); ``X, y`` the training set (or None);
    ``steps`` the batches per epoch; ``adapt()`` readies Standardize layers.
    """

    def __init__(self, model, Xd, yd, weights, Xv, yv, rng, batch_size, shuffle):
        self.model, self.X, self.y, self.weights, self.Xv, self.yv = model, Xd, yd, weights, Xv, yv
        self.rng, self.batch_size, self.shuffle = rng, batch_size, shuffle
        self.rows = Xd.shape[0]
        self.steps = math.ceil(self.rows / batch_size)
        # Each row's loss goes here, batch by batch; rows past n stay 0, so a reshape gives the
        # per-batch sums, read once per epoch (the short last batch's size is in `sizes`).
        backend = model.backend
        self.row_loss = model.xp.zeros(self.steps * batch_size, dtype=backend.dtype(model.dtype), device=backend.device)
        self.sizes = np.array([stop - start for start, stop in _batches(self.rows, batch_size)], dtype=float)

    def adapt(self) -> None:
        adapt_inputs(self.model, self.X)

    def epoch(self, shard=None):
        """Each batch's (X, y, weights or None, row losses); with ``shard`` (global batch start, stop ->
        this rank's lo, hi: see ``_ShardedData``), only rows lo:hi of each batch."""
        order = self.model.backend.from_host(self.rng.permutation(self.rows)) if self.shuffle else None
        for start, stop in _batches(self.rows, self.batch_size):
            lo, hi = (start, stop) if shard is None else shard(start, stop)
            yield (*_rows(self.model.xp, (self.X, self.y, self.weights), order, lo, hi), self.row_loss[lo:hi])

    def batch_losses(self):
        xp = self.model.xp
        return xp.sum(xp.reshape(self.row_loss, (self.steps, self.batch_size)), axis=1), self.sizes


class _IterableData:
    """Batches of an iterable of (X, y) or (X, y, sample_weight), each checked and copied to the device when used.

    Without ``steps_per_epoch`` the iterable needs a length and is read afresh each epoch; with
    it, each epoch draws that many batches from one iterator, which carries on across epochs (a
    sized iterable starts again once its batches are used up at the end of an epoch, as in Keras).
    When the iterator runs out within an epoch, fit warns (Keras's words) and stops after that
    epoch. The first batch is drawn at once: it builds the model and shows the data's width.
    Same interface as ``ArrayData``; ``X, y`` are None (no training set held).
    """

    def __init__(self, model, loss, x, steps_per_epoch, validation_data, validation_split, class_weight,
                 sample_weight, metrics):
        if hasattr(x, "shape") or isinstance(x, (str, bytes, dict)):
            raise ValueError("y is missing: give y, or give x as an iterable of (X, y) or (X, y, sample_weight) "
                             "batches")
        for given, why in (
                (validation_split, "validation_split needs arrays (X and y); give validation_data=(X_val, y_val)"),
                (sample_weight is not None, "put each batch's weights in the batch, as (X, y, sample_weight), "
                                            "not in sample_weight"),
                (isinstance(class_weight, str), "class_weight='balanced' needs all of y to count the classes; "
                                                "give a dict {class: weight}"),
                (validation_data is None and any(isinstance(m, CallableMetric) for m in metrics),
                 "metrics given as functions run on a whole set once per epoch; give validation_data")):
            if given:
                raise ValueError(f"x is an iterable of batches: {why}")
        try:
            self.iterator = iter(x)
        except TypeError:
            raise TypeError(f"with y=None, x must be an iterable of (X, y) or (X, y, sample_weight) batches, "
                            f"got {type(x).__name__}") from None
        try:
            self.length = None if self.iterator is x else len(x)  # an iterator's length says nothing of the next epoch
        except TypeError:
            self.length = None
        if steps_per_epoch is None and self.length is None:
            raise ValueError(f"x ({type(x).__name__}) has no length (a generator, an iterator), so fit needs "
                             "steps_per_epoch: the batches to draw per epoch (x must then yield at least "
                             "steps_per_epoch * epochs of them)")
        self.model, self.loss, self.x, self.class_weight = model, loss, x, class_weight
        self.steps_per_epoch, self.steps = steps_per_epoch, steps_per_epoch or self.length
        self.X = self.y = None
        try:
            first = next(self.iterator)
        except StopIteration:
            raise ValueError("x yielded no batches") from None
        self.drawn = self.count = 1  # batches from the current iterator, and in all
        self.rows, self.sizes, self.sums = 0, [], []  # the last epoch's rows, batch sizes and loss sums
        self.pending = self._prepare(first, first=True)
        refuse_unadapted(model, "batches from an iterable do")
        self.Xv, self.yv = validation_arrays(model, loss, validation_data)

    def adapt(self) -> None:
        pass  # refused in __init__ unless already done

    def epoch(self):
        xp, backend = self.model.xp, self.model.backend
        self.sums, self.sizes, self.rows = [], [], 0
        if self.iterator is None:
            self.iterator, self.drawn = iter(self.x), 0
        while self.steps_per_epoch is None or len(self.sizes) < self.steps_per_epoch:
            raw = self.pending if self.pending is not None else self._next()
            if raw is None:
                break
            xb, yb, wb = raw if raw is self.pending else self._prepare(raw)
            self.pending = None
            row_loss = xp.zeros(xb.shape[0], dtype=backend.dtype(self.model.dtype), device=backend.device)
            yield xb, yb, wb, row_loss
            self.sums.append(xp.sum(row_loss))
            self.sizes.append(xb.shape[0])
            self.rows += xb.shape[0]
        if self.steps_per_epoch is None or (self.length is not None and self.drawn >= self.length):
            self.iterator = None  # the next epoch reads x afresh

    def batch_losses(self):
        return self.model.xp.stack(self.sums), np.array(self.sizes, dtype=float)

    def _next(self):
        """The iterator's next item, or None when it is used up (mid-epoch with steps_per_epoch: warn, stop)."""
        try:
            raw = next(self.iterator)
        except StopIteration:
            if self.steps_per_epoch is not None:
                warnings.warn(f"Your input ran out of data; interrupting training: x gave {self.count} batches "
                              f"in all, and this epoch {len(self.sizes)} of "
                              f"steps_per_epoch={self.steps_per_epoch}. Training stops after this epoch. Make sure "
                              "that x can generate at least steps_per_epoch * epochs batches.", UserWarning,
                              stacklevel=5)
                self.model.stop_training = True
            return None
        self.drawn, self.count = self.drawn + 1, self.count + 1
        return raw

    def _prepare(self, raw, first=False):
        """A batch checked and copied to the device: (X, y, row weights or None)."""
        model, what = self.model, f"batch {self.count} of x"
        if not isinstance(raw, (tuple, list)) or len(raw) not in (2, 3):
            got = f" of {len(raw)} items" if isinstance(raw, (tuple, list)) else ""
            raise ValueError(f"{what} is a {type(raw).__name__}{got}: x must yield (X, y) or (X, y, sample_weight)")
        Xb, yb, wb = (_batch_array(model, a) for a in (*raw, None)[:3])
        if first:
            Xd, high, low = prepare_X(model, Xb, what=f"X of {what}", stats=True)
            if not model.built:
                model.build(Xd.shape[1])
            warn_if_unscaled(model, high, low, what="X", stacklevel=7)
        else:
            Xd = prepare_X(model, Xb, what=f"X of {what}")
        yd = prepare_y(model, self.loss, yb, Xd.shape[0], what=f"y of {what}")
        return Xd, yd, sample_weights(model, self.loss, yd, self.class_weight, wb)


def _batch_array(model, a):
    """One array of a batch as fit takes it: a PyTorch CPU tensor (what a DataLoader yields) is read as
    NumPy, without a copy, on a model of another library (the backend refuses foreign arrays)."""
    if type(a).__module__.split(".")[0] == "torch" and model.backend.name != "torch" and a.device.type == "cpu":
        return to_numpy(a)
    return a


def _whole_set_logs(model, loss, metrics, data, validate: bool) -> dict:
    """The epoch's logs computed on a whole set: validation loss and metrics (when ``validate``), or
    without validation data, the callable metrics on the training set."""
    if data.Xv is not None:
        return {"val_" + k: v for k, v in evaluate_set(model, loss, metrics, data.Xv, data.yv).items()} if validate else {}
    called = [m for m in metrics if isinstance(m, CallableMetric)]
    if not called:
        return {}
    p = to_numpy(loss.link(model.xp, _outputs(model, data.X, EVAL_BATCH)))
    return {m.name: float(m.fn(to_numpy(data.y), p)) for m in called}


def epoch_log_keys(metrics, validation: bool) -> list[str]:
    """The names each epoch's logs hold, in order (what callbacks may monitor)."""
    streamed = [m.name for m in metrics if not isinstance(m, CallableMetric)]
    keys = ["loss", *streamed]
    if validation:
        keys += ["val_loss", *("val_" + m.name for m in metrics)]
    else:
        keys += [m.name for m in metrics if isinstance(m, CallableMetric)]
    return keys + ["lr", "epoch_time", "samples_per_s"]


def _rows(xp, arrays, order, start, stop):
    """Rows start:stop of each array (None stays None): of the epoch's device permutation ``order``
    when shuffling, gathered on the device, else a slice."""
    if order is None:
        return [None if a is None else a[start:stop, ...] for a in arrays]
    idx = order[start:stop]
    return [None if a is None else take_rows(xp, a, idx) for a in arrays]


def _read_epoch(model, loss, step, data, xb, yb, epoch, first_epoch=0):
    """The epoch's one host read: (mean training loss, None, or why the epoch diverged).

    It reads each batch's loss sum (``data.batch_losses()``) and a check of the last update
    (never evaluated by the batches' losses, which come before each update): the loss of the
    updated weights on the last batch ``xb, yb`` and their norm. ``first_epoch`` is fit's first.
    """
    if isinstance(data, _ShardedData):  # this rank's last shard may be empty: check on its last rows
        xb, yb = data.last_rows
    xp, limit = model.xp, _divergence_limit(model.dtype)
    batch_sums, sizes = data.batch_losses()
    after = loss.forward(model.forward(xb), yb)
    norm2 = xp.sum(step.flat.data * step.flat.data)  # inf beyond the limit
    read = to_numpy(xp.concat([batch_sums, xp.stack([after, norm2])])).astype(float)
    epoch_loss, after, norm = float(read[:-2].sum()) / float(sizes.sum()), float(read[-2]), math.sqrt(float(read[-1]))
    # NaN fails the comparison too: one test for "not finite or beyond the limit"
    bad = np.flatnonzero(~(read[:-2] / sizes <= limit))
    bad_batch = int(bad[0]) if bad.size else -1
    ok = bad_batch < 0 and after <= limit and norm <= limit
    # the check of the last update differs by shard: every rank stops when one does (a collective: always asked)
    if isinstance(data, _ShardedData) and not data.all_ok(ok) and ok:
        return epoch_loss, f"training diverged on another process in epoch {epoch + 1} (see its message)"
    if ok:
        return epoch_loss, None
    return epoch_loss, _divergence_message(epoch, bad_batch, epoch_loss, after, norm, limit, model.dtype,
                                           step.optimizer, first_epoch)


def report_divergence(callbacks, on_divergence: str, epoch: int, message: str) -> None:
    """Tell every callback; unless one of them handles it (returns True), warn or raise as fit was asked."""
    if any([cb.on_divergence(epoch, message) for cb in callbacks]):  # a list: every callback hears of it
        return
    if on_divergence == "raise":
        raise DivergenceError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def end_training(callbacks, error=None) -> None:
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


def _divergence_message(epoch, batch, value, after, norm, limit, dtype, optimizer, first_epoch=0) -> str:
    """Why training stopped and which weights were kept; epochs and batches are 1-based."""
    if batch >= 0:
        what = (f"the training loss became {value:g} in epoch {epoch + 1} (first at batch {batch + 1}: "
                f"not finite, or above {limit:.3g}, the limit for {dtype})")
        if epoch == first_epoch and batch == 0:
            what += "; already the starting weights gave it, so the inputs or targets are likely too large"
    else:
        what = (f"the last update of epoch {epoch + 1} made the weights diverge (the updated weights give a "
                f"loss of {after:g} on the last batch and have a norm of {norm:g}; fit accepts up to "
                f"{limit:.3g} for both in {dtype}) although the epoch's training loss was {value:g}")
    kept = f"the weights from the end of epoch {epoch}" if epoch > first_epoch else "the weights this fit started from"
    return (f"{what}; training stopped and {kept} were kept. Usual causes: "
            f"a learning rate too high (now {optimizer.current_lr():g}: try 10x smaller), unscaled inputs "
            "(scale them or use MLP(..., standardize=True)), or an output/loss that does not match the "
            "targets (classes need softmax_cross_entropy, 0/1 labels sigmoid_binary_cross_entropy, "
            "real values mse with a linear output).")


def adapt_inputs(model, Xd) -> None:
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


def evaluate_set(model, loss, metrics, Xd, yd, batch_size=EVAL_BATCH) -> dict:
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


def predict(model: Any, X: Any, *, batch_size: int | None = EVAL_BATCH) -> Any:
    """Predictions for X (n, n_features) -> (n, n_outputs), as arrays of the model's library.

    Bound as :meth:`xpmlp.Sequential.predict`. The loss's link is applied: class probabilities
    (rows summing to one) for softmax cross-entropy, probabilities for sigmoid cross-entropy, raw
    outputs for regression. A model without a loss (never fitted) returns raw outputs (logits),
    with a warning the first time.

    Parameters
    ----------
    model : Sequential
        A built model (``self`` of :meth:`xpmlp.Sequential.predict`).
    X : array-like of shape (n_samples, n_features)
        Host data, or an array of the model's library and device.
    batch_size : int or None, default=EVAL_BATCH
        Rows go through the network ``batch_size`` at a time (None: all at once), so memory holds
        one batch's activations, not all of them; each row's prediction does not depend on it.

    Returns
    -------
    y_pred : array of shape (n_samples, n_outputs)
        An array of the model's library, on its device (:func:`xpmlp.to_numpy` copies it to NumPy).

    Raises
    ------
    ValueError
        If the model is not built, ``batch_size`` is not a positive integer, or X is malformed.
    DeviceMismatchError
        For an array of another library or device than the model's.

    Examples
    --------
    >>> import numpy as np
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(256, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], seed=0)
    >>> _ = model.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0)
    >>> proba = xpmlp.to_numpy(model.predict(X[:5]))
    >>> proba.shape, bool(np.allclose(proba.sum(axis=1), 1.0))
    ((5, 2), True)
    """
    if not model.built:
        raise ValueError("the model has no weights yet: call fit first or give in_features")
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size")
    Xd = prepare_X(model, X)
    if model.loss is None and model not in _WARNED_RAW_OUTPUTS:
        _WARNED_RAW_OUTPUTS.add(model)
        warnings.warn("this model has no loss (it was never fitted), so predict returns its raw outputs "
                      "(logits), not probabilities. To get probabilities, fit it with a loss, or give it "
                      "one: model.loss = xpmlp.losses.get_loss('softmax_cross_entropy') (classes; or "
                      "'sigmoid_binary_cross_entropy' for 0/1 labels)", UserWarning, stacklevel=3)
    out = _outputs(model, Xd, batch_size)
    return out if model.loss is None else model.loss.link(model.xp, out)


def evaluate(model: Any, X: Any, y: Any, *, loss: Any = None, metrics: Any = None,
             batch_size: int | None = EVAL_BATCH) -> float | dict[str, float]:
    """Mean loss over (X, y), by default with the loss the model was trained with.

    Bound as :meth:`xpmlp.Sequential.evaluate`.

    Parameters
    ----------
    model : Sequential
        A built model (``self`` of :meth:`xpmlp.Sequential.evaluate`).
    X : array-like of shape (n_samples, n_features)
        Inputs.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Targets, as ``fit`` takes them.
    loss : str or Loss, optional
        By default the model's loss.
    metrics : list, optional
        Metric names or :class:`xpmlp.metrics.Metric` objects to compute too.
    batch_size : int or None, default=EVAL_BATCH
        Rows go through the network ``batch_size`` at a time (None: all at once), which bounds
        memory and changes the result only by rounding.

    Returns
    -------
    float or dict of str to float
        The mean loss, or with ``metrics`` a dict ``{"loss": ..., "<metric>": ...}``.

    Raises
    ------
    ValueError
        If the model is not built, there is no loss, ``batch_size`` is not a positive integer,
        or the data are malformed.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(256, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], seed=0)
    >>> _ = model.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0)
    >>> sorted(model.evaluate(X, y, metrics=["accuracy"]))
    ['accuracy', 'loss']
    """
    if not model.built:
        raise ValueError("the model has no weights yet: call fit first or give in_features")
    if loss is None and model.loss is None:
        raise ValueError("evaluate needs a loss: pass loss=... or fit the model first")
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size")
    loss = model.loss if loss is None else get_loss(loss)
    metric_objs = [get_metric(m) for m in (metrics or [])]
    Xd = prepare_X(model, X)
    yd = prepare_y(model, loss, y, Xd.shape[0])
    result = evaluate_set(model, loss, metric_objs, Xd, yd, Xd.shape[0] if batch_size is None else batch_size)
    return result if metrics else result["loss"]


# -- sparse input ---------------------------------------------------------------------------------
def take_rows(xp, a, idx):
    """Rows ``idx`` (a device integer array) of a device array or sparse matrix, gathered on the device."""
    return sparse_rows(a, idx) if is_sparse(a) else xp.take(a, idx, axis=0)


def _prepare_sparse_X(model, X, what, stats):
    """``prepare_X`` for a sparse X: a CSR matrix of the model's dtype on its device, never dense.

    Only a model whose first layer is Dense takes it (that layer multiplies sparse by dense; a
    Standardize or Dropout first would make every row dense). The finiteness check and the
    statistics read the stored values only; a matrix with implicit zeros also has 0 among its
    values, so 0 counts for its largest and smallest.
    """
    first = model.layers[0]
    if not isinstance(first, Dense):
        fix = ("drop standardize=True (sklearn.preprocessing.MaxAbsScaler scales sparse features without "
               "densifying them)" if isinstance(first, Standardize) else "put a Dense layer first")
        raise ValueError(f"{what} is a sparse matrix, but the model's first layer is {type(first).__name__}, not "
                         f"Dense: only a first Dense layer multiplies a sparse input without densifying it. "
                         f"To train on it, {fix}, or pass {what}.toarray() if the dense matrix fits in memory")
    Xd = model.backend.sparse_asarray(X, dtype=model.dtype, what=what)
    n, d = Xd.shape
    if n == 0:
        raise ValueError(f"{what} has no samples")
    if model.built and d != model.in_features:
        raise ValueError(f"{what} has {d} features but the model expects {model.in_features}")
    xp, values = model.xp, Xd.data
    high = low = 0.0  # nothing stored: all zeros
    if values.shape[0]:
        if stats:  # max and min propagate NaN and are inf for an infinity, as for a dense X
            high, low = (float(v) for v in to_numpy(xp.stack([xp.max(values), xp.min(values)])))
            finite = math.isfinite(high) and math.isfinite(low)
        else:
            finite = bool(xp.all(xp.isfinite(values)))
        if not finite:
            raise ValueError(f"{what} contains NaN or infinity (in its stored values, checked after conversion "
                             f"to {model.dtype})")
    if not stats:
        return Xd
    if values.shape[0] < n * d:  # implicit zeros
        high, low = max(high, 0.0), min(low, 0.0)
    return Xd, high, low
