"""Test accuracy of xpmlp.MLPClassifier beside scikit-learn's MLPClassifier, with the same settings.

Both estimators get the same parameters (scikit-learn's defaults unless named below), the same
split and the same random_state, on the CPU:

* UCI heart disease (Cleveland, 297 complete rows): StandardScaler + MLPClassifier() with all
  defaults, over many stratified 75/25 splits; the paired difference is reported with its 95%
  confidence interval, because on 75 test rows one row is 1.3 points.
* MNIST (official 60k/10k split, pixels / 255, float32): hidden_layer_sizes=(128, 64),
  max_iter=20 epochs, a few seeds.

    python bench/accuracy_vs_sklearn.py            # full run, writes bench/results/accuracy_vs_sklearn.*
    python bench/accuracy_vs_sklearn.py --quick --out /tmp/acc   # harness check (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import mnist_float32  # noqa: E402
from machine import describe  # noqa: E402

import xpmlp  # noqa: E402
from xpmlp.datasets import load_heart_disease, train_test_split  # noqa: E402


def _fit_score(make, X_train, y_train, X_test, y_test):
    with warnings.catch_warnings():  # scikit-learn's ConvergenceWarning when max_iter is reached
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model = make().fit(X_train, y_train)
        seconds = time.perf_counter() - start
    return float(model.score(X_test, y_test)), seconds


def _paired(ours: list, theirs: list) -> dict:
    from scipy import stats

    diff = np.asarray(ours) - np.asarray(theirs)
    half = float(stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"xpmlp": float(np.mean(ours)), "sklearn": float(np.mean(theirs)), "difference": float(diff.mean()),
            "ci95": [float(diff.mean()) - half, float(diff.mean()) + half],
            "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum()),
            "runs": len(diff)}


def heart(splits: int) -> dict:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_heart_disease()
    scores = {"xpmlp": [], "sklearn": []}
    for seed in range(splits):
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=seed)
        for name, cls in (("xpmlp", xpmlp.MLPClassifier), ("sklearn", MLPClassifier)):
            acc, _ = _fit_score(lambda: make_pipeline(StandardScaler(), cls(random_state=seed)),
                                X_train, y_train, X_test, y_test)
            scores[name].append(acc)
    return {"settings": "StandardScaler + MLPClassifier() defaults: (100,) relu adam alpha=1e-4 batch min(200,n) "
                        "max_iter=200 tol=1e-4; stratified 75/25 splits with seeds 0..n-1",
            **_paired(scores["xpmlp"], scores["sklearn"])}


def mnist(seeds: int, epochs: int, n_train: int | None) -> dict:
    from sklearn.neural_network import MLPClassifier

    (X_train, y_train), (X_test, y_test) = mnist_float32(n_train)
    scores, seconds = {"xpmlp": [], "sklearn": []}, {"xpmlp": [], "sklearn": []}
    for seed in range(seeds):
        for name, cls in (("xpmlp", xpmlp.MLPClassifier), ("sklearn", MLPClassifier)):
            acc, sec = _fit_score(lambda: cls(hidden_layer_sizes=(128, 64), max_iter=epochs, random_state=seed),
                                  X_train, y_train, X_test, y_test)
            scores[name].append(acc)
            seconds[name].append(sec)
            print(f"  MNIST seed {seed} {name:8s} test accuracy {acc:.4f}  fit {sec:.1f} s", flush=True)
    return {"settings": f"784-128-64-10 relu adam lr=1e-3 alpha=1e-4 batch 200, {epochs} epochs, float32, "
                        f"{len(X_train)} train / {len(X_test)} test rows, seeds 0..{seeds - 1}",
            "fit_seconds": {k: float(np.median(v)) for k, v in seconds.items()},
            **_paired(scores["xpmlp"], scores["sklearn"])}


def markdown(results: dict) -> str:
    lines = ["| data | settings | runs | xpmlp | scikit-learn | xpmlp - sklearn (95% CI) | wins/ties/losses |",
             "|---|---|---|---|---|---|---|"]
    for name in ("heart", "mnist"):
        r = results[name]
        lines.append(f"| {name} | {r['settings']} | {r['runs']} | {r['xpmlp']:.4f} | {r['sklearn']:.4f} | "
                     f"{r['difference']:+.4f} ({r['ci95'][0]:+.4f} .. {r['ci95'][1]:+.4f}) | "
                     f"{r['wins']}/{r['ties']}/{r['losses']} |")
    if "fit_seconds" in results["mnist"]:
        fs = results["mnist"]["fit_seconds"]
        lines.append(f"\nMNIST fit time (median): xpmlp {fs['xpmlp']:.1f} s, scikit-learn {fs['sklearn']:.1f} s.")
    m = results["machine"]
    lines.append(f"\nMachine: {m['cpu']}, {m['cores']} cores; versions {m['versions']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 heart splits, 1 MNIST epoch on 5000 rows")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    quick = dict(splits=3, seeds=1, epochs=1, n_train=5000) if args.quick else dict(splits=30, seeds=3, epochs=20,
                                                                                       n_train=None)
    results = {"machine": describe("numpy", "sklearn", "xpmlp"), "quick": args.quick}
    results["heart"] = heart(quick["splits"])
    print(f"heart: xpmlp {results['heart']['xpmlp']:.4f}  sklearn {results['heart']['sklearn']:.4f}", flush=True)
    results["mnist"] = mnist(quick["seeds"], quick["epochs"], quick["n_train"])
    table = markdown(results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy_vs_sklearn.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "accuracy_vs_sklearn.md").write_text("# xpmlp.MLPClassifier vs scikit-learn MLPClassifier\n\n" + table)
    return results


if __name__ == "__main__":
    main()
