"""XOR with a 2-3-1 network
========================

XOR with a 2-3-1 network: the problem a single-layer perceptron cannot solve.

A from-scratch network often stalls at 50% here: no biases, weights initialised to zero (every
hidden unit stays identical), or a learning rate without momentum stuck on a plateau. xpmlp's
Dense layers have biases, Glorot-initialised weights, and Adam; the sigmoid output is fused
into the loss (sigmoid_binary_cross_entropy takes logits), so it cannot saturate the gradient.
"""

import numpy as np

import xpmlp


def main(epochs: int = 500, seed: int = 1, device: str = "cpu") -> dict:
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    model = xpmlp.MLP([2, 3, 1], activation="tanh", seed=seed, device=device)
    history = model.fit(X, y, loss="sigmoid_binary_cross_entropy", optimizer=xpmlp.Adam(lr=0.1),
                        epochs=epochs, batch_size=4, verbose=0)
    p = xpmlp.to_numpy(model.predict(X)).ravel()
    for row, prob in zip(X, p):
        print(f"{row.astype(int)} -> P(1) = {prob:.4f}")
    accuracy = float(np.mean((p > 0.5) == y))
    print(f"final loss {history.history['loss'][-1]:.5f}, accuracy {accuracy:.0%}")
    return {"accuracy": accuracy, "loss": history.history["loss"][-1]}


if __name__ == "__main__":
    main()
