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

Memory compares like with like (bench/contenders.py says how): on a GPU the peak bytes in use in
the library's device allocator during one extra, untimed epoch (CuPy: a MemoryHook on the
default pool; torch: max_memory_allocated); on the CPU the worker process's peak RSS.
A contender that fails to build or to run is reported as an error with its message, in the
JSON ("error", "error_stage") and in the table; it is never dropped.

    python bench/mnist.py                      # CPU contenders (and GPU ones when a GPU is usable)
    python bench/mnist.py --device cuda        # GPU contenders only
    python bench/mnist.py --quick --out /tmp/b # harness check: a few hundred batches, CPU only
    python bench/mnist.py --device cuda --arch 784-512-512-10 --batch-sizes 128 1024 --epochs 4 \
        --contenders xpmlp-cupy torch-eager-cuda torch-eager-fused-cuda torch-compile-cuda

Results: bench/results/mnist_<device>.json, .md and .png (epoch time against batch size). The
JSON and markdown are rewritten after every configuration ("partial": true until the end), so a
run that is stopped keeps what it measured.
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
    """Best float32 (n x n) @ (n x n) rate in GFLOP/s of the libraries present on the device.

    A library that is missing or fails is named in "errors" (the floor then rests on the others).
    """
    rates, errors = {}, {}
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
    except Exception as e:  # torch absent or no GPU: the other library's rate stands, the reason is kept
        errors["torch"] = f"{type(e).__name__}: {e}"
    if device == "cuda":
        try:
            import cupy

            a = cupy.random.default_rng(0).random((8192, 8192), dtype=cupy.float32)
            a @ a
            cupy.cuda.get_current_stream().synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                a @ a
            cupy.cuda.get_current_stream().synchronize()
            rates["cupy"] = 2 * 8192**3 * reps / (time.perf_counter() - start) / 1e9
            del a
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception as e:
            errors["cupy"] = f"{type(e).__name__}: {e}"
    return {"gflops": max(rates.values()) if rates else None, "by_library": rates, "errors": errors}


class WorkerError(RuntimeError):
    """A contender's failure: its own exception message, a crash of its process, or a timeout."""


class Worker:
    """One contender in its own process. Building starts at once; ``ready()`` waits for it."""

    def __init__(self, ctx, name, data_args, sizes, batch_size, seed, tf32, fail=None, timeout=None):
        self.name, self.timeout = name, timeout
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker, args=(child, name, data_args, sizes, batch_size, seed, tf32, fail),
                                   daemon=True)
        self.process.start()
        child.close()
        self.alive = True

    def _receive(self, what):
        try:
            if not self.conn.poll(self.timeout):
                self.kill()
                raise WorkerError(f"TimeoutError: no answer to {what!r} within {self.timeout:g} s; worker killed")
            status, value = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            self.alive = False
            raise WorkerError(f"worker process died during {what!r} (exit code {self.process.exitcode})") from None
        if status == "error":
            self.alive = False if what == "build" else self.alive
            raise WorkerError(value)
        return value

    def ready(self):
        self._receive("build")

    def call(self, command):
        try:
            self.conn.send(command)
        except (BrokenPipeError, OSError):
            self.alive = False
            raise WorkerError(f"worker process died before {command!r} (exit code {self.process.exitcode})") from None
        return self._receive(command)

    def kill(self):
        self.alive = False
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)

    def close(self):
        if self.process.is_alive():
            if self.alive:
                try:
                    self.conn.send("quit")
                except OSError:
                    pass
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.kill()


def run_config(ctx, names, arch, batch_size, epochs, data_args, seed, target, tf32, log, fail=None, timeout=None):
    """Train every contender ``epochs`` epochs, taking turns; then one untimed epoch for memory.

    Returns {name: result}. A contender that fails at any stage gets "error" (its message) and
    "error_stage"; what it measured before the failure is kept.
    """
    sizes, fail = ARCHS[arch], fail or {}
    results = {name: {"epoch_s": [], "accuracy": []} for name in names}
    started = [Worker(ctx, name, data_args, sizes, batch_size, seed, tf32, fail.get(name), timeout)
               for name in names]  # all start building at once; each is waited for below

    def failed(w, stage, e):
        results[w.name].update(error=str(e), error_stage=stage)
        log(f"  {w.name}: ERROR in {stage}: {e}")
        w.kill()

    workers = []
    for w in started:
        try:
            w.ready()
            workers.append(w)
        except WorkerError as e:
            failed(w, "build", e)
    for round_ in range(epochs):
        shift = round_ % max(len(workers), 1)
        for w in workers[shift:] + workers[:shift]:
            r = results[w.name]
            if "error" in r:
                continue
            try:
                stage = f"epoch {len(r['epoch_s']) + 1}"
                r["epoch_s"].append(w.call("epoch"))
                stage = f"accuracy after epoch {len(r['epoch_s'])}"
                r["accuracy"].append(w.call("accuracy"))
            except WorkerError as e:
                failed(w, stage, e)
    n_train = data_args[0] or 60000
    for w in workers:
        r = results[w.name]
        if "error" not in r:
            for command in ("memory", "info"):
                try:
                    r[command] = w.call(command)
                except WorkerError as e:
                    failed(w, command, e)
                    break
        if len(r["accuracy"]) == epochs:  # every timed epoch ran: the timings stand, even if memory failed
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


