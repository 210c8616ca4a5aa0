"""CuPy kernels: the fused train step's elementwise work and the dropout mask.

On a GPU a small MLP step is bound by kernel launches, not FLOPs, so the fused step
(:mod:`xpmlp.step_cuda`) does each piece of elementwise work in one launch:

- bias + activation forward (``z += b; h = act(z)``) for every elementwise activation;
- activation backward fused into the gradient (``g *= act'(.)``), computed from what the
  layer's reference backward uses (ReLU from z, Sigmoid and Tanh from h, ...);
- loss value and gradient in one kernel per batch (softmax cross-entropy, sigmoid binary
  cross-entropy, MSE), the last Dense's bias added in it, one thread per row, writing per-row
  losses (fit sums an epoch's once; no atomics, so the sums do not depend on thread order);
- the dropout mask of :mod:`xpmlp.rng`, bit for bit.

The optimiser updates are not here: :mod:`xpmlp.update` generates each one's kernel, which
:meth:`Kernels.elementwise` compiles and :meth:`Kernels.usable` guards.

Each kernel body follows the reference's operations in the reference's order (layers.py,
losses.py, functional.py): the same expressions, the same host constants (written as the exact
Python doubles with ``repr``, cast to ``T`` where the reference's weak Python scalars are), so
that a body run on the host without FMA contraction rounds as NumPy does wherever no
transcendental function or NumPy's pairwise summation is involved.

This module does not import CuPy. The ``*_spec`` functions and :data:`SPECS` hold the exact strings
given to ``cupy.ElementwiseKernel``, so tests can compile them with NVRTC and run them on the
host (tests/test_cuda_kernels.py, tests/test_step_cuda.py, tests/cuda_host.py) without a GPU;
:func:`build` makes a :class:`Kernels` from a ``cupy`` module object (the real one, or a
stand-in with the same API), whose :meth:`Kernels.elementwise` compiles any spec once.

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
  ``T = float16`` and does not compile (NVRTC: 'ambiguous "?" operation'). The dropout body
  (offered for float16) therefore selects with an ``if`` statement that assigns to a ``T``
  variable, never with ``?:``; the step kernels (float32 and float64 only) may use ``?:``.
- Row kernels (the losses) read and write whole rows through ``raw`` parameters: CuPy passes a
  raw array as ``CArray<T, ndim, c_contiguous, idx32>`` of its own shape, and ``z[j]`` is the
  element at C-order position ``j`` (cupy/_core/include/cupy/carray.cuh), so ``i * k + j`` is
  row ``i``, column ``j`` of a (n, k) array. The loop runs over the non-raw arrays (the (n,)
  per-row losses), one element per row.
- Step kernels are offered for float32 and float64 (:data:`STEP_DTYPES`); the dropout kernel
  also for float16.

STATUS: compiled with NVRTC for sm_80/sm_90 and run on the host by the tests; not yet run on a
GPU.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .rng import MAX_ELEMENTS, keep_threshold, round_keys

__all__ = ["KernelSpec", "SPECS", "DTYPES", "STEP_DTYPES", "ACTIVATIONS", "ACT_SCALARS", "LOSSES",
           "bias_act_spec", "act_backward_spec", "loss_spec", "step_specs", "Kernels", "build"]


class KernelSpec(NamedTuple):
    """The arguments of ``cupy.ElementwiseKernel(in_params, out_params, operation, name)``.

    Parameters
    ----------
    in_params : str
        The input parameters, e.g. ``"T g, float64 lr"``.
    out_params : str
        The output parameters, written in place.
    operation : str
        The CUDA C body, run for each element ``i``.
    name : str
        The kernel's name.
    """

    in_params: str
    out_params: str
    operation: str
    name: str


# The kernels of fixed source (the step kernels are made per activation and loss by the functions
# below, the optimiser kernels by xpmlp.update).
SPECS: dict[str, KernelSpec] = {
    # The dropout mask of xpmlp.rng in one launch: word i = fmix32(fmix32(i ^ k0) ^ k1), kept iff
    # word >= threshold; mask = scale (1 / (1 - rate), rounded to T as the reference's
    # ``astype(keep, T) * scale`` is) or 0. i is CuPy's element index in C order, as the reference's
    # arange (from ``offset``: a part of a larger mask); unsigned 32-bit arithmetic wraps by
    # definition, so the bits equal the reference's.
    "dropout_mask": KernelSpec(
        "uint32 k0, uint32 k1, uint32 threshold, float64 scale, uint32 offset",
        "T mask",
        """
        unsigned int x = ((unsigned int)i + offset) ^ k0;
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
"""The dtypes the dropout and update kernels are offered for (``Kernels.usable`` refuses others)."""


