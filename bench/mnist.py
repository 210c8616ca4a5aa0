"""MNIST training speed of xpmlp beside PyTorch and scikit-learn, measured the same way in one run.

Every contender trains the same MLP (ReLU, softmax cross-entropy, Adam lr=1e-3, float32, no
weight decay, a fresh shuffle per epoch) at the same batch size, in its own worker process; the
workers take turns epoch by epoch (the order rotating each round), so a slow phase of the
machine hits all of them alike. The first epoch is a warm-up (its time, which holds any
compilation or graph capture, is reported apart); the epoch time is the median of the others.
After every epoch the test accuracy is measured (not timed), giving the accuracy after the last
epoch and the training time to reach 98%. The FLOP floor is the epoch's matrix-product FLOPs
(forward, and the weight and hidden-input gradients) over the float32 matmul rate measured on
the same device in the same run.

    python bench/mnist.py                      # CPU contenders (and GPU ones when a GPU is usable)
    python bench/mnist.py --device cuda        # GPU contenders only
    python bench/mnist.py --quick --out /tmp/b # harness check: a few hundred batches, CPU only

Results: bench/results/mnist_<device>.json, .md and .png (epoch time against batch size).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from contenders import CONTENDERS, worker  # noqa: E402
from machine import describe  # noqa: E402

ARCHS = {"784-512-512-10": [784, 512, 512, 10], "784-128-64-10": [784, 128, 64, 10]}
BASELINE = {"cpu": "torch-eager-cpu", "cuda": "torch-eager-cuda"}


def gemm_flops_per_sample(sizes) -> int:
    """Forward (x W), weight gradient (x^T g) and input gradient (g W^T, not for the first layer)."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * (3 * sum(macs) - macs[0])


def matmul_rate(device: str, tf32: bool, n: int = 2048, reps: int = 10) -> dict:
    """Best float32 (n x n) @ (n x n) rate in GFLOP/s of the libraries present on the device."""
    rates = {}
    if device == "cpu":
        import numpy as np

        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        a @ a
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        rates["numpy"] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
    try:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        n_dev = 8192 if device == "cuda" else n
        a = torch.rand(n_dev, n_dev, device=device)
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        rates["torch"] = 2 * n_dev**3 * reps / (time.perf_counter() - start) / 1e9
    except Exception:  # torch absent or no GPU: the other library's rate stands
        pass
    return {"gflops": max(rates.values()) if rates else None, "by_library": rates}


class Worker:
    def __init__(self, ctx, name, data_args, sizes, batch_size, seed, tf32):
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker, args=(child, name, data_args, sizes, batch_size, seed, tf32),
                                   daemon=True)
        self.process.start()
        status, detail = self.conn.recv()
        self.error = detail if status == "error" else None

    def call(self, command):
        self.conn.send(command)
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def close(self):
        if self.process.is_alive():
            if self.error is None:
                self.conn.send("quit")
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()


def run_config(ctx, names, arch, batch_size, epochs, data_args, seed, target, tf32, log):
    sizes = ARCHS[arch]
    workers, results = [], {}
    for name in names:
        w = Worker(ctx, name, data_args, sizes, batch_size, seed, tf32)
        if w.error:
            results[name] = {"skipped": w.error}
            log(f"  {name}: skipped ({w.error})")
        else:
            workers.append(w)
            results[name] = {"epoch_s": [], "accuracy": []}
    for round_ in range(epochs):
        shift = round_ % max(len(workers), 1)
        for w in workers[shift:] + workers[:shift]:
            r = results[w.name]
            if "failed" in r:
                continue
            try:
                r["epoch_s"].append(w.call("epoch"))
                r["accuracy"].append(w.call("accuracy"))
            except RuntimeError as e:
                r["failed"] = str(e)
                log(f"  {w.name}: failed ({e})")
    n_train = data_args[0] or 60000
    for w in workers:
        r = results[w.name]
        if "failed" not in r:
            r["memory"] = w.call("peak_memory")
            timed = r["epoch_s"][1:] or r["epoch_s"]
            r["first_epoch_s"] = r["epoch_s"][0]
            r["ms_per_epoch"] = 1e3 * statistics.median(timed)
            r["samples_per_s"] = n_train / statistics.median(timed)
            r["final_accuracy"] = r["accuracy"][-1]
            elapsed, r["time_to_target_s"] = 0.0, None
            for sec, acc in zip(r["epoch_s"], r["accuracy"]):
                elapsed += sec
                if acc >= target:
                    r["time_to_target_s"] = elapsed
                    break
        w.close()
    return results