MEMORY_COLUMN = {"cpu": "peak RSS of the worker process, MB",
                 "cuda": "peak GPU memory in use (device allocator), MB"}
MEMORY_NOTE = {
    "cpu": "Memory: each contender's worker process's peak resident set size (VmHWM) over its life: "
           "library imports, MNIST in float32, training and evaluation.",
    "cuda": "Memory: peak bytes handed out to live arrays by the library's device allocator during one extra, "
            "untimed epoch after the timed ones - CuPy: a cupy.cuda.MemoryHook following every malloc/free of "
            "the default memory pool; torch: torch.cuda.max_memory_allocated after reset_peak_memory_stats. "
            "Both include the resident MNIST arrays (about 220 MB for all 70,000 images), the weights, the optimiser state and the "
            "step's temporaries; neither counts the CUDA context or cached free blocks.",
}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report) -> str:
    out = []
    for device, reason in report.get("devices_not_run", {}).items():
        out += [f"## {device.upper()}: not run", "", f"{reason}", ""]
    for name, reason in report["settings"].get("left_out", {}).items():
        out.append(f"- {name} left out: {reason}")
    if report["settings"].get("left_out"):
        out.append("")
    for device, block in report["devices"].items():
        rate = block["matmul"]["gflops"]
        out.append(f"## {device.upper()}: float32 matmul rate {rate:.0f} GFLOP/s (best of {block['matmul']['by_library']})"
                   if rate else f"## {device.upper()}: float32 matmul rate not measured")
        if block["matmul"].get("errors"):
            out.append(f"(matmul rate errors: {_cell(block['matmul']['errors'])})")
        out.append("")
        out.append("| arch | batch | contender | ms/epoch | samples/s | vs torch eager | first epoch s | "
                   f"test acc after {report['settings']['epochs']} | time to {report['settings']['target']:.0%} s | "
                   f"FLOP-floor fraction | {MEMORY_COLUMN.get(device, 'peak memory, MB')} |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for cfg in block["configs"]:
            for name, r in cfg["results"].items():
                head = f"| {cfg['arch']} | {cfg['batch_size']} | {name} |"
                if "ms_per_epoch" not in r:
                    out.append(head + f" **ERROR** in {r.get('error_stage')}: {_cell(r.get('error'))} | | | | | | | |")
                    continue
                ratio = r.get("ratio_to_torch_eager")
                ttt = r["time_to_target_s"]
                mem = r.get("memory")
                mem_s = f"{mem['bytes'] / 2**20:.0f}" if mem else "-"
                if "error" in r:
                    mem_s += f" **ERROR** in {r['error_stage']}: {_cell(r['error'])}"
                out.append(head + f" {r['ms_per_epoch']:.0f} | {r['samples_per_s']:.0f} | "
                           f"{'%.2f' % ratio if ratio else '-'} | {r['first_epoch_s']:.2f} | {r['final_accuracy']:.4f} | "
                           f"{'%.1f' % ttt if ttt else 'not reached'} | "
                           f"{'%.2f' % r['floor_fraction'] if r.get('floor_fraction') else '-'} | {mem_s} |")
        out.append("")
        out.append(MEMORY_NOTE.get(device, ""))
        out.append("")
    errors = [(device, cfg["arch"], cfg["batch_size"], name, r) for device, block in report["devices"].items()
              for cfg in block["configs"] for name, r in cfg["results"].items() if "error" in r]
    if errors:
        out.append(f"**{len(errors)} contender error(s):**")
        out.append("")
        out += [f"- {device} {arch} batch {bs} {name}, in {r['error_stage']}: {_cell(r['error'])}"
                for device, arch, bs, name, r in errors]
        out.append("")
    warned = [(cfg["arch"], cfg["batch_size"], name, w) for block in report["devices"].values()
              for cfg in block["configs"] for name, r in cfg["results"].items()
              for w in r.get("info", {}).get("warnings", [])]
    if warned:
        out.append("Warnings in the workers:")
        out.append("")
        out += [f"- {arch} batch {bs} {name}: {_cell(w)}" for arch, bs, name, w in warned]
        out.append("")
    executors = {name: r["info"]["numpy_update"] for block in report["devices"].values() for cfg in block["configs"]
                 for name, r in cfg["results"].items() if "numpy_update" in r.get("info", {})}
    if executors:
        out.append("xpmlp's optimiser update on NumPy: " + "; ".join(f"{n}: {e}" for n, e in executors.items()) + ".")
        out.append("")
    if report.get("partial"):
        out.append("**Partial results: the run did not finish.**")
        out.append("")
    m = report["machine"]
    out.append(f"Machine: {m['cpu']}, {m['cores']} cores; GPU: {m['gpu'] or 'none'}; versions: {m['versions']}. "
               f"Settings: { {k: v for k, v in report['settings'].items() if k != 'memory'} }.")
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


def write(report, out: Path, final: bool, plot_png: bool = True) -> list[str]:
    """Write mnist_<devices>.json and .md (and .png when final); returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    report["partial"] = not final
    tag = "_".join(report["devices"]) or "none"
    (out / f"mnist_{tag}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"mnist_{tag}.md").write_text(f"# MNIST training speed ({tag})\n\n" + markdown(report))
    written = [f"mnist_{tag}.json", f"mnist_{tag}.md"]
    if final and plot_png and plot(report, out / f"mnist_{tag}.png"):
        written.append(f"mnist_{tag}.png")
    return written


def _fail_spec(text: str) -> tuple[str, str]:
    name, _, stage = text.partition(":")
    if name not in CONTENDERS or stage not in ("", "build", "epoch"):
        raise argparse.ArgumentTypeError(f"expected NAME[:build|epoch] with NAME in {list(CONTENDERS)}, got {text!r}")
    return name, stage or "build"


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
    parser.add_argument("--call-timeout", type=float, default=None, metavar="S",
                        help="seconds a contender may take to build or to answer one command (an epoch, say) "
                             "before it is killed and reported as an error (default: no limit)")
    parser.add_argument("--no-plot", action="store_true", help="write no .png")
    parser.add_argument("--out", default=str(HERE / "results"))
    # testing hook (tests/test_bench.py): make a contender fail to build, or fail in its first epoch
    parser.add_argument("--fail-contender", nargs="*", type=_fail_spec, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    left_out = {}
    if args.quick:
        args.device, args.arch, args.batch_sizes, args.epochs = "cpu", ["784-128-64-10"], [128], 3
        data_args = (12800, 2000)
    else:
        data_args = (None, None)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (one warm-up, one timed)")
    unknown = sorted(set(args.contenders or []) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")

    from machine import gpu

    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    not_run = {}
    if "cuda" in devices and gpu() is None:
        if args.device == "cuda":
            parser.exit(2, "error: --device cuda, but no NVIDIA GPU found (nvidia-smi lists none)\n")
        devices.remove("cuda")
        not_run["cuda"] = "no NVIDIA GPU found (nvidia-smi lists none): the GPU contenders did not run"
        print(not_run["cuda"])
    if args.contenders is not None:
        elsewhere = [n for n in args.contenders if CONTENDERS[n][1] not in devices]
        if elsewhere:
            parser.error(f"contenders {elsewhere} do not run on {devices}")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    ctx = mp.get_context("spawn")
    report = {"machine": describe("numpy", "torch", "sklearn", "cupy", "numba", "xpmlp"), "devices": {},
              "devices_not_run": not_run,
              "settings": {"archs": args.arch, "batch_sizes": args.batch_sizes, "epochs": args.epochs,
                           "warmup_epochs": 1, "optimizer": "Adam lr=1e-3", "dtype": "float32",
                           "tf32": args.tf32, "target": args.target, "seed": args.seed,
                           "n_train": data_args[0] or 60000, "n_test": data_args[1] or 10000, "quick": args.quick,
                           "memory": {d: MEMORY_NOTE[d] for d in devices}, "left_out": left_out,
                           "call_timeout_s": args.call_timeout}}
    if args.fail_contender:
        report["settings"]["injected_failures"] = dict(args.fail_contender)
    out = Path(args.out)
    for device in devices:
        names = [n for n, (_, kind, _) in CONTENDERS.items() if kind == device
                 and (args.contenders is None or n in args.contenders)]
        if args.quick:
            left_out.update({n: "torch.compile is left out of --quick runs" for n in names if "compile" in n})
            names = [n for n in names if n not in left_out]
        rate = matmul_rate(device, args.tf32)
        log(f"{device}: float32 matmul {rate['gflops']:.0f} GFLOP/s {rate['by_library']}" if rate["gflops"] else
            f"{device}: float32 matmul rate not measured {rate['errors']}")
        block = report["devices"][device] = {"matmul": rate, "configs": []}
        for arch in args.arch:
            for bs in args.batch_sizes:
                log(f"{arch} batch {bs}: {', '.join(names)}")
                results = run_config(ctx, names, arch, bs, args.epochs, data_args, args.seed, args.target,
                                     args.tf32, log, dict(args.fail_contender), args.call_timeout)
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
                write(report, out, final=False)
    written = write(report, out, final=True, plot_png=not args.no_plot)
    print(markdown(report))
    errors = sum("error" in r for block in report["devices"].values() for cfg in block["configs"]
                 for r in cfg["results"].values())
    if errors:
        print(f"{errors} contender error(s): see the table above")
    print(f"wrote {', '.join(str(out / name) for name in written)}")
    return report


if __name__ == "__main__":
    main()
