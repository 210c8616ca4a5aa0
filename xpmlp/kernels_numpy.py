"""NumPy fast path for the optimiser updates: in place, in cache-sized chunks.

The reference update (:meth:`xpmlp.update.Update.reference`) builds every intermediate as a new
array the size of the parameter buffer (13 for one Adam step), and on a CPU those allocations
and passes over memory cost as much as the matrix products (bench/NOTES.md). :func:`chunked`
runs the same update's :attr:`~xpmlp.update.Update.program` instead: the same operations in the
same order with the same scalars, so the results are bitwise equal to the reference
(tests/test_update.py checks it), but written into the existing buffers and a few scratch
buffers, one chunk at a time, so that each chunk's passes stay in the CPU cache.

The arrays must be C-contiguous, writable, of one float dtype and one shape; :func:`usable`
says whether they are. :mod:`xpmlp.backend` hands this module to the optimisers for NumPy
arrays only.
"""

from __future__ import annotations

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