STEP_DTYPES = ("float32", "float64")
"""The dtypes the step kernels are offered for (the fused step runs float32 and float64 models)."""

_GELU_C = math.sqrt(2.0 / math.pi)  # as layers.GELU


def _c(x: float) -> str:
    """A Python float as a C double literal of exactly the same value (repr round-trips)."""
    return repr(float(x))


def _max0(v: str) -> str:
    """NumPy's ``maximum(v, 0.0)``: NaN propagates, and -0.0 gives +0.0, as NumPy's loop does."""
    return f"(({v} > (T)0 || isnan({v})) ? {v} : (T)0)"


def _min0(v: str) -> str:
    """NumPy's ``minimum(v, 0.0)`` (NaN propagates; -0.0 gives +0.0)."""
    return f"(({v} < (T)0 || isnan({v})) ? {v} : (T)0)"


def _sigmoid(v: str) -> str:
    """functional.sigmoid: 0.5 * (1.0 + tanh(0.5 * v))."""
    return f"((T)0.5 * ((T)1 + tanh((T)0.5 * {v})))"


def _gelu_inner(v: str) -> str:
    """tanh(C * (v + 0.044715 * v * v * v)), as layers.GELU."""
    return f"tanh((T){_c(_GELU_C)} * ({v} + (T){_c(0.044715)} * {v} * {v} * {v}))"


# name -> (forward: statement assigning h from z; backward: statement multiplying g, from z and/or h).
# Each is the layer's reference expression (xpmlp/layers.py) in the same order of operations.
ACTIVATIONS: dict[str, tuple[str, str]] = {
    "relu": (f"h = {_max0('z')};",
             "g = g * (T)(z > (T)0);"),  # grad_out * astype(x > 0, T)
    "leaky_relu": ("h = z > (T)0 ? z : (T)negative_slope * z;",
                   "g = z > (T)0 ? g : (T)negative_slope * g;"),
    "elu": (f"h = z > (T)0 ? z : (T)alpha * expm1({_min0('z')});",
            "g = g * (z > (T)0 ? (T)1 : h + (T)alpha);"),
    "gelu": (f"h = (T)0.5 * z * ((T)1 + {_gelu_inner('z')});",
             f"const T t = {_gelu_inner('z')};\n"
             f"g = g * ((T)0.5 * ((T)1 + t) + (T)0.5 * z * ((T)1 - t * t) * (T){_c(_GELU_C)}"
             f" * ((T)1 + (T){_c(3 * 0.044715)} * z * z));"),
    "sigmoid": (f"h = {_sigmoid('z')};",
                "g = g * (h * ((T)1 - h));"),
    "tanh": ("h = tanh(z);",
             "g = g * ((T)1 - h * h);"),
    "softplus": (f"h = {_max0('z')} + log1p(exp(-fabs(z)));",
                 f"g = g * {_sigmoid('z')};"),
    "identity": ("", ""),
}
ACT_SCALARS: dict[str, tuple[str, ...]] = {"leaky_relu": ("negative_slope",), "elu": ("alpha",)}
"""Per activation, its configuration attributes passed as float64 kernel scalars, in this order."""


