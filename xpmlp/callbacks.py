"""Callbacks: hooks that ``fit`` calls at the start and end of training, of each epoch and of each batch.

Subclass :class:`Callback` and override what you need. ``logs`` is the epoch's record: ``loss``,
``val_loss`` (with validation data), each metric (``accuracy``, ``val_accuracy``, ...), ``lr``,
``epoch_time`` and ``samples_per_s``, all Python floats. Set ``self.model.stop_training = True``
to end training after the current epoch. With fit's ``validation_freq``, epochs that are not
validated have no ``val_*`` entries: the callbacks here that monitor one skip those epochs.

``fit`` itself records and shows training with two callbacks of this module: :class:`History`
(always; ``fit`` returns it) and :class:`ProgbarLogger` (when ``verbose`` is not 0). They come
first, so each epoch is recorded and shown before your callbacks see it; apart from that they
get the same calls as yours.

``fit`` calls ``on_train_end`` of every callback whose ``on_train_begin`` ran, however training
ends (divergence, ``KeyboardInterrupt``, an exception in another callback). A callback with
state (best value, patience counter, saved weights) resets it in ``on_train_begin``, so one
object can serve several fits, or several models, each starting fresh.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import string
import sys
from typing import Any, Callable, cast

from .schedules import scaled

__all__ = ["Callback", "History", "ProgbarLogger", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler",
           "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger"]


class Callback:
    """Base class: every hook does nothing.

    Before training ``fit`` sets ``self.model`` (the model being trained) and ``self.params``
    (``{"verbose": 0, 1 or 2, "epochs": ..., "steps": batches per epoch, "rank": ..., "size": ...}``),
    then calls ``check``. ``rank`` and ``size`` are the process's place in a data-parallel fit
    (``fit(comm=)``; 0 and 1 otherwise): every rank runs every callback with the same logs, so they
    decide alike, but only rank 0 should print or write files (:meth:`writes` says whether this one
    does; ModelCheckpoint, CSVLogger and EarlyStopping's messages ask it, and fit's verbose is 0 on
    the other ranks).
    Then, in this order: ``on_train_begin()``; for each epoch ``on_epoch_begin(epoch)``,
    ``on_batch_end(batch)`` after each batch's update (``batch`` counts from 0 in each epoch) and
    ``on_epoch_end(epoch, logs)``; ``on_train_end()``. Epochs count from 0 (from fit's
    ``initial_epoch`` when it resumes a training: the true numbers); ``params["epochs"]`` is fit's
    ``epochs``, the index the last epoch ends at, as in Keras.

    ``on_batch_end`` gets no loss: a batch's loss stays on the device until the end of the epoch,
    so that training never waits for the device between batches.

    ``on_divergence(epoch, message)`` is called, on every callback, when an epoch diverges (see
    :func:`xpmlp.train.fit`), after the weights from the start of that epoch have been put back;
    ``message`` says what diverged and what was kept. Return True to handle it: training then
    ends quietly (no exception, no warning; ``on_train_end`` still runs), as
    :class:`TerminateOnNaN` does. If no callback returns True, ``fit`` raises
    :class:`xpmlp.DivergenceError` (or warns, with ``on_divergence="warn"``).

    Attributes
    ----------
    model : Sequential or None
        The model being trained, set by ``fit`` before training.
    params : dict or None
        ``verbose``, ``epochs``, ``steps``, ``rank`` and ``size``, set by ``fit`` before training.

    See Also
    --------
    History, EarlyStopping, ModelCheckpoint, CSVLogger

    Examples
    --------
    A callback that records the loss of every epoch:

    >>> import xpmlp
    >>> from xpmlp.callbacks import Callback
    >>> from xpmlp.datasets import make_xor
    >>> class Losses(Callback):
    ...     def on_train_begin(self, logs=None):
    ...         self.losses = []
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         self.losses.append(round(logs["loss"], 3))
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> cb = Losses()
    >>> _ = model.fit(X, y, loss="softmax_cross_entropy", epochs=3, verbose=0, callbacks=[cb])
    >>> len(cb.losses)
    3
    """

    model: Any = None
    params: Any = None

    def check(self, log_keys: list[str]) -> None:
        """Check the callback's options against what ``fit`` will log; called before training.

        Parameters
        ----------
        log_keys : list of str
            The names each epoch's logs will hold (``loss``, ``val_loss``, metrics, ``lr``, ...).

        Raises
        ------
        ValueError
            In subclasses, when an option names something ``fit`` does not log.
        """

    def writes(self) -> bool:
        """Whether this process prints and writes files: rank 0 of a data-parallel fit, or a fit of one process.

        Returns
        -------
        bool
            True on rank 0 (or before ``fit`` has set ``params``), False on the other ranks.
        """
        return not self.params or self.params.get("rank", 0) == 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Called once before the first epoch; does nothing here.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Called at the start of each epoch; does nothing here.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0 (from fit's ``initial_epoch`` when it resumes).
        logs : dict or None
            Unused (None).
        """

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Called after each batch's update; does nothing here.

        Parameters
        ----------
        batch : int
            The batch's index within its epoch, from 0.
        logs : dict or None
            Unused (None): a batch's loss stays on the device until the end of the epoch.
        """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Called at the end of each epoch with its logs; does nothing here.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record: name to Python float (``loss``, ``val_loss``, metrics, ``lr``, ...).
        """

    def on_divergence(self, epoch: int, message: str) -> bool:
        """Called on every callback when an epoch diverges; returns False here.

        Parameters
        ----------
        epoch : int
            The epoch that diverged, from 0.
        message : str
            What diverged and what was kept.

        Returns
        -------
        bool
            True to handle the divergence (training ends quietly), False to let ``fit`` raise or warn.
        """
        return False

    def on_train_end(self, logs: dict | None = None) -> None:
        """Called once when training ends, however it ends; does nothing here.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """


