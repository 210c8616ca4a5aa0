"""A NumPy-backed stand-in for the ``cupy`` module: the fake-GPU column of the test matrix.

It lets the CuPy backend, array-api-compat's real CuPy wrappers included, run on a machine
without a GPU, while keeping the contracts of CuPy 14.2 that GPU code gets wrong:

- functions take CuPy's signatures, not NumPy's: ``asarray(x, device=...)`` is a TypeError, as
  on CuPy (tests/test_fake_gpu.py checks every signature here against the installed ``cupy``
  package, which imports without a GPU);
- arrays are their own type and refuse implicit conversion to NumPy (``np.asarray(a)``) and
  NumPy operands, as CuPy's do; ``.get()`` is the way to the host;
- there are ``device_count`` devices (two by default); every array remembers the device it was
  made on, new arrays go on the *current* device, and every kernel refuses arrays that are not
  on the current device, as CuPy does without peer access;
- it counts what would be kernel launches, host synchronisations and host-to-device copies.
  One call that computes (a ufunc, a reduction, ``matmul``, ``take``, ``where``, a fill, a copy,
  an ``ElementwiseKernel``) counts one launch; views (reshape, transpose, slicing) count none.
  CuPy's composite functions (``std``) launch more than one kernel, so launch counts here are a
  lower bound for those; the functions xpmlp's step uses are single kernels on CuPy.
- ``ElementwiseKernel`` runs the kernel's own CUDA C body, compiled for the host by
  ``tests/cuda_host.py``, so fused kernels are exercised for real, not re-implemented.
- streams catch ordering bugs instead of hiding them: the current stream is the null stream and
  runs everything at once, but ``ndarray.set(arr, stream=s)`` on a second ``Stream()`` is queued
  on ``s`` and the destination holds garbage (NaN) until the copy is ordered before its use (the
  current stream's ``wait_event`` of an ``Event`` recorded on ``s`` after it, or a synchronize of
  ``s``, of that event or of the device); the ``cupyx.empty_pinned`` buffer it reads stays
  read-only until a host sync shows the copy ended; and ``s`` must have waited for the current
  stream since the destination was
  allocated (CuPy's pool reuses memory freed on the current stream at once). ``Event.synchronize``
  and ``Stream.synchronize`` count as host syncs; ``COUNTS.copies`` lists every ``set``.

What it does not model is refused (``NotImplementedError``) rather than guessed, so new code that
needs more of CuPy fails here first and its contract gets written down.

Use ``with installed(): ...``: inside, ``import cupy``, ``import cupyx.scipy.sparse`` and
``array_api_compat.cupy`` give the fake.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import inspect
import itertools
import sys
import threading
import types
import weakref
from collections import Counter

import numpy as np
import array_api_compat.numpy as _compat_numpy


# -- counters ----------------------------------------------------------------------------------
class Counts:
    """What the fake GPU was asked to do since the last ``reset``."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.launches = 0
        self.syncs = 0
        self.h2d = 0
        self.by_name: Counter = Counter()
        self.sync_reasons: Counter = Counter()
        self.compute_types: list = []  # (dtype name, compute type) given to set_compute_type, in order
        self.copies: list = []  # ndarray.set calls, in order: ("current" or "second" stream, source pinned?)

    def launch(self, name: str, n: int = 1):
        self.launches += n
        self.by_name[name] += n

    def sync(self, reason: str):
        self.syncs += 1
        self.sync_reasons[reason] += 1

    def snapshot(self) -> dict:
        return {"launches": self.launches, "syncs": self.syncs, "h2d": self.h2d}


COUNTS = Counts()


class CUDARuntimeError(RuntimeError):
    pass


# -- devices -----------------------------------------------------------------------------------
class _State(threading.local):
    current = 0


_STATE = _State()
_CONFIG = {"device_count": 2, "nvrtc": True}

NVRTC_MISSING = ("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open shared object "
                 "file: No such file or directory (simulated by the stand-in)")


def _compile(name):
    """CuPy compiles every elementwise and reduction kernel, ufuncs included, with NVRTC at first use."""
    if not _CONFIG["nvrtc"]:
        raise RuntimeError(NVRTC_MISSING)


def _current() -> int:
    return _STATE.current


class _Runtime(types.ModuleType):
    @staticmethod
    def getDeviceCount():
        return _CONFIG["device_count"]

    @staticmethod
    def getDevice():
        return _STATE.current

    @staticmethod
    def setDevice(device):
        device = int(device)
        if not 0 <= device < _CONFIG["device_count"]:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        _STATE.current = device


class Device:
    """``cupy.cuda.Device``: an id, equal to Devices of the same id (never to an int); a context manager."""

    def __init__(self, device=None):
        self._id = _STATE.current if device is None else int(device)  # checked when used, as CuPy
        self._stack = []

    def _check(self):
        if not 0 <= self._id < _CONFIG["device_count"]:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    @property
    def id(self):
        return self._id

    def __int__(self):
        return self._id

    __index__ = __int__

    def __eq__(self, other):
        return isinstance(other, Device) and other._id == self._id

    def __hash__(self):
        return hash(("fake-cuda-device", self._id))

    def __repr__(self):
        return f"<CUDA Device {self._id}>"

    def __enter__(self):
        self._check()
        self._stack.append(_STATE.current)
        _STATE.current = self._id
        return self

    def __exit__(self, *exc):
        _STATE.current = self._stack.pop()

    def use(self):
        self._check()
        _STATE.current = self._id

    def synchronize(self):
        COUNTS.sync("Device.synchronize")
        for stream in list(_STREAMS):
            if stream.device_id == self._id:
                stream._complete_to(stream._issued)

    @property
    def compute_capability(self):
        return "90"


# -- streams, events, pinned memory ----------------------------------------------------------------
# The current stream is always the null stream, which runs its work at once (as every other kernel
# here). A ``Stream()`` made by the caller is a *second* stream: what is queued on it (``set(arr,
# stream=s)``) takes effect in two steps, each only when something orders it, as CUDA guarantees
# nothing else:
# - for the current stream's work: after its ``wait_event`` of an event recorded on ``s`` after the
#   copy (or any host sync below). Until then the destination holds garbage (NaN, or the dtype's
#   largest value);
# - for the host: after a host sync that covers the copy: ``synchronize`` of ``s``, of an event
#   recorded on ``s`` after it, of the device, or of the current stream once it has waited for it.
#   Until then the pinned host buffer the copy reads stays read-only (writing into it raises NumPy's
#   ``ValueError: assignment destination is read-only``) and ``done`` is False, even where a GPU
#   would have finished: the stand-in takes the slowest copy. Other host reads (``get``, ``float``)
#   are not taken as proof that a second stream's copy ended (stricter than CUDA).
# Every second stream is treated as non-blocking: a blocking stream's implicit ordering with the
# legacy null stream is not modelled (stricter than CUDA).
_CLOCK = itertools.count(1)  # stamps allocations and events recorded on the current stream


