"""How xpmlp's (and PyTorch's) CPU training time grows with width, depth and dataset size.

Adam, batch 128, float32, ReLU, MNIST inputs. Width and depth: the time of 40 steps after 5
warm-up steps, scaled to a 60,000-sample epoch, next to the matrix-product FLOPs of that epoch,
so the achieved GFLOP/s shows where cost departs from the FLOP count. Dataset size: whole
epochs of 784-512-512-10 on MNIST and on MNIST replicated 10 times. Each measurement runs in a
fresh process, one library at a time.

    python bench/scaling.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from contenders import torch_mlp  # noqa: E402
from machine import describe  # noqa: E402
from mnist import gemm_flops_per_sample  # noqa: E402

BATCH, WARMUP, STEPS = 128, 5, 40


def _data(n_rows, replicate=1):
    from data import mnist_float32

    (X, y), _ = mnist_float32(n_rows, 10)
    return (np.tile(X, (replicate, 1)), np.tile(y, replicate)) if replicate > 1 else (X, y)


def _time_xpmlp(sizes, X, y, whole_epoch):
    import xpmlp

    model, opt = xpmlp.MLP(sizes, seed=0), xpmlp.Adam(lr=1e-3)
    fit = lambda Xs, ys: model.fit(Xs, ys, loss="softmax_cross_entropy", optimizer=opt, epochs=1,  # noqa: E731
                                   batch_size=BATCH, shuffle=True, verbose=0)
    fit(X[:BATCH * WARMUP], y[:BATCH * WARMUP])
    n = len(X) if whole_epoch else BATCH * STEPS
    start = time.perf_counter()
    fit(X[:n], y[:n])
    return time.perf_counter() - start


def _time_torch(sizes, X, y, whole_epoch):
    import torch

    torch.manual_seed(0)
    net, loss_fn = torch_mlp(sizes), torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run(n):
        order = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(Xt[idx]), yt[idx]).backward()
            opt.step()

    run(BATCH * WARMUP)
    start = time.perf_counter()
    run(len(X) if whole_epoch else BATCH * STEPS)
    return time.perf_counter() - start


def measure(job):
    library, sizes, n_rows, replicate, whole_epoch = job
    X, y = _data(n_rows, replicate)
    seconds = (_time_xpmlp if library == "xpmlp" else _time_torch)(sizes, X, y, whole_epoch)
    samples = len(X) if whole_epoch else BATCH * STEPS
    return seconds, samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    widths = [512, 1024] if args.quick else [512, 1024, 2048, 4096]
    depths = [1, 2] if args.quick else [1, 2, 4, 8]
    replicas = [] if args.quick else [1, 10]
    jobs = [("width", w, [784, w, w, 10], BATCH * STEPS, 1, False) for w in widths]
    jobs += [("depth", d, [784] + [512] * d + [10], BATCH * STEPS, 1, False) for d in depths]
    jobs += [("replicas", r, [784, 512, 512, 10], None, r, True) for r in replicas]
    ctx = mp.get_context("spawn")
    rows = []
    for kind, value, sizes, n_rows, replicate, whole in jobs:
        row = {"vary": kind, "value": value, "sizes": sizes}
        for library in ("xpmlp", "torch"):
            with ctx.Pool(1) as pool:  # a fresh process per measurement
                seconds, samples = pool.apply(measure, ((library, sizes, n_rows, replicate, whole),))
            epoch_samples = 60000 * replicate
            epoch_s = seconds * epoch_samples / samples
            row[library] = {"epoch_s": epoch_s, "gflops": gemm_flops_per_sample(sizes) * epoch_samples / epoch_s / 1e9,
                            "measured": "whole epoch" if whole else f"{STEPS} steps, scaled to an epoch"}
        row["gemm_gflop_per_epoch"] = gemm_flops_per_sample(sizes) * 60000 * replicate / 1e9
        rows.append(row)
        print(f"{kind}={value:5d}  {row['gemm_gflop_per_epoch']:8.1f} GFLOP  xpmlp {row['xpmlp']['epoch_s']:7.2f} s "
              f"({row['xpmlp']['gflops']:5.1f} GFLOP/s)  torch {row['torch']['epoch_s']:7.2f} s "
              f"({row['torch']['gflops']:5.1f} GFLOP/s)", flush=True)
    report = {"machine": describe("numpy", "torch", "xpmlp"), "batch_size": BATCH, "rows": rows, "quick": args.quick}
    lines = ["| vary | value | layers | GEMM GFLOP/epoch | xpmlp s/epoch | xpmlp GFLOP/s | torch s/epoch | "
             "torch GFLOP/s | xpmlp / torch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['vary']} | {r['value']} | {'-'.join(map(str, r['sizes']))} | {r['gemm_gflop_per_epoch']:.1f} | "
                     f"{r['xpmlp']['epoch_s']:.2f} | {r['xpmlp']['gflops']:.0f} | {r['torch']['epoch_s']:.2f} | "
                     f"{r['torch']['gflops']:.0f} | {r['xpmlp']['epoch_s'] / r['torch']['epoch_s']:.2f} |")
    m = report["machine"]
    table = "\n".join(lines) + f"\n\nMachine: {m['cpu']}, {m['cores']} cores; versions {m['versions']}.\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling_cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "scaling_cpu.md").write_text("# CPU scaling (Adam, batch 128, float32)\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
