"""The MLP doctor during training: :class:`Vitals`, a callback that names what goes wrong as it goes wrong.

Once per epoch, on a fixed sample of the training rows (``rows``, drawn once), it runs the
layers' own forward and backward passes (Dropout off, so no mask is drawn and training's random
stream does not move) and measures, on the device: each Dense layer's weight and gradient norms,
the share of dead ReLU units, the share of saturated sigmoid/tanh inputs, which layer's output
first holds NaN or infinity, and the predicted classes. It also measures each weight matrix's
update-to-weight ratio over the epoch's first batch (a copy of the flat parameters taken at the
start of the epoch, compared after the first update). All of it is read in ONE host read per
epoch, beside fit's own; the gradient buffer is put back, so training runs exactly as without it.

Each check fires at most once per fit, as a :class:`~xpmlp.doctor.Finding` with ``when="epoch N"``
(1-based), issued as a :class:`~xpmlp.doctor.DoctorWarning` and kept in ``vitals.report``.

Checks, their definitions and thresholds (module constants below, with their sources):

- ``vanishing_gradient``, ``exploding_gradient``: AUTOTRAINER's definitions (Zhang et al., ICSE
  2021; its code, ``AutoTrainer/utils/monitor.py``, ``gradient_issue``): r = ||dW_first||_2 /
  ||dW_last||_2, the Frobenius norms of the gradients of the first and last weight matrices on a
  batch; vanishing when r < 1e-3 and ||dW_first|| < 1e-4, exploding when r > 70. AUTOTRAINER takes
  the gradient of a training batch and reports these only once accuracy stalls; here they come from
  the fixed sample at each epoch's end and are reported as they occur (tests hold them quiet on
  healthy runs).
- ``dying_relu``: a ReLU layer with at least 70% of its units dead on the sample (input <= 0 on
  every row, so their weights get a zero gradient). AUTOTRAINER's gamma = 0.7 is for the share of
  zero gradient entries over all parameters; the issue asks it per layer, which we follow.
- ``chance_plateau``: a classifier whose epoch loss stayed within 1% of chance level for the last
  5 epochs; chance level is the entropy of the training labels' class frequencies (ln K for K
  balanced classes): the loss of a model that ignores its inputs.
- ``collapsed_predictions``: on the sample, one class gets at least 95% of the predictions for 5
  checks in a row, while that class holds at least 20 points less of the sample's labels.
- ``saturated_units``: a sigmoid or tanh layer with at least half of its inputs (rows x units)
  beyond the bound where its output is within 0.01 of an asymptote (``|x| > ln 99 = 4.6`` for sigmoid,
  ``|x| > atanh 0.99 = 2.65`` for tanh): there its derivative is under 4% (sigmoid) or 2% (tanh) of
  its peak, so the units barely learn (Glorot and Bengio 2010, section 3).
- ``update_ratio_too_small`` / ``update_ratio_too_large``: ||W_after - W_before|| / ||W_before||
  for the epoch's first update of each weight matrix, against the rule of thumb of about 1e-3
  (Karpathy, CS231n notes, "Ratio of weights:updates"): every layer under 1e-5 (learning rate far
  too low), or some layer over 1e-1 (far too high). It is the update actually applied: in float32 an
  update under about 1e-7 of a weight is partly lost to rounding. Updates of exactly zero everywhere
  mean no gradient (every ReLU dead, say), which other checks name: not a small learning rate.
- ``oscillating_loss``: over the last 8 epoch losses, at least 4 of the 6 possible sign changes of
  their successive differences, with a mean ``|difference|`` of at least 5% of the window's mean loss
  and 1% of the first epoch's loss (so a converged run's tiny noise stays quiet). Adapted from
  AUTOTRAINER's ``ol_judge`` (which counts accuracy peaks and troughs at least zeta apart).
- ``nan_or_inf``: training diverged (fit's ``on_divergence``), or the sample's pass met NaN or
  infinity; names the first layer whose output on the sample was not finite, and the parameters
  that were not.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import warnings
from typing import Any, cast

import numpy as np

from .backend import to_numpy
from .callbacks import Callback
from .doctor import DoctorWarning, Finding, Report, first_nonfinite_layer
from .layers import Dense, Dropout

__all__ = ["Vitals", "FitVitals", "inspect_model", "SAMPLE_ROWS", "INSPECT_COLUMNS"]

#: Rows of the fixed sample batch: enough for stable shares, cheap beside an epoch.
SAMPLE_ROWS = 256

# AUTOTRAINER (Zhang et al., ICSE 2021), AutoTrainer/utils/monitor.py gradient_issue: beta_1, beta_2, beta_3, gamma
VANISHING_RATIO = 1e-3  # beta_1: ||dW_first|| / ||dW_last|| below it ...
VANISHING_FIRST_NORM = 1e-4  # beta_2: ... and ||dW_first|| below it
EXPLODING_RATIO = 70.0  # beta_3: ||dW_first|| / ||dW_last|| above it
DEAD_RELU_SHARE = 0.7  # gamma: share of a ReLU layer's units with zero gradient

# A healthy XOR net sits near ln 2 for its first ~15 epochs (a saddle) but strays more than 1% from it
# within a few; a net that cannot use its inputs converges to chance within 0.1%. Hence 1% for 5 epochs.
PLATEAU_EPOCHS = 5  # epochs in a row at chance level before it is called a plateau
PLATEAU_TOLERANCE = 0.01  # relative distance to chance level that counts as "at chance"
COLLAPSE_SHARE = 0.95  # share of the sample's predictions in one class
COLLAPSE_EXCESS = 0.20  # ... exceeding that class's share of the labels by at least this
COLLAPSE_CHECKS = 5  # consecutive epochs: a healthy net's first epochs may favour one class (XOR did for 4)

# output within 0.01 of an asymptote: sigmoid(4.595) = 0.99, tanh(2.647) = 0.99
SATURATION_BOUND = {"sigmoid": math.log(99.0), "tanh": math.atanh(0.99)}
SATURATED_SHARE = 0.5  # share of a layer's inputs (rows x units) beyond the bound

# Karpathy, CS231n "Neural Networks Part 3": updates/weights should be about 1e-3; these bounds are
# two orders of magnitude either side, quiet on Adam's and SGD's healthy runs (tests/test_vitals.py)
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1

OSCILLATION_WINDOW = 8  # epoch losses looked at
OSCILLATION_SIGN_CHANGES = 4  # of the window - 2 possible
OSCILLATION_AMPLITUDE = 0.05  # mean |difference| relative to the window's mean loss
OSCILLATION_FLOOR = 0.01  # ... and relative to the first epoch's loss


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _caller_level() -> int:
    """The stacklevel, for a warning issued by our caller, of the first frame outside xpmlp (the line
    that called fit), so that each finding points at the user's code whatever path led to it."""
    frame, level = cast(Any, inspect.currentframe()).f_back, 1  # our caller, the one that calls warnings.warn: level 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def layer_pass(model: Any, loss: Any, X: Any, y: Any) -> tuple[list, list]:
    """One forward and backward pass of X through the layers, Dropout off: what the checks measure.

    Every parameter's gradient is left in ``model.flat.grad``: the caller saves and restores that
    buffer.

    Parameters
    ----------
    model : Sequential
        A built model.
    loss : Loss
        The loss (its caches are written: pass a copy).
    X : array of shape (n_samples, n_features)
        Inputs on the model's device.
    y : array
        Targets on the model's device, as the loss takes them.

    Returns
    -------
    inputs : list of array
        Each layer's input (device arrays).
    outputs : list of array
        Each layer's output (device arrays).
    """
    h, inputs, outputs = X, [], []
    with warnings.catch_warnings():  # a diverged model's overflows: fit has warned of them already
        warnings.simplefilter("ignore", RuntimeWarning)
        for layer in model.layers:
            inputs.append(h)
            h = h if isinstance(layer, Dropout) else layer.forward(h, True)
            outputs.append(h)
        loss.forward(h, y)
        g = loss.backward()
        first = next(i for i, layer in enumerate(model.layers) if layer.parameters)
        for layer in reversed(model.layers[first + 1:]):
            g = g if isinstance(layer, Dropout) else layer.backward(g)
        model.layers[first].backward_params(g)  # no input gradient: nobody reads it (as fit's steps)
    return inputs, outputs