class _Op:
    """Work queued on a second stream: ``run`` makes its effect visible to the current stream,
    ``release`` tells the host it ended (a pinned source may be written again)."""

    def __init__(self, run=None, release=None):
        self.run, self.release = run, release


class Stream:
    """``cupy.cuda.Stream``: the null stream (current, eager) or a second stream (work queued until ordered)."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        if ptds:
            raise NotImplementedError("fake cupy: the per-thread default stream is not modelled")
        self._null = bool(null)
        self.non_blocking = non_blocking
        self.device_id = -1 if null else _STATE.current
        self._ops: list = []  # queued operations, in order
        self._executed = 0  # how many have taken effect for the current stream
        self._completed = 0  # how many the host knows ended (<= _executed)
        self._current_waited = 0  # how far the current stream waited for this one (its wait_event)
        self._current_seen = 0  # the latest current-stream event this stream waited for (its _CLOCK stamp)
        if not self._null:
            _STREAMS.add(self)

    def __eq__(self, other):
        return isinstance(other, Stream) and (self is other or (self._null and other._null))

    def __hash__(self):
        return hash("fake-null-stream") if self._null else id(self)

    def __repr__(self):
        return f"<fake Stream {'null' if self._null else hex(id(self))} (device {self.device_id})>"

    @property
    def _issued(self):
        return len(self._ops)

    def _queue(self, op):
        self._ops.append(op)

    def _run_to(self, position):
        while self._executed < position:
            op = self._ops[self._executed]
            self._executed += 1
            if op.run is not None:
                op.run()

    def _complete_to(self, position):
        self._run_to(position)
        while self._completed < position:
            op = self._ops[self._completed]
            self._ops[self._completed] = None  # ended: drop what it holds (positions stay)
            self._completed += 1
            if op.release is not None:
                op.release()

    def record(self, event=None):
        if event is None:
            event = Event()
        event.record(self)
        return event

    def wait_event(self, event):
        source, position = event._stream, event._position
        if source is None or source._null:  # the current stream's work has run: remember how far
            self._current_seen = builtins.max(self._current_seen, event._clock)
            if not self._null:
                self._queue(_Op())
            return
        if source is self:
            return
        if self._null:  # the current stream's next work is ordered after the event
            source._run_to(position)
            source._current_waited = builtins.max(source._current_waited, position)
        else:
            self._queue(_Op(lambda: source._run_to(position), lambda: source._complete_to(position)))

    def synchronize(self):
        COUNTS.sync("Stream.synchronize")
        if self._null:  # the host waits for the current stream, and so for what it waited for
            for stream in list(_STREAMS):
                stream._complete_to(stream._current_waited)
        else:
            self._complete_to(self._issued)

    @property
    def done(self):
        return self._completed == self._issued


_STREAMS: weakref.WeakSet = weakref.WeakSet()  # the second streams, for Device.synchronize
_STREAM = Stream(null=True)
Stream.null = _STREAM


def get_current_stream(device_id=-1):
    return _STREAM


class Event:
    """``cupy.cuda.Event``: a position on a stream; ``synchronize`` (a host sync, counted) completes it up to there."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        if interprocess:
            raise NotImplementedError("fake cupy: interprocess events are not modelled")
        self._stream, self._position, self._clock = None, 0, 0

    def record(self, stream=None):
        stream = _STREAM if stream is None else stream
        self._stream, self._position = stream, stream._issued
        self._clock = next(_CLOCK) if stream._null else 0

    def synchronize(self):
        COUNTS.sync("Event.synchronize")
        if self._stream is not None and not self._stream._null:
            self._stream._complete_to(self._position)

    @property
    def done(self):
        s = self._stream
        return s is None or s._null or s._completed >= self._position


_PINNED: dict = {}  # id(array) -> weakref to the arrays empty_pinned returned


def empty_pinned(shape, dtype=float, order="C"):
    """``cupyx.empty_pinned``: a NumPy array in (simulated) pinned host memory; see :func:`is_pinned`."""
    a = np.empty(shape, dtype=dtype, order=order)
    key = id(a)
    _PINNED[key] = weakref.ref(a, lambda _, key=key: _PINNED.pop(key, None))
    return a


def is_pinned(a) -> bool:
    """True when ``a`` is, or views, an array that ``cupyx.empty_pinned`` returned."""
    while isinstance(a, np.ndarray):
        ref = _PINNED.get(id(a))
        if ref is not None and ref() is a:
            return True
        a = a.base
    return False


def _chain(a):
    """``a`` and the arrays it views, innermost owner last."""
    out = []
    while isinstance(a, np.ndarray):
        out.append(a)
        a = a.base
    return out


_LOCKS: dict = {}  # id(array) -> [array, writeable before, number of queued copies reading it]


def _lock(src):
    for a in _chain(src):
        entry = _LOCKS.get(id(a))
        if entry is None:
            _LOCKS[id(a)] = [a, a.flags.writeable, 1]
            a.flags.writeable = False
        else:
            entry[2] += 1


def _unlock(src):
    for a in reversed(_chain(src)):  # the owner first: a view can be writeable only if its base is
        entry = _LOCKS[id(a)]
        entry[2] -= 1
        if entry[2] == 0:
            del _LOCKS[id(a)]
            if entry[1]:
                a.flags.writeable = True


def _garbage(a):
    """Fill ``a`` with what a destination holds before its copy ran."""
    kind = a.dtype.kind
    if kind in "fc":
        a.fill(np.nan)
    elif kind in "iu":
        a.fill(np.iinfo(a.dtype).max)
    else:
        a.fill(True)


# -- arrays ------------------------------------------------------------------------------------
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
             "construct a NumPy array explicitly.")


def _check_same_device(arrays, what):
    cur = _STATE.current
    for a in arrays:
        if a._dev != cur:
            raise ValueError(f"{what}: array device {a._dev} is not the current device {cur} "
                             "(CuPy refuses arrays of another device without peer access)")


def _unwrap(x, what, arrays):
    """Fake array -> its NumPy data (device-checked later); scalars pass; NumPy arrays are refused."""
    if isinstance(x, ndarray):
        arrays.append(x)
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, what, arrays) for v in x)
    return x


def _wrap(a, dev=None):
    if isinstance(a, tuple):
        return tuple(_wrap(v, dev) for v in a)
    if isinstance(a, (np.ndarray, np.generic)):
        return ndarray._from_numpy(np.asarray(a), _STATE.current if dev is None else dev)
    return a


def _compute(name, fn, args, kwargs, launches=1, compiled=True):
    arrays = []
    args = [_unwrap(a, name, arrays) for a in args]
    kwargs = {k: _unwrap(v, name, arrays) for k, v in kwargs.items()}
    _check_same_device(arrays, name)
    if launches and compiled:
        _compile(name)
    out = fn(*args, **kwargs)
    if launches:
        COUNTS.launch(name, launches)
    return _wrap(out)


