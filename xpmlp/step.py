"""One training step, made once per fit: forward, loss, backward and update for one batch.

:func:`make_train_step` looks at the model, the loss and the backend once and returns a
:class:`TrainStep`, which ``fit`` then calls for every batch (Keras's ``make_train_function``).
There are two kinds:

- :class:`ReferenceStep` runs the layers' and the loss's own Array API code: any layer, any
  loss, any backend. It is the definition the fast step is tested against.
- :class:`FusedStep` runs the same maths for the common shape of an MLP (Dense layers, each
  optionally followed by an elementwise activation and Dropout, after an optional Standardize,
  with softmax cross-entropy, sigmoid binary cross-entropy or MSE) with a backend's ``Ops``:
  every intermediate goes into a workspace allocated once per batch size, bias and activation
  are one operation, the loss's value and gradient one more, and the optimiser updates the
  model's flat buffer in one pass. ``xpmlp.step_numpy.NumpyOps`` does it with ``out=``
  (bitwise equal to the reference); ``xpmlp.step_cuda`` with fused CuPy kernels (one launch
  each).

``XPMLP_REFERENCE=1`` in the environment makes every step (and optimiser update) the
reference, for comparisons; it is read here, once per fit.

A step's call is ``step(xb, yb, wb, row_loss) -> z``: the batch's inputs (n, d) (dense, or a
sparse matrix of the backend, see :func:`xpmlp.backend.is_sparse`, when the model starts with a
Dense layer: both steps then take the first layer's products from the backend), targets as the
loss's ``prepare_targets`` gives them, per-row weights (n,) or None, and a 1-D array of n that
receives each row's weighted loss; it returns the outputs z (n, k) before the loss's link,
which a FusedStep keeps in a workspace that the next call overwrites.
"""

from __future__ import annotations

import os
from typing import Any

from .backend import fast_kernels, is_sparse, sparse_matmul
from .layers import Activation, Dense, Dropout, Softmax, Standardize
from .losses import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy

__all__ = ["TrainStep", "ReferenceStep", "FusedStep", "make_train_step"]

FUSED_LOSSES = (SoftmaxCrossEntropy, SigmoidBinaryCrossEntropy, MeanSquaredError)


class TrainStep:
    """Base class: one batch of training, plus snapshot and restore of what training changes.

    Parameters
    ----------
    model : Sequential
        A built model.
    loss : Loss
        The loss.
    optimizer : Optimizer
        The optimiser; its update is made once, here.
    kernels : module or Kernels, optional
        The backend's fast kernels for the update (see :meth:`xpmlp.Optimizer.make_update`);
        None: the Array API reference.
    """

    variant = ""

    def __init__(self, model: Any, loss: Any, optimizer: Any, kernels: Any = None) -> None:
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.flat = model.flat
        self.update = optimizer.make_update(model.xp, kernels)
        # Data-parallel fit sets this to a callable reduce_grad(flat_grad) that averages the
        # gradient across processes in place, between backward and the update; None: one process.
        self.reduce_grad: Any = None
        self._dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]

    def __call__(self, xb: Any, yb: Any, wb: Any, row_loss: Any) -> Any:
        raise NotImplementedError

    def snapshot(self) -> tuple:
        """Copies of what a step changes: parameters, optimiser state and step count, Dropout counters.

        Returns
        -------
        tuple
            ``(values, optimizer_state, dropout_counters)``, for :meth:`restore`.
        """
        xp, opt = self.model.xp, self.optimizer
        state = opt.state_dict()
        buffers = None if state["state"] is None else {k: xp.asarray(a, copy=True) for k, a in state["state"].items()}
        return self.flat.snapshot(), {"t": state["t"], "state": buffers}, [d.counter for d in self._dropouts]

    def restore(self, saved: tuple) -> None:
        """Put back a :meth:`snapshot` (in place: every view of the buffers stays valid).

        Parameters
        ----------
        saved : tuple
            What :meth:`snapshot` returned.
        """
        values, state, counters = saved
        self.flat.restore(values)
        self.optimizer.load_state_dict(state)
        for layer, counter in zip(self._dropouts, counters):
            layer.counter = counter

    def __repr__(self):
        return f"{type(self).__name__}({self.variant})"


