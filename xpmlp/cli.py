"""The ``xpmlp`` command (also ``python -m xpmlp``).

    xpmlp train mnist [options]             the main job: an MLP on MNIST, reporting test accuracy
    xpmlp train csv FILE --target COLUMN    any CSV: classification or regression, detected
    xpmlp train xor | sine                  the classic toy problems
    xpmlp info                              versions, and which backends work here

Data-parallel training: ``mpiexec -n N xpmlp train ... --distributed mpi`` (or ``nccl``, one GPU
per process); ``--batch-size`` stays the global batch, and only rank 0 prints and saves.

Exit status: 0 done; 2 the command line is wrong (an unknown option or choice, a bad value
such as ``--lr -1`` or ``--epochs 0``, a data file or folder that does not exist, a
``--target`` that is not a column of the file, a ``--save`` path that cannot be written);
1 the command was right but the job failed (an empty or malformed data file, a failed
download, a diverged run, an error while saving); 130 interrupted (Ctrl-C). Errors are one
line on stderr, starting with ``xpmlp: error:``, never a Python traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

USAGE, FAILURE, INTERRUPTED = 2, 1, 130  # exit statuses (see the module docstring)


class CliError(Exception):
    """The job failed (bad data, for instance): reported as one line and exit status 1."""

    status = FAILURE


class UsageError(CliError):
    """The command line is wrong: reported as one line and exit status 2."""

    status = USAGE


def _train_epochs(model, X, y, loss, args):
    """fit with the learning rate decayed after each epoch; a progress bar (or a line) per epoch."""
    from .callbacks import LearningRateScheduler
    from .optim import get_optimizer

    decay = LearningRateScheduler(lambda epoch, lr: args.lr * args.lr_decay ** epoch)
    started = time.perf_counter()
    model.fit(X, y, loss=loss, optimizer=get_optimizer(args.optimizer, lr=args.lr), epochs=args.epochs,
              batch_size=args.batch_size, seed=args.seed, verbose=1, callbacks=[decay], comm=args.comm)
    model.backend.synchronize()
    return time.perf_counter() - started


def _report(seconds, n_samples, epochs, **metrics):
    shown = "   ".join(f"{k.replace('_', ' ')}: {v:.4f}" for k, v in metrics.items())
    print(f"{shown}   time: {seconds:.1f}s   samples/s: {epochs * n_samples / seconds:,.0f}")


def _model(sizes, args, **kwargs):
    from . import MLP

    model = MLP(sizes, activation=args.activation, dropout=args.dropout, device=args.device,
                seed=args.seed, dtype=args.dtype, **kwargs)
    print(f"xpmlp: MLP {sizes}, {args.activation}, dropout {args.dropout}, {args.dtype}, on {model.backend}; "
          f"{args.optimizer} lr={args.lr} (x{args.lr_decay} per epoch), batch {args.batch_size}")
    return model


def _accuracy(model, X, y) -> float:
    from .backend import to_numpy

    return float(np.mean(to_numpy(model.predict(X, batch_size=8192)).argmax(axis=1) == y))


def cmd_mnist(args: argparse.Namespace) -> int:
    """``xpmlp train mnist``: an MLP on MNIST, then its test accuracy, time and throughput.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.

    Returns
    -------
    int
        The exit status: 0.

    Raises
    ------
    UsageError
        For a wrong command line found here (exit status 2).
    CliError
        When the job fails (exit status 1).
    """
    from .datasets import load_mnist

    if args.data is not None and not os.path.isdir(args.data):
        raise UsageError(f"--data {args.data}: no such folder")
    (X_train, y_train), (X_test, y_test) = load_mnist(args.data)
    # Pixels scaled to [0, 1]: raw 0..255 inputs saturate the first layer.
    X_train, X_test = X_train.astype(np.float32) / 255.0, X_test.astype(np.float32) / 255.0
    model = _model([784, *args.hidden, 10], args)
    seconds = _train_epochs(model, X_train, y_train, "softmax_cross_entropy", args)
    _report(seconds, len(X_train), args.epochs, test_accuracy=_accuracy(model, X_test, y_test))
    _save(model, args)
    return 0


def _save(model, args) -> None:
    if args.save and (args.comm is None or args.comm.rank == 0):
        model.save(args.save)
        print(f"model saved to {args.save} (load it with xpmlp.load)")


def _check_save(path) -> None:
    """Refuse a --save path that cannot be written before any training, so no finished model is lost."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--save {path}: is a folder; give a file name, such as {p / 'model.safetensors'}")
    if p.exists() and not p.is_file():
        raise UsageError(f"--save {path}: exists and is not a regular file")
    folder = p.parent
    if not folder.exists():
        raise UsageError(f"--save {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"--save {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--save {path}: no permission to write in the folder {folder}")


def _read_csv(path: str, target: str):
    """Features (n, d) float64 and the target Series; errors name the file, column and row."""
    import pandas as pd

    if not os.path.exists(path):
        raise UsageError(f"{path}: file not found")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not a CSV file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CliError(f"{path}: the file is empty; expected a header row naming the columns, then data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise CliError(f"{path}: not a readable CSV file ({e})") from None
    if target not in frame.columns:
        raise UsageError(f"{path}: no column {target!r} (--target); columns are: {', '.join(map(str, frame.columns))}")
    if len(frame) == 0:
        raise CliError(f"{path}: has a header row ({', '.join(map(str, frame.columns))}) but no data rows")
    y = frame[target]
    if y.isna().any():
        raise CliError(f"{path}: target column {target!r} is empty or NaN in row {int(y.isna().to_numpy().argmax()) + 1}")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise CliError(f"{path}: no feature columns besides {target!r}")
    for column in features.columns:
        values = pd.to_numeric(features[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise CliError(f"{path}: feature column {column!r}, row {row + 1}: {features[column].iloc[row]!r} "
                           "is missing or not a number (encode or drop non-numeric columns, fill missing values)")
    return features.to_numpy(dtype=np.float64), y


def _is_classification(y) -> bool:
    """Strings, booleans and integers with few distinct values are classes; other numbers are targets."""
    from pandas.api import types

    if types.is_bool_dtype(y) or not types.is_numeric_dtype(y):
        return True
    return types.is_integer_dtype(y) and y.nunique() <= 20


def cmd_csv(args: argparse.Namespace) -> int:
    """``xpmlp train csv FILE --target COLUMN``: classification or regression, detected from the target column.

    Inputs are standardised and 20% of the rows held out (stratified by class for classification).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.

    Returns
    -------
    int
        The exit status: 0.

    Raises
    ------
    UsageError
        For a wrong command line found here (exit status 2).
    CliError
        When the job fails (exit status 1).
    """
    from .backend import to_numpy

    from .datasets import train_test_split

    X, target = _read_csv(args.file, args.target)
    classify = _is_classification(target)
    if classify:
        classes, y = np.unique(target.to_numpy(), return_inverse=True)
    else:
        y = target.to_numpy(dtype=np.float64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=classify, seed=args.seed)
    if len(X_test) == 0 or len(X_train) == 0:
        raise CliError(f"{args.file}: {len(X)} rows are too few to hold out 20% for testing")
    if classify:
        print(f"{args.file}: {len(X)} rows, {X.shape[1]} features, classification of {args.target!r} "
              f"into {len(classes)} classes; 20% held out (stratified)")
        model = _model([X.shape[1], *args.hidden, len(classes)], args, standardize=True)
        seconds = _train_epochs(model, X_train, y_train, "softmax_cross_entropy", args)
        _report(seconds, len(X_train), args.epochs, held_out_accuracy=_accuracy(model, X_test, y_test))
    else:
        mean, std = y_train.mean(), y_train.std() or 1.0
        print(f"{args.file}: {len(X)} rows, {X.shape[1]} features, regression of {args.target!r}; 20% held out")
        model = _model([X.shape[1], *args.hidden, 1], args, standardize=True)
        seconds = _train_epochs(model, X_train, (y_train - mean) / std, "mse", args)
        pred = to_numpy(model.predict(X_test)).ravel() * std + mean
        mse = float(np.mean((pred - y_test) ** 2))
        r2 = 1.0 - mse / float(np.var(y_test)) if np.var(y_test) > 0 else float("nan")
        _report(seconds, len(X_train), args.epochs, held_out_mse=mse, held_out_r2=r2)
    _save(model, args)
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    """``xpmlp train xor`` or ``xpmlp train sine``: the classic toy problems.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.

    Returns
    -------
    int
        The exit status: 0.

    Raises
    ------
    UsageError
        For a wrong command line found here (exit status 2).
    CliError
        When the job fails (exit status 1).
    """
    from .backend import to_numpy
    from .datasets import make_sine, make_xor

    if args.problem == "xor":
        X, y = make_xor(4000, noise=0.1, seed=args.seed)
        model = _model([2, *args.hidden, 2], args)
        seconds = _train_epochs(model, X, y, "softmax_cross_entropy", args)
        _report(seconds, len(X), args.epochs, accuracy=_accuracy(model, X, y))
    else:
        X, y = make_sine(2000, seed=args.seed)
        model = _model([1, *args.hidden, 1], args)
        seconds = _train_epochs(model, X, y, "mse", args)
        _report(seconds, len(X), args.epochs, mse=float(np.mean((to_numpy(model.predict(X)) - y) ** 2)))
    _save(model, args)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``xpmlp info``: the versions, and which backends work here.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (unused).

    Returns
    -------
    int
        The exit status: 0.
    """
    import platform

    import array_api_compat

    from . import __version__, available_backends, kernels_numpy

    print(f"xpmlp {__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"numpy {np.__version__}, array-api-compat {array_api_compat.__version__}")
    for name, status in available_backends().items():
        print(f"backend {name}: {status}")
    faster = "" if kernels_numpy.numba_jit() else ' (pip install "xpmlp[fast]" for numba\'s compiled loop)'
    print(f"optimiser update on NumPy: {kernels_numpy.executor_name()}{faster}")
    return 0


# problem -> defaults that reach the documented results
DEFAULTS = {
    "mnist": dict(hidden=[512, 512], activation="relu", dropout=0.2, epochs=5, batch_size=128, lr=1e-3, lr_decay=0.8),
    "csv": dict(hidden=[64, 64], activation="relu", dropout=0.0, epochs=50, batch_size=32, lr=1e-3, lr_decay=1.0),
    "xor": dict(hidden=[16], activation="tanh", dropout=0.0, epochs=10, batch_size=32, lr=0.01, lr_decay=1.0),
    "sine": dict(hidden=[16, 16], activation="tanh", dropout=0.0, epochs=200, batch_size=64, lr=0.01, lr_decay=1.0),
}


def _number(kind, low, low_included=True, high=None):
    """An argparse type: a finite number of ``kind`` in [low, high) (or (low, high)), named in errors."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        too_low = value < low if low_included else value <= low
        if not math.isfinite(value) or too_low or (high is not None and value >= high):
            bound = f"{'>=' if low_included else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _add_training_options(p, problem):
    from .layers import ACTIVATIONS
    from .optim import OPTIMIZERS

    d = DEFAULTS[problem]
    p.add_argument("--device", default=None, help="auto (default: $XPMLP_DEVICE or auto), cpu, cuda or cuda:N")
    p.add_argument("--hidden", type=_number(int, 1), nargs="+", default=d["hidden"],
                   help=f"hidden widths (default {d['hidden']})")
    p.add_argument("--activation", default=d["activation"], type=str.lower, choices=sorted(ACTIVATIONS), metavar="NAME",
                   help=f"hidden activation: {', '.join(sorted(ACTIVATIONS))} (default {d['activation']})")
    p.add_argument("--dropout", type=_number(float, 0.0, high=1.0), default=d["dropout"], help="in [0, 1)")
    p.add_argument("--epochs", type=_number(int, 1), default=d["epochs"], help=f"at least 1 (default {d['epochs']})")
    p.add_argument("--batch-size", type=_number(int, 1), default=d["batch_size"], help=f"default {d['batch_size']}")
    p.add_argument("--optimizer", default="adam", type=str.lower, choices=sorted(OPTIMIZERS), metavar="NAME",
                   help=f"{', '.join(sorted(OPTIMIZERS))} (default adam)")
    p.add_argument("--lr", type=_number(float, 0.0, low_included=False), default=d["lr"],
                   help=f"learning rate, > 0 (default {d['lr']})")
    p.add_argument("--lr-decay", type=_number(float, 0.0, low_included=False), default=d["lr_decay"],
                   help=f"learning rate factor after each epoch, > 0 (default {d['lr_decay']})")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="the weights' and the computation's float type (default float32)")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="save the trained model (safetensors); the folder is checked before training")
    p.add_argument("--distributed", default=None, choices=["mpi", "nccl"],
                   help="data-parallel training over the processes of mpiexec: mpi (mpi4py) or nccl (CuPy, "
                        "one GPU per process, cuda:<local rank> unless --device says)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpmlp", description="Array API multilayer perceptrons",
        epilog="exit status: 0 done, 1 the job failed (bad data, diverged, download or save failed), "
               "2 the command line is wrong, 130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and usable backends").set_defaults(run=cmd_info)
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="problem", required=True)
    mnist = train.add_parser("mnist", help="MNIST digits (from --data, $XPMLP_DATA/mnist or the cache; downloaded if missing)")
    mnist.add_argument("--data", default=None, help="folder with the MNIST files")
    _add_training_options(mnist, "mnist")
    mnist.set_defaults(run=cmd_mnist)
    csv = train.add_parser("csv", help="any CSV file with a header row")
    csv.add_argument("file")
    csv.add_argument("--target", required=True, help="the column to predict")
    _add_training_options(csv, "csv")
    csv.set_defaults(run=cmd_csv)
    for problem in ("xor", "sine"):
        toy = train.add_parser(problem, help=f"the {problem} toy problem")
        _add_training_options(toy, problem)
        toy.set_defaults(run=cmd_toy)
    return parser


def _check_device(args) -> None:
    """Resolve --device once, up front: an unknown name is a usage error, not a failure after loading data."""
    if "device" not in vars(args):  # xpmlp info
        return
    from .backend import resolve

    try:
        args.device = resolve(args.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}" if args.device is not None else str(e)) from None


def _communicator(args):
    """--distributed as a communicator (None without it); nccl picks the GPU of this process's local rank."""
    kind = getattr(args, "distributed", None)
    if kind is None:
        return None
    from . import distributed

    try:
        if kind == "mpi":
            return distributed.mpi()
        env = os.environ
        local = next((env[k] for k in ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK") if k in env), "0")
        if args.device is None:
            args.device = f"cuda:{local}"
        return distributed.nccl()
    except ImportError as e:
        raise UsageError(f"--distributed {kind}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0, 1 failure, 2 usage, 130 interrupted).

    Errors are printed as one line on stderr, never a traceback.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``xpmlp``; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 done, 1 the job failed, 2 a wrong command line, 130 interrupted.

    Examples
    --------
    >>> from xpmlp.cli import main
    >>> main(["info"])
    xpmlp ... on Python ...
    numpy ..., array-api-compat ...
    backend numpy: ok (...)
    backend cupy: ...
    optimiser update on NumPy: ...
    0
    >>> main(["train", "xor", "--epochs", "0"])  # the usage and the error go to stderr
    2
    """
    from .datasets import DataError
    from .train import DivergenceError

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and the error (status 2), or --help (0)
        return int(e.code or 0)  # argparse exits with 2 (usage) or 0 (--help)
    try:
        args.comm = _communicator(args)
        _check_device(args)
        _check_save(getattr(args, "save", None))
        if args.comm is not None and args.comm.rank != 0:  # only rank 0 prints
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return args.run(args)
        return args.run(args)
    except KeyboardInterrupt:
        print("\nxpmlp: interrupted", file=sys.stderr)
        return INTERRUPTED
    except CliError as e:
        print(f"xpmlp: error: {e}", file=sys.stderr)
        return e.status
    except (DataError, DivergenceError, ValueError, RuntimeError, OSError) as e:
        # The library's own errors name the problem; the job failed, the command line was fine.
        print(f"xpmlp: error: {e}", file=sys.stderr)
        return FAILURE


if __name__ == "__main__":
    sys.exit(main())
