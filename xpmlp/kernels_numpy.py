"""NumPy fast path for the optimiser updates: one compiled loop (numba), else in place in chunks.

The reference update (:meth:`xpmlp.update.Update.reference`) builds every intermediate as a new
array the size of the parameter buffer (13 for one Adam step), and on a CPU those allocations
and passes over memory cost as much as the matrix products (bench/NOTES.md). :func:`chunked`
runs the same update's :attr:`~xpmlp.update.Update.program` instead: the same operations in the
same order with the same scalars, so the results are bitwise equal to the reference
(tests/test_update.py checks it), but written into the existing buffers and a few scratch
buffers, one chunk at a time, so that each chunk's passes stay in the CPU cache.

When numba is installed (``pip install "xpmlp[fast]"``), :func:`inplace` runs the update as
:func:`compiled` instead: the update's :meth:`~xpmlp.update.Update.loop_source`, one loop over
the elements compiled by numba, bitwise equal to the reference as well. The chunked passes read
and write each chunk about a dozen times; the loop reads p, g and the state once and writes them
once, about 4x faster for Adam on a CPU core (bench/NOTES.md). It is compiled without fast-math
(no multiply-add contraction, no reassociation) and with NumPy's error model (a division by
zero gives inf or nan, as in NumPy), once per update and dtype in a process (about 0.5 s).
float16 updates, buffers under :data:`LOOP_MIN` elements (where numba's start-up would not
pay off), and any numba that fails to import or has its JIT disabled (``NUMBA_DISABLE_JIT``)
take the chunked passes.

The arrays must be C-contiguous, writable, of one float dtype and one shape; :func:`usable`
says whether they are. :mod:`xpmlp.backend` hands this module to the optimisers for NumPy
arrays only.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import numpy as np

CHUNK = 1 << 16  # elements: 256 KiB of float32 per array, so p, g, m, v and a scratch fit in L2

_UFUNCS: dict[str, Callable[..., Any]] = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
           "negative": np.negative, "sqrt": np.sqrt, "copy": lambda src, out: np.copyto(out, src)}


def usable(*arrays: Any) -> bool:
    """Whether :func:`chunked` can run on these arrays.

    Parameters
    ----------
    *arrays : array
        The update's arrays (p, g and the state buffers).

    Returns
    -------
    bool
        True when all are C-contiguous, writable NumPy arrays of one float dtype and one shape.
    """
    first = arrays[0]
    return all(type(a) is np.ndarray and a.flags.c_contiguous and a.flags.writeable and a.dtype == first.dtype
               and a.shape == first.shape for a in arrays) and first.dtype.kind == "f"


def chunked(update: Any) -> Callable[[dict, dict], None]:
    """``run(arrays, values)``: ``update`` (an :class:`xpmlp.update.Update`) in place.

    ``arrays`` maps p, g and the state names to 1-D arrays of one size and dtype (:func:`usable`;
    g is only read), ``values`` is ``update.host_values(...)``. The scratch buffers are made on
    the first call for each dtype and size, then reused: no allocation per step.

    Parameters
    ----------
    update : Update
        The parsed update.

    Returns
    -------
    callable
        ``run(arrays, values) -> None``, which writes the outputs into ``arrays``.
    """
    names = update.arrays
    n_arrays = len(names)
    slot = {("array", n): k for k, n in enumerate(names)}
    slot.update({("scratch", k): n_arrays + k for k in range(update.n_scratch)})
    hosts = list(update.host_names)
    first_scalar = n_arrays + update.n_scratch
    slot.update({("scalar", h): first_scalar + k for k, h in enumerate(hosts)})
    ops = [(_UFUNCS[op.fn], tuple(slot[a] for a in op.args), slot[op.out]) for op in update.program]
    workspaces: dict = {}

    def run(arrays: dict, values: dict) -> None:
        bufs = [arrays[n] for n in names]
        n = bufs[0].shape[0]
        key = (bufs[0].dtype, min(n, CHUNK))
        scratch = workspaces.get(key)
        if scratch is None:
            scratch = workspaces[key] = [np.empty(key[1], dtype=key[0]) for _ in range(update.n_scratch)]
        scalars = [values[h] for h in hosts]
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            s = [b[start:stop] for b in bufs] + [w[: stop - start] for w in scratch] + scalars
            for fn, args, out in ops:
                if len(args) == 2:
                    fn(s[args[0]], s[args[1]], s[out])
                else:
                    fn(s[args[0]], out=s[out])

    return run


@functools.lru_cache(maxsize=None)
def numba_jit() -> Any:
    """numba's ``njit``, as the compiled loops use it, or None when numba cannot be used.

    Returns
    -------
    callable or None
        ``njit`` with ``error_model="numpy"`` and ``fastmath=False``; None when numba is not
        installed, fails to import, or has its JIT disabled.
    """
    try:
        import numba
    except Exception:  # not installed, or built for another NumPy: the chunked passes do the work
        return None
    if getattr(numba.config, "DISABLE_JIT", False):
        return None
    return functools.partial(numba.njit, error_model="numpy", fastmath=False, nogil=True, cache=False)


_COMPILED: dict = {}  # loop source -> the compiled loop (numba compiles once per dtype on first call)


def compiled(update: Any) -> Callable[[dict, dict], None] | None:
    """``run(arrays, values)``: ``update`` as one loop compiled by numba, or None without numba.

    Arguments as for :func:`chunked`; the dtype must be float32 or float64 (others: call the
    chunked executor).

    Parameters
    ----------
    update : Update
        The parsed update.

    Returns
    -------
    callable or None
        ``run(arrays, values) -> None``, which writes the outputs into ``arrays``; None when
        numba cannot be used (:func:`numba_jit`).
    """
    jit = numba_jit()
    if jit is None:
        return None
    source = update.loop_source()
    loop = _COMPILED.get(source)
    if loop is None:
        env: dict = {"xp": np}  # the loop calls xp.sqrt, as the reference does
        exec(compile(source, f"<update {update.name} loop>", "exec"), env)
        loop = _COMPILED[source] = jit(env["_update"])
    names, hosts = update.arrays, update.host_names

    def run(arrays: dict, values: dict) -> None:
        cast = arrays["p"].dtype.type  # each host value rounded to the dtype once, as NumPy's weak scalars are
        loop(*(arrays[n] for n in names), *(cast(values[h]) for h in hosts))

    return run


def inplace(update: Any) -> Callable[[dict, dict], None]:
    """``run(arrays, values)``: the fastest in-place executor of ``update`` here.

    The numba loop (:func:`compiled`) for float32 and float64 buffers of at least
    :data:`LOOP_MIN` elements when numba can be used, else :func:`chunked`. Both are bitwise
    equal to the reference. numba is imported and the loop compiled at the first call that
    uses it, so small models (where the passes cost microseconds) never pay numba's start-up
    (about 0.7 s: its import, SciPy's, and the compile).

    Parameters
    ----------
    update : Update
        The parsed update.

    Returns
    -------
    callable
        ``run(arrays, values) -> None``, which writes the outputs into ``arrays``.
    """
    passes = chunked(update)
    loop = None  # made at the first call that can use it: the compiled loop, or the passes without numba

    def run(arrays: dict, values: dict) -> None:
        nonlocal loop
        p = arrays["p"]
        if p.shape[0] < LOOP_MIN or p.dtype not in _LOOP_DTYPES:
            passes(arrays, values)
            return
        if loop is None:
            loop = compiled(update) or passes
        try:
            loop(arrays, values)
        except Exception as e:  # numba compiles at a dtype's first call, before the loop writes anything
            if loop is passes or not type(e).__module__.startswith(("numba", "llvmlite")):
                raise
            warnings.warn(f"numba could not compile the {update.name} update ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); NumPy's passes run "
                          "it instead, with the same results", RuntimeWarning, stacklevel=2)
            loop = passes
            passes(arrays, values)

    return run


#: The smallest buffer (elements) :func:`inplace` runs as the compiled loop: one chunk. Below it
#: the passes cost a few microseconds per update, and numba's start-up would not pay off.
LOOP_MIN = CHUNK
_LOOP_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def executor_name() -> str:
    """What :func:`inplace` runs for float32 and float64 buffers of :data:`LOOP_MIN` elements or more.

    ``"numba X.Y.Z loop"`` or ``"NumPy chunked passes"``; this imports numba.

    Returns
    -------
    str
        A short description, for ``xpmlp info`` and the benchmarks.
    """
    if numba_jit() is None:
        return "NumPy chunked passes"
    import numba

    return f"numba {numba.__version__} loop"
