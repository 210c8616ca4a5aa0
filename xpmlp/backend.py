"""Backends and devices: the only module that imports CuPy or array-api-compat.

A user's device flag (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``) or an explicit Array API
namespace (``xp=``) is resolved once, here, into a :class:`Backend`: the namespace, the device
object to allocate on, and a few helpers that move data across the host/device edge. Layers,
losses and optimisers only ever see ``backend.xp``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

__all__ = ["Backend", "CopyAhead", "CopyTicket", "DeviceMismatchError", "resolve", "to_numpy", "host_array",
           "namespace_of", "device_of", "available_backends", "is_sparse", "sparse_matmul", "sparse_rows"]

FLOAT_DTYPES = ("float32", "float64")


class DeviceMismatchError(ValueError):
    """Arrays from another array library or another device than the model's.

    xpmlp never moves device data implicitly: a CuPy array given to a NumPy model (or a torch
    array to a CuPy model, or an array on another GPU) raises this, naming both sides. Host data
    (NumPy arrays, lists, pandas objects) is always accepted and copied. A subclass of
    ``ValueError``.

    Examples
    --------
    An array-api-strict array given to a NumPy backend:

    >>> import array_api_strict
    >>> from xpmlp import DeviceMismatchError, resolve
    >>> strict = array_api_strict.asarray([1.0, 2.0])
    >>> try:
    ...     resolve("cpu").check_array(strict, "X")
    ... except DeviceMismatchError as e:
    ...     print(e)
    X is a array_api_strict array but the model runs on numpy on cpu; pass NumPy data or an array of the model's library
    """


class _Unavailable(Exception):
    """CuPy or a CUDA device cannot be used; the message says why."""


class _Broken(_Unavailable):
    """A CUDA device exists but does not work (driver, NVRTC, memory): worth a warning even for "auto"."""


@dataclass(frozen=True)
class Backend:
    """An Array API namespace and the device that a model allocates on.

    Parameters
    ----------
    xp : module
        The Array API namespace.
    device : object
        The device to allocate on.
    name : str
        The library's name.

    Attributes
    ----------
    xp : module
        The Array API namespace (array-api-compat's wrapper for NumPy, CuPy and torch).
    device : object
        What ``xp.asarray(..., device=)`` accepts: ``"cpu"``, a ``cupy.cuda.Device``, a
        ``torch.device``, an ``array_api_strict.Device``.
    name : str
        Library name: ``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``, ...

    See Also
    --------
    resolve : how a device flag or a namespace becomes a Backend.

    Examples
    --------
    >>> from xpmlp import resolve
    >>> backend = resolve("cpu")
    >>> str(backend), backend.is_gpu
    ('numpy on cpu', False)
    >>> a = backend.asarray([[1, 2], [3, 4]], dtype="float32")
    >>> a.shape, str(a.dtype)
    ((2, 2), 'float32')
    """

    xp: Any
    device: Any
    name: str

    def __str__(self) -> str:
        return f"{self.name} on {self.device}"

    @property
    def is_gpu(self) -> bool:
        """Whether the backend runs on a GPU (CuPy, or a CUDA device of another library)."""
        return self.name == "cupy" or "cuda" in str(self.device)

    def activate(self) -> Any:
        """A context manager that makes this backend's device current, for CuPy.

        CuPy allocates new arrays (``zeros_like``, ``arange``, every kernel's output) on the
        *current* device and refuses kernels whose arrays live elsewhere, so a model on GPU N
        runs all of its work inside ``with backend.activate():``. Other libraries take the
        device per call: for them this does nothing.

        Returns
        -------
        context manager
            A ``cupy.cuda.Device`` on CuPy, ``contextlib.nullcontext()`` otherwise.
        """
        if self.name == "cupy":
            # A fresh Device per use: a cupy.cuda.Device keeps the stack of devices to restore in
            # the object, so one shared object used from two threads could restore the wrong one.
            return type(self.device)(self.device.id)
        return contextlib.nullcontext()

    def matmul_precision(self, tf32: bool) -> Any:
        """A context manager inside which float32 matrix products may use TF32 (when ``tf32``).

        TF32 keeps float32's range but rounds the products' inputs to 10 mantissa bits, so GEMMs
        run on tensor cores (NVIDIA compute capability 8.0 and newer). Only CuPy is affected: it
        is CuPy's own setting (what ``CUPY_TF32=1`` selects), switched on for float32 while the
        context is open and put back afterwards, since CuPy keeps it per process. On every other
        backend, and with ``tf32=False``, this does nothing.

        Parameters
        ----------
        tf32 : bool
            Whether to allow TF32 inside the context.

        Returns
        -------
        context manager
            CuPy's TF32 setting while open (CuPy with ``tf32``), else ``contextlib.nullcontext()``.
        """
        if not tf32 or self.name != "cupy":
            return contextlib.nullcontext()
        return _cupy_tf32()

    def dtype(self, name: str) -> Any:
        """The namespace's floating dtype called ``name`` ("float32" or "float64").

        Parameters
        ----------
        name : {"float32", "float64"}
            The dtype's name.

        Returns
        -------
        dtype
            The namespace's dtype object (``xp.float32`` or ``xp.float64``).

        Raises
        ------
        ValueError
            If ``name`` is neither.
        """
        if name not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {name!r}")
        return getattr(self.xp, name)

    def from_host(self, a: np.ndarray) -> Any:
        """Copy a NumPy array to this backend's device, keeping its dtype.

        Parameters
        ----------
        a : numpy.ndarray
            The host array.

        Returns
        -------
        array
            An array of the backend's library on its device, of ``a``'s shape and dtype.
        """
        if self.name == "torch" and not a.flags.writeable:
            # torch on the CPU would share the memory of a read-only array (a pandas 3 column, a
            # frombuffer array), which it cannot honour, and warn: copy it instead
            a = a.copy()
        return self.xp.asarray(a, device=self.device)

    def copy_ahead(self) -> "CopyAhead":
        """A mover that copies host arrays to this device ahead of their use: one per fit, ``close()`` it after.

        ``ticket = mover.submit([X, y, w])`` starts the copies and returns at once; work queued
        meanwhile on the current stream overlaps them; ``ticket.arrays()`` gives the device arrays,
        safe to use on the current stream from then on. On CuPy the copies come from pinned host
        memory on a second stream (see :class:`xpmlp.backend.CopyAhead`); elsewhere ``submit`` is
        :meth:`from_host` of each array.

        Returns
        -------
        CopyAhead
            A new mover for this backend.
        """
        if self.name == "cupy":
            return _CupyCopyAhead(self)
        return CopyAhead(self)

    def asarray(self, a: Any, *, dtype: str | None = None, what: str = "array") -> Any:
        """Bring user data onto this backend.

        Host data (NumPy arrays, lists, pandas objects: see :func:`xpmlp.backend.host_array`) is copied to the
        device. An array of another library, or of this library on another device, is refused:
        silently moving it would hide a costly transfer or a mistake.

        Parameters
        ----------
        a : array-like
            The data: host data, or an array of this backend's library on its device.
        dtype : {"float32", "float64"} or None, default=None
            The dtype to convert to; None keeps the dtype.
        what : str, default="array"
            Name used in error messages ("X", "y", ...).

        Returns
        -------
        array
            An array of the backend's library on its device, of ``a``'s shape.

        Raises
        ------
        DeviceMismatchError
            If ``a`` is an array of another library or device.
        ValueError
            If host data does not hold real numbers, or a pandas object holds a missing value.
        TypeError
            If ``a`` is not an array.
        """
        if is_host(a):
            host = host_array(a, what)
            if host.dtype.kind not in "biuf":
                hint = ""
                if what.startswith("y") and host.dtype.kind in "OSU":
                    hint = ("; class labels must be integers 0..k-1 (xpmlp.MLPClassifier takes labels "
                            "of any type)")
                raise ValueError(f"{what} must hold real numbers, got {_dtype_description(a, host)}{hint}")
            if dtype is not None and host.dtype != np.dtype(dtype):
                host = host.astype(dtype)
            return self.from_host(host)
        self.check_array(a, what)
        if dtype is not None and a.dtype != self.dtype(dtype):
            a = self.xp.astype(a, self.dtype(dtype))
        return a

    def check_array(self, a: Any, what: str = "array") -> None:
        """Raise :class:`DeviceMismatchError` unless ``a`` lives in this namespace and device.

        Parameters
        ----------
        a : array
            The array to check.
        what : str, default="array"
            Name used in error messages.

        Raises
        ------
        DeviceMismatchError
            If ``a`` is of another library (or GPU data of a library xpmlp does not run on), or on
            another device.
        TypeError
            If ``a`` is not an array.
        """
        try:
            ns = array_api_compat.array_namespace(a)
        except TypeError as e:
            if hasattr(a, "__cuda_array_interface__"):  # cuDF, Numba, ...: GPU data of a library xpmlp does not run on
                raise DeviceMismatchError(
                    f"{what} is GPU data of type {type(a).__module__}.{type(a).__name__}, which xpmlp does not "
                    f"copy implicitly; the model runs on {self}: pass NumPy data or an array of the model's library"
                ) from None
            raise TypeError(f"{what} of type {type(a).__name__} is not an array: {e}") from None
        if ns is not self.xp:
            raise DeviceMismatchError(
                f"{what} is a {_library_name(ns)} array but the model runs on {self}; "
                f"pass NumPy data or an array of the model's library"
            )
        dev = array_api_compat.device(a)
        if dev != self.device:
            raise DeviceMismatchError(f"{what} is on device {dev} but the model is on {self.device}")

    def sparse_asarray(self, a: Any, *, dtype: str, what: str = "X") -> Any:
        """A SciPy or cupyx sparse matrix as a CSR matrix of ``dtype`` on this backend's device.

        NumPy gets a ``scipy.sparse.csr_matrix``, CuPy a ``cupyx.scipy.sparse.csr_matrix``; the
        data are never densified. CSR input is used as it is (its arrays may be shared, never
        written), other formats (CSC, COO, ...) are converted to CSR, and duplicate entries are
        summed in a copy. Other backends have no sparse matrices: a clear ``TypeError``. A
        cupyx matrix is taken only by a CuPy model on its device (as for dense arrays).

        Parameters
        ----------
        a : sparse matrix of shape (n_samples, n_features)
            A SciPy or cupyx sparse matrix or array.
        dtype : {"float32", "float64"}
            The dtype of the result.
        what : str, default="X"
            Name used in error messages.

        Returns
        -------
        csr_matrix of shape (n_samples, n_features)
            ``scipy.sparse.csr_matrix`` (NumPy) or ``cupyx.scipy.sparse.csr_matrix`` (CuPy).

        Raises
        ------
        TypeError
            On a backend other than NumPy and CuPy.
        DeviceMismatchError
            For a cupyx matrix on a non-CuPy backend or another device.
        ValueError
            If ``a`` is not 2-D or does not hold real numbers.
        """
        if self.name not in ("numpy", "cupy"):
            raise TypeError(f"{what} is a sparse matrix, which xpmlp trains on only with the NumPy (device='cpu') "
                            f"and CuPy (device='cuda') backends; the model runs on {self}: pass {what}.toarray() "
                            "(dense) or build the model for NumPy or CuPy")
        device_sparse = _sparse_module(a) != "scipy.sparse"
        if device_sparse and self.name != "cupy":
            raise DeviceMismatchError(f"{what} is a cupyx (GPU) sparse matrix but the model runs on {self}; "
                                      f"pass a SciPy sparse matrix ({what}.get()) instead")
        if len(a.shape) != 2:
            raise ValueError(f"{what} must be 2-D (n_samples, n_features), got a sparse array of shape "
                             f"{tuple(a.shape)}")
        if np.dtype(a.dtype).kind not in "biuf":
            raise ValueError(f"{what} must hold real numbers, got a sparse matrix of dtype {a.dtype}")
        if device_sparse:
            dev = a.data.device
            if dev != self.device:
                raise DeviceMismatchError(f"{what} is on device {dev} but the model is on {self.device}")
        csr = a.tocsr()  # CSR stays itself (no copy); other formats become a new CSR matrix
        if not device_sparse:
            import scipy.sparse

            csr = scipy.sparse.csr_matrix(csr)  # one type (matrix, not array); a new object over the same arrays
        csr = csr.astype(dtype, copy=False)
        if not csr.has_canonical_format:  # duplicates: summed here, in a copy, so stored values are the values
            csr = csr.copy()
            csr.sum_duplicates()
        if self.name == "cupy" and not device_sparse:
            import cupyx.scipy.sparse

            with self.activate():  # cupyx allocates on the current device
                csr = cupyx.scipy.sparse.csr_matrix(csr)
        return csr

    def synchronize(self) -> None:
        """Wait for queued device work (for timing; never needed for correctness)."""
        if self.name == "cupy":
            import cupy

            with self.activate():
                cupy.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and "cuda" in str(self.device):
            import torch

            torch.cuda.synchronize(self.device)


class CopyTicket:
    """The device arrays of one :meth:`CopyAhead.submit`; :meth:`arrays` hands them to the current stream.

    Parameters
    ----------
    backend : Backend
        The backend the arrays live on.
    arrays : tuple
        The device arrays (None entries stay None).
    event : cupy.cuda.Event, optional
        The event recorded after the copies (CuPy); None when there is nothing to wait for.
    """

    def __init__(self, backend: Backend, arrays: tuple, event: Any = None) -> None:
        self._backend, self._arrays, self._event = backend, arrays, event
        self._ordered = event is None  # the current stream waited for the copies (or there was nothing to wait for)

    @property
    def ordered(self) -> bool:
        """Whether work queued on the current stream from now on runs after the copies."""
        return self._ordered

    def order(self) -> None:
        """Make the current stream wait for the copies (CuPy: ``wait_event``, no host sync); once is enough."""
        if not self._ordered:
            import cupy

            with self._backend.activate():
                cupy.cuda.get_current_stream().wait_event(self._event)
            self._ordered = True

    def arrays(self) -> tuple:
        """The device arrays, in the order given (None stays None), safe to use on the current stream from now on.

        On CuPy the current stream waits for the copies' event (:meth:`order`: no host sync). Calling it
        again returns the same arrays.

        Returns
        -------
        tuple
            The device arrays.
        """
        self.order()
        return self._arrays


class CopyAhead:
    """Host-to-device copies of training data made ahead of their use (``Backend.copy_ahead()``).

    ``submit(arrays)`` takes host NumPy arrays (``None`` entries stay ``None``) and returns a
    :class:`CopyTicket` at once; ``ticket.arrays()`` gives the device arrays, bitwise equal to
    :meth:`Backend.from_host` of each (same dtypes). ``close()`` frees what the mover holds; it may be
    called twice, and ``submit`` after it raises ``RuntimeError``. It is also a context manager.

    This base class is every backend but CuPy: ``submit`` is ``from_host`` of each array, at once.
    ``overlaps`` says whether a copy runs while the caller's device work does (then it pays to
    submit the next data before using this one's).

    Parameters
    ----------
    backend : Backend
        The backend to copy to.
    """

    overlaps = False

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.closed = False

    def __enter__(self) -> "CopyAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this copy_ahead() mover is closed: make a new one with backend.copy_ahead()")

    def submit(self, arrays: Any) -> CopyTicket:
        """Start copying ``arrays`` (host NumPy arrays or None) to the device; returns at once.

        Parameters
        ----------
        arrays : sequence of numpy.ndarray or None
            The host arrays; None entries stay None.

        Returns
        -------
        CopyTicket
            Its :meth:`CopyTicket.arrays` gives the device arrays.

        Raises
        ------
        RuntimeError
            If the mover is closed.
        """
        self._check_open()
        return CopyTicket(self.backend, tuple(None if a is None else self.backend.from_host(a) for a in arrays))

    def close(self) -> None:
        """Free what the mover holds (pinned buffers on CuPy); safe to call twice."""
        self.closed = True


class _CupyCopyAhead(CopyAhead):
    """CuPy: copies from pinned host memory on a second stream, overlapping work on the current stream.

    ``submit`` writes each array into a pinned host buffer (``cupyx.empty_pinned``) and starts
    ``dst.set(pinned, stream=copy_stream)`` on a non-blocking stream made once per mover, then records
    an event there; ``ticket.arrays()`` makes the current stream wait for that event (no host sync).

    - Memory pool: CuPy's pool is per stream and hands memory freed on the current stream straight
      back to it, ordered only by that stream. So ``dst`` is allocated on the current stream, and the
      copy stream first waits for an event recorded on the current stream after the allocation: the
      copy cannot overwrite memory that queued work there still reads.
    - Pinned buffers: two slots (double buffering), one buffer per array position in each, reused
      (a view of the first bytes) and grown when a later array is larger. Before a slot is refilled
      its previous copy must be finished: ``event.synchronize()`` on that slot's event, a host sync,
      but of a copy issued one submit earlier than the previous one. The budget is one such wait per
      submit (per pair of blocks in ``chunked``), never per batch; ``close()`` adds at most one
      (``copy_stream.synchronize()``, when copies are still in flight, before the buffers are freed).
    - A ticket whose ``arrays()`` was never called holds its device arrays in the mover until the next
      ``submit`` or ``close``, which make the current stream wait for its copies first: dropping it
      can never let the pool hand its memory to later work while a copy still writes there.
    - ``close()`` must be called (``try``/``finally`` or ``with``): it is what keeps the pinned
      buffers alive until their last copies ended; CuPy's pinned pool would otherwise reuse them.
    """

    SLOTS = 2
    overlaps = True

    def __init__(self, backend: Backend):
        super().__init__(backend)
        import cupy
        import cupyx

        self._cupy, self._cupyx = cupy, cupyx
        with backend.activate():
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._buffers: list[list] = [[] for _ in range(self.SLOTS)]  # per slot: a flat pinned uint8 buffer per position
        self._slot_events: list = [None] * self.SLOTS  # the event after each slot's last copies
        self._next_slot = 0
        self._unordered: list[CopyTicket] = []  # tickets of submits since the last one (maybe not handed over)

    def _pinned(self, slot: int, position: int, a: np.ndarray) -> np.ndarray:
        """A C-contiguous view of ``a``'s shape and dtype on the slot's pinned buffer for ``position``."""
        buffers = self._buffers[slot]
        while len(buffers) <= position:
            buffers.append(None)
        buf = buffers[position]
        if buf is None or buf.nbytes < a.nbytes:  # grow (the slot's previous copy is finished: synchronized)
            buf = buffers[position] = self._cupyx.empty_pinned((a.nbytes,), dtype=np.uint8)
        return buf[:a.nbytes].view(a.dtype).reshape(a.shape)

    def submit(self, arrays: Any) -> CopyTicket:
        """Copy through a pinned buffer on the copy stream (see the class notes); returns at once.

        Parameters
        ----------
        arrays : sequence of numpy.ndarray or None
            The host arrays; None entries stay None.

        Returns
        -------
        CopyTicket
            Its :meth:`CopyTicket.arrays` gives the device arrays.
        """
        self._check_open()
        host = [None if a is None else np.asarray(a) for a in arrays]
        cupy = self._cupy
        with self.backend.activate():
            self._order_pending()
            current = cupy.cuda.get_current_stream()
            slot, self._next_slot = self._next_slot, (self._next_slot + 1) % self.SLOTS
            if self._slot_events[slot] is not None:  # the slot's buffers are read by a copy issued earlier
                self._slot_events[slot].synchronize()
                self._slot_events[slot] = None
            # device arrays first, on the current stream (its pool), then the copy stream waits for it
            out: list[Any] = [None if a is None else cupy.empty(a.shape, dtype=a.dtype) for a in host]
            self._stream.wait_event(current.record())
            try:
                for position, (a, dst) in enumerate(zip(host, out)):
                    if a is None:
                        continue
                    pinned = self._pinned(slot, position, a)
                    np.copyto(pinned, a, casting="no")
                    dst.set(pinned, stream=self._stream)
            except BaseException:
                # the slot is not refilled before what was issued has ended, and the current stream
                # waits for it: the arrays freed with this error return to its pool
                event = self._stream.record()
                self._slot_events[slot] = event
                current.wait_event(event)
                raise
            event = self._stream.record()
            self._slot_events[slot] = event
        ticket = CopyTicket(self.backend, tuple(out), event)
        self._unordered.append(ticket)
        return ticket

    def _order_pending(self) -> None:
        """The current stream waits for the copies of tickets not handed over: then they may be dropped."""
        for ticket in self._unordered:
            ticket.order()  # nothing to do for those whose arrays() was called
        self._unordered = []

    def close(self) -> None:
        """Wait for copies still reading the pinned buffers, then free them; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        with self.backend.activate():
            self._order_pending()
            if not self._stream.done:  # copies still read the pinned buffers: they must end before these are freed
                self._stream.synchronize()
        self._buffers = [[] for _ in range(self.SLOTS)]
        self._slot_events = [None] * self.SLOTS


@contextlib.contextmanager
def _cupy_tf32():
    import cupy

    linalg = cupy._core._routines_linalg  # where CuPy keeps its matmul compute type per dtype
    f32 = np.dtype(np.float32)
    before = linalg.get_compute_type(f32)
    linalg.set_compute_type(f32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        linalg.set_compute_type(f32, before)


def is_host(a) -> bool:
    """True for data that lives in host memory and carries no device.

    NumPy arrays, Python numbers and sequences, pandas objects, and other array-likes that
    convert to NumPy (``__array__``), but not the arrays of a library with devices (torch,
    CuPy, JAX, array-api-strict: whatever array-api-compat takes for an array) nor GPU data
    that exports ``__cuda_array_interface__`` (cuDF, Numba): :meth:`Backend.check_array`
    refuses those unless they are the model's own library and device.
    """
    if isinstance(a, (np.ndarray, np.generic, list, tuple, int, float)) or is_pandas(a):
        return True
    if array_api_compat.is_array_api_obj(a) or hasattr(a, "__cuda_array_interface__"):
        return False
    return hasattr(a, "__array__")


def is_pandas(a: Any) -> bool:
    """True for a pandas DataFrame, Series, Index or extension array (pandas 2 and 3).

    By type, not by module name (pandas 3 says ``pandas``, pandas 2 ``pandas.core.frame``); a
    pandas object cannot exist unless pandas is imported, so pandas is never imported here.

    Parameters
    ----------
    a : object
        Anything.

    Returns
    -------
    bool
        Whether ``a`` is a pandas object.
    """
    pd = sys.modules.get("pandas")
    if pd is None or not hasattr(pd, "DataFrame"):
        return False
    return isinstance(a, (pd.DataFrame, pd.Series, pd.Index, pd.api.extensions.ExtensionArray))


def host_array(a: Any, what: str = "array") -> np.ndarray:
    """Host data (NumPy, Python sequences, pandas) as a NumPy array; never modifies ``a``.

    pandas objects are read by position: the index is ignored, rows are never aligned or
    reordered. Nullable columns (``Int64``, ``Float64``, ``boolean``) and numeric categoricals
    give their NumPy dtype, a DataFrame's columns one common dtype (as NumPy promotes), and a
    missing value (``pd.NA``, ``None``, ``NaN``) is refused with a ``ValueError`` naming its
    column and row. Columns of strings or objects give an object array (labels, which the
    estimators take; :meth:`Backend.asarray` refuses them).

    Parameters
    ----------
    a : array-like
        Host data.
    what : str, default="array"
        Name used in error messages ("X", "y", ...).

    Returns
    -------
    numpy.ndarray
        The data, of ``a``'s shape.

    Raises
    ------
    ValueError
        If a pandas object holds a missing value.
    """
    if not is_pandas(a):
        return np.asarray(a)
    check_missing(a, what)
    dtypes = [_numpy_dtype(d) for d in (a.dtypes if a.ndim == 2 else [a.dtype])]
    if dtypes and all(d is not None for d in dtypes):
        return a.to_numpy(dtype=np.result_type(*dtypes))
    return a.to_numpy()


def check_missing(a: Any, what: str = "array") -> None:
    """Refuse a pandas object that holds a missing value, naming the column and the row.

    pandas marks missing values with ``pd.NA``, ``None`` or ``NaN``; converted to NumPy they
    become NaN or an object array, and the error would come later, not naming the column.
    Anything else than a pandas object passes unchecked.

    Parameters
    ----------
    a : object
        The data to check.
    what : str, default="array"
        Name used in error messages.

    Raises
    ------
    ValueError
        If ``a`` is a pandas object with a missing value.
    """
    if not is_pandas(a):
        return
    missing = np.asarray(a.isna())
    if not missing.any():
        return
    pd = sys.modules["pandas"]
    place = np.argwhere(missing)[0]
    row = int(place[0])
    where = f"row {row}"  # the position: rows are read by position
    if isinstance(a, (pd.Series, pd.DataFrame)):
        label = a.index[row]
        where += f" (index label {label.item() if isinstance(label, np.generic) else label!r})"
    if a.ndim == 2:
        where = f"column {a.columns[int(place[1])]!r}, {where}"
    elif isinstance(a, pd.Series) and a.name is not None:
        where += f" of Series {a.name!r}"
    raise ValueError(f"{what} has a missing value (pd.NA, None or NaN) in {where}; "
                     "fill or drop missing values first")


def _numpy_dtype(dtype):
    """The NumPy dtype of a pandas column's values when they are real numbers or booleans, else None."""
    categories = getattr(dtype, "categories", None)
    if categories is not None:  # a categorical: its values are its categories'
        dtype = categories.dtype
    dtype = getattr(dtype, "numpy_dtype", dtype)  # Int64 -> int64, Float64 -> float64, boolean -> bool
    return dtype if isinstance(dtype, np.dtype) and dtype.kind in "biuf" else None


def _dtype_description(a, host: np.ndarray) -> str:
    """The offending dtype for an error message: a DataFrame's non-numeric columns by name."""
    if is_pandas(a) and a.ndim == 2:
        bad = [f"{name!r} ({dtype})" for name, dtype in a.dtypes.items() if _numpy_dtype(dtype) is None]
        return f"non-numeric column(s) {', '.join(bad)}"
    if is_pandas(a):
        return f"pandas dtype {a.dtype}"
    return f"dtype {host.dtype}"


_SPARSE_MODULES = ("scipy.sparse", "cupyx.scipy.sparse")


def _sparse_module(a) -> str | None:
    """The name of the sparse module whose matrix (or array) ``a`` is, or None; imports neither."""
    for name in _SPARSE_MODULES:
        mod = sys.modules.get(name)  # a sparse matrix cannot exist unless its module is imported
        if mod is not None and mod.issparse(a):
            return name
    return None


def is_sparse(a: Any) -> bool:
    """True for a SciPy sparse matrix or array (any format) and a ``cupyx.scipy.sparse`` matrix.

    Parameters
    ----------
    a : object
        Anything.

    Returns
    -------
    bool
        Whether ``a`` is a sparse matrix or array.
    """
    return _sparse_module(a) is not None


def sparse_matmul(a: Any, b: Any, *, transpose_a: bool = False) -> Any:
    """``a @ b`` (or ``a.T @ b``) for a sparse matrix ``a`` (m, k) and a dense 2-D array ``b``: dense (m, n).

    The Array API has no sparse arrays, so device-side code (Dense) gets the product here: SciPy's
    CSR kernel on the CPU, cuSPARSE through ``cupyx.scipy.sparse`` on the GPU. The transpose is a
    view (CSR -> CSC over the same arrays), never a copy. The result has the operands' dtype.

    Parameters
    ----------
    a : sparse matrix of shape (m, k)
        A CSR matrix (of shape (k, m) with ``transpose_a``).
    b : array of shape (k, n)
        A dense array of the matrix's library.
    transpose_a : bool, default=False
        Multiply by ``a.T`` instead of ``a``.

    Returns
    -------
    array of shape (m, n)
        The dense product.
    """
    return (a.T if transpose_a else a) @ b


def sparse_rows(a: Any, rows: Any) -> Any:
    """Rows ``rows`` (a 1-D integer array of the matrix's library, or a slice) of a CSR matrix, as CSR.

    A gather of each row's stored values: never dense. On CuPy it reads the batch's number of
    stored values back to the host (to allocate the result): one host sync per call.

    Parameters
    ----------
    a : csr_matrix of shape (n_samples, n_features)
        The matrix.
    rows : array of int or slice
        The rows to take.

    Returns
    -------
    csr_matrix of shape (n_rows, n_features)
        The rows, in the order given.
    """
    return a[rows]


def is_device_library_array(a: Any) -> bool:
    """True for CuPy and torch arrays: data that may live on a GPU and must be copied to the host explicitly.

    Parameters
    ----------
    a : object
        Anything.

    Returns
    -------
    bool
        Whether ``a`` is a CuPy or torch array.
    """
    return array_api_compat.is_cupy_array(a) or array_api_compat.is_torch_array(a)


def _library_name(ns) -> str:
    return ns.__name__.rsplit(".", 1)[-1]


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array on the host.

    Host data is returned as ``np.asarray(a)``; CuPy arrays are copied with ``.get()``, torch
    tensors with ``.detach().cpu().numpy()``, anything else through DLPack.

    Parameters
    ----------
    a : array
        An array of NumPy, CuPy, torch or any Array API library, or host data.

    Returns
    -------
    numpy.ndarray
        The values, of ``a``'s shape and dtype.

    Examples
    --------
    An array of another Array API library (here array-api-strict), copied through DLPack:

    >>> import array_api_strict
    >>> import xpmlp
    >>> a = xpmlp.to_numpy(array_api_strict.asarray([[1.0, 2.0], [3.0, 4.0]]))
    >>> type(a).__name__, a.tolist()
    ('ndarray', [[1.0, 2.0], [3.0, 4.0]])

    Predictions of a model on any device, as NumPy: ``xpmlp.to_numpy(model.predict(X))``.
    """
    if is_host(a):
        return np.asarray(a)
    if array_api_compat.is_cupy_array(a):
        return a.get()
    if array_api_compat.is_torch_array(a):
        return a.detach().cpu().numpy()
    return np.from_dlpack(a)


_CUPY_KERNELS: dict = {}  # (id(cupy module), device id) -> (module, kernels or None)


def fast_kernels(xp: Any) -> Any:
    """The backend's fast-path kernels for namespace xp (a module), or None for the reference path.

    NumPy gets :mod:`xpmlp.kernels_numpy` (in-place optimiser updates: numba's compiled loop when
    it is installed, else chunked passes; bitwise equal to the reference), CuPy the ``Kernels``
    of :mod:`xpmlp.kernels_cupy` (one launch per optimiser update, per dropout mask, and per
    piece of the fused train step: ``step_cuda.make_ops`` builds the step's operations from
    them). The CuPy kernels are compiled at run time by NVRTC:
    at first use on each device a probe kernel is compiled and run, and if that fails the
    reference path is used, with one ``RuntimeWarning`` saying why. ``XPMLP_REFERENCE=1`` turns
    every fast path off; it is read at each call, so callers that must not change their mind
    within a fit (``make_train_step``) call this once.

    Parameters
    ----------
    xp : module
        The Array API namespace.

    Returns
    -------
    module or Kernels or None
        The kernels, or None when the reference path is to be used.
    """
    if os.environ.get("XPMLP_REFERENCE", "") == "1":
        return None
    name = _library_name(xp)
    if name == "numpy":
        from . import kernels_numpy

        return kernels_numpy
    if name == "cupy":
        return _cupy_kernels()
    return None


def _cupy_kernels():
    cupy = sys.modules.get("cupy")
    if cupy is None:  # a CuPy namespace without cupy imported cannot happen; be safe
        return None
    key = (id(cupy), cupy.cuda.runtime.getDevice())  # probed on each GPU: architectures may differ
    cached = _CUPY_KERNELS.get(key)
    if cached is not None and cached[0] is cupy:
        return cached[1]
    from . import kernels_cupy

    try:
        kernels = kernels_cupy.build(cupy)
        kernels.probe()
    except Exception as e:  # NVRTC missing or failing: the reference path still works
        warnings.warn(
            f"xpmlp's fused CuPy kernels failed to compile or run on this GPU ({type(e).__name__}: {e}); "
            "using the slower reference path, which gives the same results. Please report this with "
            "`xpmlp info`.", RuntimeWarning, stacklevel=3)
        kernels = None
    _CUPY_KERNELS[key] = (cupy, kernels)
    return kernels


def namespace_of(*arrays: Any) -> Any:
    """The Array API namespace of ``arrays``; refuses a mix of libraries with a clear error.

    Parameters
    ----------
    *arrays : array
        Arrays of one library.

    Returns
    -------
    module
        Their Array API namespace (array-api-compat's wrapper for NumPy, CuPy and torch).

    Raises
    ------
    DeviceMismatchError
        If the arrays come from different libraries.
    """
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as e:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays})
        raise DeviceMismatchError(f"arrays from different libraries cannot be combined: {', '.join(kinds)} ({e})") from None


def device_of(a: Any) -> Any:
    """The device an array lives on (array-api-compat's ``device``, which works on every library).

    Parameters
    ----------
    a : array
        An array of any Array API library.

    Returns
    -------
    object
        Its device (``"cpu"`` for NumPy).
    """
    return array_api_compat.device(a)


def _from_namespace(xp, device) -> Backend:
    if isinstance(device, str) and device in ("auto", ""):
        device = None
    if array_api_compat.is_cupy_namespace(xp):
        # CuPy's own functions take no device= (only array-api-compat's asarray does): place the
        # backend with cupy.cuda.Device, as CuPy intends.
        import cupy

        try:
            index = cupy.cuda.runtime.getDevice() if device is None else int(device)
        except Exception as e:
            raise ValueError(f"CuPy cannot use device {device!r}: {e}") from e
        return _cupy_on(cupy, index)
    try:
        probe = xp.asarray(0.0) if device is None else xp.asarray(0.0, device=device)
    except Exception as e:
        raise ValueError(f"namespace {getattr(xp, '__name__', xp)!r} cannot use device {device!r}: {e}") from e
    ns = array_api_compat.array_namespace(probe)
    return Backend(ns, array_api_compat.device(probe), _library_name(ns))


def _cupy_on(cupy, index: int) -> Backend:
    """The CuPy backend on GPU ``index``, once a first allocation, kernel and read-back there work.

    The kernel matters: CuPy compiles even its ufuncs at run time with NVRTC, so without a
    working NVRTC the first ``x + 1`` fails; that must be found here, where the CPU fallback can
    still be chosen, not in the middle of ``fit``.
    """
    dev = cupy.cuda.Device(index)
    with dev:
        probe = cupy.zeros((1,), dtype=cupy.float32)
        if float((probe + 1.0).get()[0]) != 1.0:
            raise RuntimeError("a one-element CuPy kernel computed a wrong result")
    ns = array_api_compat.array_namespace(probe)  # array-api-compat's CuPy namespace
    return Backend(ns, dev, "cupy")


_NUMPY = None


def _numpy_backend() -> Backend:
    global _NUMPY
    if _NUMPY is None:
        _NUMPY = _from_namespace(np, None)
    return _NUMPY


def _cupy_backend(index: int) -> Backend:
    try:
        import cupy
    except ImportError:
        raise _Unavailable("CuPy is not installed (pip install 'xpmlp[cuda]')") from None
    except Exception as e:  # a broken CUDA install can fail at import time
        raise _Unavailable(f"CuPy failed to import: {e}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise _Unavailable(f"the CUDA driver reported an error: {e}") from None
    if count == 0:
        raise _Unavailable("no CUDA device was found")
    if index >= count:
        raise ValueError(f"device 'cuda:{index}' was requested but only {count} CUDA device(s) exist")
    try:
        return _cupy_on(cupy, index)
    except Exception as e:  # the device exists but does not work (driver mismatch, NVRTC missing, memory)
        raise _Broken(f"CUDA device {index} cannot be used: {type(e).__name__}: {e}") from None


def _fallback(spec: str, reason: str) -> Backend:
    if os.environ.get("XPMLP_STRICT_DEVICE", "") == "1":
        raise RuntimeError(
            f"device {spec!r} is not usable: {reason} "
            "(XPMLP_STRICT_DEVICE=1 forbids falling back to the CPU)"
        )
    warnings.warn(
        f"device {spec!r} is not usable: {reason}; falling back to the CPU (NumPy). "
        "Set XPMLP_STRICT_DEVICE=1 to make this an error.",
        RuntimeWarning,
        stacklevel=3,
    )
    return _numpy_backend()


def resolve(device: Any = None, xp: Any = None) -> Backend:
    """Turn a device flag or a namespace into a :class:`Backend`.

    Parameters
    ----------
    device : "cpu", "cuda", "cuda:N", "auto", a Backend, or None
        None reads ``$XPMLP_DEVICE`` (default "auto": CuPy when a GPU is usable, else NumPy).
        With ``xp``, any device object that namespace accepts.
    xp : module, optional
        Any Array API namespace (numpy, cupy, torch, array_api_strict, ...), for advanced use
        and tests.

    Returns
    -------
    Backend
        The namespace, device and library name.

    Raises
    ------
    ValueError
        For an unknown device flag, a ``cuda:N`` beyond the GPUs present, or a device the
        namespace cannot use.
    TypeError
        If ``device`` is not a string (without ``xp``).
    RuntimeError
        When a GPU was asked for but is not usable and ``XPMLP_STRICT_DEVICE=1`` forbids falling
        back to the CPU; without it, a ``RuntimeWarning`` and the CPU.

    Examples
    --------
    >>> from xpmlp import resolve
    >>> backend = resolve("cpu")
    >>> backend.name, str(backend.device)
    ('numpy', 'cpu')
    >>> resolve(backend) is backend
    True
    """
    if isinstance(device, Backend):
        return device
    if xp is not None:
        return _from_namespace(xp, device)
    source = "$XPMLP_DEVICE" if device is None else "device"
    spec = os.environ.get("XPMLP_DEVICE", "auto") if device is None else device
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(spec).__name__}")
    spec = spec.strip().lower()
    if spec == "cpu":
        return _numpy_backend()
    if spec == "auto":
        try:
            return _cupy_backend(0)
        except _Broken as e:  # a GPU is there but broken: say so, then use the CPU
            return _fallback(spec, str(e))
        except _Unavailable:  # no CuPy or no GPU: the CPU, silently
            return _numpy_backend()
    match = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", spec)
    if match is None:
        raise ValueError(f"unknown {source} {spec!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    try:
        return _cupy_backend(int(match.group(1) or 0))
    except _Unavailable as e:
        return _fallback(spec, str(e))


def available_backends() -> dict[str, str]:
    """Which backends work here: name -> "ok" or the reason it does not.

    Returns
    -------
    dict of str to str
        ``"numpy"`` and ``"cupy"``, each ``"ok (version...)"`` or why it cannot be used.

    Examples
    --------
    >>> from xpmlp import available_backends
    >>> found = available_backends()
    >>> sorted(found), found["numpy"].startswith("ok")
    (['cupy', 'numpy'], True)
    """
    found = {"numpy": f"ok ({np.__version__})"}
    try:
        b = _cupy_backend(0)
        import cupy

        found["cupy"] = f"ok ({cupy.__version__}, {b.device})"
    except (_Unavailable, ValueError) as e:
        found["cupy"] = str(e)
    return found