def markdown(report) -> str:
    out = []
    for device, block in report["devices"].items():
        rate = block["matmul"]["gflops"]
        out.append(f"## {device.upper()}: float32 matmul rate {rate:.0f} GFLOP/s (best of {block['matmul']['by_library']})"
                   if rate else f"## {device.upper()}")
        out.append("")
        out.append("| arch | batch | contender | ms/epoch | samples/s | vs torch eager | first epoch s | "
                   f"test acc after {report['settings']['epochs']} | time to {report['settings']['target']:.0%} s | "
                   "FLOP-floor fraction | peak memory MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for cfg in block["configs"]:
            for name, r in cfg["results"].items():
                head = f"| {cfg['arch']} | {cfg['batch_size']} | {name} |"
                if "ms_per_epoch" not in r:
                    out.append(head + f" {r.get('skipped') or r.get('failed')} |||||||")
                    continue
                ratio = r.get("ratio_to_torch_eager")
                ttt = r["time_to_target_s"]
                mem = r["memory"]
                gpu_mem = mem.get("gpu_max_allocated", mem.get("gpu_pool_total"))
                mem_s = f"{mem['host_peak_rss'] / 2**20:.0f} host" + (f", {gpu_mem / 2**20:.0f} GPU" if gpu_mem else "")
                out.append(head + f" {r['ms_per_epoch']:.0f} | {r['samples_per_s']:.0f} | "
                           f"{'%.2f' % ratio if ratio else '-'} | {r['first_epoch_s']:.2f} | {r['final_accuracy']:.4f} | "
                           f"{'%.1f' % ttt if ttt else 'not reached'} | "
                           f"{'%.2f' % r['floor_fraction'] if r.get('floor_fraction') else '-'} | {mem_s} |")
        out.append("")
    m = report["machine"]
    out.append(f"Machine: {m['cpu']}, {m['cores']} cores; GPU: {m['gpu'] or 'none'}; versions: {m['versions']}. "
               f"Settings: {report['settings']}.")
    return "\n".join(out) + "\n"


def plot(report, path):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    archs = report["settings"]["archs"]
    fig = Figure(figsize=(5.5 * len(archs), 4))
    FigureCanvasAgg(fig)
    for i, arch in enumerate(archs):
        ax = fig.add_subplot(1, len(archs), i + 1)
        series = {}
        for device, block in report["devices"].items():
            for cfg in block["configs"]:
                if cfg["arch"] != arch:
                    continue
                for name, r in cfg["results"].items():
                    if "ms_per_epoch" in r:
                        series.setdefault(name, []).append((cfg["batch_size"], r["ms_per_epoch"]))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per epoch (median)")
        ax.set_title(f"MNIST {arch}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU only, 784-128-64-10, 3 epochs of 100 batches")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--arch", nargs="*", choices=list(ARCHS), default=list(ARCHS))
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[64, 128, 512, 1024])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per contender, the first a warm-up")
    parser.add_argument("--contenders", nargs="*", default=None, help=f"subset of {list(CONTENDERS)}")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (off by default)")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.device, args.arch, args.batch_sizes, args.epochs = "cpu", ["784-128-64-10"], [128], 3
        data_args = (12800, 2000)
    else:
        data_args = (None, None)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (one warm-up, one timed)")

    from machine import gpu

    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    if "cuda" in devices and gpu() is None:
        devices.remove("cuda")
        print("no NVIDIA GPU found: GPU contenders skipped")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    ctx = mp.get_context("spawn")
    report = {"machine": describe("numpy", "torch", "sklearn", "cupy", "xpmlp"), "devices": {},
              "settings": {"archs": args.arch, "batch_sizes": args.batch_sizes, "epochs": args.epochs,
                           "warmup_epochs": 1, "optimizer": "Adam lr=1e-3", "dtype": "float32",
                           "tf32": args.tf32, "target": args.target, "seed": args.seed,
                           "n_train": data_args[0] or 60000, "n_test": data_args[1] or 10000, "quick": args.quick}}
    for device in devices:
        names = [n for n, (_, kind, _) in CONTENDERS.items() if kind == device
                 and (args.contenders is None or n in args.contenders)]
        if args.quick:
            names = [n for n in names if "compile" not in n]
        rate = matmul_rate(device, args.tf32)
        log(f"{device}: float32 matmul {rate['gflops']:.0f} GFLOP/s {rate['by_library']}" if rate["gflops"] else device)
        block = report["devices"][device] = {"matmul": rate, "configs": []}
        for arch in args.arch:
            for bs in args.batch_sizes:
                log(f"{arch} batch {bs}: {', '.join(names)}")
                results = run_config(ctx, names, arch, bs, args.epochs, data_args, args.seed, args.target,
                                     args.tf32, log)
                base = results.get(BASELINE[device], {}).get("ms_per_epoch")
                floor_s = (gemm_flops_per_sample(ARCHS[arch]) * report["settings"]["n_train"] / (rate["gflops"] * 1e9)
                           if rate["gflops"] else None)
                for name, r in results.items():
                    if "ms_per_epoch" in r:
                        r["ratio_to_torch_eager"] = r["ms_per_epoch"] / base if base else None
                        r["floor_fraction"] = floor_s / (r["ms_per_epoch"] / 1e3) if floor_s else None
                        log(f"  {name:24s} {r['ms_per_epoch']:8.0f} ms/epoch  acc {r['final_accuracy']:.4f}  "
                            f"ratio {r['ratio_to_torch_eager'] or float('nan'):.2f}")
                block["configs"].append({"arch": arch, "batch_size": bs, "floor_s": floor_s, "results": results})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "_".join(report["devices"]) or "none"
    (out / f"mnist_{tag}.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (out / f"mnist_{tag}.md").write_text(f"# MNIST training speed ({tag})\n\n" + table)
    plotted = plot(report, out / f"mnist_{tag}.png")
    print(table)
    print(f"wrote {out}/mnist_{tag}.json, .md{', .png' if plotted else ''}")
    return report


if __name__ == "__main__":
    main()