def _is_mask(key):
    keys = key if isinstance(key, tuple) else (key,)
    return builtins.any(isinstance(k, ndarray) and k.dtype == np.bool_ for k in keys)


def _has_array(key):
    keys = key if isinstance(key, tuple) else (key,)
    return builtins.any(isinstance(k, (ndarray, np.ndarray, list)) for k in keys)


class ndarray:
    """``cupy.ndarray`` on NumPy data: distinct type, device id, no implicit host conversion."""

    __slots__ = ("_a", "_dev", "_born")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("fake cupy.ndarray: memptr/strides are not modelled")
        self._a = np.empty(shape, dtype=dtype, order=order)
        self._dev = _STATE.current
        self._born = next(_CLOCK)

    @classmethod
    def _from_numpy(cls, a, dev):
        self = object.__new__(cls)
        self._a, self._dev, self._born = a, dev, next(_CLOCK)  # _born: when the current stream made it
        return self

    # metadata (no device work)
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    device = property(lambda self: Device(self._dev))

    @property
    def T(self):
        return ndarray._from_numpy(self._a.T, self._dev)

    @property
    def mT(self):
        return ndarray._from_numpy(np.swapaxes(self._a, -1, -2), self._dev)

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        COUNTS.sync("repr(array)")  # printing copies the values to the host
        return f"fake_cupy.ndarray({self._a!r}, device={self._dev})"

    # host transfers: each one waits for the device
    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            raise NotImplementedError("fake cupy: get(out=) is not modelled")
        COUNTS.sync("ndarray.get")
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy a host array into this one (cupy/_core/core.pyx: always ``copy_from_host_async``).

        On the current stream (``stream=None`` or the null stream) the copy runs at once. On a second
        stream it is queued there: this array holds garbage until the copy is ordered before its use
        (see the streams section above), and a pinned source stays read-only until a host sync
        shows the copy ended (CUDA reads it while the copy runs). A pageable (not pinned) source
        is read at once, as CUDA stages it.
        The copy stream must have waited for an event the current stream recorded after this array
        was allocated: CuPy's memory pool hands memory freed on the current stream straight back to
        it, and queued work on the current stream may still read it (the stand-in raises otherwise).
        """
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if self._a.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        elif self._a.flags.f_contiguous:
            arr = np.asfortranarray(arr)
        else:
            raise RuntimeError("Cannot set to non-contiguous array")
        COUNTS.h2d += 1
        pinned = is_pinned(arr)
        if stream is None or stream._null:
            COUNTS.copies.append(("current", pinned))
            self._a[...] = arr
            return
        if stream.device_id != self._dev:
            raise CUDARuntimeError(f"cudaErrorInvalidResourceHandle: a copy into an array of device {self._dev} "
                                   f"on a stream of device {stream.device_id}")
        if stream._current_seen < self._born:
            raise RuntimeError(
                "fake cupy: a copy on a second stream into an array allocated on the current stream, but the copy "
                "stream did not wait for an event recorded on the current stream after the allocation: CuPy's pool "
                "may have handed out memory that queued work on the current stream still reads")
        COUNTS.copies.append(("second", pinned))
        dst = self._a
        _garbage(dst)
        if pinned:
            _lock(arr)

            def copy():
                dst[...] = arr

            stream._queue(_Op(copy, lambda: _unlock(arr)))
        else:
            staged = arr.copy()

            def copy():
                dst[...] = staged

            stream._queue(_Op(copy))

    def item(self):
        COUNTS.sync("ndarray.item")
        return self._a.item()

    def tolist(self):
        COUNTS.sync("ndarray.tolist")
        return self._a.tolist()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __iter__(self):
        raise NotImplementedError("fake cupy: iterating over an array is not modelled")

    def __dlpack__(self, *a, **k):
        raise NotImplementedError("fake cupy: DLPack is not modelled")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy defers to CuPy arrays; CuPy then refuses the NumPy operand.
        for x in inputs:
            if isinstance(x, np.ndarray):
                raise TypeError(f"Unsupported type {type(x)}")
        raise NotImplementedError(f"fake cupy: numpy.{ufunc.__name__} on a CuPy array is not modelled")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"Unsupported NumPy function {func.__name__} on a CuPy array: use cupy.{func.__name__}")

    # indexing
    def __getitem__(self, key):
        arrays = []
        k = _unwrap_index(key, arrays)
        gather = _has_array(key)
        if gather:  # a kernel: this array and the index arrays must be on the current device
            _check_same_device(arrays + [self], "__getitem__")
            _compile("getitem")
        if _is_mask(key):
            COUNTS.sync("boolean-mask indexing")  # CuPy copies the count of True to the host
            COUNTS.launch("getitem_mask")
        elif gather:
            COUNTS.launch("getitem_take")
        out = self._a[k]
        if not isinstance(out, np.ndarray):
            out = np.asarray(out)  # CuPy returns 0-d arrays, never scalars
        # a basic index is a view where the array lives; a gather allocates on the current device
        return ndarray._from_numpy(out, _STATE.current if gather else self._dev)

    def __setitem__(self, key, value):
        arrays = []
        k = _unwrap_index(key, arrays)
        v = _unwrap(value, "__setitem__", arrays)
        _check_same_device(arrays + [self], "__setitem__")
        if _is_mask(key):
            COUNTS.sync("boolean-mask assignment")
        COUNTS.launch("setitem")
        self._a[k] = v

    # methods
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        _check_same_device([self], "astype")
        dtype = np.dtype(dtype)
        if not copy and dtype == self._a.dtype:
            return self
        if dtype != self._a.dtype:
            _compile("astype")
        COUNTS.launch("astype")
        return ndarray._from_numpy(self._a.astype(dtype, order=order), _STATE.current)

    def copy(self, order="C"):
        _check_same_device([self], "copy")
        COUNTS.launch("copy")
        return ndarray._from_numpy(self._a.copy(order=order), _STATE.current)

    def view(self, dtype=None, type=None):
        if dtype is not None or type is not None:
            raise NotImplementedError("fake cupy: view(dtype) is not modelled")
        return ndarray._from_numpy(self._a.view(), self._dev)

    def reshape(self, *shape, order="C", copy=None):
        return reshape(self, shape[0] if len(shape) == 1 else shape, order=order, copy=copy)

    def transpose(self, *axes):
        return ndarray._from_numpy(self._a.transpose(*axes), self._dev)

    def ravel(self, order="C"):
        return reshape(self, (-1,), order=order)

    def fill(self, value):
        _check_same_device([self], "fill")
        COUNTS.launch("fill")
        self._a.fill(value)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return sum(self, axis, dtype, out, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return mean(self, axis, dtype, out, keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        return max(self, axis, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return min(self, axis, out, keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return all(self, axis, out, keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return any(self, axis, out, keepdims)

    def argmax(self, axis=None, out=None, dtype=None, keepdims=False):
        return argmax(self, axis, dtype, out, keepdims)

    def swapaxes(self, axis1, axis2):
        return swapaxes(self, axis1, axis2)

    def squeeze(self, axis=None):
        return squeeze(self, axis)

    def take(self, indices, axis=None, out=None):
        return take(self, indices, axis, out)


def _unwrap_index(key, arrays):
    if isinstance(key, tuple):
        return tuple(_unwrap_index(k, arrays) for k in key)
    if isinstance(key, ndarray):
        arrays.append(key)
        return key._a
    if isinstance(key, np.ndarray):
        COUNTS.h2d += 1  # CuPy copies a NumPy index array to the device
        return key
    return key


def _binary(name):
    def op(self, other):
        return _UFUNCS[name](self, other)
    return op


def _reflected(name):
    def op(self, other):
        return _UFUNCS[name](other, self)
    return op


def _inplace(name):
    def op(self, other):
        _UFUNCS[name](self, other, out=self)
        return self
    return op


def _unary(name):
    def op(self):
        return _UFUNCS[name](self)
    return op


for _dunder, _uf in {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
                     "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "and": "bitwise_and",
                     "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift",
                     "matmul": "matmul"}.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
    setattr(ndarray, f"__r{_dunder}__", _reflected(_uf))
    setattr(ndarray, f"__i{_dunder}__", _inplace(_uf))
def _to_host_scalar(convert):
    """float(a), int(a), bool(a), complex(a): each waits for the device and copies a value back."""
    def method(self):
        COUNTS.sync(f"{convert.__name__}(array)")
        return convert(self._a)
    return method


for _convert in (float, int, bool, complex):
    setattr(ndarray, f"__{_convert.__name__}__", _to_host_scalar(_convert))
for _dunder, _uf in {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal",
                     "eq": "equal", "ne": "not_equal"}.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
for _dunder, _uf in {"neg": "negative", "pos": "positive", "abs": "absolute", "invert": "invert"}.items():
    setattr(ndarray, f"__{_dunder}__", _unary(_uf))
ndarray.__hash__ = None


# -- ufuncs ------------------------------------------------------------------------------------
class ufunc:
    """A CuPy ufunc: positional inputs, and only ``out``, ``dtype`` and ``casting`` as keywords."""

    _KEYWORDS = ("out", "dtype", "casting")

    def __init__(self, name, np_ufunc):
        self.__name__ = name
        self._np = np_ufunc
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout

    def __call__(self, *args, **kwargs):
        wrong = {k: v for k, v in kwargs.items() if k not in self._KEYWORDS}
        if wrong:
            raise TypeError(f"Wrong arguments {wrong}")
        if len(args) != self.nin:
            raise TypeError(f"Wrong number of arguments for {self.__name__!r}")
        out = kwargs.pop("out", None)
        arrays = []
        inputs = [_unwrap(a, self.__name__, arrays) for a in args]
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError("Output arrays must be cupy.ndarray")
            arrays.append(out)
        _check_same_device(arrays, self.__name__)
        _compile(self.__name__)
        if out is not None:
            # _kernel.pyx _copy_in_args_if_needed: an input that may share memory with the output,
            # other than the output array object itself, is copied first (one more launch)
            for a in args:
                if isinstance(a, ndarray) and a is not out and np.may_share_memory(a._a, out._a):
                    COUNTS.launch("copy")
            self._np(*inputs, out=out._a, **kwargs)
            COUNTS.launch(self.__name__)
            return out
        result = self._np(*inputs, **kwargs)
        COUNTS.launch(self.__name__)
        return _wrap(result)

    def __repr__(self):
        return f"<ufunc 'cupy_{self.__name__}'>"


# NumPy's ufuncs, less those CuPy 14.2 does not have (tests/test_fake_gpu.py checks the rest exist)
_NOT_IN_CUPY = {"isnat", "matvec", "spacing", "vecdot", "vecmat"}
_UFUNCS = {name: ufunc(name, obj) for name, obj in vars(np).items()
           if isinstance(obj, np.ufunc) and name not in _NOT_IN_CUPY}
_UFUNCS["abs"] = ufunc("absolute", np.absolute)


def matmul(*args, axes=None, axis=None, keepdims=False, casting="same_kind", dtype=None, signature=None,
           order="K", out=None):
    """CuPy 14.2's matmul for 2-D operands (linalg/_product.py ``_try_fastcall_matmul`` ->
    _core/_routines_linalg.pyx ``matmul`` -> ``dot`` -> ``tensordot_core``).

    One cuBLAS GEMM. ``out=`` (same dtype as both operands) is written directly when it is
    C-contiguous and overlaps neither operand; otherwise CuPy computes into a temporary and copies
    (one more launch). An operand that is neither C- nor F-contiguous is copied before the GEMM
    (``_mat_to_cublas_contiguous``); a transposed view of a C-contiguous array is F-contiguous
    and is not.
    """
    if builtins.any(v is not None for v in (axes, axis, signature)) or keepdims:
        raise NotImplementedError("fake cupy: matmul's axes/axis/signature/keepdims are not modelled")
    if len(args) != 2:
        raise TypeError("matmul takes two arrays")
    if out is None:
        return _compute("matmul", np.matmul, args, {"dtype": dtype, "casting": casting}, compiled=False)  # cuBLAS
    a, b = args
    if not builtins.all(isinstance(x, ndarray) for x in (a, b, out)):
        raise NotImplementedError("fake cupy: matmul(out=) with a non-array operand is not modelled")
    if dtype is not None or order != "K" or casting != "same_kind" or not (out.dtype == a.dtype == b.dtype):
        raise NotImplementedError("fake cupy: matmul(out=) other than the fast call (one dtype, no dtype/order/"
                                  "casting) is not modelled")
    if a.ndim != 2 or b.ndim != 2:
        raise NotImplementedError("fake cupy: matmul(out=) of other than 2-D operands is not modelled")
    if a.shape[1] != b.shape[0]:
        raise ValueError("Axis dimension mismatch")
    if out.size != a.shape[0] * b.shape[1]:
        raise ValueError("Output array has an invalid size")
    if out.shape != (a.shape[0], b.shape[1]):
        raise NotImplementedError("fake cupy: matmul(out=) of another shape but the same size is not modelled")
    _check_same_device([a, b, out], "matmul")
    for x in (a, b):
        if x.size and not (x.flags.c_contiguous or x.flags.f_contiguous):
            COUNTS.launch("copy")  # _mat_to_cublas_contiguous
    direct = out.flags.c_contiguous and not builtins.any(np.may_share_memory(out._a, x._a) for x in (a, b))
    np.matmul(a._a, b._a, out=out._a)
    COUNTS.launch("matmul")
    if not direct:
        COUNTS.launch("copy")  # into a temporary, then elementwise_copy into out
    return out


_UFUNCS["matmul"] = matmul


# -- functions with CuPy 14.2's signatures (checked against cupy in tests/test_fake_gpu.py) ------
def _host_array(obj, dtype, order, copy_):
    """Host data -> a device array (a host-to-device copy)."""
    COUNTS.h2d += 1
    if isinstance(obj, (list, tuple)) and builtins.any(isinstance(v, ndarray) for v in obj):
        raise NotImplementedError("fake cupy: lists of device arrays are not modelled")
    a = np.array(obj, dtype=dtype, order=order if order is not None else "K", copy=True)
    return ndarray._from_numpy(a, _STATE.current)


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        if a._dev != _STATE.current:
            COUNTS.launch("asarray_peer_copy")
            return ndarray._from_numpy(np.array(a._a, dtype=dtype, copy=True), _STATE.current)
        if copy or (dtype is not None and np.dtype(dtype) != a.dtype):
            COUNTS.launch("asarray_copy")
            return ndarray._from_numpy(np.array(a._a, dtype=dtype, copy=True), a._dev)
        return a
    if copy is False:
        raise ValueError("Unable to avoid copy while creating an array as requested")
    return _host_array(a, dtype, order, True)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if ndmin:
        raise NotImplementedError("fake cupy: array(ndmin=) is not modelled")
    if isinstance(obj, ndarray):
        if not copy and (dtype is None or np.dtype(dtype) == obj.dtype) and obj._dev == _STATE.current:
            return obj
        _check_same_device([obj], "array")  # CuPy copies across devices with peer access only
        COUNTS.launch("array_copy")
        return ndarray._from_numpy(np.array(obj._a, dtype=dtype, order=order, copy=True), _STATE.current)
    return _host_array(obj, dtype, order, copy)


def _filled(name, fill):
    def create(shape, dtype=float, order="C"):
        COUNTS.launch(name)
        return ndarray._from_numpy(fill(shape, dtype=dtype, order=order), _STATE.current)
    return create


zeros = _filled("zeros", np.zeros)
ones = _filled("ones", np.ones)


def empty(shape, dtype=float, order="C"):
    return ndarray._from_numpy(np.empty(shape, dtype=dtype, order=order), _STATE.current)


def full(shape, fill_value, dtype=None, order="C"):
    if isinstance(fill_value, ndarray):
        raise NotImplementedError("fake cupy: full with an array fill value is not modelled")
    COUNTS.launch("full")
    return ndarray._from_numpy(np.full(shape, fill_value, dtype=dtype, order=order), _STATE.current)


def _like(name, fill, a, dtype, order, shape):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    if name != "empty_like":
        COUNTS.launch(name)
    # new arrays go on the CURRENT device, whatever the prototype's device
    return ndarray._from_numpy(fill(a._a, dtype=dtype, order=order, shape=shape), _STATE.current)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return _like("zeros_like", np.zeros_like, a, dtype, order, shape)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return _like("ones_like", np.ones_like, a, dtype, order, shape)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return _like("empty_like", np.empty_like, prototype, dtype, order, shape)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    COUNTS.launch("full_like")
    return ndarray._from_numpy(np.full_like(a._a, fill_value, dtype=dtype, order=order, shape=shape), _STATE.current)


def arange(start, stop=None, step=1, dtype=None):
    _compile("arange")
    COUNTS.launch("arange")
    return ndarray._from_numpy(np.arange(start, stop, step, dtype=dtype), _STATE.current)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return np.asarray(a, order=order)


def is_available():
    return _CONFIG["device_count"] > 0


def get_array_module(*args):
    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args) else np


def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    if out is not None:
        raise NotImplementedError("fake cupy: concatenate(out=) is not modelled")
    return _compute("concatenate", np.concatenate, [list(tup)], {"axis": axis, "dtype": dtype, "casting": casting})


def stack(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    if out is not None:
        raise NotImplementedError("fake cupy: stack(out=) is not modelled")
    return _compute("stack", np.stack, [list(tup)], {"axis": axis, "dtype": dtype, "casting": casting})


def take(a, indices, axis=None, out=None):
    if out is not None:
        raise NotImplementedError("fake cupy: take(out=) is not modelled")
    if isinstance(indices, np.ndarray):
        raise TypeError(f"Unsupported type {type(indices)}")
    return _compute("take", np.take, [a, indices], {"axis": axis})


def where(condition, x=None, y=None):
    if x is None or y is None:
        raise NotImplementedError("fake cupy: where(condition) (nonzero) is not modelled")
    return _compute("where", np.where, [condition, x, y], {})


def _reduce_into(name, fn, a, axis, dtype, out, keepdims, **extra):
    """A reduction written into ``out`` (one launch), as CuPy's reduction kernels take ``out``:
    modelled for an output of exactly the result's shape and dtype (other casts are not)."""
    if not isinstance(out, ndarray):
        raise TypeError("Output argument type must be cupy.ndarray")
    if not isinstance(a, ndarray):
        raise NotImplementedError(f"fake cupy: {name}(out=) of a non-array is not modelled")
    _check_same_device([a, out], name)
    _compile(name)
    result = fn(a._a, axis=axis, keepdims=keepdims, **({} if dtype is None else {"dtype": dtype}), **extra)
    if np.shape(result) != out.shape:
        raise ValueError(f"Out shape is mismatched: {out.shape}, expected {np.shape(result)}")
    if np.asarray(result).dtype != out.dtype:
        raise NotImplementedError(f"fake cupy: {name}(out=) with a cast to another dtype is not modelled")
    fn(a._a, axis=axis, keepdims=keepdims, out=out._a, **({} if dtype is None else {"dtype": dtype}), **extra)
    COUNTS.launch(name)
    return out


