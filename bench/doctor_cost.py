"""The cost of ``fit(..., diagnose=True)`` on MNIST epochs, beside the same fit without it.

Each repeat trains a fresh MLP (784-256-10, ReLU, Adam lr=1e-3, batch 32, float32, pixels/255,
seed 0) for ``--epochs`` epochs twice, once plainly and once with ``diagnose=True``, the order
alternating from repeat to repeat so that a slow phase of the machine hits both alike; the
overhead is the ratio of the medians of the fit times, minus one. ``diagnose=True`` costs, once per
fit, the pre-training checks of :func:`xpmlp.diagnose` (without its overfit test; counted only
when this checkout has them, see ``pretraining_checks`` in the results) and, per epoch, the
:class:`xpmlp.vitals.Vitals` checks: one copy of the flat parameters, one forward and backward
pass of a 256-row sample and one host read. Since the difference of two whole fits is of the order
of their noise on a shared machine, ``repeats`` more fits with ``diagnose=True`` time the Vitals
callback's hooks themselves (``hooks_s``, ``hooks_share``).

    python bench/doctor_cost.py                  # 60000 rows, 1 epoch per fit, 7 repeats
    python bench/doctor_cost.py --quick --out /tmp/d  # harness check: 3000 rows, 2 repeats

Results: bench/results/doctor_cost.json and .md (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the xpmlp of this checkout
sys.path.insert(1, str(HERE))

import xpmlp  # noqa: E402
from data import mnist_float32  # noqa: E402
from machine import describe  # noqa: E402

SIZES = [784, 256, 10]


def one_fit(X, y, epochs: int, batch_size: int, diagnose: bool) -> float:
    model = xpmlp.MLP(SIZES, seed=0)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # findings (there should be none) must not cost printing
        history = model.fit(X, y, loss="softmax_cross_entropy", epochs=epochs, batch_size=batch_size, seed=0,
                            verbose=0, diagnose=diagnose)
    seconds = time.perf_counter() - started
    if diagnose and history.doctor is None:
        raise RuntimeError("fit(diagnose=True) kept no report")
    return seconds


def hook_seconds(X, y, epochs: int, batch_size: int) -> dict:
    """One fit(diagnose=True) with the time spent inside the Vitals callback's hooks summed, by hook
    (the wrappers' own cost, a clock read per call, is included): the doctor's cost without the noise
    of two whole fits' difference."""
    from xpmlp.vitals import Vitals

    spent: dict = {}
    hooks = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")
    originals = {name: getattr(Vitals, name) for name in hooks}

    def timed(name):
        def run(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return originals[name](self, *args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
        return run

    for name in hooks:
        setattr(Vitals, name, timed(name))
    try:
        one_fit(X, y, epochs, batch_size, True)
    finally:
        for name, fn in originals.items():
            setattr(Vitals, name, fn)
    return spent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a harness check: few rows and repeats")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    rows = args.rows or (3000 if args.quick else 60000)
    repeats = args.repeats or (2 if args.quick else 7)
    (X, y), _ = mnist_float32(rows, 1)
    from xpmlp import doctor

    settings = {"quick": args.quick, "rows": rows, "epochs": args.epochs, "batch_size": args.batch_size,
                "sizes": SIZES, "repeats": repeats, "optimizer": "Adam(lr=1e-3)", "dtype": "float32"}
    load_before = os.getloadavg()
    one_fit(X[:512], y[:512], 1, args.batch_size, True)  # warm-up: imports, first allocations
    plain, diagnosed = [], []
    for r in range(repeats):
        for diagnose in ((False, True) if r % 2 == 0 else (True, False)):
            (diagnosed if diagnose else plain).append(one_fit(X, y, args.epochs, args.batch_size, diagnose))
        print(f"repeat {r + 1}/{repeats}: plain {plain[-1]:.3f} s, diagnose {diagnosed[-1]:.3f} s", flush=True)
    hooks = [hook_seconds(X, y, args.epochs, args.batch_size) for _ in range(repeats)]
    in_hooks = [sum(h.values()) for h in hooks]
    p, d = statistics.median(plain), statistics.median(diagnosed)
    result = {"settings": settings, "machine": describe("numpy", "xpmlp"),
              "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
              "pretraining_checks": hasattr(doctor, "diagnose"),
              "plain_s": plain, "diagnose_s": diagnosed, "plain_median_s": p, "diagnose_median_s": d,
              "overhead": d / p - 1, "overhead_per_epoch_s": (d - p) / args.epochs,
              "hooks_s": in_hooks, "hooks_by_name_s": hooks,
              "hooks_share": statistics.median(in_hooks) / p}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "doctor_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    md = [f"# Cost of fit(diagnose=True) on MNIST{' (quick)' if args.quick else ''}", "",
          f"MLP {'-'.join(map(str, SIZES))}, ReLU, Adam lr=1e-3, batch {args.batch_size}, float32, {rows} rows, "
          f"{args.epochs} epoch(s) per fit, {repeats} repeats (order alternating), NumPy on {m['cpu']} "
          f"({m['cores']} cores); load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. "
          f"Pre-training checks {'included' if result['pretraining_checks'] else 'NOT in this checkout (not counted)'}.",
          "", "| fit | median s | all runs (s) |", "|---|---|---|",
          f"| plain | {p:.3f} | {', '.join(f'{t:.3f}' for t in plain)} |",
          f"| diagnose=True | {d:.3f} | {', '.join(f'{t:.3f}' for t in diagnosed)} |", "",
          f"Overhead: **{result['overhead']:+.1%}** ({(d - p) * 1e3 / args.epochs:+.1f} ms per epoch); target < 5%.",
          "", f"Time inside the doctor's callback hooks (the Vitals checks; {repeats} more fits with diagnose=True, "
          f"each hook timed): median {statistics.median(in_hooks) * 1e3:.1f} ms per fit, "
          f"**{result['hooks_share']:.2%}** of the plain fit's median time. By hook (ms, median run): "
          + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in sorted(hooks, key=lambda h: sum(h.values()))[len(hooks) // 2].items())
          + "."]
    (args.out / "doctor_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