class ReferenceStep(TrainStep):
    """The layers' and loss's own code, then the optimiser: any model on any backend.

    Parameters
    ----------
    model : Sequential
        A built model.
    loss : Loss
        The loss.
    optimizer : Optimizer
        The optimiser; its update is made once, here.
    kernels : module or Kernels, optional
        The backend's fast kernels for the update (see :meth:`xpmlp.Optimizer.make_update`);
        None: the Array API reference.
    """

    variant = "reference"

    def __call__(self, xb: Any, yb: Any, wb: Any, row_loss: Any) -> Any:
        model = self.model
        z = model.forward(xb, training=True)
        row_loss[...] = self.loss.row_losses(z, yb, wb)
        model.backward(self.loss.backward(), input_grad=False)
        if self.reduce_grad is not None:
            self.reduce_grad(self.flat.grad)
        self.update(self.flat.data, self.flat.grad, self.flat.n_decay)
        return z


class _Stage:
    """One Dense layer of a FusedStep, with what follows it: an activation and a Dropout (or None)."""

    __slots__ = ("dense", "act", "dropout")

    def __init__(self, dense):
        self.dense, self.act, self.dropout = dense, None, None


def fused_plan(model, loss):
    """(Standardize or None, [_Stage, ...]) when a FusedStep can run this model and loss, else None.

    The model must be an optional leading Standardize, then Dense layers, each followed by at most
    one elementwise activation (not Softmax) and then at most one Dropout, the last Dense by
    nothing; the loss softmax cross-entropy, sigmoid binary cross-entropy or MSE (exactly those
    classes: a subclass may change the maths).
    """
    if type(loss) not in FUSED_LOSSES:
        return None
    layers = list(model.layers)
    standardize = layers.pop(0) if layers and type(layers[0]) is Standardize else None
    stages: list[_Stage] = []
    for layer in layers:
        if type(layer) is Dense:
            stages.append(_Stage(layer))
        elif not stages:
            return None
        elif (isinstance(layer, Activation) and not isinstance(layer, Softmax) and stages[-1].act is None
              and stages[-1].dropout is None):
            stages[-1].act = layer
        elif type(layer) is Dropout and stages[-1].dropout is None:
            stages[-1].dropout = layer
        else:
            return None
    if not stages or stages[-1].act is not None or stages[-1].dropout is not None:
        return None
    return standardize, stages


class _Workspace:
    """The buffers of one stage for one batch size: pre-activation z, activation h, dropout output d,
    gradient g with respect to the stage's output (z for the last stage)."""

    __slots__ = ("z", "h", "d", "g", "mask")
    z: Any
    h: Any
    d: Any
    g: Any
    mask: Any


