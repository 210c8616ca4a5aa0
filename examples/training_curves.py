"""The training loop people expect
===============================

The training loop people expect: a validation split, metrics, early stopping with the best
weights restored, a learning rate cut on plateaus, a CSV log, and the loss curves as a picture.

Trains 784-256-10 on MNIST; writes training_curves.png (the picture in the README) and
training_log.csv into the folder given by --out (a new temporary folder by default), never into
the current directory:

    python examples/training_curves.py --out results/
"""

import argparse
import os
import tempfile

import numpy as np

import xpmlp
from xpmlp.callbacks import CSVLogger, EarlyStopping, ReduceLROnPlateau
from xpmlp.datasets import load_mnist


def main(epochs: int = 20, subset: int | None = None, out: str | None = None, plot: bool = True,
         seed: int = 0, device: str = "cpu") -> dict:
    """Returns accuracy, epochs run, the History, and the paths of the log and the plot (or None)."""
    out = out or tempfile.mkdtemp(prefix="xpmlp-curves-")
    log = os.path.join(out, "training_log.csv")
    (X, y), (X_test, y_test) = load_mnist()
    X, X_test = X.astype(np.float32) / 255.0, X_test.astype(np.float32) / 255.0
    if subset:
        X, y = X[:subset], y[:subset]
    model = xpmlp.MLP([784, 256, 10], activation="relu", dropout=0.3, seed=seed, device=device)
    model.summary()
    history = model.fit(
        X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=1e-3), epochs=epochs, batch_size=128,
        validation_split=0.1,  # shuffled and stratified, not the tail of the data
        metrics=["accuracy"], verbose=1,
        callbacks=[EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
                   ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1),
                   CSVLogger(log)])
    print(history.to_frame()[["loss", "val_loss", "val_accuracy", "lr"]].round(4).to_string())
    accuracy = float(np.mean(xpmlp.to_numpy(model.predict(X_test)).argmax(axis=1) == y_test))
    print(f"test accuracy with the best epoch's weights: {accuracy:.4f}")
    print(f"log saved to {log}")
    picture = None
    if plot:
        picture = os.path.join(out, "training_curves.png")
        history.plot(picture)
        print(f"curves saved to {picture}")
    return {"accuracy": accuracy, "epochs_run": len(history.epoch), "history": history, "log": log,
            "plot": picture}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the log and the plot (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    main(epochs=args.epochs, out=args.out, plot=not args.no_plot)
