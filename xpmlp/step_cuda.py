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

    All arrays are CuPy arrays of the model's dtype (integer labels int64) on the current
    device; outputs are C-contiguous and are written in place.
    """

    name = "cupy"

    def __init__(self, kernels, dtype: str):
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

    def empty(self, shape):
        """A workspace of the model's dtype on the current device (from CuPy's pool: no launch)."""
        return self._cupy.empty(shape, dtype=self.dtype)

    def matmul(self, a, b, out) -> None:
        """out[...] = a @ b; a (n, k), b (k, m) (either may be a transposed view), out (n, m)."""
        self._cupy.matmul(a, b, out=out)

    def bias_act(self, z, b, act, h) -> None:
        """z += b (b (k,) or None), then h[...] = act(z); z, h (n, k). For no activation or the
        identity, h is z (untouched)."""
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

    def act_backward(self, g, z, h, act) -> None:
        """g *= act'(.) in place, from the activation's input z and output h, as its reference backward."""
        name = "identity" if act is None else act.name
        kernel = self._kernel(("grad", name, None), lambda: act_backward_spec(name))
        if kernel is None:  # identity
            return
        kernel(z, h, *[float(getattr(act, a)) for a in ACT_SCALARS.get(name, ())], g)

    def bias_grad(self, g, out) -> None:
        """out[...] = sum(g, axis=0); g (n, k), out (k,)."""
        self._cupy.sum(g, axis=0, out=out)

    def mul(self, a, b, out) -> None:
        """out[...] = a * b (dropout masks); out may be a itself."""
        self._cupy.multiply(a, b, out=out)

    def loss_grad(self, loss, z, b, y, w, grad, row_loss) -> None:
        """z += b, then grad[...] = dL/dz of the weighted batch mean and row_loss[...] = each row's loss * w.

        ``loss``: softmax cross-entropy (its ``label_smoothing``; y int64 labels (n,) or (n, k)
        rows), sigmoid binary cross-entropy or MSE (y (n, k)), with y as ``loss.prepare_targets``
        gives it; b (k,) or None; w (n,) or None; z, grad (n, k); row_loss (n,).
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
