"""Epochs to stop and time to fit: xpmlp.MLPClassifier beside scikit-learn's, on scikit-learn's digits.

Both get the same parameters (``hidden_layer_sizes=(100,)``, adam, every other setting at
scikit-learn's default, so training stops by the loss-based rule: ``tol=1e-4``,
``n_iter_no_change=10``, at most ``max_iter=200`` epochs), the same raw pixels (0-16, as
``load_digits`` gives them) and the same ``random_state``, one after the other in one run on the
CPU. Reported per seed: epochs run (``n_iter_``), seconds to fit, milliseconds per epoch, and
accuracy on a stratified 25% test split; then the ratios xpmlp / scikit-learn.

    python bench/digits_vs_sklearn.py                         # writes bench/results/digits_vs_sklearn.*
    python bench/digits_vs_sklearn.py --quick --out /tmp/dig  # harness check (one seed, seconds)
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
from machine import describe  # noqa: E402

import xpmlp  # noqa: E402


def _run(cls, seed, X_train, y_train, X_test, y_test) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning, when max_iter ends a run
        start = time.perf_counter()
        model = cls(hidden_layer_sizes=(100,), random_state=seed).fit(X_train, y_train)
        seconds = time.perf_counter() - start
    return {"epochs": int(model.n_iter_), "seconds": seconds, "ms_per_epoch": 1000 * seconds / model.n_iter_,
            "test_accuracy": float(model.score(X_test, y_test))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one seed: checks the harness")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SkMLP

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    seeds = range(1 if args.quick else args.seeds)
    # warm-up: the first fit of each pays for imports and BLAS start-up
    _run(SkMLP, 0, X_train[:200], y_train[:200], X_test, y_test)
    _run(xpmlp.MLPClassifier, 0, X_train[:200], y_train[:200], X_test, y_test)
    rows = []
    for seed in seeds:
        theirs = _run(SkMLP, seed, X_train, y_train, X_test, y_test)
        ours = _run(xpmlp.MLPClassifier, seed, X_train, y_train, X_test, y_test)
        rows.append({"seed": seed, "xpmlp": ours, "sklearn": theirs})
        print(f"seed {seed}: epochs {ours['epochs']} vs {theirs['epochs']}, fit {ours['seconds']:.2f} s vs "
              f"{theirs['seconds']:.2f} s, test accuracy {ours['test_accuracy']:.4f} vs {theirs['test_accuracy']:.4f}")

    def mean(who, key):
        return float(np.mean([r[who][key] for r in rows]))

    summary = {key: {"xpmlp": mean("xpmlp", key), "sklearn": mean("sklearn", key),
                     "ratio": mean("xpmlp", key) / mean("sklearn", key)}
               for key in ("epochs", "seconds", "ms_per_epoch", "test_accuracy")}
    result = {"benchmark": "digits_vs_sklearn", "machine": describe("numpy", "sklearn"), "data": "sklearn load_digits, raw 0-16, "
              "stratified 75/25 split (random_state=0)", "settings": "hidden_layer_sizes=(100,), adam, defaults",
              "runs": rows, "summary": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "digits_vs_sklearn.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# xpmlp vs scikit-learn MLPClassifier on digits (same settings, one run)", "",
             f"Machine: {result['machine'].get('cpu')}; {result['settings']}; {result['data']}.", "",
             "| seed | epochs xpmlp | epochs sklearn | fit s xpmlp | fit s sklearn | test acc xpmlp | test acc sklearn |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['xpmlp']['epochs']} | {r['sklearn']['epochs']} | {r['xpmlp']['seconds']:.2f} | "
              f"{r['sklearn']['seconds']:.2f} | {r['xpmlp']['test_accuracy']:.4f} | {r['sklearn']['test_accuracy']:.4f} |"
              for r in rows]
    lines += ["", "| mean | xpmlp | sklearn | xpmlp / sklearn |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['xpmlp']:.4g} | {v['sklearn']:.4g} | {v['ratio']:.3f} |" for k, v in summary.items()]
    (out / "digits_vs_sklearn.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
