"""Training data larger than memory: ``fit`` on a NumPy memmap, a Dask array or a list of ``.npy`` chunk files.

``fit(model, X, y)`` streams such an X instead of copying it to the device at once. X is cut
into *blocks* of at most ``chunk_rows`` rows (default :data:`CHUNK_ROWS`; a block never spans
two chunk files), and each epoch reads them as follows, from fit's seeded rng (``seed=``, else
the model's shuffle rng), so a seed gives the same run:

1. ``order = rng.permutation(n_blocks)``: the blocks' order for this epoch;
2. the blocks are taken two at a time in that order (``order[0:2]``, ``order[2:4]``, ...: the
   *shuffle buffer*); the rows of each pair, concatenated in that order, are permuted with
   ``rng.permutation(rows_in_pair)`` (one draw per pair);
3. the permuted rows of the pairs form one stream, cut into batches of ``batch_size`` rows that
   run across pairs; the last batch of the epoch may be short (as with in-memory arrays).

Every row is trained on exactly once per epoch, and rows mix within and across chunks (the pairs
change with the order each epoch). With ``shuffle=False`` the blocks are read in order and
unpermuted, so the batches are exactly those of the in-memory arrays with ``shuffle=False``: on
NumPy the trained weights are bitwise equal.

Overlap and memory. The next pair is read (and permuted) on a background thread while the model
trains on this one (``Chunked(prefetch=False)`` reads on fit's thread; the random draws stay on
fit's thread either way, so the run is the same). Pairs reach the device through
:meth:`xpmlp.backend.Backend.copy_ahead`: on CuPy from pinned host memory on a second stream,
the next pair's copy started before this pair's batches train, so it runs under them (tested on
the fake GPU, which feeds NaN to work not ordered after its copy; not run on a GPU). Each pair is
read block by block straight into its permuted place, so reading costs one pair and one block.
Memory, besides the source's pages: the pair in training, the pair being read and, while the
next pair is made ready for the device, that pair again (fewer than ``batch_size`` leftover rows
joined, the model's dtype). Measured with tracemalloc on NumPy (pairs of 2 x 20000 x 100 float64,
32 MB): a peak of 3.2 pairs with prefetch and 2.2 without. CuPy adds two pair-sized pinned
buffers on the host and holds two pairs on the device. With ``fit(comm=)`` (data parallelism) every rank reads every block, as the
permutation mixes them, but copies to its device only its shard of each global batch.

What differs from in-memory arrays: ``validation_split`` is refused (give ``validation_data``,
held in memory as usual), as are ``class_weight="balanced"`` (it counts all of y) and metrics
given as functions without ``validation_data``; Standardize layers are not adapted (adapt
them beforehand on a sample: ``layer.adapt(X_sample)``); the unscaled-input warning looks at
the first block only. Each pair's finiteness is checked on the device when its batches start (one
host read per pair).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["CHUNK_ROWS", "Chunked", "is_out_of_core"]

#: Rows per block by default; a pair of blocks is the unit read, shuffled and copied (module notes).
CHUNK_ROWS = 65536


class Chunked:
    """Out-of-core training data for ``fit``, with a chosen block size.

    ``fit(model, Chunked(X, chunk_rows=10000), y)``. A bare memmap, Dask array or list of
    ``.npy`` paths given to fit is read with ``chunk_rows=CHUNK_ROWS``.

    See the notes of :mod:`xpmlp.chunked` for how the blocks are read, shuffled and copied.

    Parameters
    ----------
    source : numpy.memmap, Dask array or iterable of paths
        X of shape (n_samples, n_features): a ``np.memmap`` (or an array viewing one, as
        ``np.load(path, mmap_mode="r")`` returns), a Dask array, or an iterable of ``.npy`` file
        paths, each a 2-D chunk of X of shape (n_i, n_features).
    chunk_rows : int, default=CHUNK_ROWS
        The most rows read from the source at once, >= 1 (a chunk file larger than that is read
        in parts).
    prefetch : bool, default=True
        Read the next pair of blocks on a background thread while the model trains on this one, so
        that disk reads overlap training. The host then holds two pairs at once instead of one.

    Raises
    ------
    ValueError
        If ``chunk_rows`` is not a positive integer.
    TypeError
        If ``source`` is none of the above, or ``prefetch`` is not a bool.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import xpmlp
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(1000, seed=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(os.path.join(tmp, "X.npy"), X)
    ...     X_disk = np.load(os.path.join(tmp, "X.npy"), mmap_mode="r")
    ...     model = xpmlp.MLP([2, 8, 2], seed=0)
    ...     history = model.fit(xpmlp.Chunked(X_disk, chunk_rows=256), y, loss="softmax_cross_entropy",
    ...                         epochs=2, batch_size=64, verbose=0)
    ...     del X_disk
    >>> len(history.epoch)
    2
    """

    def __init__(self, source: Any, chunk_rows: int = CHUNK_ROWS, prefetch: bool = True) -> None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        if not (_is_memmap(source) or _is_dask(source)) and not isinstance(source, (str, bytes, os.PathLike)):
            try:
                source = list(source)  # an iterator of paths is read once, here
            except TypeError:
                raise TypeError(f"Chunked takes a memmap, a Dask array or .npy paths, got {type(source).__name__}") \
                    from None
        if not isinstance(prefetch, (bool, np.bool_)):
            raise TypeError(f"prefetch must be True or False, got {prefetch!r}")
        self.source, self.chunk_rows, self.prefetch = source, int(chunk_rows), bool(prefetch)


def _is_memmap(a) -> bool:
    """An np.memmap, or an ndarray viewing one (its ``.base`` chain ends in a memmap)."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return isinstance(a, np.memmap)  # pragma: no cover (a memmap's base is an mmap)


def _is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask" and hasattr(a, "compute")


def _is_paths(a) -> bool:
    return isinstance(a, (list, tuple)) and len(a) > 0 and all(isinstance(p, (str, os.PathLike)) for p in a)


def is_out_of_core(X: Any) -> bool:
    """Whether ``fit`` streams X: a :class:`Chunked`, a memmap, a Dask array, or a list/tuple of paths.

    Parameters
    ----------
    X : object
        The training inputs given to ``fit``.

    Returns
    -------
    bool
        True when ``fit`` reads X block by block.
    """
    return isinstance(X, Chunked) or _is_memmap(X) or _is_dask(X) or _is_paths(X)


def _open(path, what):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file {os.fspath(path)!r}") from None
    except ValueError as error:  # an object array, or not an .npy file
        raise ValueError(f"{what} ({os.fspath(path)!r}) is not a numeric .npy array: {error}") from None


def _check_numeric(a, what):
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"{what} has dtype {a.dtype}: it must be real numbers (float, int or bool)")


