"""Data-parallel MNIST: the same experiment on 1 or N processes.
=============================================================

``batch_size`` is the global batch: each batch is split across the processes, their gradients
are averaged with one all-reduce per step, and every process ends with the same weights as one
process would (tests/test_distributed.py checks it to 1e-5 in float32).

    python examples/distributed_mnist.py                              # one process
    mpiexec -n 2 python examples/distributed_mnist.py                 # 2 processes on this machine (CPU)
    mpiexec -n 4 python examples/distributed_mnist.py --nccl          # 4 GPUs, one per process (not yet run)
    mpiexec -f hosts -n 8 python examples/distributed_mnist.py --nccl # several machines (MPICH host file)

Needs ``pip install "xpmlp[mpi]"`` (mpi4py and MPICH). Only rank 0 prints and saves.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import xpmlp
from xpmlp import distributed


def communicator(nccl: bool):
    """MPI under mpiexec (or NCCL, one GPU per process), else the single-process default."""
    if not any(k in os.environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMI_SIZE")):
        return distributed.single()
    return distributed.nccl() if nccl else distributed.mpi()


def main(epochs=2, subset=None, batch_size=256, nccl=False, save=None, seed=0):
    comm = communicator(nccl)
    (X, y), (Xt, yt) = xpmlp.datasets.load_mnist(progress=False)  # every process reads the same data
    if subset:
        X, y = X[:subset], y[:subset]
    X, Xt = X.astype(np.float32) / 255.0, Xt.astype(np.float32) / 255.0
    local = os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    model = xpmlp.MLP([784, 256, 10], seed=seed, device=f"cuda:{local}" if nccl else "cpu")
    model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=1e-3), epochs=epochs,
              batch_size=batch_size, seed=seed, verbose=2 if comm.rank == 0 else 0, comm=comm)
    accuracy = float(np.mean(xpmlp.to_numpy(model.predict(Xt)).argmax(axis=1) == yt))
    if comm.rank == 0:
        print(f"{comm.size} process(es), global batch {batch_size}: test accuracy {accuracy:.4f}")
        if save:
            model.save(save)
    return accuracy


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=None, help="train on the first N rows")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--nccl", action="store_true", help="NCCL between GPUs instead of MPI")
    p.add_argument("--save", default=None)
    a = p.parse_args()
    main(a.epochs, a.subset, a.batch_size, a.nccl, a.save)