def bias_act_spec(name: str, bias: bool) -> KernelSpec | None:
    """``z += b`` (when ``bias``) and ``h = act(z)`` in one kernel; None for identity without bias.

    Call: ``kernel([b,] *scalars, z, h)`` with z, h (n, k) and b (k,) raw; identity has no h
    (its output is z itself). ``scalars``: the layer attributes of ``ACT_SCALARS``.

    Parameters
    ----------
    name : str
        The activation's name (a key of ``ACTIVATIONS``).
    bias : bool
        Whether the kernel adds a bias first.

    Returns
    -------
    KernelSpec or None
        The kernel's arguments, or None when there is nothing to compute.
    """
    forward = ACTIVATIONS[name][0]
    if name == "identity" and not bias:
        return None
    ins = (["raw T b"] if bias else []) + [f"float64 {a}" for a in ACT_SCALARS.get(name, ())]
    outs = ["T z"] + (["T h"] if name != "identity" else [])
    # b[i % k]: z is C-contiguous (n, k), so element i is in column i % k
    body = ("z = z + b[i % b.size()];\n" if bias else "") + forward
    return KernelSpec(", ".join(ins), ", ".join(outs), body, f"xpmlp_{'bias_' if bias else ''}{name}")


def act_backward_spec(name: str) -> KernelSpec | None:
    """``g *= act'(.)`` in place; None for identity (nothing to do).

    Call: ``kernel(z, h, *scalars, g)``, all (n, k); z is the activation's input, h its output.

    Parameters
    ----------
    name : str
        The activation's name (a key of ``ACTIVATIONS``).

    Returns
    -------
    KernelSpec or None
        The kernel's arguments, or None for the identity.
    """
    backward = ACTIVATIONS[name][1]
    if not backward:
        return None
    ins = ["T z", "T h"] + [f"float64 {a}" for a in ACT_SCALARS.get(name, ())]
    return KernelSpec(", ".join(ins), "T g", backward, f"xpmlp_{name}_grad")


LOSSES = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mse")

# Per-row loss kernels: one thread per row i of z (n, k); r = i * k is the row's first element.
# Each writes grad (the gradient of the weighted batch mean, as Loss.backward) and the row's loss
# (times its weight, as Loss.row_losses); sums run left to right over the row.
_ROW_HEAD = "const ptrdiff_t k = z.shape()[1];\nconst ptrdiff_t r = i * k;\n"
_ADD_BIAS = "for (ptrdiff_t j = 0; j < k; ++j) z[r + j] = z[r + j] + b[j];\n"

_LOSS_BODIES = {
    # SoftmaxCrossEntropy: t one-hot (labels) or the given row, smoothed as (1 - ls) * t + ls / k
    # when ls != 0; logp = (z - m) - log(sum(exp(z - m))) (never z - (m + log(...)): see
    # functional.log_softmax_rows); loss -sum(t * logp); grad (exp(logp) - t) / n.
    "softmax_cross_entropy": """T m = z[r];
for (ptrdiff_t j = 1; j < k; ++j) {
  const T v = z[r + j];
  if (v > m || isnan(v)) m = v;
}
T s = (T)0;
for (ptrdiff_t j = 0; j < k; ++j) s = s + exp(z[r + j] - m);
const T ls = log(s);
T acc = (T)0;
for (ptrdiff_t j = 0; j < k; ++j) {
  const T lp = (z[r + j] - m) - ls;
  T t = TARGET;
  if (smooth) t = (T)keep * t + (T)spread;
  acc = acc + t * lp;
  grad[r + j] = (exp(lp) - t) / (T)n WEIGHT;
}
loss = -acc WEIGHT;""",
    # SigmoidBinaryCrossEntropy: per entry max(z, 0) - z * y + log1p(exp(-|z|)), row mean;
    # grad (sigmoid(z) - y) / (n * k).
    "sigmoid_binary_cross_entropy": f"""T acc = (T)0;
for (ptrdiff_t j = 0; j < k; ++j) {{
  const T v = z[r + j];
  const T t = y[r + j];
  acc = acc + ({_max0('v')} - v * t + log1p(exp(-fabs(v))));
  grad[r + j] = ({_sigmoid('v')} - t) / (T)count WEIGHT;
}}
loss = acc / (T)k WEIGHT;""",
    # MeanSquaredError: d = z - y; row mean of d * d; grad 2 * d / (n * k).
    "mse": """T acc = (T)0;
for (ptrdiff_t j = 0; j < k; ++j) {
  const T d = z[r + j] - y[r + j];
  acc = acc + d * d;
  grad[r + j] = (T)2 * d / (T)count WEIGHT;
}
loss = acc / (T)k WEIGHT;""",
}


