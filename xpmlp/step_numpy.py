"""The NumPy operations of a :class:`xpmlp.step.FusedStep`: the reference's maths, into buffers.

Each method does what the layers' and losses' Array API code does, in the same order with the
same scalars, so the fused step is bitwise equal to the reference step (tests/test_step.py),
but writes into the step's workspaces with ``out=`` and in-place operators instead of making a
new array for every intermediate: on a CPU, those allocations and extra passes over memory cost
as much as the matrix products of a small MLP (bench/NOTES.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["NumpyOps"]


class NumpyOps:
    """Ops for float32 or float64 NumPy arrays (see the Ops interface in :mod:`xpmlp.step`)."""

    name = "numpy"

    def __init__(self, xp, dtype: str):
        self.xp, self.dtype = xp, np.dtype(dtype)  # xp: array-api-compat's NumPy namespace

    def empty(self, shape):
        return np.empty(shape, dtype=self.dtype)

    def matmul(self, a, b, out):
        np.matmul(a, b, out=out)

    def bias_act(self, z, b, act, h):
        """z += b; h = act(z) (h is z for the identity)."""
        if b is not None:
            z += b
        if act is None or act.name == "identity":
            return
        if act.name == "relu":
            np.maximum(z, 0.0, out=h)
        else:
            h[...] = act.fn(self.xp, z)

    def act_backward(self, g, z, h, act):
        """g *= act'(z), as the activation's backward computes it from its input z and output h."""
        if act.name == "relu":
            np.multiply(g, z > 0, out=g)  # the reference multiplies by astype(z > 0): the same values
        elif act.name != "identity":
            g[...] = act.grad_from(self.xp, g, z, h)

    def bias_grad(self, g, out):
        np.sum(g, axis=0, out=out)

    def mul(self, a, b, out):
        np.multiply(a, b, out=out)

    def loss_grad(self, loss, z, b, y, w, grad, row_loss):
        """z += b, then the loss's own per-row values and gradient (tiny next to the products)."""
        if b is not None:
            z += b
        row_loss[...] = loss.row_losses(z, y, w)
        grad[...] = loss.backward()