def _sources(X, y, sample_weight):
    """X as a list of row-sliceable parts, y and the weights cut alike: (xs, ys, ws or None)."""
    names = [f"chunk {i} of X ({os.fspath(p)!r})" for i, p in enumerate(X)] if _is_paths(X) else ["X"]
    if _is_paths(X):
        xs = [_open(p, f"chunk {i} of X") for i, p in enumerate(X)]
    elif isinstance(X, (list, tuple)):
        raise TypeError("X as a list must list .npy file paths (str or os.PathLike), one per chunk")
    else:
        xs = [X]
    for part, what in zip(xs, names):
        _check_numeric(part, what)
        if part.ndim != 2:
            raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {tuple(part.shape)}")
        if part.shape[1] != xs[0].shape[1]:
            raise ValueError(f"{what} has {part.shape[1]} features but {names[0]} has {xs[0].shape[1]}")
    lengths = [int(part.shape[0]) for part in xs]
    return xs, _cut(y, lengths, "y"), None if sample_weight is None else _cut(sample_weight, lengths, "sample_weight")


def _cut(y, lengths, name):
    """y (or weights) as parts of the given lengths: a matching list (of paths or arrays), or one array cut up."""
    if _is_paths(y) or (isinstance(y, (list, tuple)) and y and getattr(y[0], "ndim", 0) >= 1):
        parts = [_open(p, f"chunk {i} of {name}") if isinstance(p, (str, os.PathLike)) else p for i, p in enumerate(y)]
        if len(parts) != len(lengths):
            raise ValueError(f"{name} has {len(parts)} chunks but X has {len(lengths)}")
    else:
        if not hasattr(y, "shape"):
            y = np.asarray(y)
        if y.shape[0] != sum(lengths):
            raise ValueError(f"X and {name} have different lengths: {sum(lengths)} and {y.shape[0]}")
        offsets = np.cumsum([0, *lengths])
        parts = [y[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    for i, (part, n) in enumerate(zip(parts, lengths)):
        what = name if len(parts) == 1 else f"chunk {i} of {name}"
        _check_numeric(part, what)
        if part.shape[0] != n:
            raise ValueError(f"{what} has {part.shape[0]} rows but chunk {i} of X has {n}")
    return parts


def _read(part, start, stop) -> np.ndarray:
    """Rows start:stop of a part as a NumPy array in memory (a Dask slice is computed)."""
    rows = part[start:stop]
    return np.asarray(rows.compute() if _is_dask(rows) else rows)


class ChunkedData:
    """fit's data source for X larger than memory (see the module notes): blocks read, shuffled and batched per epoch.

    Same interface as ``xpmlp.train.ArrayData``; ``X, y`` are None (no training set held),
    ``pending`` is the first batch (the doctor's sample).
    """

    def __init__(self, model, loss, X, y, batch_size, shuffle, seed, validation_data, validation_split,
                 class_weight, sample_weight, metrics):
        from .metrics import CallableMetric
        from .train import prepare_X, refuse_unadapted, validation_arrays, warn_if_unscaled

        for given, why in (
                (validation_split, "validation_split would hold a part of X in memory; give validation_data="
                                   "(X_val, y_val)"),
                (isinstance(class_weight, str), "class_weight='balanced' counts all of y; give a dict {class: weight}"),
                (validation_data is None and any(isinstance(m, CallableMetric) for m in metrics),
                 "metrics given as functions run on a whole set once per epoch; give validation_data")):
            if given:
                raise ValueError(f"X is read in chunks (out of core): {why}")
        chunk_rows = X.chunk_rows if isinstance(X, Chunked) else CHUNK_ROWS
        self.prefetch = X.prefetch if isinstance(X, Chunked) else True
        xs, ys, ws = _sources(X.source if isinstance(X, Chunked) else X, y, sample_weight)
        self.model, self.loss, self.class_weight = model, loss, class_weight
        self.parts = list(zip(xs, ys, ws or [None] * len(xs)))
        # blocks: (part, start, stop), at most chunk_rows rows, never across two parts
        self.blocks = [(i, a, min(a + chunk_rows, x.shape[0])) for i, x in enumerate(xs)
                       for a in range(0, x.shape[0], chunk_rows)]
        self.rows = sum(int(x.shape[0]) for x in xs)
        if self.rows == 0:
            raise ValueError("X has no samples")
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed) if seed is not None else model.shuffle_rng
        self.steps = -(-self.rows // batch_size)
        self.X = self.y = None

        host = self._host(self.blocks[:1])
        Xd, high, low = prepare_X(model, host[0], stats=True)
        if not model.built:
            model.build(Xd.shape[1])
        warn_if_unscaled(model, high, low, stacklevel=7)
        refuse_unadapted(model, "X read in chunks does")
        self.pending = tuple(None if a is None else a[:batch_size, ...] for a in self._prepare(*host, Xd=Xd))
        self.Xv, self.yv = validation_arrays(model, loss, validation_data)
        backend = model.backend
        # as ArrayData: each row's loss lands here; rows past n stay 0, so a reshape sums each batch
        self.row_loss = model.xp.zeros(self.steps * batch_size, dtype=backend.dtype(model.dtype), device=backend.device)
        self.sizes = np.array([min(batch_size, self.rows - a) for a in range(0, self.rows, batch_size)], dtype=float)

    def adapt(self) -> None:
        pass  # refused in __init__ unless already done

    def _host(self, blocks, perm=None):
        """The rows of these blocks, concatenated in order (then permuted by ``perm``: row i of the
        result is row ``perm[i]`` of the concatenation), in host memory: [X, y, weights or None].

        Each block is read and scattered into the result at once, so the host holds the result
        and one block, never the concatenation and its permuted copy together.
        """
        rows = [stop - start for _, start, stop in blocks]
        offsets = np.cumsum([0, *rows])
        where = None
        if perm is not None:
            where = np.empty_like(perm)
            where[perm] = np.arange(perm.shape[0])  # where each row of the concatenation goes
        out = []
        for col in range(3):
            if self.parts[blocks[0][0]][col] is None:
                out.append(None)
                continue
            result = None
            for (i, start, stop), a, b in zip(blocks, offsets[:-1], offsets[1:]):
                block = _read(self.parts[i][col], start, stop)
                if result is None:
                    result = np.empty((int(offsets[-1]), *block.shape[1:]), dtype=block.dtype)
                elif block.dtype != result.dtype:  # chunk files of different dtypes: as concatenate
                    result = result.astype(np.result_type(result.dtype, block.dtype))
                result[slice(a, b) if where is None else where[a:b]] = block
                del block
            out.append(result)
        return out

    def _prepare(self, Xh, yh, wh, Xd=None):
        """Host rows checked and copied to the device (X already there, if given): (X, y, row weights or None)."""
        from .train import prepare_X, prepare_y, sample_weights

        Xd = prepare_X(self.model, Xh) if Xd is None else Xd
        yd = prepare_y(self.model, self.loss, yh, Xd.shape[0])
        return Xd, yd, sample_weights(self.model, self.loss, yd, self.class_weight, wh)

    def _stream(self):
        """Host rows of the epoch, one shuffle buffer (two blocks) at a time, in the order the module notes give.

        The next pair is read on a background thread while the caller trains on this one (the
        random draws stay on the caller's thread, in the same order, so a seed gives the same run).
        """
        order = self.rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
        pairs = [[self.blocks[b] for b in order[k:k + 2]] for k in range(0, len(order), 2)]

        def draw(pair):  # the pair's permutation, drawn on this thread in the pairs' order
            return self.rng.permutation(sum(stop - start for _, start, stop in pair)) if self.shuffle else None

        if not self.prefetch:
            for pair in pairs:
                yield self._read_pair(pair, draw(pair)).pop()
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xpmlp-chunk-reader") as reader:
            ahead = reader.submit(self._read_pair, pairs[0], draw(pairs[0]))
            try:
                for k in range(len(pairs)):
                    box = ahead.result()
                    ahead = reader.submit(self._read_pair, pairs[k + 1], draw(pairs[k + 1])) \
                        if k + 1 < len(pairs) else None
                    # popped from its box: while suspended here, this generator holds no reference
                    # to the pair (the caller's copies of it can then be the only ones)
                    yield box.pop()
            finally:  # an epoch left early (an exception, a stop): drop the read not yet started
                if ahead is not None:
                    ahead.cancel()

    def _read_pair(self, pair, perm):
        """The pair's rows, permuted, in a box (a list of one) that the stream empties as it hands them on."""
        return [self._host(pair, perm)]

    def _pairs(self, shard):
        """The epoch's pairs as host rows ready to copy: (X in the model's dtype, y, weights or None), the
        batches' (start, stop) in them, and the rows before them in the epoch (see :meth:`epoch`)."""
        dtype = np.dtype(self.model.dtype)
        done, leftover = 0, None  # rows yielded; host rows short of a batch, carried to the next pair
        for host in self._stream():
            if leftover is not None:
                host = [None if a is None else np.concatenate([b, a]) for a, b in zip(host, leftover)]
            n = host[0].shape[0]
            full = n - n % self.batch_size if done + n < self.rows else n  # the epoch's last batch may be short
            # a copy: a view would keep the whole pair in memory while the next one is read
            leftover = [None if a is None else a[full:].copy() for a in host] if full < n else None
            if full == 0:
                del host
                continue
            spans = [(a, min(a + self.batch_size, full)) for a in range(0, full, self.batch_size)]
            if shard is None:
                rows = [None if a is None else a[:full] for a in host]
            else:  # this rank's rows of each batch, batch after batch
                spans = [(lo - done, hi - done) for lo, hi in (shard(done + a, done + b) for a, b in spans)]
                keep = np.concatenate([np.arange(a, b) for a, b in spans])
                rows = [None if a is None else a[keep] for a in host]
            del host
            rows[0] = np.asarray(rows[0], dtype=dtype)  # converted here: the device gets the model's dtype
            yield rows, spans, done
            done += full

    def epoch(self, shard=None):
        """Each batch's (X, y, weights or None, row losses) on the device; with ``shard`` (global batch
        start, stop -> this rank's lo, hi: see ``xpmlp.train._ShardedData``) only rows lo:hi of each
        batch are copied to the device and yielded.

        The pairs go to the device through ``backend.copy_ahead()``. Where its copies overlap
        device work (CuPy: pinned memory, a second stream), the next pair's copy is started before
        this pair's batches are handed out, so it runs while they train.
        """
        mover = self.model.backend.copy_ahead()
        ahead = 1 if mover.overlaps else 0
        pairs = self._pairs(shard)
        try:
            queued = []  # (ticket, spans, done) of pairs whose copies have started
            for rows, spans, done in pairs:
                queued.append((mover.submit(rows) if rows[0].shape[0] else None, spans, done))
                del rows
                if len(queued) <= ahead:
                    continue
                yield from self._batches(*queued.pop(0))
            while queued:
                yield from self._batches(*queued.pop(0))
        finally:  # also when a pair fails its checks: the reader thread ends now, not when the
            pairs.close()  # exception (which holds this frame) is dropped
            mover.close()

    def _batches(self, ticket, spans, done):
        """A pair's batches on the device, checked there (one host read: see ``_prepare``)."""
        if ticket is not None:
            Xd, yd, wd = self._prepare(*ticket.arrays())
        else:  # none of this pair's rows are this rank's (a last batch of fewer rows than ranks)
            Xd, yd, wd = (None if a is None else a[:0, ...] for a in self.pending)
        at = 0
        for a, b in spans:
            yield (Xd[at:at + b - a, ...], yd[at:at + b - a, ...], None if wd is None else wd[at:at + b - a],
                   self.row_loss[done + a:done + b])
            at += b - a

    def batch_losses(self):
        xp = self.model.xp
        return xp.sum(xp.reshape(self.row_loss, (self.steps, self.batch_size)), axis=1), self.sizes
