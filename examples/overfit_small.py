"""Overfitting ten samples: the backprop sanity check
==================================================

The standard backprop sanity check: drive a 12288-64-1 network to near-zero loss on 10 samples.

12288 = 64 x 64 x 3 pixels. The reported failure - loss explodes, then freezes - comes from raw
0..255 pixels: the first layer's pre-activations are in the thousands, a sigmoid saturates, and
its gradient vanishes. Scaling the pixels to [0, 1] and fusing the output sigmoid into the loss
fixes it; if this does not reach ~0, backprop is wrong.
"""

import numpy as np

import xpmlp


def main(epochs: int = 100, seed: int = 0, device: str = "cpu") -> dict:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(10, 12288), dtype=np.uint8)  # ten 64x64 RGB "images"
    labels = np.array([0, 1] * 5)
    X = images / 255.0
    model = xpmlp.MLP([12288, 64, 1], activation="relu", seed=seed, device=device)
    history = model.fit(X, labels, loss="sigmoid_binary_cross_entropy", optimizer=xpmlp.Adam(lr=1e-3),
                        epochs=epochs, batch_size=10, verbose=0)
    losses = history.history["loss"]
    print(f"loss: first epoch {losses[0]:.4f}, last epoch {losses[-1]:.2e}")
    return {"first_loss": losses[0], "final_loss": losses[-1]}


if __name__ == "__main__":
    main()
