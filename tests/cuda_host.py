"""Run the source of a CuPy ``ElementwiseKernel`` on the CPU, compiled by g++.

:class:`HostElementwiseKernel` takes the same ``(in_params, out_params, operation, name)``
strings as ``cupy.ElementwiseKernel`` and wraps the SAME operation body in a C++ loop over the
elements, so a fake ``cupy`` can run a library's real kernel source without a GPU. It declares
the parameters as CuPy's generated code does (``const T &g`` for an input array element,
``T &p`` for an output one, ``const double b1`` for a scalar, the loop index ``i``) and spells
the C types as CuPy does, so a body that compiles here compiles there and means the same.

float16 is a small struct over GCC's ``_Float16`` that mirrors CuPy's ``float16`` class
(cupy/_core/include/cupy/float16.cuh): no arithmetic operators of its own, an implicit
conversion to ``float`` and an implicit constructor from ``float`` (explicit from double and
the integers). So, as on the GPU, float16 arithmetic runs in float32 and rounds to half where
the result is stored in a ``T`` or cast, and what does not compile under NVRTC (for instance an
ambiguous ``?:`` between ``float`` and ``float16``) does not compile here either.

Supported: element types float16, float32, float64, bool, int32, int64, uint32, uint64; one-letter
type placeholders (``T``), bound from the arrays declared with them (``raw`` ones included, as
CuPy binds them); Python and NumPy scalars for input parameters (converted to the parameter's
type, as CuPy does); non-raw arrays that are NumPy arrays (or subclasses), C-contiguous, aligned,
native byte order and all of one shape (no broadcasting). Outputs must be passed
(``kernel(*inputs, *outputs)``) and are written in place.

``raw`` parameters are what CuPy 14.2 makes of them (cupy/_core/_kernel.pyx: ``ParameterInfo``,
``_broadcast``, ``_reduce_dims``, ``_ArgInfo.get_c_type``, ``_get_elementwise_kernel_code``): the
body sees the whole array as ``CArray<ctype, ndim, c_contiguous, index_32_bits>`` named as the
parameter (``const`` for an input, so writing a raw input does not compile), of the array's own
ndim and strides (raw arrays are neither broadcast nor reshaped), and indexes it itself: ``x[j]``
is the element at C-order position ``j``, ``x[idx]`` (``ptrdiff_t idx[ndim]``) the element at that
index, ``x.shape()[d]``/``x.size()`` its shape. That class is CuPy's own, from the installed
package's ``cupy/carray.cuh``, compiled for the host (so a raw parameter needs the ``cupy``
package, not a GPU). The loop runs over the non-raw arrays' elements (``i`` in C order); when
every array is raw, ``size=`` gives the loop size, as in CuPy ("Loop size is undecided." without
it, and ``size=`` with a non-raw array is refused as CuPy refuses it).

Not supported (a clear error): ``_non_const``, CuPy's ``_ind`` indexer in the body, preambles,
``stream=``/``block_size=``, other dtypes. The math functions are those of ``<math.h>`` in C++
(overloaded for float and double, as CUDA's are).

Differences from a GPU that remain: the host does not flush float32 denormals to zero (CuPy
compiles with ``-ftz=true``) and does not contract multiply-adds into FMAs (NVRTC does by
default), so GPU results may differ from these in the last bits.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib.machinery
import keyword
import os
import re
import shutil
import subprocess
import tempfile
import threading
from typing import NamedTuple

import numpy as np

__all__ = ["HostElementwiseKernel", "HostCompileError", "Param", "parse_params", "find_compiler",
           "CTYPES", "CXXFLAGS"]

# dtype name -> C type name, spelled as CuPy spells them (cupy/_core/_scalar.pyx).
CTYPES = {
    "float16": "float16",
    "float32": "float",
    "float64": "double",
    "bool": "bool",
    "int32": "int",
    "int64": "long long",
    "uint32": "unsigned int",
    "uint64": "unsigned long long",
}

# -O1: the kernels are small and the tests compile many of them; -O1 compiles fast and GCC
#   never reassociates or otherwise changes floating-point results at any -O level without
#   -ffast-math (not given).
# -ffp-contract=off: GCC's default in GNU C++ mode is -ffp-contract=fast, which fuses a * b + c
#   into one FMA wherever the target has one (aarch64 always, x86-64 with -march=haswell or
#   later). Off, every operation rounds once, as in the NumPy reference the results are compared
#   with, and the results do not depend on the machine.
CXXFLAGS = ("-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-shared")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class HostCompileError(RuntimeError):
    """g++ rejected the generated source; the message holds its log and the numbered source."""


class Param(NamedTuple):
    """One parameter of an ElementwiseKernel: its type (a dtype name of CTYPES, or a
    one-letter placeholder such as ``T``), its name, and whether it is ``raw``."""

    type: str
    name: str
    raw: bool = False

    @property
    def is_placeholder(self) -> bool:
        return len(self.type) == 1


def parse_params(text: str) -> tuple[Param, ...]:
    """Parse a CuPy parameter list such as ``"T g, float64 lr, bool nesterov"``.

    Raises ValueError for syntax errors, modifiers other than ``raw``, and unsupported types.
    """
    if not text.strip():
        return ()
    params = []
    for item in text.strip().split(","):
        words = item.split()
        if len(words) < 2:
            raise ValueError(f"syntax error in parameter {item.strip()!r} (expected 'type name')")
        if len(words) > 3 or (len(words) == 3 and words[0] != "raw"):
            raise ValueError(f"parameter {item.strip()!r}: modifiers other than 'raw' (such as _non_const) "
                             "are not supported by HostElementwiseKernel")
        raw = len(words) == 3
        t, name = words[-2:]
        if not _IDENT.match(name) or keyword.iskeyword(name):
            raise ValueError(f"invalid parameter name {name!r}")
        if len(t) != 1 and t not in CTYPES:
            raise ValueError(f"parameter {name!r}: type {t!r} is not supported by HostElementwiseKernel; "
                             f"use a one-letter placeholder or one of {', '.join(CTYPES)}")
        params.append(Param(t, name, raw))
    return tuple(params)


def find_compiler() -> str | None:
    """Path of g++, or None when it is not installed."""
    return shutil.which("g++")


def cupy_include_dir() -> str | None:
    """The installed cupy package's header directory (cupy/_core/include), or None.

    Found on sys.path without importing cupy (and without looking at sys.modules, where a test's
    stand-in may be installed as ``cupy``).
    """
    spec = importlib.machinery.PathFinder.find_spec("cupy")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "_core", "include")
        if os.path.isfile(os.path.join(path, "cupy", "carray.cuh")):
            return path
    return None


# CuPy's carray.cuh (CArray, CIndexer) compiled for the host: its device-only qualifiers and
# intrinsics mapped to their host meanings; nothing else in it is changed.
_CARRAY_HOST = """
#define __device__
#define __host__
#define __forceinline__ inline
#define __popc __builtin_popcount
#define __popcll __builtin_popcountll
#include <string.h>
#include <assert.h>
#include <cupy/carray.cuh>
"""


_FLOAT16 = r"""
// Mirrors CuPy's float16 (cupy/_core/include/cupy/float16.cuh): a storage type with no
// arithmetic of its own; it converts implicitly to float, so arithmetic runs in float32 and
// rounds to half (round to nearest even) only on construction and assignment.
struct float16 {
  _Float16 data_;
  float16() = default;
  float16(float v) : data_(static_cast<_Float16>(v)) {}
  explicit float16(bool v) : data_(static_cast<_Float16>(static_cast<float>(v))) {}
  explicit float16(double v) : data_(static_cast<_Float16>(v)) {}
  explicit float16(int v) : data_(static_cast<_Float16>(v)) {}
  explicit float16(unsigned int v) : data_(static_cast<_Float16>(v)) {}
  explicit float16(long long v) : data_(static_cast<_Float16>(v)) {}
  explicit float16(unsigned long long v) : data_(static_cast<_Float16>(v)) {}
  operator float() const { return static_cast<float>(data_); }
  float16 &operator=(const float16 &) = default;
  template <typename U> float16 &operator=(const U &rhs) { *this = static_cast<float16>(rhs); return *this; }
  template <typename U> float16 &operator+=(const U &rhs) { *this = *this + rhs; return *this; }
  template <typename U> float16 &operator-=(const U &rhs) { *this = *this - rhs; return *this; }
  template <typename U> float16 &operator*=(const U &rhs) { *this = *this * rhs; return *this; }
  template <typename U> float16 &operator/=(const U &rhs) { *this = *this / rhs; return *this; }
};
static_assert(sizeof(float16) == 2, "float16 must have the layout of numpy.float16");
"""

_TEMPLATE = """\
// generated by tests/cuda_host.py from an ElementwiseKernel body
#include <math.h>     // C++ <math.h>: sqrt, exp, ... overloaded for float and double, as in CUDA
#include <stddef.h>
{carray}{float16}
{typedefs}
extern "C" void {name}(void *const *_args, const ptrdiff_t *_meta, ptrdiff_t _n) {{
{declarations}
  for (ptrdiff_t i = 0; i < _n; ++i) {{
{references}
{operation}
;
  }}
}}
"""

_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL] = {}  # source hash -> loaded library
_workdir: str | None = None
_compiler_id: str | None = None

CACHE_ENV = "XPMLP_CUDA_HOST_CACHE"
"""A directory where compiled kernels are kept between runs (default: a per-user directory in the
system's temporary directory); ``0`` keeps them for the process only."""


def _cache_dir() -> str | None:
    """The directory of compiled kernels kept between runs, or None: only one that this user alone
    can write, since the libraries in it are loaded and run."""
    path = os.environ.get(CACHE_ENV, "")
    if path == "0":
        return None
    path = path or os.path.join(tempfile.gettempdir(), f"xpmlp-cuda-host-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return None
    return path if st.st_uid == os.getuid() and not st.st_mode & 0o022 else None


def _key(cxx: str, flags, source: str, include: str | None) -> str:
    """What the library depends on: the compiler's identity, the flags, the source and, for raw
    parameters, CuPy's carray.cuh."""
    global _compiler_id
    if _compiler_id is None:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True)
        _compiler_id = f"{os.path.realpath(cxx)}\n{done.stdout}"
    header = ""
    if include is not None:
        with open(os.path.join(include, "cupy", "carray.cuh"), "rb") as f:
            header = hashlib.sha256(f.read()).hexdigest()
    return hashlib.sha256("\0".join((_compiler_id, *flags, header, source)).encode()).hexdigest()[:32]


def _compile(source: str, include: str | None = None) -> ctypes.CDLL:
    """Compile ``source`` into a shared library and load it: once per process per source, and kept
    between runs in :func:`_cache_dir` (written under a temporary name, then renamed, so
    concurrent runs never load a half-written file)."""
    global _workdir
    cxx = find_compiler()
    if cxx is None:
        raise HostCompileError("g++ was not found on PATH; HostElementwiseKernel needs it")
    flags = CXXFLAGS if include is None else (*CXXFLAGS, f"-I{include}")
    with _lock:
        key = _key(cxx, flags, source, include)
        lib = _libraries.get(key)
        if lib is not None:
            return lib
        cache = _cache_dir()
        if cache is not None and os.path.isfile(os.path.join(cache, f"k{key}.so")):
            lib = _libraries[key] = ctypes.CDLL(os.path.join(cache, f"k{key}.so"))
            return lib
        if _workdir is None:
            _workdir = tempfile.mkdtemp(prefix="xpmlp-cuda-host-")
            atexit.register(shutil.rmtree, _workdir, True)
        src, so = os.path.join(_workdir, f"k{key}.cpp"), os.path.join(_workdir, f"k{key}.so")
        with open(src, "w") as f:
            f.write(source)
        done = subprocess.run([cxx, *flags, "-o", so, src], capture_output=True, text=True)
        if done.returncode != 0:
            numbered = "\n".join(f"{n:4d}  {line}" for n, line in enumerate(source.splitlines(), 1))
            raise HostCompileError(f"g++ failed to compile the kernel (exit {done.returncode}):\n"
                                   f"{done.stderr.strip()}\n--- source ---\n{numbered}")
        if cache is not None:
            kept = os.path.join(cache, f"k{key}.so")
            try:
                tmp = os.path.join(cache, f".k{key}.{os.getpid()}.so")
                shutil.copyfile(so, tmp)
                os.replace(tmp, kept)
                so = kept
            except OSError:
                pass  # the process's own copy will do
        lib = _libraries[key] = ctypes.CDLL(so)
        return lib


class HostElementwiseKernel:
    """``cupy.ElementwiseKernel`` run on the CPU: same constructor strings, same call order.

    ``kernel(*inputs, *outputs)``: NumPy arrays and scalars for the inputs, NumPy arrays for the
    outputs (updated in place); returns the output array, or a tuple of them when there are
    several, as CuPy does.
    """

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel"):
        if not isinstance(name, str) or not _IDENT.match(name):
            raise ValueError(f"invalid kernel name {name!r}")
        self.in_params = parse_params(in_params)
        self.out_params = parse_params(out_params)
        names = [p.name for p in self.in_params + self.out_params]
        if "i" in names:
            raise ValueError("'i' cannot be a parameter name (it is the element index)")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")
        if not self.out_params:
            raise ValueError("an ElementwiseKernel needs at least one output parameter")
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.operation = operation
        self.name = name
        self._functions: dict = {}  # (binding, which inputs are arrays) -> ctypes function

    def __repr__(self):
        return f"HostElementwiseKernel(name={self.name!r})"

    # -- types ------------------------------------------------------------------------------

    def _bind_types(self, args) -> dict[str, np.dtype]:
        """Placeholder -> dtype, from the array arguments (outputs first, as CuPy does)."""
        bound: dict[str, np.dtype] = {}
        order = list(range(self.nin, self.nargs)) + list(range(self.nin))
        params = self.in_params + self.out_params
        for k in order:
            p, a = params[k], args[k]
            if not isinstance(a, np.ndarray):
                continue
            if not p.is_placeholder:
                if a.dtype != np.dtype(p.type):
                    raise TypeError(f"{self.name}: argument {p.name!r} has dtype {a.dtype}, "
                                    f"but the parameter is declared {p.type}")
            elif p.type in bound:
                if bound[p.type] != a.dtype:
                    raise TypeError(f"{self.name}: argument {p.name!r} has dtype {a.dtype}, but {p.type} is "
                                    f"already bound to {bound[p.type]} by another array")
            else:
                if a.dtype.name not in CTYPES:
                    raise TypeError(f"{self.name}: argument {p.name!r} has dtype {a.dtype}; supported: "
                                    f"{', '.join(CTYPES)}")
                bound[p.type] = a.dtype
        for p in params:
            if p.is_placeholder and p.type not in bound:
                raise TypeError(f"{self.name}: type {p.type} of {p.name!r} is not bound by any array argument")
        return bound

    def _dtype(self, p: Param, bound) -> np.dtype:
        return bound[p.type] if p.is_placeholder else np.dtype(p.type)

    # -- code -------------------------------------------------------------------------------

    def source(self, bound: dict[str, np.dtype], kinds: tuple) -> str:
        """The C++ source for a placeholder binding (placeholder -> dtype) and, per parameter, its
        argument's kind: ``"array"`` or ``"scalar"`` for a non-raw parameter, ``(ndim,
        c_contiguous, index_32_bits)`` for a raw one (the template arguments of its CArray)."""
        params = self.in_params + self.out_params
        dtypes = [self._dtype(p, bound) for p in params]
        typedefs = "".join(f"typedef {CTYPES[dt.name]} {t};\n" for t, dt in sorted(bound.items()))
        decls, refs, meta = [], [], 0
        for k, (p, kind) in enumerate(zip(params, kinds)):
            ctype = p.type if p.is_placeholder else CTYPES[p.type]
            const = "const " if k < self.nin else ""
            if p.raw:  # as _ArgInfo.get_c_type: CArray<T, ndim, c_contiguous, index_32_bits>, named p.name
                ndim, c_contiguous, idx32 = kind
                decls.append(f"  {const}CArray<{ctype}, {ndim}, {int(c_contiguous)}, {int(idx32)}> {p.name}("
                             f"static_cast<{ctype} *>(_args[{k}]), _meta + {meta}, _meta + {meta + ndim});")
                meta += 2 * ndim
            elif kind == "array":
                decls.append(f"  {const}{ctype} *const _raw_{p.name} = static_cast<{const}{ctype} *>(_args[{k}]);")
                refs.append(f"    {const}{ctype} &{p.name} = _raw_{p.name}[i];")
            else:
                decls.append(f"  const {ctype} {p.name} = *static_cast<const {ctype} *>(_args[{k}]);")
        return _TEMPLATE.format(
            carray=_CARRAY_HOST if any(p.raw for p in params) else "",
            float16=_FLOAT16 if any(dt.name == "float16" for dt in dtypes) else "",
            typedefs=typedefs, name=self.name, declarations="\n".join(decls),
            references="\n".join(refs), operation=self.operation)

    # -- call -------------------------------------------------------------------------------

    def __call__(self, *args, size=None, **kwargs):
        if kwargs:
            raise TypeError(f"{self.name}: HostElementwiseKernel does not support keyword arguments "
                            f"({', '.join(kwargs)})")
        if len(args) != self.nargs:
            hint = " (outputs must be passed: allocating them is not supported)" if len(args) == self.nin else ""
            raise TypeError(f"{self.name}: expected {self.nin} inputs and {self.nout} outputs, "
                            f"{self.nargs} arguments, got {len(args)}{hint}")
        params = self.in_params + self.out_params
        shape = None
        for k, (p, a) in enumerate(zip(params, args)):
            if isinstance(a, np.ndarray):
                if not (a.flags.aligned and a.dtype.isnative) or (not p.raw and not a.flags.c_contiguous):
                    raise ValueError(f"{self.name}: array argument {p.name!r} must be C-contiguous (unless raw), "
                                     "aligned and in native byte order")
                if k >= self.nin and not a.flags.writeable:
                    raise ValueError(f"{self.name}: output {p.name!r} is read-only")
                if p.raw:
                    continue
                if shape is None:
                    shape = a.shape
                elif a.shape != shape:
                    raise ValueError(f"{self.name}: array argument {p.name!r} has shape {a.shape}, others "
                                     f"{shape}; HostElementwiseKernel does not broadcast")
            elif k >= self.nin:
                raise TypeError(f"{self.name}: output {p.name!r} must be a NumPy array, got {type(a).__name__}")
            elif p.raw:
                raise TypeError(f"{self.name}: raw argument {p.name!r} must be an array, got {type(a).__name__}")
            elif not isinstance(a, (bool, int, float, np.bool_, np.integer, np.floating)):
                raise TypeError(f"{self.name}: argument {p.name!r} must be a NumPy array or a real scalar, "
                                f"got {type(a).__name__}")
        # the loop size, as CuPy's _broadcast decides it (cupy/_core/_kernel.pyx)
        if size is not None:
            if shape is not None:
                raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
            n = int(size)
        elif shape is None:
            raise ValueError("Loop size is undecided.")
        else:
            n = int(np.prod(shape))
        bound = self._bind_types(args)
        keep, pointers, kinds, meta = [], [], [], []
        for p, a in zip(params, args):
            if not isinstance(a, np.ndarray):
                a = np.array(a, dtype=self._dtype(p, bound))  # as CuPy's CScalar.apply_dtype
                kinds.append("scalar")
            elif p.raw:
                c_contiguous = bool(a.flags.c_contiguous)
                # CuPy's Indexer takes 32-bit indices up to 2**31 elements; the arrays tested here are small
                kinds.append((a.ndim, c_contiguous, a.size <= 2**31))
                strides = _c_strides(a) if c_contiguous else a.strides
                meta += [*a.shape, *strides]
            else:
                kinds.append("array")
            keep.append(a)
            pointers.append(a.ctypes.data)
        outs = args[self.nin:]
        if n:
            kinds = tuple(kinds)
            key = (tuple(sorted((t, dt.name) for t, dt in bound.items())), kinds)
            fn = self._functions.get(key)
            if fn is None:
                include = None
                if any(p.raw for p in params):
                    include = cupy_include_dir()
                    if include is None:
                        raise HostCompileError(f"{self.name}: raw parameters need CuPy's carray.cuh, from the "
                                               "installed cupy package, which was not found")
                fn = getattr(_compile(self.source(bound, kinds), include), self.name)
                fn.restype = None
                fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ssize_t), ctypes.c_ssize_t]
                self._functions[key] = fn
            fn((ctypes.c_void_p * len(pointers))(*pointers), (ctypes.c_ssize_t * max(1, len(meta)))(*meta), n)
        return outs[0] if self.nout == 1 else tuple(outs)


def _c_strides(a: np.ndarray) -> tuple[int, ...]:
    """The C-order strides of a's shape: NumPy calls an array C-contiguous whatever the strides of
    its length-1 axes, while CArray<..., c_contiguous=1> asserts the canonical ones."""
    strides, step = [], a.itemsize
    for d in reversed(a.shape):
        strides.append(step)
        step *= max(int(d), 1)
    return tuple(reversed(strides))
