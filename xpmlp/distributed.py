"""Communicators for data-parallel ``fit(..., comm=...)``: who am I, how many are we, and the two
collectives an MLP step needs (an all-reduce of the flat gradient buffer, a broadcast of the
weights).

This is host and transport code: mpi4py and CuPy's ``cupyx.distributed`` are imported lazily,
only by the communicator that needs them, and device arrays are reached through
:mod:`xpmlp.backend`.

The protocol (:class:`Communicator`):

- ``rank``, ``size``: this process's number (0 .. size-1) and the number of processes;
- ``allreduce_mean(buf)``: replace ``buf`` (a 1-D array, e.g. ``model.flat.grad``) in place by
  the mean of every rank's ``buf``;
- ``broadcast(buf, root=0)``: replace ``buf`` in place by rank ``root``'s;
- ``allreduce_sum_host(a)``: the element-wise sum over ranks of a NumPy float64 array (for the
  epoch's loss sums and metric statistics, read on the host once per epoch);
- ``abort(code)``: end every rank now (a failing rank must not leave the others waiting in a
  collective).

Implementations: :func:`single` (one process, every call a no-op: the default), :func:`mpi`
(mpi4py) and :func:`nccl` (NCCL through ``cupyx.distributed.NCCLBackend``, for CuPy models).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, Callable

import numpy as np

__all__ = ["Communicator", "single", "mpi", "nccl", "SingleProcess", "MPICommunicator", "NCCLCommunicator"]


class Communicator:
    """The protocol ``fit`` uses; see the module notes. Subclasses set ``rank`` and ``size``.

    Attributes
    ----------
    rank : int
        This process's number, 0 .. size-1.
    size : int
        The number of processes.
    name : str
        The transport's name (``"single"``, ``"mpi"``, ``"nccl"``).

    See Also
    --------
    single, mpi, nccl

    Examples
    --------
    Every rank runs the same script; only the communicator differs:

    >>> import xpmlp
    >>> from xpmlp.distributed import single
    >>> from xpmlp.datasets import make_xor
    >>> comm = single()  # xpmlp.distributed.mpi() under mpiexec
    >>> X, y = make_xor(64, seed=0)
    >>> model = xpmlp.MLP([2, 8, 2], seed=0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0, comm=comm)
    >>> comm.rank, comm.size, len(history.epoch)
    (0, 1, 2)
    """

    rank: int = 0
    size: int = 1
    name: str = ""

    def allreduce_mean(self, buf: Any) -> None:
        """Replace ``buf`` in place by the mean over ranks of every rank's ``buf``.

        Parameters
        ----------
        buf : array
            A contiguous 1-D array (NumPy or the model's library), changed in place.
        """
        raise NotImplementedError

    def broadcast(self, buf: Any, root: int = 0) -> None:
        """Replace ``buf`` in place by rank ``root``'s.

        Parameters
        ----------
        buf : array
            A contiguous array (NumPy or the model's library), changed in place.
        root : int, default=0
            The rank whose values every rank gets.
        """
        raise NotImplementedError

    def allreduce_sum_host(self, a: np.ndarray) -> np.ndarray:
        """The element-wise sum over ranks of a host array (the epoch's loss sums and statistics).

        Parameters
        ----------
        a : numpy.ndarray
            This rank's values.

        Returns
        -------
        numpy.ndarray of float64
            The element-wise sum over ranks, of ``a``'s shape.
        """
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank now: a failing rank must not leave the others waiting in a collective.

        Parameters
        ----------
        code : int, default=1
            The exit status.
        """
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        """Called by ``fit`` when it raises on this rank while others may wait in a collective:
        print the error and end every rank (with several ranks; one process just lets it raise).

        Parameters
        ----------
        error : BaseException
            What ``fit`` raised.
        """
        if self.size > 1:
            sys.stderr.write(f"xpmlp: rank {self.rank} of {self.size} failed; aborting every rank\n")
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            sys.stderr.flush()
            self.abort(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process: rank 0 of 1; every collective leaves its buffer as it is.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.distributed import SingleProcess
    >>> comm = SingleProcess()
    >>> comm
    SingleProcess(rank=0, size=1)
    >>> comm.allreduce_sum_host(np.array([1.0, 2.0])).tolist()
    [1.0, 2.0]
    """

    name = "single"

    def allreduce_mean(self, buf: Any) -> None:
        """Leave ``buf`` as it is: the mean over one rank.

        Parameters
        ----------
        buf : array
            A contiguous 1-D array (NumPy or the model's library), changed in place.
        """

    def broadcast(self, buf: Any, root: int = 0) -> None:
        """Leave ``buf`` as it is: rank 0 is this process.

        Parameters
        ----------
        buf : array
            A contiguous array, left unchanged.
        root : int, default=0
            Must be 0.

        Raises
        ------
        ValueError
            If ``root`` is not 0.
        """
        if root != 0:
            raise ValueError(f"root must be 0 in a single process, got {root}")

    def allreduce_sum_host(self, a: np.ndarray) -> np.ndarray:
        """``a`` as float64: the sum over one rank.

        Parameters
        ----------
        a : numpy.ndarray
            This rank's values.

        Returns
        -------
        numpy.ndarray of float64
            The element-wise sum over ranks, of ``a``'s shape.
        """
        return np.asarray(a, dtype=np.float64)

    def abort(self, code: int = 1) -> None:
        """Raise ``SystemExit(code)``: there is no other process to stop.

        Parameters
        ----------
        code : int, default=1
            The exit status.
        """
        raise SystemExit(code)  # no other process to stop


def single() -> SingleProcess:
    """The single-process communicator (what ``fit`` does without ``comm``).

    Returns
    -------
    SingleProcess
        Rank 0 of 1.

    Examples
    --------
    >>> from xpmlp.distributed import single
    >>> comm = single()
    >>> comm.rank, comm.size, comm.name
    (0, 1, 'single')
    """
    return SingleProcess()


class MPICommunicator(Communicator):
    """MPI through mpi4py, on host buffers.

    NumPy buffers are passed to MPI in place (the buffer interface: no copy, no pickling). Other
    arrays (CuPy, torch) take one copy to the host and back per collective: CUDA-aware MPI (passing
    device pointers) is not used, even where the MPI library supports it.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The mpi4py communicator; default ``MPI.COMM_WORLD``.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm
        The mpi4py communicator.
    blas_threads : int or None
        BLAS threads set per rank (see :func:`mpi`), or None when left alone.

    Raises
    ------
    ImportError
        If mpi4py is not installed.

    Examples
    --------
    >>> from xpmlp.distributed import MPICommunicator
    >>> comm = MPICommunicator()  # doctest: +SKIP
    >>> comm.rank, comm.size  # under mpiexec -n 2  # doctest: +SKIP
    (0, 2)
    """

    name = "mpi"

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI  # lazily: an optional dependency (pip install "xpmlp[mpi]")

        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.blas_threads = self._share_cores() if self.size > 1 else None

    def _share_cores(self) -> int | None:
        """Ranks on one machine share its cores: each rank's BLAS gets its share (threadpoolctl).

        The ranks counted are those on this machine with the same CPU affinity as this one (so a
        launcher that binds each rank to its own cores leaves them alone).
        Without this, N ranks each run as many BLAS threads as the machine has cores, and MPI's
        busy-waiting ranks compete with them: 2 ranks on the 2-core CI machine trained MNIST's
        default 5 epochs in 160 s instead of 32 s. Left alone when the environment sets a thread
        count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or MKL_NUM_THREADS), or without threadpoolctl.
        The limit is set on the BLAS libraries loaded at this moment, NumPy's among them (xpmlp
        computes with it); one loaded later keeps its own count (SciPy's, which numba loads at its
        first compile, is not used by xpmlp). Returns the threads per rank set, or None.
        """
        if any(name in os.environ for name in THREAD_VARIABLES):
            return None
        # the ranks that share this rank's cores: those on this machine with the same CPU affinity
        # (all of them when the launcher binds nothing; none when it binds each rank to its own)
        mine = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else \
            tuple(range(os.cpu_count() or 1))
        local = self.comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        sharing = sum(cores == mine for cores in local.allgather(mine))
        local.Free()
        threads = blas_share(sharing, len(mine))
        if threads is None:
            return None
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return None
        threadpool_limits(threads, user_api="blas")
        return threads

    def allreduce_mean(self, buf: Any) -> None:
        """Replace ``buf`` in place by the mean over ranks (MPI ``Allreduce`` on the host).

        Parameters
        ----------
        buf : array
            A contiguous 1-D array (NumPy or the model's library), changed in place.
        """
        host, back = _host(buf)
        self.comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        host /= self.size
        back(host)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        """Replace ``buf`` in place by rank ``root``'s (MPI ``Bcast`` on the host).

        Parameters
        ----------
        buf : array
            A contiguous array (NumPy or the model's library), changed in place.
        root : int, default=0
            The rank whose values every rank gets.
        """
        host, back = _host(buf)
        self.comm.Bcast(host, root=root)
        back(host)

    def allreduce_sum_host(self, a: np.ndarray) -> np.ndarray:
        """The element-wise sum over ranks (MPI ``Allreduce``).

        Parameters
        ----------
        a : numpy.ndarray
            This rank's values.

        Returns
        -------
        numpy.ndarray of float64
            The element-wise sum over ranks, of ``a``'s shape.
        """
        a = np.array(a, dtype=np.float64)
        self.comm.Allreduce(self._MPI.IN_PLACE, a, op=self._MPI.SUM)
        return a

    def abort(self, code: int = 1) -> None:
        """End every rank (MPI ``Abort``).

        Parameters
        ----------
        code : int, default=1
            The exit status.
        """
        self.comm.Abort(code)


#: The environment variables that set a BLAS thread count; with any of them set, ranks keep it.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_share(ranks_here: int, cores: int | None = None) -> int | None:
    """BLAS threads for each of ``ranks_here`` ranks on one machine of ``cores`` usable cores (default:
    this process's CPU affinity): ``max(1, cores // ranks_here)``; None for a rank alone.

    Parameters
    ----------
    ranks_here : int
        The ranks on this machine.
    cores : int, optional
        The usable cores; default this process's CPU affinity.

    Returns
    -------
    int or None
        Threads per rank, or None when ``ranks_here`` is 1 or less.

    Examples
    --------
    >>> from xpmlp.distributed import blas_share
    >>> blas_share(4, cores=16), blas_share(3, cores=2), blas_share(1)
    (4, 1, None)
    """
    if ranks_here <= 1:
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // ranks_here)


def mpi(comm: Any = None) -> MPICommunicator:
    """A communicator over MPI (mpi4py's ``COMM_WORLD``, or the mpi4py communicator given).

    Launch with ``mpiexec -n N python script.py``; needs ``pip install "xpmlp[mpi]"`` (mpi4py and
    the MPICH library from a wheel). Ranks that share a machine share its cores: each one's BLAS
    is limited to its share of them (see ``MPICommunicator._share_cores``; set OMP_NUM_THREADS to
    choose yourself).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The mpi4py communicator; default ``MPI.COMM_WORLD``.

    Returns
    -------
    MPICommunicator
        This rank's communicator.

    Raises
    ------
    ImportError
        If mpi4py or an MPI library is missing.

    Examples
    --------
    Run with ``mpiexec -n 2 python train.py``; each rank trains on its share of every batch:

    >>> import xpmlp
    >>> from xpmlp.distributed import mpi
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(1024, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], seed=0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", epochs=5, comm=mpi())  # doctest: +SKIP
    """
    try:
        return MPICommunicator(comm)
    except ImportError as error:
        raise ImportError("xpmlp.distributed.mpi() needs mpi4py and an MPI library: "
                          "pip install mpi4py mpich (or xpmlp[mpi])") from error


def _host(buf: Any) -> tuple[np.ndarray, Callable[[np.ndarray], None]]:
    """(a contiguous NumPy array holding buf's values, a function that puts values back into buf)."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("a communicator's buffer must be contiguous")
        return buf, lambda host: None  # in place: nothing to copy back
    from .backend import to_numpy

    host = np.ascontiguousarray(to_numpy(buf)).copy()

    def back(values: np.ndarray) -> None:
        buf[...] = _like(buf, values)

    return host, back


def _like(buf, values):
    from .backend import namespace_of

    xp = namespace_of(buf)
    return xp.asarray(values, device=buf.device)


class NCCLCommunicator(Communicator):
    """NCCL through ``cupyx.distributed.NCCLBackend``, on CuPy device buffers (one GPU per rank).

    The collectives run on the device with no host copy. Host arrays (``allreduce_sum_host``) take
    one copy to the device and back. NOT run on real GPUs: tested only with the fake-GPU stand-in up
    to the collective call.

    Parameters
    ----------
    n_devices : int
        The number of processes (one GPU each).
    rank : int
        This process's number, 0 .. n_devices-1.
    host : str, default="127.0.0.1"
        The rendezvous address (rank 0's host).
    port : int, default=13333
        The rendezvous port.
    backend : object, optional
        A ``cupyx.distributed.NCCLBackend`` (or a stand-in, for tests); by default one is made.

    Examples
    --------
    >>> from xpmlp.distributed import NCCLCommunicator
    >>> comm = NCCLCommunicator(2, 0)  # needs CuPy, two GPUs and a second rank  # doctest: +SKIP
    """

    name = "nccl"

    def __init__(self, n_devices: int, rank: int, host: str = "127.0.0.1", port: int = 13333,
                 backend: Any = None) -> None:
        if backend is None:
            from cupyx.distributed import NCCLBackend  # lazily: needs CuPy, a GPU and the NCCL wheel

            backend = NCCLBackend(n_devices, rank, host=host, port=port)
        self.backend, self.rank, self.size = backend, rank, n_devices

    def allreduce_mean(self, buf: Any) -> None:
        """Replace ``buf`` in place by the mean over ranks (NCCL all-reduce on the device).

        Parameters
        ----------
        buf : array
            A contiguous 1-D array (NumPy or the model's library), changed in place.
        """
        d = _device(buf)
        self.backend.all_reduce(d, d, op="sum")
        d /= self.size
        _back(buf, d)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        """Replace ``buf`` in place by rank ``root``'s (NCCL broadcast on the device).

        Parameters
        ----------
        buf : array
            A contiguous array (NumPy or the model's library), changed in place.
        root : int, default=0
            The rank whose values every rank gets.
        """
        d = _device(buf)
        self.backend.broadcast(d, root=root)
        _back(buf, d)

    def allreduce_sum_host(self, a: np.ndarray) -> np.ndarray:
        """The element-wise sum over ranks (one copy to the device and back).

        Parameters
        ----------
        a : numpy.ndarray
            This rank's values.

        Returns
        -------
        numpy.ndarray of float64
            The element-wise sum over ranks, of ``a``'s shape.
        """
        d = _device(np.array(a, dtype=np.float64))
        self.backend.all_reduce(d, d, op="sum")
        return _cupy().asnumpy(d)

    def abort(self, code: int = 1) -> None:
        """End this process at once (SIGKILL); the launcher then ends the others.

        Parameters
        ----------
        code : int, default=1
            The exit status.
        """
        # NCCL cannot stop the other ranks: end this process at once (no teardown that could wait on
        # them); the launcher (mpiexec, torchrun) then ends the others.
        os.kill(os.getpid(), signal.SIGKILL)


def _cupy():
    import cupy  # lazily: the NCCL communicator exists only for CuPy models

    return cupy


def _device(buf):
    """buf itself when it is on the device, else (a host array: seeds, logs) a device copy of it."""
    return _cupy().asarray(buf) if isinstance(buf, np.ndarray) else buf


def _back(buf, d) -> None:
    if d is not buf:
        buf[...] = _cupy().asnumpy(d)


def nccl(n_devices: int | None = None, rank: int | None = None, *, host: str | None = None,
         port: int | None = None) -> NCCLCommunicator:
    """A communicator over NCCL for CuPy models, one GPU per process.

    By default the number of processes, this rank and the rendezvous address come from the
    environment a launcher sets (``WORLD_SIZE``/``RANK`` as torchrun, or ``OMPI_COMM_WORLD_*``/
    ``PMI_*`` as mpiexec), with ``MASTER_ADDR`` and ``MASTER_PORT`` (default 127.0.0.1:13333).

    Parameters
    ----------
    n_devices : int, optional
        The number of processes; default from the environment.
    rank : int, optional
        This rank; default from the environment.
    host : str, optional
        The rendezvous address; default ``$MASTER_ADDR`` or 127.0.0.1.
    port : int, optional
        The rendezvous port; default ``$MASTER_PORT`` or 13333.

    Returns
    -------
    NCCLCommunicator
        This rank's communicator.

    Raises
    ------
    ValueError
        If the number of processes or the rank is neither given nor in the environment.

    Examples
    --------
    Run with ``torchrun --nproc-per-node 2 train.py`` (or ``mpiexec -n 2``), one GPU per rank:

    >>> import xpmlp
    >>> from xpmlp.distributed import nccl
    >>> comm = nccl()  # doctest: +SKIP
    >>> model = xpmlp.MLP([784, 512, 10], device=f"cuda:{comm.rank}", seed=0)  # doctest: +SKIP
    """
    env = os.environ
    if n_devices is None:
        n_devices = _first(env, "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if rank is None:
        rank = _first(env, "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
    n_devices, rank = int(n_devices), int(rank)
    host = host if host is not None else env.get("MASTER_ADDR", "127.0.0.1")
    port = int(port if port is not None else env.get("MASTER_PORT", 13333))
    return NCCLCommunicator(n_devices, rank, host, port)


def _first(env, *names):
    for name in names:
        if name in env:
            return env[name]
    raise ValueError(f"nccl() needs the number of processes and this rank: pass them, or set one of {names}")
