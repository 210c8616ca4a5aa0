"""CuPy fast path for the optimiser updates: one fused elementwise kernel per parameter and step.

The reference Adam update launches about 13 elementwise kernels per parameter, each reading and
writing the whole array; on a GPU, where a small MLP step is bound by kernel launches, one
kernel does the same arithmetic in one launch, updating p, m and v in place. The kernels mirror
:mod:`xpmlp.kernels_numpy` (same operations, same order, same host-computed scalars).

This module does not import CuPy. :data:`SPECS` holds the exact strings given to
``cupy.ElementwiseKernel``, so tests can compile them with NVRTC and run them on the host
(tests/test_cuda_kernels.py, tests/cuda_host.py) without a GPU; :func:`build` makes the kernels
from a ``cupy`` module object (the real one, or a stand-in with the same API) and returns a
:class:`Kernels` with the interface that :mod:`xpmlp.optim` calls (``usable``, ``adam_``,
``sgd_``), plus :meth:`Kernels.probe` for the backend to check that compiling and launching
works before selecting this path.

Numerics:

- float32/float64: the same IEEE operations as the reference, but NVRTC contracts multiply-adds
  into FMAs by default and CuPy compiles with ``-ftz=true`` (float32 denormals flushed), so GPU
  results are close to the reference, not bitwise equal.
- float16: CuPy's ``float16`` is a storage type. It has no arithmetic operators of its own and
  converts implicitly to ``float``, so every operation in these bodies runs in float32 and is
  rounded to half only where it is stored in a ``T`` or cast with ``(T)``. The NumPy reference
  rounds after every operation, so the two agree to a few half-precision ulps.
- Because ``float16`` converts to ``float`` and ``float`` converts to ``float16`` (both
  implicitly), a conditional expression ``c ? float_expr : T_value`` is ambiguous for
  ``T = float16`` and does not compile (NVRTC: 'ambiguous "?" operation'). The bodies below
  therefore select with ``if`` statements that assign to a ``T`` variable, never with ``?:``.

STATUS: compiled with NVRTC for sm_80/sm_90 and run on the host by the tests; not yet run on a
GPU (tests/test_fastpath.py, CuPy cases).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .rng import MAX_ELEMENTS, keep_threshold, round_keys

__all__ = ["KernelSpec", "SPECS", "DTYPES", "Kernels", "build"]


class KernelSpec(NamedTuple):
    """The arguments of ``cupy.ElementwiseKernel(in_params, out_params, operation, name)``."""

    in_params: str
    out_params: str
    operation: str
    name: str


SPECS: dict[str, KernelSpec] = {
    # m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * (g * g)
    # p = p - step_size * (m / (sqrt(v) / root_bc2 + eps)); step_size and root_bc2 are
    # Adam._bias_corrections(lr) for this step.
    "adam": KernelSpec(
        "T g, float64 b1, float64 b2, float64 eps, float64 step_size, float64 root_bc2",
        "T p, T m, T v",
        """
        m = (T)b1 * m + (T)(1.0 - b1) * g;
        v = (T)b2 * v + (T)(1.0 - b2) * (g * g);
        T denom = sqrt(v) / (T)root_bc2 + (T)eps;
        p = p - (T)step_size * (m / denom);
        """,
        "xpmlp_adam",
    ),
    # buf = momentum * buf + damp * g;  step = g + momentum * buf (Nesterov) or buf;
    # p = p - lr * step. damp is SGD._damp() (1 on the first step).
    # An if statement, not ?:, selects the step: see the module docstring (float16).
    "sgd_momentum": KernelSpec(
        "T g, float64 lr, float64 momentum, float64 damp, bool nesterov",
        "T p, T buf",
        """
        buf = (T)momentum * buf + (T)damp * g;
        T step = buf;
        if (nesterov) {
            step = g + (T)momentum * buf;
        }
        p = p - (T)lr * step;
        """,
        "xpmlp_sgd_momentum",
    ),
    # p = p - lr * g
    "sgd": KernelSpec("T g, float64 lr", "T p", "p = p - (T)lr * g;", "xpmlp_sgd"),
    # The dropout mask of xpmlp.rng in one launch: word i = fmix32(fmix32(i ^ k0) ^ k1), kept iff
    # word >= threshold; mask = scale (1 / (1 - rate), rounded to T as the reference's
    # ``astype(keep, T) * scale`` is) or 0. i is CuPy's element index in C order, as the reference's
    # arange; unsigned 32-bit arithmetic wraps by definition, so the bits equal the reference's.
    "dropout_mask": KernelSpec(
        "uint32 k0, uint32 k1, uint32 threshold, float64 scale",
        "T mask",
        """
        unsigned int x = ((unsigned int)i) ^ k0;
        x ^= x >> 16; x *= 0x85EBCA6Bu; x ^= x >> 13; x *= 0xC2B2AE35u; x ^= x >> 16;
        x ^= k1;
        x ^= x >> 16; x *= 0x85EBCA6Bu; x ^= x >> 13; x *= 0xC2B2AE35u; x ^= x >> 16;
        mask = (T)0.0;
        if (x >= threshold) {
            mask = (T)scale;
        }
        """,
        "xpmlp_dropout_mask",
    ),
}

DTYPES = ("float16", "float32", "float64")
"""The parameter dtypes the kernels are offered for (``Kernels.usable`` refuses others)."""


class Kernels:
    """The fused optimiser kernels for one ``cupy`` module; made by :func:`build`.

    ``cupy.ElementwiseKernel`` compiles lazily, on the first call for each dtype, so making
    this object is cheap; :meth:`probe` forces one compilation and launch.
    """

    def __init__(self, cupy):
        self._cupy = cupy
        self._kernels = {key: cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name)
                         for key, spec in SPECS.items()}

    def usable(self, *arrays) -> bool:
        """True when the kernels apply: CuPy arrays, C-contiguous, one shape, one dtype of DTYPES."""
        if not arrays:
            return False
        first = arrays[0]
        ndarray = self._cupy.ndarray
        return (all(isinstance(a, ndarray) and a.flags.c_contiguous and a.dtype == first.dtype
                    and a.shape == first.shape for a in arrays)
                and str(first.dtype) in DTYPES)

    def adam_(self, p, g, m, v, *, b1, b2, eps, step_size, root_bc2) -> None:
        """One Adam step in place, as ``optim.Adam.update``: m, v and p are overwritten.

        step_size and root_bc2 are the bias corrections from ``Adam._bias_corrections``.
        """
        self._kernels["adam"](g, float(b1), float(b2), float(eps), float(step_size), float(root_bc2), p, m, v)

    def sgd_(self, p, g, buf, *, lr, momentum, damp, nesterov) -> None:
        """One SGD step in place, as ``optim.SGD.update``; buf (momentum buffer) may be None."""
        if buf is None:
            self._kernels["sgd"](g, float(lr), p)
        else:
            self._kernels["sgd_momentum"](g, float(lr), float(momentum), float(damp), bool(nesterov), p, buf)

    def dropout_mask(self, shape, dtype, rate: float, key: int, counter: int):
        """``xpmlp.rng.dropout_mask`` in one launch (bit for bit), or None where it does not apply."""
        n = 1
        for d in shape:
            n *= int(d)
        threshold = keep_threshold(rate)
        if str(np.dtype(dtype)) not in DTYPES or threshold > 0xFFFFFFFF or n > MAX_ELEMENTS:
            return None
        k0, k1 = round_keys(key, counter)
        out = self._cupy.empty(tuple(shape), dtype=dtype)
        self._kernels["dropout_mask"](k0, k1, threshold, 1.0 / (1.0 - float(rate)), out)
        return out

    def probe(self) -> None:
        """Compile and launch the plain SGD kernel on one float32 element; raise if that fails.

        1 - 0.25 * 2 = 0.5 exactly, so any other result means the launch did not happen or
        computed something else. Compilation or launch errors propagate as they are.
        """
        cupy = self._cupy
        p = cupy.asarray(np.array([1.0], dtype=np.float32))
        g = cupy.asarray(np.array([2.0], dtype=np.float32))
        self.sgd_(p, g, None, lr=0.25, momentum=0.0, damp=1.0, nesterov=False)
        got = float(p.get()[0])
        if got != 0.5:
            raise RuntimeError(f"the CuPy SGD kernel computed {got!r} instead of 0.5 in a one-element probe")


def build(cupy) -> Kernels:
    """The fused optimiser kernels made with ``cupy.ElementwiseKernel`` of the given module.

    ``cupy`` is the ``cupy`` module or an object with the same API: ``ElementwiseKernel``,
    ``ndarray``, ``asarray`` (of a NumPy array), and arrays with ``.flags``, ``.dtype``,
    ``.shape`` and ``.get()``.
    """
    return Kernels(cupy)
