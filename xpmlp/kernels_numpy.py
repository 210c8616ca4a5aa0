"""NumPy fast path for the optimiser updates: in place, in cache-sized chunks.

The reference updates in :mod:`xpmlp.optim` build every intermediate as a new array the size of
the parameter (13 for one Adam step), and on a CPU those allocations and passes over memory
cost as much as the matrix products (bench/NOTES.md). These functions do the same operations
in the same order, with the same scalars, so their results are bitwise equal to the reference
(tests/test_optim.py checks it), but they write into the existing buffers, one chunk at a
time, so that each chunk's seven passes stay in the CPU cache.

The parameter, gradient and state arrays must be C-contiguous, writable, of one float dtype;
:func:`usable` says whether they are. :mod:`xpmlp.backend` hands this module to the optimisers
for NumPy arrays only.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 16  # elements: 256 KiB of float32 per array, so p, g, m, v and a scratch fit in L2


def usable(*arrays) -> bool:
    first = arrays[0]
    return all(type(a) is np.ndarray and a.flags.c_contiguous and a.flags.writeable and a.dtype == first.dtype
               and a.shape == first.shape for a in arrays) and first.dtype.kind == "f"


def _chunks(*arrays):
    flat = [a.reshape(-1) for a in arrays]
    n = flat[0].size
    scratch = np.empty(min(n, CHUNK), dtype=flat[0].dtype)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        yield (*(f[start:stop] for f in flat), scratch[: stop - start])


def adam_(p, g, m, v, *, b1, b2, eps, step_size, root_bc2) -> None:
    """One Adam step in place, as ``optim.Adam.update``: m, v and p are overwritten.

    step_size and root_bc2 are the bias corrections from ``Adam._bias_corrections``.
    """
    for pc, gc, mc, vc, tmp in _chunks(p, g, m, v):
        np.multiply(gc, 1.0 - b1, out=tmp)  # m = b1 * m + (1 - b1) * g
        mc *= b1
        mc += tmp
        np.multiply(gc, gc, out=tmp)  # v = b2 * v + (1 - b2) * (g * g)
        tmp *= 1.0 - b2
        vc *= b2
        vc += tmp
        np.sqrt(vc, out=tmp)  # denom = sqrt(v) / sqrt(1 - b2^t) + eps
        tmp /= root_bc2
        tmp += eps
        np.divide(mc, tmp, out=tmp)  # p = p - step_size * (m / denom)
        tmp *= step_size
        pc -= tmp


def sgd_(p, g, buf, *, lr, momentum, damp, nesterov) -> None:
    """One SGD step in place, as ``optim.SGD.update``; buf (momentum buffer) may be None."""
    if buf is None:
        for pc, gc, tmp in _chunks(p, g):
            np.multiply(gc, lr, out=tmp)
            pc -= tmp
        return
    for pc, gc, bc, tmp in _chunks(p, g, buf):
        np.multiply(gc, damp, out=tmp)  # buf = momentum * buf + damp * g
        bc *= momentum
        bc += tmp
        if nesterov:  # step = g + momentum * buf
            np.multiply(bc, momentum, out=tmp)
            np.add(gc, tmp, out=tmp)
        else:
            tmp[...] = bc
        tmp *= lr
        pc -= tmp
