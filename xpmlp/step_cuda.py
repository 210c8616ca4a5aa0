"""The fused train step's operations on CuPy: each one kernel launch, no host sync, no allocation.

:class:`CupyOps` is the ``Ops`` object that ``step.FusedStep`` drives (the contract of issue 14):
``matmul`` is one cuBLAS GEMM written into its output, ``bias_grad`` one reduction written into
its output, and the elementwise work (bias + activation, activation backward, loss value and
gradient) one kernel of :mod:`xpmlp.kernels_cupy` each. Nothing here copies to or from the host
or waits for the device: scalars travel as kernel arguments.

Why each call is one launch (CuPy 14.2's code, cupy/_core/_routines_linalg.pyx and _kernel.pyx):

- ``cupy.matmul(a, b, out=out)`` with 2-D operands of out's dtype goes straight to
  ``_core.matmul`` -> ``dot`` -> ``tensordot_core``: one ``gemmEx``, written into ``out`` when out
  is C-contiguous and overlaps neither operand; an operand that is C- or F-contiguous (a
  transposed view ``x.T`` is F-contiguous) is handed to cuBLAS with a transpose flag, not copied.
  Otherwise CuPy adds a copy kernel, which the stand-in counts too.
- ``cupy.sum(g, axis=0, out=out)``: one reduction kernel, into ``out`` (same dtype and shape).
- ``ElementwiseKernel`` calls: one launch; ``ElementwiseKernel`` (unlike ufuncs) never copies an
  input that overlaps an output, so the in-place updates (``z += b``, ``g *= act'``) are safe
  because each element is read and written by the same thread.

This module imports no array library: it gets the ``cupy`` module through the :class:`Kernels`
object that :func:`xpmlp.backend.fast_kernels` returns; ``step.make_train_step`` makes
``CupyOps(kernels, dtype)`` once per fit, with the model's device current (kernels are probed
and cached per device).
"""

from __future__ import annotations

from typing import Any

from .kernels_cupy import ACT_SCALARS, LOSSES, STEP_DTYPES, act_backward_spec, bias_act_spec, loss_spec

__all__ = ["CupyOps"]


class CupyOps:
    """The ``Ops`` of the fused step on CuPy (see ``step.FusedStep``); every method is one launch.

    Parameters
    ----------
    kernels : xpmlp.kernels_cupy.Kernels
        The probed kernels of the model's device (``backend.fast_kernels(xp)``); its ``cupy``
        module does the GEMMs and reductions.
    dtype : "float32" or "float64"
        The model's dtype (of the workspaces :meth:`empty` makes).

    Raises
    ------
    ValueError
        If ``dtype`` is not one the fused kernels run.

    Notes
    -----
    All arrays are CuPy arrays of the model's dtype (integer labels int64) on the current
    device; outputs are C-contiguous and are written in place.
    """

    name = "cupy"

    def __init__(self, kernels: Any, dtype: str) -> None:
        if str(dtype) not in STEP_DTYPES:
            raise ValueError(f"the fused CuPy step runs {' and '.join(STEP_DTYPES)}, not {dtype}")
        self.kernels = kernels
        self._cupy = kernels.cupy
        self.dtype = str(dtype)
        self._memo: dict = {}  # (what, name, flags) -> ElementwiseKernel, or None where no kernel is needed

    def _kernel(self, key, make):
        try:
            return self._memo[key]
        except KeyError:
            spec = make()
            kernel = self._memo[key] = None if spec is None else self.kernels.elementwise(spec)
            return kernel

    def empty(self, shape: tuple) -> Any:
        """A workspace of the model's dtype on the current device (from CuPy's pool: no launch).

        Parameters
        ----------
        shape : tuple of int
            Its shape.

        Returns
        -------
        cupy.ndarray
            An uninitialised array.
        """
        return self._cupy.empty(shape, dtype=self.dtype)

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
        self._cupy.matmul(a, b, out=out)

    def bias_act(self, z: Any, b: Any, act: Any, h: Any) -> None:
        """z += b, then h[...] = act(z); for no activation or the identity, h is z (untouched).

        Parameters
        ----------
        z : array of shape (n, k)
            Pre-activations, the bias added in place.
        b : array of shape (k,) or None
            The bias.
        act : Activation or None
            The activation (None: the identity).
        h : array of shape (n, k)
            Receives the activation.
        """
        name = "identity" if act is None else act.name
        kernel = self._kernel(("act", name, b is not None), lambda: bias_act_spec(name, b is not None))
        if kernel is None:  # identity without bias: nothing to compute
            return
        args = [b] if b is not None else []
        args += [float(getattr(act, a)) for a in ACT_SCALARS.get(name, ())]
        args.append(z)
        if name != "identity":
            args.append(h)
        kernel(*args)

    def act_backward(self, g: Any, z: Any, h: Any, act: Any) -> None:
        """g *= act'(.) in place, from the activation's input z and output h, as its reference backward.

        Parameters
        ----------
        g : array of shape (n, k)
            Gradient with respect to the activation's output, turned in place into the gradient
            with respect to its input.
        z : array of shape (n, k)
            The activation's input.
        h : array of shape (n, k)
            The activation's output.
        act : Activation or None
            The activation (None: the identity).
        """
        name = "identity" if act is None else act.name
        kernel = self._kernel(("grad", name, None), lambda: act_backward_spec(name))
        if kernel is None:  # identity
            return
        kernel(z, h, *[float(getattr(act, a)) for a in ACT_SCALARS.get(name, ())], g)

    def bias_grad(self, g: Any, out: Any) -> None:
        """out[...] = sum(g, axis=0).

        Parameters
        ----------
        g : array of shape (n, k)
            Gradient with respect to a layer's output.
        out : array of shape (k,)
            Receives the bias gradient.
        """
        self._cupy.sum(g, axis=0, out=out)

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
        self._cupy.multiply(a, b, out=out)

    def loss_grad(self, loss: Any, z: Any, b: Any, y: Any, w: Any, grad: Any, row_loss: Any) -> None:
        """z += b, then grad[...] = dL/dz of the weighted batch mean and row_loss[...] = each row's loss * w.

        Parameters
        ----------
        loss : Loss
            Softmax cross-entropy (with its ``label_smoothing``), sigmoid binary cross-entropy
            or MSE.
        z : array of shape (n, k)
            The last layer's outputs, the bias added in place.
        b : array of shape (k,) or None
            The last layer's bias.
        y : array
            Targets as ``loss.prepare_targets`` gives them: int64 labels (n,) or rows (n, k).
        w : array of shape (n,) or None
            Row weights.
        grad : array of shape (n, k)
            Receives dL/dz of the weighted batch mean.
        row_loss : array of shape (n,)
            Receives each row's loss times its weight.

        Raises
        ------
        ValueError
            For a loss the fused kernels do not cover.
        """
        name = loss.name
        if name not in LOSSES:
            raise ValueError(f"the fused CuPy step has no kernel for loss {name!r}; supported: {', '.join(LOSSES)}")
        labels = y.ndim == 1
        key = ("loss", name, (b is not None, w is not None, labels))
        kernel = self._kernel(key, lambda: loss_spec(name, bias=b is not None, weighted=w is not None, labels=labels))
        n, k = z.shape
        if name == "softmax_cross_entropy":
            ls = float(loss.label_smoothing)
            scalars = [ls != 0.0, 1.0 - ls, ls / k, float(n)]  # as SoftmaxCrossEntropy._targets and mean_grad
        else:
            scalars = [float(n * k)]
        args = ([b] if b is not None else []) + [y] + ([w] if w is not None else [])
        kernel(*args, *scalars, z, grad, row_loss)