class _Stats:
    """Named device scalars and vectors gathered for one host read."""

    def __init__(self, xp, dtype):
        self.xp, self.dtype, self.parts, self.names = xp, dtype, [], []

    def add(self, name, value):
        xp = self.xp
        value = xp.reshape(xp.astype(value, self.dtype), (-1,))
        self.parts.append(value)
        self.names.append((name, value.shape[0]))

    def read(self) -> dict:
        if not self.parts:
            return {}
        flat, out, start = to_numpy(self.xp.concat(self.parts)).astype(float), {}, 0
        for name, size in self.names:
            out[name] = flat[start] if size == 1 else flat[start:start + size]
            start += size
        return out


class Vitals(Callback):
    """Training-time checks of the MLP doctor (see the module notes for each check).

    ``fit(..., diagnose=True)`` adds one; as a callback of your own, give it the training data.

    Parameters
    ----------
    X, y : arrays, optional
        Training data as fit takes it; the sample is drawn from it. ``fit(diagnose=True)`` gives its
        own device arrays instead. Without either, the sample checks are skipped (the loss-based ones
        still run).
    rows : int
        Rows of the fixed sample (all when fewer).
    seed : int
        Seeds the draw of the sample (its own generator: the model's random streams do not move).
    warn : bool
        Issue each finding as a :class:`~xpmlp.doctor.DoctorWarning` when it fires.

    Attributes
    ----------
    report : Report
        The findings of the last fit during training, most serious first.
    before : Report
        With ``fit(diagnose=True)``, the findings of the checks before training (else empty).
    records : list of dict
        Each epoch's raw measurements, as read from the device (for a closer look): ``gW{j}`` the
        squared gradient norm of the j-th Dense layer's W on the sample, ``upd{j}`` and ``w0_{j}``
        the squared norms of its first update and of its weights before it, ``dead{i}`` /
        ``sat{i}`` the dead / saturated share of layers[i], ``finite{i}`` 1.0 when layers[i]'s output
        was finite, ``pred`` the share of the sample's predictions in each class.
    """

    def __init__(self, X=None, y=None, *, rows: int = SAMPLE_ROWS, seed: int = 0, warn: bool = True):
        if (X is None) != (y is None):
            raise ValueError("Vitals takes both X and y, or neither")
        self.X, self.y, self.rows, self.seed, self.warn = X, y, int(rows), seed, bool(warn)
        self._device_data = self._before_args = None  # given by fit (see FitVitals)
        self._fit_made = False
        self.report = self.before = Report()

    def _diagnose_before(self) -> Report:
        """xpmlp.diagnose without the overfit test, issued as warnings at the line that called fit."""
        from .doctor import diagnose

        if self._before_args is None:
            return Report()
        X, y, shuffle, validation_data = self._before_args
        report = diagnose(self.model, X, y, loss=self.model.loss, shuffle=shuffle, validation_data=validation_data,
                          overfit=False)
        report.warn(stacklevel=_caller_level())
        return report

    # -- callback hooks ---------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        """Run the checks before training (fit's), reset the state and draw the fixed sample.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        from .train import class_index, prepare_X, prepare_y, take_rows

        model = self.model
        self.before = self._diagnose_before()  # fit's: after Standardize adapted, before the first step
        self.findings, self.fired, self.losses, self.records, self.collapsed_run = [], set(), [], [], 0
        self.report, self.pending, self.snap, self.update = Report(), None, None, None
        self.sample = self.chance = self.sample_share = None
        weighted = False
        if self._device_data is not None:
            Xd, yd, weighted = self._device_data
        elif self.X is not None:
            Xd = prepare_X(model, self.X)
            yd = prepare_y(model, model.loss, self.y, Xd.shape[0])
        else:
            return
        xp, n = model.xp, Xd.shape[0]
        rng = np.random.default_rng(self.seed)
        idx = np.sort(rng.choice(n, size=min(self.rows, n), replace=False))
        take = model.backend.from_host(idx)
        self.sample = (take_rows(xp, Xd, take), xp.take(yd, take, axis=0))  # X may be sparse
        loss = self.loss = copy.copy(model.loss)  # its own caches: the train step's stay untouched
        if loss.is_classifier and (yd.ndim == 1 or yd.shape[1] == 1 or loss.name == "softmax_cross_entropy"):
            k = 2 if model.out_features == 1 else model.out_features
            labels = to_numpy(class_index(model, yd)).astype(np.int64)  # one read, before training
            p = np.bincount(labels, minlength=k)[:k] / n
            self.sample_share = np.bincount(labels[idx], minlength=k)[:k] / len(idx)
            if not weighted and not getattr(loss, "label_smoothing", 0.0):
                self.chance = float(-np.sum(p[p > 0] * np.log(p[p > 0])))

    def on_epoch_begin(self, epoch, logs=None):
        """Keep a copy of the parameters, for the epoch's first update-to-weight ratios.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record.
        """
        self.pending, self.update = None, None
        self.snap = self.model.flat.snapshot()

    def on_batch_end(self, batch, logs=None):
        """Measure the first update (after batch 0) and the sample's pass (after the last batch).

        Parameters
        ----------
        batch : int
            The batch's index within its epoch, from 0.
        logs : dict or None
            Unused (None).
        """
        if batch == 0 and self.snap is not None:
            self.update = self._update_norms()
            self.snap = None  # freed: one copy per epoch held for one batch
        if batch == self.params["steps"] - 1:
            self.pending = self._measure()

    def on_epoch_end(self, epoch, logs=None):
        """Read the epoch's measurements (one host read) and run the checks.

        Parameters
        ----------
        epoch : int
            The epoch's index, from 0.
        logs : dict or None
            The epoch's record.
        """
        if self.pending is None:
            self.pending = self._measure()
        stats = self._read()
        self.records.append(stats)
        self.losses.append(float(logs["loss"]))
        self._check(epoch, stats)

    def on_divergence(self, epoch, message):
        """Fire ``nan_or_inf``, naming the first non-finite layer and parameters.

        Parameters
        ----------
        epoch : int
            The epoch that diverged, from 0.
        message : str
            What diverged and what was kept.

        Returns
        -------
        bool
            False: fit still raises or warns, as it was asked.
        """
        stats = self._read() if self.pending is not None else {}
        layer, bad_params = self._nonfinite(stats)
        if layer is None and self.sample is not None:
            layer = first_nonfinite_layer(self.model, self.sample[0])
        where = (f"the first layer whose output on the sample was NaN or infinite is layers[{layer[0]}] ({layer[1]})"
                 if layer is not None else "the sample's pass through the layers stayed finite")
        params = f"; parameters not finite: {', '.join(bad_params)}" if bad_params else ""
        self._fire(epoch, "nan_or_inf", "error",
                   f"training diverged in epoch {epoch + 1}: {where}{params}.",
                   "lower the learning rate (10x), scale the inputs, and check that the loss suits the targets; "
                   "clipnorm=1.0 on the optimiser bounds each update",
                   {"layer": None if layer is None else layer[0], "layer_name": None if layer is None else layer[1],
                    "nonfinite_parameters": bad_params})
        return False  # fit still raises or warns, as it was asked

    def on_train_end(self, logs=None):
        """With ``fit(diagnose=True)``, keep every finding in ``history.doctor``.

        Parameters
        ----------
        logs : dict or None
            Unused (None).
        """
        if self._fit_made:  # fit(diagnose=True)'s: every finding, before and during training
            self.model.history.doctor = Report([*self.before, *self.report])

    # -- measurements (device side) ---------------------------------------------------------------
    def _dense(self):
        return [(i, layer) for i, layer in enumerate(self.model.layers) if isinstance(layer, Dense)]

    def _update_norms(self):
        """||W_after - W_before||^2 and ||W_before||^2 for each Dense layer's W (device scalars)."""
        xp, flat, before = self.model.xp, self.model.flat, self.snap
        offsets = {id(p): o for p, o in zip(flat.parameters, flat.offsets)}
        out = []
        for _, layer in self._dense():
            p = layer.parameters["W"]
            start = offsets[id(p)]
            w0 = before[start:start + p.size]
            d = flat.data[start:start + p.size] - w0
            out.append((xp.sum(d * d), xp.sum(w0 * w0)))
        return out

    def _measure(self):
        """The sample's statistics, as a _Stats not yet read (no host sync here)."""
        model, xp = self.model, self.model.xp
        dt = model.backend.dtype(model.dtype)
        stats = _Stats(xp, dt)
        if self.update is not None:
            for j, (d2, w2) in enumerate(self.update):
                stats.add(f"upd{j}", d2)
                stats.add(f"w0_{j}", w2)
        if self.sample is None:
            return stats
        saved_grad = xp.asarray(model.flat.grad, copy=True)
        try:
            inputs, outputs = layer_pass(model, self.loss, *self.sample)
            for j, (_, layer) in enumerate(self._dense()):
                g = layer.parameters["W"].grad
                stats.add(f"gW{j}", xp.sum(g * g))
            for i, (layer, x, h) in enumerate(zip(model.layers, inputs, outputs)):
                stats.add(f"finite{i}", xp.all(xp.isfinite(h)))
                name = getattr(layer, "name", "")
                if name == "relu":
                    stats.add(f"dead{i}", xp.mean(xp.astype(xp.all(x <= 0, axis=0), dt)))
                elif name in SATURATION_BOUND:
                    stats.add(f"sat{i}", xp.mean(xp.astype(xp.abs(x) > SATURATION_BOUND[name], dt)))
            for p in model.parameters():
                stats.add(f"pfinite:{p.name}", xp.all(xp.isfinite(p.value)))
            if self.sample_share is not None:
                z = outputs[-1]
                if z.shape[1] == 1:
                    up = xp.mean(xp.astype(z[:, 0] > 0, dt))
                    stats.add("pred", xp.stack([1.0 - up, up]))
                else:
                    top = xp.argmax(z, axis=1)
                    classes = xp.arange(z.shape[1], dtype=top.dtype, device=model.backend.device)
                    stats.add("pred", xp.mean(xp.astype(top[:, None] == classes[None, :], dt), axis=0))
        finally:
            model.flat.grad[...] = saved_grad
        return stats

    def _read(self) -> dict:
        stats, self.pending = self.pending, None
        return stats.read()

    # -- checks (host side) -----------------------------------------------------------------------
    def _nonfinite(self, stats):
        layers = sorted(int(k[6:]) for k, v in stats.items() if k.startswith("finite") and v == 0)
        layer = (layers[0], type(self.model.layers[layers[0]]).__name__) if layers else None
        params = [k.split(":", 1)[1] for k, v in stats.items() if k.startswith("pfinite:") and v == 0]
        return layer, params

    def _fire(self, epoch, check, severity, message, fix, evidence):
        if check in self.fired:
            return
        self.fired.add(check)
        finding = Finding(check, severity, message, fix, evidence, when=f"epoch {epoch + 1}")
        self.findings.append(finding)
        self.report = Report(self.findings)
        if self.warn:
            warnings.warn(str(finding), DoctorWarning, stacklevel=_caller_level())

    def _check(self, epoch, s):
        layer, bad_params = self._nonfinite(s)
        if layer is not None or bad_params:
            where = f"layers[{layer[0]}] ({layer[1]})" if layer else "no layer"
            self._fire(epoch, "nan_or_inf", "error",
                       f"NaN or infinity in epoch {epoch + 1}: the first layer whose output on the sample was not "
                       f"finite is {where}; parameters not finite: {', '.join(bad_params) or 'none'}.",
                       "lower the learning rate (10x) and scale the inputs; clipnorm=1.0 bounds each update",
                       {"layer": layer and layer[0], "layer_name": layer and layer[1],
                        "nonfinite_parameters": bad_params})
            return  # the other statistics mean nothing now
        dense = self._dense()
        self._check_gradients(epoch, s, dense)
        self._check_units(epoch, s)
        self._check_updates(epoch, s, dense)
        self._check_classes(epoch, s)
        self._check_oscillation(epoch)

    def _check_gradients(self, epoch, s, dense):
        if len(dense) < 2 or "gW0" not in s:
            return
        first, last = math.sqrt(s["gW0"]), math.sqrt(s[f"gW{len(dense) - 1}"])
        if last == 0:
            return
        ratio = first / last
        evidence = {"ratio": ratio, "first_grad_norm": first, "last_grad_norm": last,
                    "first_layer": dense[0][0], "last_layer": dense[-1][0]}
        if ratio < VANISHING_RATIO and first < VANISHING_FIRST_NORM:
            self._fire(epoch, "vanishing_gradient", "warning",
                       f"the first weight matrix's gradient norm is {first:.3g}, {ratio:.3g} times the last one's "
                       f"({last:.3g}): under {VANISHING_RATIO:g} (and {VANISHING_FIRST_NORM:g}), so the early layers "
                       "barely learn.",
                       "use ReLU (or GELU) hidden layers with He initialisation, fewer layers, or standardize=True",
                       evidence)
        elif ratio > EXPLODING_RATIO:
            self._fire(epoch, "exploding_gradient", "warning",
                       f"the first weight matrix's gradient norm is {first:.3g}, {ratio:.3g} times the last one's "
                       f"({last:.3g}): over {EXPLODING_RATIO:g}, so the gradient grows as it goes back.",
                       "use smaller initial weights (the default Glorot or He initialisers), fewer layers, or "
                       "clipnorm=1.0 on the optimiser", evidence)

    def _check_units(self, epoch, s):
        layers = self.model.layers
        dead = {int(k[4:]): v for k, v in s.items() if k.startswith("dead")}
        worst = max(dead, key=dead.get, default=None)
        if worst is not None and dead[worst] >= DEAD_RELU_SHARE:
            self._fire(epoch, "dying_relu", "warning",
                       f"{dead[worst]:.0%} of the units of layers[{worst}] (ReLU) are dead: their input is <= 0 on "
                       f"every row of the sample, so they get no gradient (threshold {DEAD_RELU_SHARE:.0%}).",
                       "lower the learning rate, check the initial biases (zero) and the input scaling, or use "
                       "LeakyReLU or ELU", {"layer": worst, "dead_share": dead[worst],
                                            "dead_share_by_layer": {i: float(v) for i, v in dead.items()}})
        sat = {int(k[3:]): v for k, v in s.items() if k.startswith("sat")}
        worst = max(sat, key=sat.get, default=None)
        if worst is not None and sat[worst] >= SATURATED_SHARE:
            name = layers[worst].name
            self._fire(epoch, "saturated_units", "warning",
                       f"{sat[worst]:.0%} of the inputs of layers[{worst}] ({name}) are beyond "
                       f"+-{SATURATION_BOUND[name]:.3g}, where its output is within 0.01 of an asymptote and its "
                       f"gradient nearly zero (threshold {SATURATED_SHARE:.0%}).",
                       "scale the inputs, use the default (Glorot) initialisation or a smaller learning rate, or "
                       "ReLU hidden layers", {"layer": worst, "saturated_share": sat[worst]})

    def _check_updates(self, epoch, s, dense):
        ratios = {}
        for j, (i, _) in enumerate(dense):
            if f"upd{j}" in s and s[f"w0_{j}"] > 0:
                ratios[i] = math.sqrt(s[f"upd{j}"] / s[f"w0_{j}"])
        if not ratios:
            return
        lr = self.model.optimizer.current_lr()
        evidence = {"ratio_by_layer": ratios, "lr": lr}
        high = max(ratios, key=ratios.get)
        if ratios[high] > UPDATE_RATIO_HIGH:
            self._fire(epoch, "update_ratio_too_large", "warning",
                       f"one update changes layers[{high}]'s weights by {ratios[high]:.3g} of their norm (over "
                       f"{UPDATE_RATIO_HIGH:g}; about 1e-3 is healthy): the learning rate ({lr:g}) is likely too high.",
                       f"divide the learning rate by 10 (try {lr / 10:g}), or run model.lr_find", evidence)
        elif 0 < max(ratios.values()) < UPDATE_RATIO_LOW:  # all 0: no gradient at all (dead units), not the rate
            self._fire(epoch, "update_ratio_too_small", "warning",
                       f"one update changes every layer's weights by at most {max(ratios.values()):.3g} of their "
                       f"norm (under {UPDATE_RATIO_LOW:g}; about 1e-3 is healthy): the learning rate ({lr:g}) is "
                       "likely too low.", f"multiply the learning rate by 10 or more (try {lr * 100:g}), or run "
                                          "model.lr_find", evidence)

    def _check_classes(self, epoch, s):
        if self.chance is not None and len(self.losses) >= PLATEAU_EPOCHS:
            last = self.losses[-PLATEAU_EPOCHS:]
            if all(abs(v - self.chance) <= PLATEAU_TOLERANCE * self.chance for v in last):
                self._fire(epoch, "chance_plateau", "warning",
                           f"the training loss has stayed at chance level for {PLATEAU_EPOCHS} epochs "
                           f"({', '.join(f'{v:.4g}' for v in last)}; chance, the entropy of the class frequencies, "
                           f"is {self.chance:.4g}): the model learns nothing from its inputs.",
                           "check that the inputs vary and are scaled and that X and y are aligned; try a higher "
                           "learning rate, or run xpmlp.diagnose (overfit test)",
                           {"losses": last, "chance": self.chance})
        if "pred" not in s:
            return
        pred = np.atleast_1d(s["pred"])
        top = int(np.argmax(pred))
        if pred[top] >= COLLAPSE_SHARE and pred[top] - self.sample_share[top] >= COLLAPSE_EXCESS:
            self.collapsed_run += 1
        else:
            self.collapsed_run = 0
        if self.collapsed_run >= COLLAPSE_CHECKS:
            self._fire(epoch, "collapsed_predictions", "warning",
                       f"{pred[top]:.0%} of the sample's predictions are class {top}, which is "
                       f"{self.sample_share[top]:.0%} of its labels, for {self.collapsed_run} epochs in a row: the "
                       "model predicts one class whatever the input.",
                       "check the inputs (scaled, not constant) and the labels; try class_weight='balanced' for "
                       "imbalanced classes, or a different learning rate",
                       {"class": top, "predicted_share": float(pred[top]), "label_share": float(self.sample_share[top])})

    def _check_oscillation(self, epoch):
        w = self.losses[-OSCILLATION_WINDOW:]
        if len(w) < OSCILLATION_WINDOW:
            return
        d = np.diff(w)
        changes = int(np.sum(np.sign(d[1:]) * np.sign(d[:-1]) < 0))
        amplitude = float(np.mean(np.abs(d)))
        if (changes >= OSCILLATION_SIGN_CHANGES and amplitude >= OSCILLATION_AMPLITUDE * float(np.mean(w))
                and amplitude >= OSCILLATION_FLOOR * self.losses[0]):
            self._fire(epoch, "oscillating_loss", "warning",
                       f"the epoch loss went up and down {changes} times in the last {OSCILLATION_WINDOW} epochs, by "
                       f"{amplitude:.3g} on average ({amplitude / np.mean(w):.0%} of its mean): the steps overshoot.",
                       "lower the learning rate (or the momentum), or use larger batches",
                       {"losses": [float(v) for v in w], "sign_changes": changes, "mean_abs_change": amplitude})