class History(Callback):
    """What ``fit`` records, one entry per epoch: ``history["loss"][i]`` and so on.

    Keys: ``loss``, each metric, ``val_loss`` and ``val_<metric>`` with validation data,
    ``lr`` (at the end of the epoch), ``epoch_time`` (s) and ``samples_per_s``. ``fit`` makes one
    per call, returns it and keeps it as ``model.history``; as a callback of your own it records
    the same (starting afresh at each fit). ``epoch`` lists the epochs (from 0, from fit's
    ``initial_epoch``). As in Keras, a key's list holds only the epochs that logged it (with
    ``validation_freq``, ``val_*`` lists are shorter); :meth:`to_frame` aligns them by epoch.
    ``doctor`` is None, or, after ``fit(..., diagnose=True)``, the MLP doctor's
    :class:`~xpmlp.doctor.Report` of findings before and during training.

    Attributes
    ----------
    epoch : list of int
        The epochs recorded.
    history : dict of str to list of float
        Each logged name's values, one per epoch that logged it.
    doctor : Report or None
        The doctor's findings after ``fit(..., diagnose=True)``, else None.

    See Also
    --------
    xpmlp.callbacks.Callback : The base class of callbacks.
    xpmlp.Sequential.fit : Returns one.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", epochs=3, verbose=0,
    ...                     validation_split=0.25)
    >>> history.epoch
    [0, 1, 2]
    >>> len(history["loss"]), len(history["val_loss"])
    (3, 3)
    """

    def __init__(self) -> None:
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}
        self._logged: dict[str, list[int]] = {}  # the epochs each key was logged at
        self.doctor: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Start afresh: forget the epochs of any earlier fit.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        self.epoch, self.history, self._logged, self.doctor = [], {}, {}, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Record the epoch's logs (see :meth:`append`).

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record: name to Python float.
        """
        self.append(epoch, logs or {})

    def append(self, epoch: int, logs: dict) -> None:
        """Record one epoch: ``epoch`` and each of its logged values.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict
            The epoch's record: name to Python float.
        """
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
            self._logged.setdefault(key, []).append(epoch)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def to_frame(self) -> Any:
        """The history as a pandas DataFrame, one row per epoch (NaN where an epoch did not log a key).

        Needs pandas.

        Returns
        -------
        pandas.DataFrame of shape (n_epochs, n_keys)
            Indexed by ``epoch``, one column per logged name.
        """
        import pandas as pd

        index = pd.Index(self.epoch, name="epoch")
        return pd.DataFrame({key: pd.Series(values, index=pd.Index(self._logged[key], name="epoch"), dtype=float)
                             for key, values in self.history.items()}, index=index)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Loss and metric curves (train and validation) as a matplotlib Figure; saved as PNG if ``path``.

        Needs matplotlib (``pip install 'xpmlp[plot]'``).

        Parameters
        ----------
        path : str or path-like, optional
            Where to save the figure as PNG; not saved if None.

        Returns
        -------
        matplotlib.figure.Figure
            One panel per metric (the loss first), train and validation curves against the epoch.

        Raises
        ------
        ImportError
            If matplotlib is not installed.
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
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            for key, label in ((name, "train"), ("val_" + name, "validation")):
                if key in self.history:
                    ax.plot([e + 1 for e in self._logged[key]], self.history[key], marker="o", ms=3, label=label)
            ax.set_xlabel("epoch")
            ax.set_title(name)
            if name == "loss" and all(v > 0 for v in self.history["loss"] if math.isfinite(v)):
                ax.set_yscale("log")
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


class ProgbarLogger(Callback):
    """Shows training as ``fit``'s ``verbose`` asks (``fit`` adds one when it is not 0).

    verbose=1: a tqdm bar per epoch on a terminal, one line per epoch otherwise; 2: one line per
    epoch; 0: nothing. The bar only counts batches: reading the loss would wait for the device.
    On a terminal the epoch's logs go under its bar, wrapped to the terminal's width between
    entries, so that no metric is ever cut off however many there are.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> _ = model.fit(X, y, loss="softmax_cross_entropy", epochs=1, verbose=2)
    epoch 1/1 - loss ... - lr 0.001 - ...s, ... samples/s
    """

    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Pick the display (bar, lines or nothing) from ``params["verbose"]``.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        verbose = self.params["verbose"]
        self.mode = 0 if not verbose else (1 if verbose == 1 and sys.stdout.isatty() else 2)
        self._close()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Open the epoch's progress bar (on a terminal, with verbose=1).

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            Unused (None).
        """
        if self.mode == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.params["steps"], desc=f"epoch {epoch + 1}/{self.params['epochs']}",
                            unit="batch", leave=True, file=sys.stdout)

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Advance the progress bar by one batch.

        Parameters
        ----------
        batch : int
            The batch's index within its epoch, from 0.
        logs : dict or None
            Unused (None).
        """
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Print the epoch's logs, timing and throughput.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record: name to Python float.
        """
        logs = logs or {}
        text = " - ".join(f"{k} {v:.4g}" for k, v in logs.items() if k not in ("epoch_time", "samples_per_s"))
        timing = f"{logs['epoch_time']:.1f}s, {logs['samples_per_s']:,.0f} samples/s"
        if self.bar is not None:
            self._close()
            print(_wrap(f"{text} - {timing}".split(" - "), shutil.get_terminal_size().columns), flush=True)
        elif self.mode == 2:
            print(f"epoch {epoch + 1}/{self.params['epochs']} - {text} - {timing}", flush=True)

    def on_divergence(self, epoch: int, message: str) -> bool:
        """Close the progress bar before anyone prints the message.

        Parameters
        ----------
        epoch : int
            The epoch that diverged, from 0.
        message : str
            What diverged and what was kept.

        Returns
        -------
        bool
            False: this callback does not handle the divergence.
        """
        self._close()  # before anyone prints the message
        return False

    def on_train_end(self, logs: dict | None = None) -> None:
        """Close the progress bar.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _wrap(items: list[str], width: int, indent: str = "  ") -> str:
    """``items`` joined by " - " into lines (each indented) shorter than ``width``, never breaking an
    item: one longer than a line gets a line of its own, which the terminal wraps; nothing is cut."""
    lines, line = [], ""
    for item in items:
        if line and len(f"{indent}{line} - {item}") < width:
            line = f"{line} - {item}"
        else:
            if line:
                lines.append(indent + line)
            line = item
    return "\n".join([*lines, indent + line])


class _Monitor(Callback):
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.min_delta = monitor, abs(float(min_delta))
        if mode == "auto":
            mode = "max" if any(w in monitor for w in ("accuracy", "acc", "r2")) else "min"
        self.mode = mode
        self.on_train_begin()  # the state a fresh fit starts from

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Forget the best value of any earlier fit.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        self.best = math.inf if self.mode == "min" else -math.inf

    def check(self, log_keys: list[str]) -> None:
        """Refuse a ``monitor`` that ``fit`` does not log.

        Parameters
        ----------
        log_keys : list of str
            The names each epoch's logs will hold.

        Raises
        ------
        ValueError
            If ``monitor`` is not among them.
        """
        if self.monitor not in log_keys:
            hint = " (val_* needs validation_data or validation_split)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which fit does not log{hint}; "
                             f"logged: {', '.join(log_keys)}")

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (NaN never does).

        Parameters
        ----------
        value : float
            The monitored quantity this epoch.

        Returns
        -------
        bool
            True if it improved.
        """
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights``, the best epoch's weights are put back at the end of training,
    whether training stopped early or ran out of epochs. Epochs whose logs lack ``monitor``
    (not validated, with fit's ``validation_freq``) are skipped: they count neither way.

    ``verbose``: 1 prints, at the end of training, Keras's "Epoch N: early stopping" followed by
    why (the best value, its epoch, the epochs without improvement and the patience), and
    "Restoring model weights from the end of the best epoch: M." when it restores them; 0 prints
    nothing; "auto" (the default) prints when fit's ``verbose`` does (Keras's default is 0).
    Epochs are counted from 1 in messages; ``stopped_epoch`` and ``best_epoch`` count from 0.

    Parameters
    ----------
    monitor : str, default="val_loss"
        The logged name to watch.
    mode : {"auto", "min", "max"}, default="auto"
        Whether lower or higher is better; "auto" picks "max" for names holding ``accuracy``,
        ``acc`` or ``r2``, "min" otherwise.
    patience : int, default=0
        Epochs without improvement to wait before stopping.
    min_delta : float, default=0.0
        The least change that counts as an improvement (its absolute value is used).
    restore_best_weights : bool, default=False
        Put back the best epoch's weights at the end of training.
    verbose : {"auto", 0, 1}, default="auto"
        Whether to print why training stopped (see above).

    Attributes
    ----------
    best : float
        The best value seen so far.
    best_epoch : int or None
        The epoch of the best value, from 0.
    stopped_epoch : int or None
        The epoch training stopped at, from 0; None if it did not stop early.

    Raises
    ------
    ValueError
        If ``mode`` or ``verbose`` is not one of the values above; at fit, if ``monitor`` is not logged.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.callbacks import EarlyStopping
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", epochs=5, verbose=0,
    ...                     validation_split=0.25, callbacks=[stop])
    >>> stop.best_epoch is not None
    True
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 0, min_delta: float = 0.0,
                 restore_best_weights: bool = False, verbose: str | int = "auto") -> None:
        super().__init__(monitor, mode, min_delta)
        if verbose not in ("auto", 0, 1):
            raise ValueError(f"verbose must be 'auto', 0 or 1, got {verbose!r}")
        self.patience, self.restore_best_weights, self.verbose = int(patience), bool(restore_best_weights), verbose

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Reset the best value, the patience counter and the saved weights.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        super().on_train_begin(logs)
        self.wait = 0
        self.best_epoch: int | None = None
        self.best_weights: Any = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Note an improvement, or count an epoch without one and stop after ``patience`` of them.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record; an epoch without ``monitor`` is skipped.
        """
        if logs is None or self.monitor not in logs:
            return
        value = logs[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        """Print why training stopped (as ``verbose`` asks) and restore the best weights if asked.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        verbose = bool(self.params and self.params.get("verbose")) if self.verbose == "auto" else bool(self.verbose)
        verbose = verbose and self.writes()  # in a data-parallel fit, rank 0 speaks for every rank
        if verbose and self.stopped_epoch is not None:
            best = "" if self.best_epoch is None else f" on its best, {self.best:.4g} at epoch {self.best_epoch + 1},"
            by = f" by more than min_delta={self.min_delta:g}" if self.min_delta else ""
            print(f"Epoch {self.stopped_epoch + 1}: early stopping: {self.monitor} has not improved{best}{by} for "
                  f"{self.wait} epochs, more than patience={self.patience}", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            if verbose:
                print(f"Restoring model weights from the end of the best epoch: {cast(int, self.best_epoch) + 1}.", flush=True)
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch, or only when ``monitor`` improves (``save_best_only``).

    ``path`` may hold ``{epoch}`` (1-based) and log names, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.safetensors"``;
    fit refuses a name it does not log. Epochs whose logs lack a name the path uses, or the
    monitored one with ``save_best_only`` (not validated, with fit's ``validation_freq``), are
    skipped. Every write is atomic (see :meth:`xpmlp.Sequential.save`).

    Parameters
    ----------
    path : str or path-like
        Where to save; a format string that may use ``{epoch}`` and logged names.
    monitor : str, default="val_loss"
        The logged name that decides the best epoch, with ``save_best_only``.
    mode : {"auto", "min", "max"}, default="auto"
        Whether lower or higher is better; "auto" picks "max" for names holding ``accuracy``,
        ``acc`` or ``r2``, "min" otherwise.
    save_best_only : bool, default=False
        Save only when ``monitor`` improves.
    save_weights_only : bool, default=False
        Save the weights only (:meth:`xpmlp.Sequential.save_weights`) rather than the whole
        model (:meth:`xpmlp.Sequential.save`).
    min_delta : float, default=0.0
        The least change that counts as an improvement.

    Raises
    ------
    ValueError
        If ``mode`` is not one of the values above; at fit, if ``path`` is not a valid format
        string or names something fit does not log, or (with ``save_best_only``) ``monitor`` is
        not logged.

    Examples
    --------
    >>> import os, tempfile
    >>> import xpmlp
    >>> from xpmlp.callbacks import ModelCheckpoint
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ckpt = ModelCheckpoint(os.path.join(tmp, "ckpt-{epoch:02d}.safetensors"), save_best_only=True)
    ...     _ = model.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0,
    ...                   validation_split=0.25, callbacks=[ckpt])
    ...     sorted(os.listdir(tmp))
    ['ckpt-01.safetensors', 'ckpt-02.safetensors']
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = False, save_weights_only: bool = False, min_delta: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.path, self.save_best_only, self.save_weights_only = str(path), bool(save_best_only), bool(save_weights_only)

    def check(self, log_keys: list[str]) -> None:
        """Refuse a path that names something fit does not log, or an unlogged ``monitor``.

        Parameters
        ----------
        log_keys : list of str
            The names each epoch's logs will hold.

        Raises
        ------
        ValueError
            If ``path`` is not a valid format string or names something not logged, or
            ``save_best_only`` is set and ``monitor`` is not logged.
        """
        if self.save_best_only:
            super().check(log_keys)
        unknown = sorted(self._names() - {"epoch", *log_keys})
        if unknown:
            raise ValueError(f"ModelCheckpoint path {self.path!r} names {', '.join(unknown)}, which fit does not "
                             f"log; logged: epoch, {', '.join(log_keys)}")

    def _names(self) -> set:
        """The log names the path formats (``{val_loss:.3f}`` -> val_loss)."""
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.path) if f]
        except ValueError as e:
            raise ValueError(f"ModelCheckpoint path {self.path!r} is not a valid format string: {e}") from None
        return {f.split(".")[0].split("[")[0] for f in fields}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Save the model (on rank 0), unless ``save_best_only`` and ``monitor`` did not improve.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record: name to Python float.
        """
        logs = logs or {}
        if any(name not in logs for name in self._names() - {"epoch"}) or (
                self.save_best_only and self.monitor not in logs):
            return  # an epoch without validation
        if self.save_best_only:
            if not self.improved(logs[self.monitor]):
                return
            self.best = logs[self.monitor]
        if not self.writes():  # another rank of a data-parallel fit: rank 0 saves (the same weights)
            return
        path = self.path.format(epoch=epoch + 1, **logs)
        (self.model.save_weights if self.save_weights_only else self.model.save)(path)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)``.

    ``epoch`` counts from 0; a value that is negative or not finite raises a ValueError naming
    the epoch and the value, before any update uses it.

    Parameters
    ----------
    schedule : callable
        ``schedule(epoch, lr) -> lr``: the epoch (from 0) and the current rate, returning the new rate.

    Raises
    ------
    TypeError
        If ``schedule`` is not callable.
    ValueError
        During training, if ``schedule`` returns a negative or non-finite rate.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.callbacks import LearningRateScheduler
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> halve = LearningRateScheduler(lambda epoch, lr: 0.01 * 0.5 ** epoch)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", epochs=3, verbose=0, callbacks=[halve])
    >>> history["lr"]
    [0.01, 0.005, 0.0025]
    """

    def __init__(self, schedule: Callable[[int, float], float]) -> None:
        if not callable(schedule):
            raise TypeError("LearningRateScheduler takes a function schedule(epoch, lr) -> lr")
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Set the optimiser's learning rate to ``schedule(epoch, lr)``.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            Unused (None).

        Raises
        ------
        ValueError
            If the schedule returns a negative or non-finite rate.
        """
        opt = self.model.optimizer
        lr = opt.current_lr()
        value = float(self.schedule(epoch, lr))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"LearningRateScheduler: schedule(epoch={epoch}, lr={lr:g}) returned {value!r}; "
                             "a learning rate must be finite and non-negative")
        opt.lr = value


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs.

    With a schedule (or any callable) as the optimiser's ``lr``, the schedule is scaled: ``lr``
    becomes :class:`xpmlp.schedules.Scaled` (schedule, factor), so the rate applied at every
    later step is ``factor`` times the schedule's, and it is saved with the model. ``min_lr``
    bounds the reduction: the rate applied at the step of the reduction does not go below it
    (a schedule may still decay lower on its own afterwards).

    Parameters
    ----------
    monitor : str, default="val_loss"
        The logged name to watch.
    factor : float, default=0.1
        What the rate is multiplied by, in (0, 1).
    patience : int, default=10
        Epochs without improvement before a reduction.
    mode : {"auto", "min", "max"}, default="auto"
        Whether lower or higher is better; "auto" picks "max" for names holding ``accuracy``,
        ``acc`` or ``r2``, "min" otherwise.
    min_delta : float, default=1e-4
        The least change that counts as an improvement.
    cooldown : int, default=0
        Epochs after a reduction during which no other reduction happens.
    min_lr : float, default=0.0
        The rate is not reduced below this.

    Raises
    ------
    ValueError
        If ``factor`` is not in (0, 1) or ``mode`` is not one of the values above; at fit, if
        ``monitor`` is not logged.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.callbacks import ReduceLROnPlateau
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01),
    ...                     epochs=3, verbose=0, callbacks=[plateau])
    >>> [round(lr, 4) for lr in history["lr"]]  # logged before the callbacks run
    [0.01, 0.01, 0.005]
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        self.factor, self.patience, self.cooldown, self.min_lr = float(factor), int(patience), int(cooldown), float(min_lr)

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Reset the best value, the patience counter and the cooldown.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        super().on_train_begin(logs)
        self.wait, self.cooling = 0, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Note an improvement, or count an epoch without one and reduce the rate after ``patience``.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record: name to Python float.
        """
        if logs is None or self.monitor not in logs:
            return  # an epoch without validation: it counts neither way
        if self.cooling:
            self.cooling -= 1
            self.wait = 0
        if self.improved(logs[self.monitor]):
            self.best, self.wait = logs[self.monitor], 0
            return
        self.wait += 1
        opt = self.model.optimizer
        if self.wait > self.patience and not self.cooling:
            now = opt.current_lr()
            if now > self.min_lr:
                opt.lr = scaled(opt.lr, max(self.factor, self.min_lr / now))
            self.wait, self.cooling = 0, self.cooldown