def loss_spec(name: str, *, bias: bool, weighted: bool, labels: bool = False) -> KernelSpec:
    """One kernel for a loss's per-row values and its gradient, the last Dense's bias added first.

    ``labels``: softmax cross-entropy with integer labels (n,) int64 instead of rows y (n, k).
    Call: ``kernel([b,] y, [w,] *scalars, z, grad, row_loss)`` with b (k,), z and grad (n, k)
    raw, y (n,) labels or (n, k) raw, w and row_loss (n,). Scalars: softmax cross-entropy
    ``smooth`` (bool: label smoothing on), ``keep`` (1 - ls), ``spread`` (ls / k), ``n`` (rows);
    the others ``count`` (n * k).

    Parameters
    ----------
    name : str
        The loss's name, one of ``LOSSES``.
    bias : bool
        Whether the kernel adds the last Dense layer's bias first.
    weighted : bool
        Whether rows have weights ``w``.
    labels : bool, default False
        Softmax cross-entropy with integer labels (n,) int64 instead of rows y (n, k).

    Returns
    -------
    KernelSpec
        The kernel's arguments.

    Raises
    ------
    ValueError
        For a loss without a kernel, or labels with another loss than softmax cross-entropy.
    """
    if name not in _LOSS_BODIES:
        raise ValueError(f"no fused kernel for loss {name!r}")
    if labels and name != "softmax_cross_entropy":
        raise ValueError("integer labels are for softmax cross-entropy only")
    body = _LOSS_BODIES[name].replace(" WEIGHT", " * w" if weighted else "")
    body = body.replace("TARGET", "(T)(j == y)" if labels else "y[r + j]")
    scalars = (["bool smooth", "float64 keep", "float64 spread", "float64 n"] if name == "softmax_cross_entropy"
               else ["float64 count"])
    ins = (["raw T b"] if bias else []) + (["int64 y"] if labels else ["raw T y"]) + (["T w"] if weighted else [])
    short = {"softmax_cross_entropy": "softmax_ce", "sigmoid_binary_cross_entropy": "sigmoid_bce", "mse": "mse"}[name]
    kname = f"xpmlp_{short}{'_labels' if labels else ''}{'_bias' if bias else ''}{'_weighted' if weighted else ''}"
    return KernelSpec(", ".join(ins + scalars), "raw T z, raw T grad, T loss",
                      _ROW_HEAD + (_ADD_BIAS if bias else "") + body, kname)


def step_specs() -> dict[str, KernelSpec]:
    """Every step kernel, by kernel name (for the tests: NVRTC and host runs of each).

    Returns
    -------
    dict of str to KernelSpec
        The specs of every activation and loss kernel variant.
    """
    specs = []
    for name in ACTIVATIONS:
        specs += [bias_act_spec(name, True), bias_act_spec(name, False), act_backward_spec(name)]
    for name in LOSSES:
        for bias in (True, False):
            for weighted in (True, False):
                specs.append(loss_spec(name, bias=bias, weighted=weighted))
                if name == "softmax_cross_entropy":
                    specs.append(loss_spec(name, bias=bias, weighted=weighted, labels=True))
    return {spec.name: spec for spec in specs if spec is not None}


