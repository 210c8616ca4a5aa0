"""The NumPy operations of a :class:`xpmlp.step.FusedStep`: the reference's maths, into buffers.

Each method does what the layers' and losses' Array API code does, in the same order with the
same scalars, so the fused step is bitwise equal to the reference step (tests/test_step.py),
but writes into the step's workspaces with ``out=`` and in-place operators instead of making a
new array for every intermediate: on a CPU, those allocations and extra passes over memory cost
as much as the matrix products of a small MLP (bench/NOTES.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["NumpyOps"]


class NumpyOps:
    """Ops for float32 or float64 NumPy arrays (see the Ops interface in :mod:`xpmlp.step`).

    Parameters
    ----------
    xp : module
        array-api-compat's NumPy namespace (activations and losses compute with it).
    dtype : str
        ``"float32"`` or ``"float64"``: the model's dtype (of the workspaces :meth:`empty` makes).
    """

    name = "numpy"

    def __init__(self, xp: Any, dtype: str) -> None:
        self.xp, self.dtype = xp, np.dtype(dtype)  # xp: array-api-compat's NumPy namespace

    def empty(self, shape: tuple) -> np.ndarray:
        """A workspace of the model's dtype.

        Parameters
        ----------
        shape : tuple of int
            Its shape.

        Returns
        -------
        numpy.ndarray
            An uninitialised array.
        """
        return np.empty(shape, dtype=self.dtype)

    def matmul(self, a: Any, b: Any, out: Any) -> None:
        """out[...] = a @ b.

        Parameters
        ----------
        a : array of shape (n, k)
            Left operand (may be a transposed view).
        b : array of shape (k, m)
            Right operand (may be a transposed view).
        out : array of shape (n, m)
            Written in place.
        """
        np.matmul(a, b, out=out)

    def bias_act(self, z: Any, b: Any, act: Any, h: Any) -> None:
        """z += b; h = act(z) (h is z for the identity).

        Parameters
        ----------
        z : array of shape (n, k)
            Pre-activations, the bias added in place.
        b : array of shape (k,) or None
            The bias.
        act : Activation or None
            The activation (None: the identity).
        h : array of shape (n, k)
            Receives the activation (z itself for the identity).
        """
        if b is not None:
            z += b
        if act is None or act.name == "identity":
            return
        if act.name == "relu":
            np.maximum(z, 0.0, out=h)
        else:
            h[...] = act.fn(self.xp, z)

    def act_backward(self, g: Any, z: Any, h: Any, act: Any) -> None:
        """g *= act'(z), as the activation's backward computes it from its input z and output h.

        Parameters
        ----------
        g : array of shape (n, k)
            Gradient with respect to the activation's output, turned in place into the gradient
            with respect to its input.
        z : array of shape (n, k)
            The activation's input.
        h : array of shape (n, k)
            The activation's output.
        act : Activation
            The activation.
        """
        if act.name == "relu":
            np.multiply(g, z > 0, out=g)  # the reference multiplies by astype(z > 0): the same values
        elif act.name != "identity":
            g[...] = act.grad_from(self.xp, g, z, h)

    def bias_grad(self, g: Any, out: Any) -> None:
        """out[...] = sum(g, axis=0).

        Parameters
        ----------
        g : array of shape (n, k)
            Gradient with respect to a layer's output.
        out : array of shape (k,)
            Receives the bias gradient.
        """
        np.sum(g, axis=0, out=out)

    def mul(self, a: Any, b: Any, out: Any) -> None:
        """out[...] = a * b (dropout masks); out may be a itself.

        Parameters
        ----------
        a : array
            Left operand.
        b : array
            Right operand, of a's shape.
        out : array
            Written in place.
        """
        np.multiply(a, b, out=out)

    def loss_grad(self, loss: Any, z: Any, b: Any, y: Any, w: Any, grad: Any, row_loss: Any) -> None:
        """z += b, then the loss's own per-row values and gradient (tiny next to the products).

        Parameters
        ----------
        loss : Loss
            The loss.
        z : array of shape (n, k)
            The last layer's outputs, the bias added in place.
        b : array of shape (k,) or None
            The last layer's bias.
        y : array
            Targets, as ``loss.prepare_targets`` gives them.
        w : array of shape (n,) or None
            Row weights.
        grad : array of shape (n, k)
            Receives dL/dz of the weighted batch mean.
        row_loss : array of shape (n,)
            Receives each row's loss times its weight.
        """
        if b is not None:
            z += b
        row_loss[...] = loss.row_losses(z, y, w)
        grad[...] = loss.backward()
