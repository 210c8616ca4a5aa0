"""MNIST with three architectures
==============================

MNIST with three architectures: two that people report failing with, and a strong one.

- 784-128-64-10 with sigmoid hidden layers: often "stuck at 11%" when pixels are left at 0..255
  (the sigmoids saturate) or softmax is taken over the whole batch instead of each row.
- 784-16-16-10 with ReLU: small, but fine with He initialisation and scaled inputs.
- 784-512-512-10 with ReLU and dropout 0.2.

Pixels are scaled to [0, 1]; the output layer is linear and softmax cross-entropy takes its
logits row by row. Adam, learning rate multiplied by ``decay`` after each epoch.
Data: $XPMLP_DATA/mnist, the cache, or a download (see xpmlp.datasets.load_mnist).
"""

import time

import numpy as np

import xpmlp
from xpmlp.datasets import load_mnist

ARCHITECTURES = {
    # name: (sizes, activation, dropout, epochs, batch size, learning rate, decay, target accuracy)
    "sigmoid 784-128-64-10": ([784, 128, 64, 10], "sigmoid", 0.0, 15, 64, 2e-3, 0.85, 0.975),
    "relu 784-16-16-10": ([784, 16, 16, 10], "relu", 0.0, 10, 64, 2e-3, 0.85, 0.93),
    "relu 784-512-512-10": ([784, 512, 512, 10], "relu", 0.2, 10, 128, 1e-3, 0.8, 0.982),
}


def train(name, X_train, y_train, X_test, y_test, *, epochs=None, seed=0, device="cpu"):
    sizes, act, dropout, default_epochs, batch, lr, decay, target = ARCHITECTURES[name]
    model = xpmlp.MLP(sizes, activation=act, dropout=dropout, seed=seed, device=device)
    optimizer = xpmlp.Adam(lr=lr)
    started = time.perf_counter()
    for epoch in range(epochs or default_epochs):
        model.fit(X_train, y_train, loss="softmax_cross_entropy", optimizer=optimizer, epochs=1, batch_size=batch, verbose=0)
        optimizer.lr *= decay
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(xpmlp.to_numpy(model.predict(X_test)).argmax(axis=1) == y_test))
    print(f"{name:24s} test accuracy {accuracy:.4f} (target {target}) in {seconds:.0f}s")
    return accuracy


def main(names=tuple(ARCHITECTURES), epochs=None, subset=None, seed=0, device="cpu") -> dict:
    (X_train, y_train), (X_test, y_test) = load_mnist()
    X_train, X_test = X_train.astype(np.float32) / 255.0, X_test.astype(np.float32) / 255.0
    if subset:
        X_train, y_train = X_train[:subset], y_train[:subset]
    return {name: train(name, X_train, y_train, X_test, y_test, epochs=epochs, seed=seed, device=device)
            for name in names}


if __name__ == "__main__":
    main()