class Kernels:
    """The kernels for one ``cupy`` module; made by :func:`build`.

    ``cupy.ElementwiseKernel`` compiles lazily, on the first call for each dtype and argument
    layout, so making this object and its kernels is cheap; :meth:`probe` forces one
    compilation and launch.

    Parameters
    ----------
    cupy : module
        The ``cupy`` module, or an object with its API (see :func:`build`).
    """

    def __init__(self, cupy: Any) -> None:
        self.cupy = self._cupy = cupy  # the module (the fused step's GEMMs and reductions use it too)
        self._kernels = {key: cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name)
                         for key, spec in SPECS.items()}
        self._by_spec: dict[KernelSpec, object] = {}

    def elementwise(self, spec: KernelSpec) -> Any:
        """``cupy.ElementwiseKernel(*spec)``, made once per spec.

        CuPy then compiles it once per dtype and device at its first call.

        Parameters
        ----------
        spec : KernelSpec
            The kernel's arguments.

        Returns
        -------
        cupy.ElementwiseKernel
            The kernel, the same object for equal specs.
        """
        kernel = self._by_spec.get(spec)
        if kernel is None:
            kernel = self._by_spec[spec] = self._cupy.ElementwiseKernel(
                spec.in_params, spec.out_params, spec.operation, spec.name)
        return kernel

    def usable(self, *arrays: Any) -> bool:
        """True when the kernels apply: CuPy arrays, C-contiguous, one shape, one dtype of DTYPES.

        Parameters
        ----------
        *arrays : array
            The arrays a kernel would take.

        Returns
        -------
        bool
            Whether the kernels apply (False for no arrays).
        """
        if not arrays:
            return False
        first = arrays[0]
        ndarray = self._cupy.ndarray
        return (all(isinstance(a, ndarray) and a.flags.c_contiguous and a.dtype == first.dtype
                    and a.shape == first.shape for a in arrays)
                and str(first.dtype) in DTYPES)

    def dropout_mask(self, shape: tuple, dtype: Any, rate: float, key: int, counter: int, offset: int = 0) -> Any:
        """``xpmlp.rng.dropout_mask`` in one launch (bit for bit), or None where it does not apply.

        Parameters
        ----------
        shape : tuple of int
            The mask's shape.
        dtype : dtype or str
            The mask's floating dtype.
        rate : float in [0, 1)
            Fraction dropped.
        key : int
            The stream key.
        counter : int
            The step number.
        offset : int, default 0
            This mask is elements ``offset ..`` of a larger one.

        Returns
        -------
        cupy.ndarray or None
            The mask (0 or ``1 / (1 - rate)``), or None for a dtype the kernel does not offer, a
            rate within 2**-33 of 1, or a draw beyond 2**32 elements.
        """
        n = 1
        for d in shape:
            n *= int(d)
        threshold = keep_threshold(rate)
        if str(np.dtype(dtype)) not in DTYPES or threshold > 0xFFFFFFFF or offset + n > MAX_ELEMENTS:
            return None
        k0, k1 = round_keys(key, counter)
        out = self._cupy.empty(tuple(shape), dtype=dtype)
        self._kernels["dropout_mask"](k0, k1, threshold, 1.0 / (1.0 - float(rate)), offset, out)
        return out

    def probe(self) -> None:
        """Compile and launch the fused bias-add step kernel on one float32 element; raise if that fails.

        It has a ``raw`` parameter, as most step kernels do. 1 + 0.5 = 1.5 exactly, so any other
        result means the launch did not happen or computed something else. Compilation or launch
        errors propagate as they are.
        """
        cupy = self._cupy
        z = cupy.asarray(np.array([[1.0]], dtype=np.float32))
        b = cupy.asarray(np.array([0.5], dtype=np.float32))
        spec = bias_act_spec("identity", True)
        assert spec is not None  # with a bias there is something to compute
        self.elementwise(spec)(b, z)
        got = float(z.get()[0, 0])
        if got != 1.5:
            raise RuntimeError(f"the CuPy bias kernel computed {got!r} instead of 1.5 in a one-element probe")


def build(cupy: Any) -> Kernels:
    """The kernels made with ``cupy.ElementwiseKernel`` of the given module.

    Parameters
    ----------
    cupy : module
        The ``cupy`` module or an object with the same API: ``ElementwiseKernel``,
        ``ndarray``, ``asarray`` (of a NumPy array), and arrays with ``.flags``, ``.dtype``,
        ``.shape`` and ``.get()``.

    Returns
    -------
    Kernels
        The kernels (compiled lazily).
    """
    return Kernels(cupy)
