"""Sine regression with a linear output
=====================================

``|sin(x)|`` on [0, 4 pi] with a linear output.

Two classic mistakes make this fail past [0, pi]: a sigmoid (or tanh) on the *output*, which
cannot follow a target outside its range and saturates, and too small a network. Here the
hidden layers are tanh, the output is linear (loss "mse"), and Adam does the rest.

Writes the plot sine_regression.png into the folder given by --out (a new temporary folder by
default), never into the current directory:

    python examples/sine_regression.py --out results/
"""

import argparse
import os
import sys
import tempfile

import numpy as np

import xpmlp
from xpmlp.datasets import make_sine


def main(epochs: int = 300, n: int = 2000, seed: int = 0, out: str | None = None, plot: bool = True,
         device: str = "cpu") -> dict:
    """Returns {"mse": ..., "plot": the path of the picture, or None}."""
    X, y = make_sine(n, seed=seed)
    model = xpmlp.MLP([1, 32, 32, 1], activation="tanh", seed=seed, device=device)
    model.fit(X, y, loss="mse", optimizer=xpmlp.Adam(lr=0.01), epochs=epochs, batch_size=64, verbose=0)
    grid = np.linspace(0, 4 * np.pi, 1000)[:, None]
    pred = xpmlp.to_numpy(model.predict(grid))
    mse = float(np.mean((pred - np.abs(np.sin(grid))) ** 2))
    print(f"MSE on a 1000-point grid over [0, 4 pi]: {mse:.5f}")
    path = None
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed (pip install matplotlib): no plot", file=sys.stderr)
        else:
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(grid, np.abs(np.sin(grid)), label="|sin x|", lw=3, alpha=0.4)
            ax.plot(grid, pred, label="MLP 1-32-32-1", lw=1.5)
            ax.set_xlabel("x")
            ax.legend()
            fig.tight_layout()
            path = os.path.join(out or tempfile.mkdtemp(prefix="xpmlp-sine-"), "sine_regression.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            print(f"plot saved to {path}")
    return {"mse": mse, "plot": path}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the plot (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    main(epochs=args.epochs, out=args.out, plot=not args.no_plot)
