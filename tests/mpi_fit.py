"""Data-parallel fits for tests/test_distributed.py, run as ``mpiexec -n N python tests/mpi_fit.py OUT``.

Each rank writes OUT/rank<r>.npz: every case's final weights and history; then a fit with a CSVLogger
and a ModelCheckpoint whose paths name the rank (only rank 0's files must appear). ``run_case`` is also
imported by the test to make the one-process reference (comm=None) of the same case.
``python tests/mpi_fit.py OUT --fail-rank R`` instead raises on rank R in the middle of fit.
"""

import sys
import tempfile

import numpy as np

import xpmlp
from xpmlp.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from xpmlp.chunked import Chunked

# (dtype, global batch, shuffle, validation[, dropout[, chunk_rows: X a memmap read in blocks]]): 41 rows,
# so batches of 5 end with 1 row (an empty shard)
CASES = {
    "f64_b7_shuffle_val": ("float64", 7, True, True),
    "f32_b8_shuffle": ("float32", 8, True, False),
    "f64_b5_ordered": ("float64", 5, False, False),
    # Dropout: each rank's masks are its rows of the whole batch's masks
    "f64_b7_shuffle_dropout": ("float64", 7, True, False, 0.3),
    "f32_b8_dropout": ("float32", 8, False, False, 0.5),
    # out of core: X a memmap streamed in blocks of 10 (or 16) rows, each rank copying only its shards
    "f64_b7_shuffle_val_memmap": ("float64", 7, True, True, 0.0, 10),
    "f32_b8_shuffle_dropout_memmap": ("float32", 8, True, False, 0.3, 16),
    "f64_b5_ordered_memmap": ("float64", 5, False, False, 0.0, 10),
}


def data(dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((41, 6)).astype(dtype)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 1)
    Xv = rng.standard_normal((13, 6)).astype(dtype)
    yv = (Xv[:, 0] + Xv[:, 1] * Xv[:, 2] > 0).astype(int) + (Xv[:, 3] > 1)
    return X, y, Xv, yv


def run_case(name, comm=None, seed=7):
    dtype, batch, shuffle, val, dropout, chunk_rows = CASES[name] + (0.0, None)[len(CASES[name]) - 4:]
    X, y, Xv, yv = data(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        if chunk_rows is not None:  # out of core: X a memmap, read in blocks of chunk_rows
            np.save(f"{tmp}/X.npy", X)
            X = Chunked(np.load(f"{tmp}/X.npy", mmap_mode="r"), chunk_rows=chunk_rows)
        # under MPI each rank's model has its own seed: the weights and the Dropout keys must come
        # from rank 0 (seed 7)
        model = xpmlp.MLP([6, 16, 3], dtype=dtype, seed=seed, dropout=dropout)
        callbacks = [EarlyStopping(monitor="val_loss", patience=0, min_delta=0.1)] if val else []
        history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.02), epochs=6,
                            batch_size=batch, shuffle=shuffle, seed=3, verbose=0, metrics=["accuracy"],
                            validation_data=(Xv, yv) if val else None, callbacks=callbacks, comm=comm)
    return model.flat.to_host(), {k: np.array(v) for k, v in history.history.items()}


class _Fail(Callback):
    def __init__(self, rank):
        self.rank = rank

    def on_batch_end(self, batch):
        if batch == 2 and self.rank == int(sys.argv[3]):
            raise RuntimeError("rank failed on purpose")


def main():
    from xpmlp.distributed import mpi

    out, comm = sys.argv[1], mpi()
    if "--fail-rank" in sys.argv:
        X, y, _, _ = data("float64")
        model = xpmlp.MLP([6, 16, 3], dtype="float64", seed=1)
        model.fit(X, y, loss="softmax_cross_entropy", epochs=1000, batch_size=4, verbose=0,
                  callbacks=[_Fail(comm.rank)], comm=comm)
        return
    saved = {}
    for name in CASES:
        weights, history = run_case(name, comm, seed=7 + 100 * comm.rank)
        saved[name + "/weights"] = weights
        saved.update({f"{name}/history/{k}": v for k, v in history.items()})
    from threadpoolctl import threadpool_info

    # NumPy's BLAS, which xpmlp computes with; a BLAS loaded after mpi() (SciPy's, which numba loads
    # at its first compile) keeps its own thread count
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
            and "numpy" in pool["filepath"]]
    np.savez(f"{out}/rank{comm.rank}.npz", blas_threads=np.array([comm.blas_threads or 0, *blas]), **saved)
    # files: each rank names its own, so the test sees which ranks wrote (only rank 0 must)
    X, y, Xv, yv = data("float64")
    model = xpmlp.MLP([6, 4, 3], dtype="float64", seed=0)
    model.fit(X, y, loss="softmax_cross_entropy", epochs=2, batch_size=8, verbose=0, validation_data=(Xv, yv),
              callbacks=[CSVLogger(f"{out}/log-rank{comm.rank}.csv"),
                         ModelCheckpoint(f"{out}/ckpt-rank{comm.rank}-{{epoch}}.safetensors")], comm=comm)


if __name__ == "__main__":
    main()