class TerminateOnNaN(Callback):
    """End training quietly (no exception) when training diverges (see :func:`xpmlp.train.fit`).

    ``fit`` keeps the weights from the end of the last good epoch either way; without this
    callback it raises :class:`xpmlp.train.DivergenceError` (or warns, with ``on_divergence="warn"``).
    With ``verbose`` it prints the reason.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.callbacks import TerminateOnNaN
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0,
    ...                     callbacks=[TerminateOnNaN()])
    >>> len(history.epoch)
    2
    """

    def on_divergence(self, epoch: int, message: str) -> bool:
        """Handle the divergence: print ``message`` if fit is verbose, and end training quietly.

        Parameters
        ----------
        epoch : int
            The epoch that diverged, from 0.
        message : str
            What diverged and what was kept.

        Returns
        -------
        bool
            True: training ends without an exception.
        """
        if self.params and self.params["verbose"]:
            print(message)
        return True


class CSVLogger(Callback):
    """Append one row per epoch to a CSV file (flushed every epoch, so it survives a crash).

    The columns are ``epoch`` and every name fit logs; an epoch that did not log one (not
    validated, with fit's ``validation_freq``) leaves its cell empty.

    Parameters
    ----------
    path : str or path-like
        The CSV file; written on rank 0 only in a data-parallel fit.
    append : bool, default=False
        Append to an existing file (without a second header) rather than overwrite it.

    Examples
    --------
    >>> import os, tempfile
    >>> import xpmlp
    >>> from xpmlp.callbacks import CSVLogger
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "log.csv")
    ...     _ = model.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0, callbacks=[CSVLogger(path)])
    ...     with open(path) as f:
    ...         print(f.readline().strip())
    epoch,loss,lr,epoch_time,samples_per_s
    """

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path, self.append = str(path), bool(append)
        self._file: Any = None
        self._writer: Any = None
        self._keys: list[str] | None = None

    def check(self, log_keys: list[str]) -> None:
        """Keep the names fit logs: they are the file's columns, in this order.

        Parameters
        ----------
        log_keys : list of str
            The names each epoch's logs will hold.
        """
        self._keys = list(log_keys)

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Open the file (on rank 0), appending or overwriting.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        self._writer = None
        if not self.writes():  # another rank of a data-parallel fit: rank 0 logs (the same rows)
            return
        exists = self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._header = not exists

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Write the epoch's row and flush it.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record: name to Python float.
        """
        if self._file is None:
            return
        logs = logs or {}
        row = {"epoch": epoch, **logs}
        if self._writer is None:
            keys = self._keys or []  # fit's names, then any a callback added to the logs
            self._writer = csv.DictWriter(self._file, fieldnames=list(dict.fromkeys(["epoch", *keys, *logs])),
                                          restval="")
            if self._header:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Close the file.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
