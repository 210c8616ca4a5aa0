"""The ``xpmlp`` command (also ``python -m xpmlp``).

    xpmlp info                    versions and which backends work here
    xpmlp train xor|sine [opts]   train a built-in demo problem and report what it reached
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def _xor(n: int, rng):
    """XOR corners with Gaussian noise (the first four rows are the exact corners)."""
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    idx = np.arange(n) % 4
    X = corners[idx] + (rng.normal(0, 0.1, size=(n, 2)) * (np.arange(n)[:, None] >= 4))
    return X, (idx == 1) | (idx == 2)


def _demo(name, args):
    """Data, model sizes, loss and a scoring function for a demo problem."""
    rng = np.random.default_rng(args.seed)
    if name == "xor":
        X, y = _xor(4000, rng)
        score = lambda model: ("accuracy", float(np.mean(_np(model.predict(X)).argmax(1) == y)))
        return X, y.astype(np.int64), [2, *args.hidden, 2], "softmax_cross_entropy", score
    X = rng.uniform(0, 4 * math.pi, size=(2000, 1))
    y = np.abs(np.sin(X))
    score = lambda model: ("mse", float(np.mean((_np(model.predict(X)) - y) ** 2)))
    return X, y, [1, *args.hidden, 1], "mse", score


def _np(a):
    from .backend import to_numpy

    return to_numpy(a)


def cmd_train(args) -> int:
    from . import MLP, available_backends  # noqa: F401  (import here keeps `--help` fast)
    from .optim import get_optimizer

    X, y, sizes, loss, score = _demo(args.problem, args)
    model = MLP(sizes, activation=args.activation, device=args.device, seed=args.seed)
    print(f"xpmlp: {args.problem} on {model.backend}, MLP {sizes}, {args.activation}, "
          f"{args.optimizer} lr={args.lr}, batch {args.batch_size}")
    started = time.perf_counter()
    model.fit(X, y, loss=loss, optimizer=get_optimizer(args.optimizer, lr=args.lr),
              epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose)
    model.backend.synchronize()
    seconds = time.perf_counter() - started
    metric, value = score(model)
    print(f"{metric}: {value:.4f}   time: {seconds:.2f}s   "
          f"samples/s: {args.epochs * X.shape[0] / seconds:,.0f}")
    return 0


def cmd_info(args) -> int:
    import platform

    import array_api_compat

    from . import __version__, available_backends

    print(f"xpmlp {__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"array-api-compat {array_api_compat.__version__}")
    for name, status in available_backends().items():
        print(f"backend {name}: {status}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xpmlp", description="Array API multilayer perceptrons")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and usable backends").set_defaults(run=cmd_info)
    train = sub.add_parser("train", help="train a demo problem")
    train.add_argument("problem", choices=["xor", "sine"])
    train.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    train.add_argument("--hidden", type=int, nargs="+", default=[16, 16])
    train.add_argument("--activation", default="tanh")
    train.add_argument("--optimizer", default="adam")
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--epochs", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", type=int, default=0)
    train.set_defaults(run=cmd_train)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