def _reduction(name, fn, with_dtype=True, with_ddof=False, with_out=False):
    if with_ddof:
        def reduce(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
            if out is not None:
                raise NotImplementedError(f"fake cupy: {name}(out=) is not modelled")
            return _compute(name, fn, [a], {"axis": axis, "dtype": dtype, "ddof": ddof, "keepdims": keepdims})
    elif with_dtype:
        def reduce(a, axis=None, dtype=None, out=None, keepdims=False):
            if out is not None:
                if not with_out:
                    raise NotImplementedError(f"fake cupy: {name}(out=) is not modelled")
                return _reduce_into(name, fn, a, axis, dtype, out, keepdims)
            return _compute(name, fn, [a], {"axis": axis, "dtype": dtype, "keepdims": keepdims})
    else:
        def reduce(a, axis=None, out=None, keepdims=False):
            if out is not None:
                raise NotImplementedError(f"fake cupy: {name}(out=) is not modelled")
            return _compute(name, fn, [a], {"axis": axis, "keepdims": keepdims})
    reduce.__name__ = name
    return reduce


sum = _reduction("sum", np.sum, with_out=True)
mean = _reduction("mean", np.mean)
prod = _reduction("prod", np.prod)
std = _reduction("std", np.std, with_ddof=True)
var = _reduction("var", np.var, with_ddof=True)
max = _reduction("max", np.max, with_dtype=False)
min = _reduction("min", np.min, with_dtype=False)
amax, amin = max, min
all = _reduction("all", np.all, with_dtype=False)
any = _reduction("any", np.any, with_dtype=False)


def argmax(a, axis=None, dtype=None, out=None, keepdims=False):
    if out is not None or dtype is not None:
        raise NotImplementedError("fake cupy: argmax(out=, dtype=) is not modelled")
    return _compute("argmax", np.argmax, [a], {"axis": axis, "keepdims": keepdims})


def argmin(a, axis=None, dtype=None, out=None, keepdims=False):
    if out is not None or dtype is not None:
        raise NotImplementedError("fake cupy: argmin(out=, dtype=) is not modelled")
    return _compute("argmin", np.argmin, [a], {"axis": axis, "keepdims": keepdims})


def count_nonzero(a, axis=None):
    return _compute("count_nonzero", np.count_nonzero, [a], {"axis": axis})


def clip(a, a_min, a_max, out=None):
    if out is not None:
        raise NotImplementedError("fake cupy: clip(out=) is not modelled")
    return _compute("clip", np.clip, [a, a_min, a_max], {})


def round(a, decimals=0, out=None):
    if out is not None:
        raise NotImplementedError("fake cupy: round(out=) is not modelled")
    return _compute("round", np.round, [a], {"decimals": decimals})


around = round


def _view(name, fn):
    def view(*args, **kwargs):
        return _compute(name, fn, args, kwargs, launches=0)
    view.__name__ = name
    return view


def _device_array(a):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")


def reshape(a, newshape, order="C", *, copy=None):
    _device_array(a)
    if copy:
        a = a.copy()
    arrays = []
    x = _unwrap(a, "reshape", arrays)
    out = np.reshape(x, newshape, order=order)
    if not np.shares_memory(out, x) and out.size:
        COUNTS.launch("reshape_copy")
        return ndarray._from_numpy(out, _STATE.current)
    return ndarray._from_numpy(out, a._dev)


def transpose(a, axes=None):
    _device_array(a)
    return ndarray._from_numpy(np.transpose(a._a, axes), a._dev)


def swapaxes(a, axis1, axis2):
    _device_array(a)
    return ndarray._from_numpy(np.swapaxes(a._a, axis1, axis2), a._dev)


def expand_dims(a, axis):
    _device_array(a)
    return ndarray._from_numpy(np.expand_dims(a._a, axis), a._dev)


def squeeze(a, axis=None):
    _device_array(a)
    return ndarray._from_numpy(np.squeeze(a._a, axis), a._dev)


def broadcast_to(array, shape):
    _device_array(array)
    return ndarray._from_numpy(np.broadcast_to(array._a, shape), array._dev)


def broadcast_shapes(*args):
    return np.broadcast_shapes(*args)


def ravel(a, order="C"):
    return reshape(a, (-1,), order=order)


def isdtype(dtype, kind):
    return _compat_numpy.isdtype(np.dtype(dtype), kind)  # np.isdtype needs NumPy 2


def result_type(*arrays_and_dtypes):
    return np.result_type(*(x._a if isinstance(x, ndarray) else x for x in arrays_and_dtypes))


def can_cast(from_, to, casting="safe"):
    return np.can_cast(from_._a.dtype if isinstance(from_, ndarray) else from_, to, casting)


def issubdtype(arg1, arg2):
    return np.issubdtype(arg1, arg2)


class ElementwiseKernel:
    """``cupy.ElementwiseKernel``: runs the kernel's own CUDA C body, compiled for the host.

    As CuPy's ``__call__`` (cupy/_core/_kernel.pyx): keywords ``size``, ``stream`` and
    ``block_size`` only (others: ``TypeError('Wrong arguments ...')``), inputs then outputs, the
    loop size from the non-raw arrays or ``size=`` when all are raw; one launch per call.
    """

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, loop_prep="", after_loop="", options=()):
        if preamble or loop_prep or after_loop or options or no_return or return_tuple:
            raise NotImplementedError("fake cupy: ElementwiseKernel preamble/loop_prep/after_loop/options/"
                                      "no_return/return_tuple")
        self.in_params, self.out_params, self.operation, self.name = in_params, out_params, operation, name
        self.nin = len([p for p in in_params.split(",") if p.strip()])
        self.nout = len([p for p in out_params.split(",") if p.strip()])
        self._host = None

    def __call__(self, *args, **kwargs):
        size = kwargs.pop("size", None)
        kwargs.pop("stream", None)
        block_size = kwargs.pop("block_size", 128)
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        if len(args) != self.nin + self.nout:
            raise NotImplementedError("fake cupy: kernels here must be given their output arrays")
        arrays = []
        host_args = [_unwrap(a, self.name, arrays) for a in args]
        _check_same_device(arrays, self.name)
        _compile(self.name)
        if self._host is None:
            from cuda_host import HostElementwiseKernel

            self._host = HostElementwiseKernel(self.in_params, self.out_params, self.operation, self.name)
        self._host(*host_args, size=size)
        COUNTS.launch(self.name)
        return args[self.nin] if self.nout == 1 else tuple(args[self.nin:])