class FusedStep(TrainStep):
    """The reference's maths for Dense/activation/Dropout MLPs, through a backend's ``Ops``.

    Bitwise equal to :class:`ReferenceStep` on NumPy (tests/test_step.py); on CuPy within
    rounding (fused multiply-adds), see ``xpmlp.step_cuda``.

    Parameters
    ----------
    model : Sequential
        A built model.
    loss : Loss
        The loss.
    optimizer : Optimizer
        The optimiser; its update is made once, here.
    kernels : module or Kernels
        The backend's fast kernels for the update (see :meth:`xpmlp.Optimizer.make_update`);
        None: the Array API reference.
    ops : NumpyOps or CupyOps
        The backend's fused operations.
    plan : tuple
        ``(standardize, stages)``, as ``fused_plan`` gives for the model and loss.
    """

    def __init__(self, model: Any, loss: Any, optimizer: Any, kernels: Any, ops: Any, plan: tuple) -> None:
        super().__init__(model, loss, optimizer, kernels)
        self.ops, self.variant = ops, ops.name
        self.standardize, self.stages = plan
        self._workspaces: dict[int, list[_Workspace]] = {}

    def _workspace(self, n: int) -> list[_Workspace]:
        """Buffers for a batch of n rows, made at the first such batch (at most two sizes per fit)."""
        ws = self._workspaces.get(n)
        if ws is None:
            ws = []
            for stage in self.stages:
                w, units = _Workspace(), stage.dense.units
                w.z = self.ops.empty((n, units))
                w.h = w.z if stage.act is None or stage.act.name == "identity" else self.ops.empty((n, units))
                w.d = None if stage.dropout is None else self.ops.empty((n, units))
                w.g = self.ops.empty((n, units))
                w.mask = None
                ws.append(w)
            self._workspaces[n] = ws
        return ws

    def __call__(self, xb: Any, yb: Any, wb: Any, row_loss: Any) -> Any:
        ops, stages = self.ops, self.stages
        x = xb if self.standardize is None else self.standardize.forward(xb)
        ws = self._workspace(x.shape[0])
        inputs = [x]
        sparse = is_sparse(x)  # a sparse batch: the first product is the backend's sparse one
        for stage, w in zip(stages, ws):  # forward
            params = stage.dense.parameters
            if sparse and stage is stages[0]:
                w.z[...] = sparse_matmul(x, params["W"].value)  # as Dense.forward computes it
            else:
                ops.matmul(inputs[-1], params["W"].value, w.z)
            if stage is stages[-1]:
                break
            ops.bias_act(w.z, _value(params.get("b")), stage.act, w.h)
            out = w.h
            if stage.dropout is not None:
                w.mask = stage.dropout.draw_mask(tuple(w.h.shape), w.h.dtype)
                if w.mask is not None:
                    ops.mul(w.h, w.mask, w.d)
                    out = w.d
            inputs.append(out)
        last = ws[-1]
        ops.loss_grad(self.loss, last.z, _value(stages[-1].dense.parameters.get("b")), yb, wb, last.g, row_loss)
        for i in range(len(stages) - 1, -1, -1):  # backward
            params, g = stages[i].dense.parameters, ws[i].g
            if sparse and i == 0:
                params["W"].grad[...] = sparse_matmul(x, g, transpose_a=True)
            else:
                ops.matmul(inputs[i].T, g, params["W"].grad)
            if "b" in params:
                ops.bias_grad(g, params["b"].grad)
            if i == 0:
                break
            prev, before = ws[i - 1], stages[i - 1]
            ops.matmul(g, params["W"].value.T, prev.g)
            if before.dropout is not None and prev.mask is not None:
                ops.mul(prev.g, prev.mask, prev.g)
            if before.act is not None:
                ops.act_backward(prev.g, prev.z, prev.h, before.act)
        if self.reduce_grad is not None:
            self.reduce_grad(self.flat.grad)
        self.update(self.flat.data, self.flat.grad, self.flat.n_decay)
        return last.z


def _value(parameter):
    return None if parameter is None else parameter.value


def make_train_step(model: Any, loss: Any, optimizer: Any) -> TrainStep:
    """The train step for this model, loss and optimiser on the model's backend, chosen once.

    NumPy and CuPy get a :class:`FusedStep` when ``fused_plan`` accepts the model and loss
    (and, on CuPy, the fused kernels compiled); everything else, and every backend when
    ``XPMLP_REFERENCE=1``, the :class:`ReferenceStep`.

    Parameters
    ----------
    model : Sequential
        A built model.
    loss : Loss
        The loss.
    optimizer : Optimizer
        The optimiser.

    Returns
    -------
    TrainStep
        A :class:`FusedStep` or a :class:`ReferenceStep`.

    Raises
    ------
    ValueError
        If the model is not built.
    """
    if not model.built:
        raise ValueError("make_train_step needs a built model (fit builds it from the data)")
    kernels = None if os.environ.get("XPMLP_REFERENCE", "") == "1" else fast_kernels(model.xp)
    ops = None if kernels is None else _ops_for(model.backend, model.dtype, kernels)
    plan = None if ops is None else fused_plan(model, loss)
    if plan is None:
        return ReferenceStep(model, loss, optimizer, kernels)
    return FusedStep(model, loss, optimizer, kernels, ops, plan)


def _ops_for(backend, dtype: str, kernels):
    """The backend's Ops for a FusedStep, or None."""
    if backend.name == "numpy":
        from .step_numpy import NumpyOps

        return NumpyOps(backend.xp, dtype)
    if backend.name == "cupy":
        from .step_cuda import CupyOps

        return CupyOps(kernels, dtype)  # kernels: fast_kernels of the model's (current) device
    return None
