"""UCI heart disease (Cleveland)
=============================

UCI heart disease (Cleveland): a 13-13-1 classifier on standardised features, and a 0..4 regression.

The reported failure is "every prediction becomes 1": raw features (cholesterol ~250 mg/dl next
to binary flags) saturate the sigmoid units, and the network falls back to the majority class.
A Standardize layer (mean/std learned from the training split only) fixes it. The split is
stratified, so class proportions match in both parts.

Needs the file processed.cleveland.data: pass its path, or set XPMLP_DATA to a folder with
uci-heart/processed.cleveland.data.
"""

import sys

import numpy as np

import xpmlp
from xpmlp.datasets import load_heart_disease, train_test_split


def main(path=None, epochs: int = 200, seed: int = 0, device: str = "cpu") -> dict:
    X, y = load_heart_disease(path)  # drops the 6 rows with missing values: 297 remain
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=seed)
    print(f"binary target (disease present): {len(X_train)} train / {len(X_test)} test rows, "
          f"stratified 75/25 split, seed {seed}")
    clf = xpmlp.MLP([13, 13, 1], activation="tanh", standardize=True, seed=seed, device=device)
    clf.fit(X_train, y_train, loss="sigmoid_binary_cross_entropy", optimizer=xpmlp.Adam(lr=1e-3),
            epochs=epochs, batch_size=16, verbose=0)
    p = xpmlp.to_numpy(clf.predict(X_test)).ravel()
    accuracy = float(np.mean((p > 0.5) == y_test))
    print(f"held-out accuracy {accuracy:.3f} (majority class alone: {max(y_test.mean(), 1 - y_test.mean()):.3f}); "
          f"predicted positive rate {np.mean(p > 0.5):.2f}")

    X, severity = load_heart_disease(path, target="num")
    X_train, X_test, s_train, s_test = train_test_split(X, severity, test_size=0.25, seed=seed)
    reg = xpmlp.MLP([13, 13, 1], activation="tanh", standardize=True, seed=seed, device=device)
    reg.fit(X_train, s_train.astype(float), loss="mse", optimizer=xpmlp.Adam(lr=1e-3), epochs=epochs, batch_size=16, verbose=0)
    pred = xpmlp.to_numpy(reg.predict(X_test)).ravel()
    mae = float(np.mean(np.abs(pred - s_test)))
    baseline = float(np.mean(np.abs(s_test - np.median(s_train))))
    print(f"severity 0..4 with a linear output: held-out MAE {mae:.3f} (predicting the median: {baseline:.3f})")
    return {"accuracy": accuracy, "severity_mae": mae, "severity_baseline_mae": baseline}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