# -- cupyx.scipy.sparse -----------------------------------------------------------------------------
class _sparse_matrix:
    """``cupyx.scipy.sparse``'s CSR and CSC matrices, over a SciPy matrix of the same format (CuPy 14.2).

    Modelled: construction from a SciPy sparse matrix (copied to the current device: three
    host-to-device copies) or from another stand-in matrix; dtypes bool, float32, float64,
    complex64 and complex128 only (``ValueError`` otherwise, as cupyx); ``data``, ``indices`` and
    ``indptr`` as device arrays sharing the matrix's memory; ``device`` raising
    ``NotImplementedError`` (cupyx's base class does; use ``data.device``); ``transpose``/``T`` as
    the other format over the same arrays (no launch); ``tocsr``, ``astype``, ``copy``,
    ``sum_duplicates``; ``has_canonical_format`` (may synchronise: counted); ``get``.

    ``matrix @ dense`` (2-D, a device array of the same device) is cuSPARSE's csrmm2, as
    ``_csr.py``/``_csc.py`` call it: ``sum_duplicates`` in place first, the dense operand copied to
    Fortran order unless it is already (one launch), one launch for the product, the result in
    Fortran order; a NumPy operand is a ``TypeError`` (cupyx returns NotImplemented).

    Row indexing of a CSR matrix (``m[rows]``, ``m[rows, ...]``, ``m[rows, :]``) by a 1-D integer
    device array is ``_major_index_fancy``: one host sync (it reads the gathered count of stored
    values, ``_index._csr_row_index``); by a slice of step 1, ``_major_slice``. Any other index
    is not modelled.
    """

    format = ""

    def __init__(self, arg1, shape=None, dtype=None, copy=False, *, maxprint=None):
        import scipy.sparse

        if isinstance(arg1, _sparse_matrix):
            _check_same_device([arg1.data], f"{self.format}_matrix")
            host = arg1._m
            if arg1.format != self.format:
                COUNTS.launch(f"to{self.format}")
        elif scipy.sparse.issparse(arg1):
            COUNTS.h2d += 3  # data, indices, indptr
            host, copy = arg1, True
        else:
            raise NotImplementedError("fake cupyx: only sparse initialisers are modelled")
        if shape is not None and tuple(shape) != tuple(host.shape):
            raise NotImplementedError("fake cupyx: a shape other than the initialiser's is not modelled")
        dtype = np.dtype(host.dtype if dtype is None else dtype)
        if dtype.char not in "?fdFD":
            raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
        cls = scipy.sparse.csr_matrix if self.format == "csr" else scipy.sparse.csc_matrix
        self._m = cls(host.asformat(self.format), dtype=dtype, copy=copy)
        self._dev = _STATE.current

    @classmethod
    def _over(cls, m, dev):
        self = object.__new__(cls)
        self._m, self._dev = m, dev
        return self

    shape = property(lambda self: self._m.shape)
    dtype = property(lambda self: self._m.dtype)
    nnz = property(lambda self: self._m.nnz)
    ndim = property(lambda self: 2)
    data = property(lambda self: ndarray._from_numpy(self._m.data, self._dev))
    indices = property(lambda self: ndarray._from_numpy(self._m.indices, self._dev))
    indptr = property(lambda self: ndarray._from_numpy(self._m.indptr, self._dev))

    @property
    def device(self):
        raise NotImplementedError  # cupyx.scipy.sparse._base: "CUDA device on which this object resides"

    @property
    def has_canonical_format(self):
        COUNTS.sync("has_canonical_format")  # "Getting this property might synchronize the device."
        return self._m.has_canonical_format

    def sum_duplicates(self):
        _check_same_device([self.data], "sum_duplicates")
        if not self._m.has_canonical_format:
            COUNTS.launch("sum_duplicates")
            self._m.sum_duplicates()

    def copy(self):
        _check_same_device([self.data], "copy")
        COUNTS.launch("copy", 3)
        return type(self)._over(self._m.copy(), _STATE.current)

    def astype(self, dtype, copy=True):
        if np.dtype(dtype) == self.dtype and not copy:
            return self
        COUNTS.launch("astype")
        return type(self)(self, dtype=dtype, copy=True)

    def tocsr(self, copy=False):
        if self.format == "csr":
            return self.copy() if copy else self
        return csr_matrix(self)

    def transpose(self, axes=None, copy=False):
        if axes is not None or copy:
            raise NotImplementedError("fake cupyx: transpose(axes=, copy=True) is not modelled")
        other = csc_matrix if self.format == "csr" else csr_matrix
        return other._over(self._m.T, self._dev)  # the other format over the same arrays

    T = property(transpose)

    def get(self, stream=None):
        COUNTS.sync("sparse.get")
        return self._m.copy()

    def __matmul__(self, other):
        if isinstance(other, np.ndarray):
            raise TypeError(f"unsupported operand type(s) for @: '{type(self).__name__}' and 'numpy.ndarray'")
        if not isinstance(other, ndarray) or other.ndim != 2:
            raise NotImplementedError("fake cupyx: only a product with a 2-D device array is modelled")
        _check_same_device([self.data, other], "csrmm2")
        self.sum_duplicates()
        if self.shape[1] != other.shape[0]:
            raise ValueError("dimension mismatch")
        if other.dtype != self.dtype:
            raise NotImplementedError("fake cupyx: a product of two dtypes is not modelled")
        if not other.flags.f_contiguous:
            COUNTS.launch("asfortranarray")
        _compile("csrmm2")
        COUNTS.launch("csrmm2")
        return ndarray._from_numpy(np.asfortranarray(self._m @ other._a), _STATE.current)

    def __getitem__(self, key):
        rows = key
        if isinstance(key, tuple):
            if len(key) != 2 or not (key[1] is Ellipsis or key[1] == slice(None)):
                raise NotImplementedError("fake cupyx: only row indexing is modelled")
            rows = key[0]
        if self.format != "csr":
            raise NotImplementedError("fake cupyx: only a CSR matrix's rows are modelled")
        if isinstance(rows, slice):
            if rows.step not in (None, 1):
                raise NotImplementedError("fake cupyx: slices of step other than 1 are not modelled")
            _check_same_device([self.data], "_major_slice")
            COUNTS.launch("csr_submatrix_major_axis")
            return csr_matrix._over(self._m[rows], _STATE.current)
        if not isinstance(rows, ndarray) or rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise NotImplementedError("fake cupyx: only a 1-D integer device array or a slice of rows is modelled")
        _check_same_device([self.data, rows], "_major_index_fancy")
        _compile("csr_row_index")
        COUNTS.launch("csr_row_index", 3)  # x % length, the cumulative count, the gather
        COUNTS.sync("sparse row gather (nnz)")  # _index._csr_row_index: int(Bp[-1])
        return csr_matrix._over(self._m[rows._a % self.shape[0]], _STATE.current)