class FitVitals(Vitals):
    """The :class:`Vitals` that ``fit(..., diagnose=True)`` adds: as training begins it also runs the checks
    before training (:func:`xpmlp.diagnose` without its overfit test) as warnings, and as training ends it
    keeps every finding, before and during training, in ``history.doctor``.

    Parameters
    ----------
    device_data : (X, y, weighted) or None
        fit's training arrays on the device (``weighted``: rows carry weights), the sample's source.
    before : (X, y, shuffle, validation_data) or None
        What the checks before training look at (None: an iterable of batches, no such checks).
    X, y : arrays, optional
        Instead of ``device_data`` (L-BFGS's fit, which keeps its arrays to itself).
    """

    def __init__(self, device_data=None, before=None, X=None, y=None):
        super().__init__(X, y)
        self._device_data, self._before_args, self._fit_made = device_data, before, True


# -- model.inspect ---------------------------------------------------------------------------------
#: The columns of :func:`inspect_model`'s DataFrame.
INSPECT_COLUMNS = ["type", "act_mean", "act_std", "act_frac_zero", "act_frac_saturated", "grad_mean", "grad_std",
                   "grad_norm", "weight_mean", "weight_std", "weight_norm", "update_ratio"]


def inspect_model(model: Any, X: Any, y: Any, *, loss: Any = None, optimizer: Any = None) -> Any:
    """Per-layer statistics of activations, gradients, weights and one update: see :meth:`xpmlp.Sequential.inspect`.

    Parameters
    ----------
    model : Sequential
        A built model; left as it was.
    X : array-like of shape (n_samples, n_features)
        Inputs.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Targets.
    loss : str or Loss, optional
        By default the model's loss.
    optimizer : str or Optimizer, optional
        The update measured (on a copy); by default the model's, else Adam.

    Returns
    -------
    pandas.DataFrame of shape (n_layers, 12)
        One row per layer, the columns of ``INSPECT_COLUMNS``.

    Raises
    ------
    ValueError
        If the model is not built, there is no loss, or the optimiser is not first-order.
    """
    import pandas as pd

    from .lbfgs import LBFGS
    from .losses import get_loss
    from .optim import Adam, Optimizer, get_optimizer
    from .train import prepare_X, prepare_y

    if not model.built:
        raise ValueError("inspect needs a built model: give in_features (or the first size of MLP), or fit first")
    if loss is None and model.loss is None:
        raise ValueError("inspect needs a loss: pass loss=... or fit the model first")
    loss = copy.copy(model.loss) if loss is None else get_loss(loss)
    if optimizer is None:
        optimizer = model.optimizer if model.optimizer is not None else Adam()
    elif not isinstance(optimizer, LBFGS):
        optimizer = get_optimizer(optimizer)
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"inspect takes a first-order optimiser (Adam, SGD, ...), got {type(optimizer).__name__}")
    optimizer = copy.deepcopy(optimizer)  # its step count and state move on the copy only
    xp, flat = model.xp, model.flat
    Xd = prepare_X(model, X)
    yd = prepare_y(model, loss, y, Xd.shape[0])
    dtype = model.backend.dtype(model.dtype)
    kept = [{k: layer.__dict__[k] for k in ("_x", "_y") if k in layer.__dict__} for layer in model.layers]
    saved_grad = xp.asarray(flat.grad, copy=True)
    try:
        inputs, outputs = layer_pass(model, loss, Xd, yd)
        grad = xp.asarray(flat.grad, copy=True)
    finally:
        flat.grad[...] = saved_grad
        for layer, attrs in zip(model.layers, kept):
            for k in ("_x", "_y"):
                layer.__dict__.pop(k, None)
            layer.__dict__.update(attrs)
    after = flat.snapshot()
    optimizer.make_update(xp)(after, grad, flat.n_decay)  # the reference update, on a copy of the values

    offsets = {id(p): o for p, o in zip(flat.parameters, flat.offsets)}
    stats = _Stats(xp, dtype)
    nan = xp.asarray(float("nan"), dtype=dtype, device=model.backend.device)
    for i, (layer, x, h) in enumerate(zip(model.layers, inputs, outputs)):
        stats.add(f"act{i}", xp.stack([xp.mean(h), xp.std(h), xp.mean(xp.astype(h == 0, dtype))]))
        name = getattr(layer, "name", "")
        stats.add(f"sat{i}", xp.mean(xp.astype(xp.abs(x) > SATURATION_BOUND[name], dtype))
                  if name in SATURATION_BOUND else nan)
        if layer.parameters:
            spans = [(offsets[id(p)], p.size) for p in layer.parameters.values()]
            w, g, a = (xp.concat([b[o:o + n] for o, n in spans]) for b in (flat.data, grad, after))
            d = a - w
            stats.add(f"par{i}", xp.stack([xp.mean(g), xp.std(g), xp.sqrt(xp.sum(g * g)), xp.mean(w), xp.std(w),
                                           xp.sqrt(xp.sum(w * w)), xp.sqrt(xp.sum(d * d))]))
    s = stats.read()
    rows = []
    for i, layer in enumerate(model.layers):
        act_mean, act_std, act_zero = s[f"act{i}"]
        row = {"type": type(layer).__name__, "act_mean": act_mean, "act_std": act_std, "act_frac_zero": act_zero,
               "act_frac_saturated": float(s[f"sat{i}"])}
        if f"par{i}" in s:
            g_mean, g_std, g_norm, w_mean, w_std, w_norm, d_norm = s[f"par{i}"]
            row.update(grad_mean=g_mean, grad_std=g_std, grad_norm=g_norm, weight_mean=w_mean, weight_std=w_std,
                       weight_norm=w_norm, update_ratio=d_norm / w_norm if w_norm > 0 else math.inf)
        rows.append(row)
    return pd.DataFrame(rows, columns=INSPECT_COLUMNS, index=pd.RangeIndex(len(rows), name="layer"), dtype=object
                        ).astype({c: float for c in INSPECT_COLUMNS[1:]})
