"""Kernel launches, host syncs and host-to-device copies of one CuPy training step, counted on the CPU.

A small MLP step on a GPU is bound by launches and syncs, not FLOPs, and those counts are
deterministic, so they can be measured without a GPU: the CuPy backend runs on tests/fake_cupy.py,
the NumPy-backed stand-in for CuPy that counts one launch per kernel call (a ufunc, a reduction, a
matmul, a gather, an ElementwiseKernel) and none for views. It is the same count that
tests/test_fake_gpu.py asserts. The fake runs CuPy's API, not a GPU: these are the launches xpmlp
asks for, not timings.

For each case (784-512-512-10 ReLU, softmax cross-entropy, float32, batch 128 by default) it
trains one epoch of 2 and one of 6 steps and reports the difference / 4, per step, for the step
make_train_step picks and for the reference step (XPMLP_REFERENCE=1), with the launches by kernel.

    python bench/launches.py                    # writes bench/results/launches.json and .md
    python bench/launches.py --out /tmp/l
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import fake_cupy  # noqa: E402  (tests/fake_cupy.py)
from machine import versions  # noqa: E402

CASES = [
    ("784-512-512-10 relu, Adam", [784, 512, 512, 10], "relu", "adam", 0.0),
    ("784-512-512-10 relu, SGD momentum", [784, 512, 512, 10], "relu", "sgd", 0.0),
    ("784-512-512-10 relu, dropout 0.2, Adam", [784, 512, 512, 10], "relu", "adam", 0.2),
    ("784-128-64-10 tanh, Adam", [784, 128, 64, 10], "tanh", "adam", 0.0),
]


def count(sizes, activation, optimizer, dropout, batch_size, reference: bool) -> dict:
    """Per-step launches, syncs and copies (and launches by kernel) of one configuration."""
    import xpmlp
    from xpmlp.step import make_train_step

    if reference:
        os.environ["XPMLP_REFERENCE"] = "1"
    else:
        os.environ.pop("XPMLP_REFERENCE", None)
    rng = np.random.default_rng(0)
    X = rng.random((batch_size * 6, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch_size * 6)
    opt = xpmlp.SGD(lr=0.01, momentum=0.9) if optimizer == "sgd" else xpmlp.Adam(lr=1e-3)
    model = xpmlp.MLP(sizes, activation=activation, dropout=dropout, device="cuda", dtype="float32", seed=0)
    model.fit(X[:batch_size], y[:batch_size], loss="softmax_cross_entropy", optimizer=opt, epochs=1,
              batch_size=batch_size, verbose=0)
    with model.backend.activate():
        variant = make_train_step(model, model.loss, opt).variant
    counts = {}
    for steps in (2, 6):
        fake_cupy.COUNTS.reset()
        model.fit(X[: batch_size * steps], y[: batch_size * steps], epochs=1, batch_size=batch_size, verbose=0)
        counts[steps] = (fake_cupy.COUNTS.snapshot(), dict(fake_cupy.COUNTS.by_name))
    per_step = {k: (counts[6][0][k] - counts[2][0][k]) / 4 for k in ("launches", "syncs", "h2d")}
    by_kernel = {k: (counts[6][1].get(k, 0) - counts[2][1].get(k, 0)) / 4 for k in counts[6][1]}
    return {"variant": variant, **per_step, "epoch_of_6_steps": counts[6][0],
            "by_kernel": {k: v for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1]) if v}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    rows = []
    with fake_cupy.installed():
        for name, sizes, activation, optimizer, dropout in CASES:
            for reference in (False, True):
                result = count(sizes, activation, optimizer, dropout, args.batch_size, reference)
                rows.append({"case": name, "batch_size": args.batch_size,
                             "path": "reference" if reference else "made by make_train_step", **result})
    os.environ.pop("XPMLP_REFERENCE", None)
    report = {"what": "per training step on the CuPy backend, counted on tests/fake_cupy.py (no GPU)",
              "versions": versions("numpy", "cupy", "xpmlp"), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "launches.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# Kernel launches per training step (CuPy backend, counted without a GPU)", "",
             "Counted by bench/launches.py on tests/fake_cupy.py, which counts one launch per kernel call "
             "CuPy would make (not a GPU measurement). Per step = (epoch of 6 steps - epoch of 2) / 4.", "",
             "| case | batch | step | launches | syncs | host-to-device copies | launches by kernel |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kernels = ", ".join(f"{k} {v:g}" for k, v in r["by_kernel"].items())
        lines.append(f"| {r['case']} | {r['batch_size']} | {r['variant']} | {r['launches']:g} | {r['syncs']:g} | "
                     f"{r['h2d']:g} | {kernels} |")
    lines += ["", f"Versions: {report['versions']}."]
    (args.out / "launches.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