class csr_matrix(_sparse_matrix):
    format = "csr"


class csc_matrix(_sparse_matrix):
    format = "csc"


def issparse(x):
    return isinstance(x, _sparse_matrix)


SPARSE_METHODS_CHECKED = ("__init__", "__getitem__", "__matmul__", "transpose", "astype", "get", "tocsr", "copy",
                          "sum_duplicates")


def _build_cupyx() -> dict:
    """The modules ``cupyx``, ``cupyx.scipy`` and ``cupyx.scipy.sparse`` of the stand-in."""
    cupyx = types.ModuleType("cupyx")
    scipy_mod = types.ModuleType("cupyx.scipy")
    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix, sparse.csc_matrix, sparse.issparse = csr_matrix, csc_matrix, issparse
    sparse.__all__ = ["csr_matrix", "csc_matrix", "issparse"]
    cupyx.empty_pinned = empty_pinned
    cupyx.scipy, scipy_mod.sparse = scipy_mod, sparse
    return {"cupyx": cupyx, "cupyx.scipy": scipy_mod, "cupyx.scipy.sparse": sparse}


# -- the module objects ------------------------------------------------------------------------
_DTYPES = ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
           "float32", "float64", "complex64", "complex128", "intp", "uintp", "integer", "floating",
           "signedinteger", "unsignedinteger", "complexfloating", "number", "generic", "dtype", "finfo",
           "iinfo", "newaxis", "nan", "inf", "pi", "e")

