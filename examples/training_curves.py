"""The training loop people expect: a validation split, metrics, early stopping with the best
weights restored, a learning rate cut on plateaus, a CSV log, and the loss curves as a picture.

Trains 784-256-10 on MNIST; writes training_curves.png (the picture in the README) and
training_log.csv.
"""

import numpy as np

import xpmlp
from xpmlp.callbacks import CSVLogger, EarlyStopping, ReduceLROnPlateau
from xpmlp.datasets import load_mnist


def main(epochs: int = 20, subset: int | None = None, plot: str | None = "training_curves.png",
         log: str = "training_log.csv", seed: int = 0, device: str = "cpu") -> dict:
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
    if plot:
        history.plot(plot)
        print(f"curves saved to {plot}")
    return {"accuracy": accuracy, "epochs_run": len(history.epoch), "history": history}


if __name__ == "__main__":
    main()
