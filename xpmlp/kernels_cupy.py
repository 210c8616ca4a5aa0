"""CuPy fast path for the optimiser updates: one fused elementwise kernel per parameter and step.

The reference Adam update launches about 13 elementwise kernels per parameter, each reading and
writing the whole array; on a GPU, where a small MLP step is bound by kernel launches, this
kernel does the same arithmetic in one launch, updating p, m and v in place. It mirrors
:mod:`xpmlp.kernels_numpy` (same operations, same order, same host-computed scalars); nvrtc may
contract a multiply-add into an FMA, so it is tested close to the reference, not bitwise.

STATUS: written without access to a GPU; its tests (tests/test_fastpath.py, CuPy cases) have
not yet run on hardware. :func:`xpmlp.backend.fast_kernels` selects it only for CuPy arrays.
"""

from __future__ import annotations

import cupy

_ADAM = cupy.ElementwiseKernel(
    "T g, float64 b1, float64 b2, float64 eps, float64 step_size, float64 root_bc2",
    "T p, T m, T v",
    """
    m = (T)b1 * m + (T)(1.0 - b1) * g;
    v = (T)b2 * v + (T)(1.0 - b2) * (g * g);
    T denom = sqrt(v) / (T)root_bc2 + (T)eps;
    p = p - (T)step_size * (m / denom);
    """,
    "xpmlp_adam")

_SGD_MOMENTUM = cupy.ElementwiseKernel(
    "T g, float64 lr, float64 momentum, float64 damp, bool nesterov",
    "T p, T buf",
    """
    buf = (T)momentum * buf + (T)damp * g;
    T step = nesterov ? g + (T)momentum * buf : buf;
    p = p - (T)lr * step;
    """,
    "xpmlp_sgd_momentum")

_SGD = cupy.ElementwiseKernel("T g, float64 lr", "T p", "p = p - (T)lr * g;", "xpmlp_sgd")


def usable(*arrays) -> bool:
    first = arrays[0]
    return all(isinstance(a, cupy.ndarray) and a.flags.c_contiguous and a.dtype == first.dtype
               and a.shape == first.shape for a in arrays) and first.dtype.kind == "f"


def adam_(p, g, m, v, *, b1, b2, eps, step_size, root_bc2) -> None:
    """One Adam step in place, as ``optim.Adam.update`` (bias corrections from ``Adam._bias_corrections``)."""
    _ADAM(g, b1, b2, eps, step_size, root_bc2, p, m, v)


def sgd_(p, g, buf, *, lr, momentum, damp, nesterov) -> None:
    """One SGD step in place, as ``optim.SGD.update``; buf (momentum buffer) may be None."""
    if buf is None:
        _SGD(g, lr, p)
    else:
        _SGD_MOMENTUM(g, lr, momentum, damp, nesterov, p, buf)