_FUNCTIONS = ("asarray", "array", "zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like",
              "full_like", "arange", "asnumpy", "is_available", "get_array_module", "concatenate", "stack",
              "take", "where", "sum", "mean", "prod", "std", "var", "max", "min", "amax", "amin", "all", "any",
              "argmax", "argmin", "count_nonzero", "clip", "round", "around", "reshape", "transpose",
              "swapaxes", "expand_dims", "squeeze", "broadcast_to", "broadcast_shapes", "ravel", "isdtype",
              "result_type", "can_cast", "issubdtype", "matmul", "ndarray", "ufunc", "ElementwiseKernel")

# Functions that CuPy has and that the fake checks against the real signatures.
SIGNATURE_CHECKED = tuple(n for n in _FUNCTIONS if n not in ("ndarray", "ufunc", "ElementwiseKernel", "amax",
                                                              "amin", "around"))


def _build_module() -> types.ModuleType:
    mod = types.ModuleType("cupy", __doc__)
    mod.__file__ = __file__
    names = []
    for n in _DTYPES:
        setattr(mod, n, getattr(np, n))
        names.append(n)
    mod.bool_ = np.bool_
    for n in _FUNCTIONS:
        setattr(mod, n, globals()[n])
        names.append(n)
    for n, uf in _UFUNCS.items():
        if n != "matmul":
            setattr(mod, n, uf)
            names.append(n)
    mod.__all__ = sorted(set(names))
    mod.__version__ = "14.2.0+fake"
    mod._fake = sys.modules[__name__]

    cuda = types.ModuleType("cupy.cuda")
    runtime = _Runtime("cupy.cuda.runtime")
    runtime.CUDARuntimeError = CUDARuntimeError
    cuda.runtime = runtime
    cuda.Device = Device
    cuda.Stream = Stream
    cuda.Event = Event
    cuda.get_current_stream = get_current_stream
    device_mod = types.ModuleType("cupy.cuda.device")
    device_mod.Device = Device
    cuda.device = device_mod
    mod.cuda = cuda

    # CuPy's matmul compute type per dtype (cupy/_core/_routines_linalg.pyx), which CUPY_TF32=1
    # also sets: xpmlp switches float32 to TF32 while a tf32=True model runs. Recorded, not simulated:
    # the stand-in's products stay float32 (on a GPU older than compute capability 8.0 CuPy raises).
    core = types.ModuleType("cupy._core")
    routines = types.ModuleType("cupy._core._routines_linalg")
    routines.COMPUTE_TYPE_TBD, routines.COMPUTE_TYPE_DEFAULT, routines.COMPUTE_TYPE_TF32 = 0, 1, 7
    compute_types: dict = {}

    def get_compute_type(dtype):
        return compute_types.get(np.dtype(dtype), routines.COMPUTE_TYPE_DEFAULT)

    def set_compute_type(dtype, compute_type):
        compute_types[np.dtype(dtype)] = compute_type
        COUNTS.compute_types.append((np.dtype(dtype).name, compute_type))

    routines.get_compute_type, routines.set_compute_type = get_compute_type, set_compute_type
    core._routines_linalg = routines
    mod._core = core

    linalg = types.ModuleType("cupy.linalg")

    def lstsq(*a, **k):
        raise NotImplementedError("fake cupy: linalg is not modelled")

    linalg.lstsq = lstsq
    linalg.__all__ = ["lstsq"]
    fft = types.ModuleType("cupy.fft")
    fft.__all__ = []
    mod.linalg, mod.fft = linalg, fft
    return mod


_MODULES: dict | None = None  # the fake cupy modules and array-api-compat's cupy package built over them


def _compat_keys(modules):
    return [k for k in modules if k in ("cupy", "cupyx") or k.startswith(("cupy.", "cupyx.")) or
            k == "array_api_compat.cupy" or k.startswith("array_api_compat.cupy.")]


def _modules() -> dict:
    """Build, once per process, the fake cupy and array-api-compat's real CuPy wrappers over it.

    array-api-compat caches namespaces per array class, so its CuPy package must be imported over
    the fake once and then reused; installing swaps these module objects in and out of sys.modules.
    """
    global _MODULES
    if _MODULES is None:
        import array_api_compat

        mod = _build_module()
        fake = {"cupy": mod, "cupy.cuda": mod.cuda, "cupy.cuda.runtime": mod.cuda.runtime,
                "cupy.cuda.device": mod.cuda.device, "cupy.linalg": mod.linalg, "cupy.fft": mod.fft,
                **_build_cupyx()}
        saved = {k: sys.modules.pop(k) for k in _compat_keys(dict(sys.modules))}
        saved_attr = array_api_compat.__dict__.pop("cupy", None)
        try:
            sys.modules.update(fake)
            compat = importlib.import_module("array_api_compat.cupy")
            fake.update({k: sys.modules[k] for k in _compat_keys(dict(sys.modules)) if k.startswith("array_api_compat")})
            fake["array_api_compat.cupy"] = compat
        finally:
            for k in _compat_keys(dict(sys.modules)):
                del sys.modules[k]
            sys.modules.update(saved)
            array_api_compat.__dict__.pop("cupy", None)
            if saved_attr is not None:
                array_api_compat.cupy = saved_attr
        _MODULES = fake
    return _MODULES


@contextlib.contextmanager
def installed(device_count: int = 2, nvrtc: bool = True):
    """Make ``import cupy`` (and array-api-compat's CuPy namespace) the fake, with ``device_count`` GPUs.

    ``nvrtc=False`` simulates a CUDA install without NVRTC: every compiled kernel (ufuncs,
    reductions, ElementwiseKernel) fails, while allocation, copies and cuBLAS matmul work.
    """
    import array_api_compat

    fake = _modules()
    saved = {k: sys.modules.pop(k) for k in _compat_keys(dict(sys.modules))}
    missing = object()
    saved_attr = array_api_compat.__dict__.get("cupy", missing)
    saved_config, saved_current = dict(_CONFIG), _STATE.current
    _CONFIG["device_count"] = device_count
    _CONFIG["nvrtc"] = nvrtc
    _STATE.current = 0
    sys.modules.update(fake)
    array_api_compat.cupy = fake["array_api_compat.cupy"]
    try:
        yield fake["cupy"]
    finally:
        for k in _compat_keys(dict(sys.modules)):
            del sys.modules[k]
        sys.modules.update(saved)
        if saved_attr is missing:
            array_api_compat.__dict__.pop("cupy", None)
        else:
            array_api_compat.cupy = saved_attr
        _CONFIG.update(saved_config)
        _STATE.current = saved_current


def signature_of(name: str) -> inspect.Signature:
    return inspect.signature(globals()[name])


def installed_module():
    """The fake ``cupy`` module object (installed or not)."""
    return _modules()["cupy"]
