"""Time to 98% MNIST test accuracy, over seeds: xpmlp and PyTorch eager, each with either's initialisation.

bench/mnist.py measures speed with one seed; whether a run crosses 98% within a few epochs is
decided near the plateau, where one seed's curve moves by a few tenths of a point from epoch to
epoch. This benchmark trains the same MLP with several seeds and records the test accuracy after
every epoch, for these configs (all: MNIST 784-512-512-10 ReLU, softmax cross-entropy, Adam lr=1e-3
betas (0.9, 0.999), float32, a fresh shuffle per epoch, pixels / 255 from bench/data.py):

* ``xpmlp-default``: ``xpmlp.MLP(sizes, seed=seed)`` as it comes (He-uniform hidden layers,
  Glorot-uniform output layer, zero biases), ``xpmlp.Adam(lr=1e-3)``, fit's own shuffle.
* ``torch-default``: ``torch.manual_seed(seed)``, ``nn.Linear``'s default initialisation,
  ``torch.optim.Adam``, ``torch.randperm`` shuffles (a generator seeded with ``seed``).
* ``xpmlp-torch-init``: xpmlp with ``nn.Linear``'s initialisation, W and b ~ U(-1/sqrt(fan_in),
  1/sqrt(fan_in)), drawn with NumPy (``default_rng(10_000 + seed)``) and set with ``set_weights``.
* ``torch-xpmlp-init``: the torch loop starting from xpmlp-default's initial weights for the
  same seed (``model.get_weights()``, in ``parameters()`` order: W (in, out) then b per Dense).
* ``xpmlp-adam-eps1e-7`` (not run by default): xpmlp-default with Adam eps=1e-7 instead of 1e-8.

Every contender runs in this process, one after another. For each run the JSON keeps the test
accuracy and mean training loss of every epoch, the initial pre-activation standard deviation of
each layer (on the first 2000 training rows) and the initial logits of the first 4 test rows
(so that two runs said to start from the same weights can be checked to). The markdown gives, per
config and batch size, how many runs reached the target within the epochs, the mean epoch at
which they first did (a miss counted as epochs + 1), the seed-mean accuracy after every epoch and
the mean best accuracy, then a paragraph of what the numbers show.

    python bench/seeds.py                                  # 4 configs x batch 128, 64 x seeds 0 1 2, 6 epochs
    python bench/seeds.py --batch-sizes 128 --seeds 0 1 2 3 4 --configs xpmlp-default torch-default
    python bench/seeds.py --quick --out /tmp/s            # harness check: 2 epochs of 512 rows, seed 0
    python bench/seeds.py --report-only                   # rewrite the markdown from the JSON

Results: bench/results/time_to_98.json and .md, rewritten after every run ("partial": true until
the end). A run whose (config, batch size, seed) is already in the JSON is skipped, so a stopped
study resumes where it was; the JSON's epochs and data sizes must then match the command's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from contenders import torch_mlp  # noqa: E402
from data import mnist_float32  # noqa: E402
from machine import describe  # noqa: E402

import xpmlp  # noqa: E402

SIZES = [784, 512, 512, 10]
LR = 1e-3
NAME = "time_to_98"
CONFIGS = {  # name: (library, what it is)
    "xpmlp-default": ("xpmlp", "xpmlp's default init (He-uniform hidden, Glorot-uniform output, zero biases)"),
    "torch-default": ("torch", "PyTorch eager, nn.Linear's default init"),
    "xpmlp-torch-init": ("xpmlp", "xpmlp with nn.Linear's init (W and b ~ U(+-1/sqrt(fan_in)))"),
    "torch-xpmlp-init": ("torch", "PyTorch eager from xpmlp-default's initial weights"),
    "xpmlp-adam-eps1e-7": ("xpmlp", "xpmlp-default with Adam eps=1e-7"),
}
DEFAULT_CONFIGS = ["xpmlp-default", "torch-default", "xpmlp-torch-init", "torch-xpmlp-init"]
N_LOGITS = 4  # test rows whose initial logits are recorded


# -- initial weights, in xpmlp's layout: W (in, out), b (out,) per Dense, in parameters() order ---
def torch_like_weights(seed: int, sizes=SIZES) -> list[np.ndarray]:
    """nn.Linear's default: W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn with NumPy."""
    rng = np.random.default_rng(10_000 + seed)
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        k = 1 / math.sqrt(fan_in)
        weights += [rng.uniform(-k, k, (fan_in, fan_out)).astype(np.float32),
                    rng.uniform(-k, k, fan_out).astype(np.float32)]
    return weights


def xpmlp_model(config: str, seed: int, sizes=SIZES):
    """(model, optimizer) of an xpmlp config."""
    model = xpmlp.MLP(sizes, seed=seed, dtype="float32", device="cpu")
    if config == "xpmlp-torch-init":
        model.set_weights(torch_like_weights(seed, sizes))
    return model, xpmlp.Adam(lr=LR, eps=1e-7 if config == "xpmlp-adam-eps1e-7" else 1e-8)


def torch_net(config: str, seed: int, sizes=SIZES):
    """The torch net of a torch config, built after ``torch.manual_seed(seed)``."""
    import torch

    torch.manual_seed(seed)
    net = torch_mlp(sizes)
    if config == "torch-xpmlp-init":
        weights = xpmlp.MLP(sizes, seed=seed, dtype="float32", device="cpu").get_weights()
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for linear, W, b in zip(linears, weights[0::2], weights[1::2]):
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))  # torch keeps (out, in)
                linear.bias.copy_(torch.from_numpy(b))
    return net


def torch_weights(net) -> list[np.ndarray]:
    import torch

    return [a for m in net if isinstance(m, torch.nn.Linear)
            for a in (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())]


def preact_std(weights, X) -> list[float]:
    """Standard deviation of each layer's pre-activation at these weights, on the first 2000 rows of X."""
    h, out = X[:2000].astype(np.float64), []
    for W, b in zip(weights[0::2], weights[1::2]):
        z = h @ W + b
        out.append(round(float(z.std()), 3))
        h = np.maximum(z, 0)
    return out


# -- training -------------------------------------------------------------------------------
def train_xpmlp(config, seed, batch, data, epochs):
    """(accuracies, mean training losses, initial weights, initial logits) of one xpmlp run."""
    (X, y), (Xt, yt) = data
    model, opt = xpmlp_model(config, seed)
    with warnings.catch_warnings():  # "no loss yet, so predict returns logits": logits are what we want
        warnings.simplefilter("ignore", UserWarning)
        w0, logits0 = model.get_weights(), xpmlp.to_numpy(model.predict(Xt[:N_LOGITS]))
    accuracy, loss = [], []
    for _ in range(epochs):  # one epoch per fit: the shuffle rng and the optimiser carry on
        history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=opt, epochs=1, batch_size=batch, verbose=0)
        loss.append(float(history.history["loss"][-1]))
        accuracy.append(float(np.mean(np.argmax(xpmlp.to_numpy(model.predict(Xt)), axis=1) == yt)))
    return accuracy, loss, w0, logits0


def train_torch(config, seed, batch, data, epochs):
    """(accuracies, mean training losses, initial weights, initial logits) of one torch run."""
    import torch

    (X, y), (Xt, yt) = data
    net = torch_net(config, seed)
    Xd, yd, Xtd = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(Xt)
    with torch.no_grad():
        w0, logits0 = torch_weights(net), net(Xtd[:N_LOGITS]).numpy()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    n, accuracy, losses = X.shape[0], [], []
    for _ in range(epochs):
        order, total = torch.randperm(n, generator=generator), 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(Xd[rows]), yd[rows])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / n)
        with torch.no_grad():
            accuracy.append(float(np.mean(net(Xtd).argmax(1).numpy() == yt)))
    return accuracy, losses, w0, logits0


def run(config, seed, batch, data, epochs) -> dict:
    started = time.perf_counter()
    train = train_torch if CONFIGS[config][0] == "torch" else train_xpmlp
    accuracy, loss, w0, logits0 = train(config, seed, batch, data, epochs)
    return {"config": config, "batch": batch, "seed": seed, "epochs": epochs, "accuracy": accuracy, "loss": loss,
            "init_preact_std": preact_std(w0, data[0][0]), "initial_logits": np.asarray(logits0).tolist(),
            "wall_s": round(time.perf_counter() - started, 1),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


# -- summary --------------------------------------------------------------------------------
def first_epoch(accuracy, target) -> int | None:
    """The first epoch (from 1) whose test accuracy is at least the target, or None."""
    return next((i + 1 for i, a in enumerate(accuracy) if a >= target), None)


def summarize(runs, target: float, epochs: int) -> list[dict]:
    """One row per (batch, config), in order of batch size (largest first) then config order."""
    groups = {}
    for r in runs:
        groups.setdefault((r["batch"], r["config"]), []).append(r)
    order = {name: i for i, name in enumerate(CONFIGS)}
    rows = []
    for (batch, config), rs in sorted(groups.items(), key=lambda kv: (-kv[0][0], order.get(kv[0][1], 99))):
        rs.sort(key=lambda r: r["seed"])
        hits = [first_epoch(r["accuracy"], target) for r in rs]
        rows.append({
            "batch": batch, "config": config, "seeds": [r["seed"] for r in rs], "hits": hits,
            "reached": sum(h is not None for h in hits), "runs": len(rs),
            "mean_epoch": statistics.mean(h or epochs + 1 for h in hits),
            "mean_accuracy": [statistics.mean(r["accuracy"][e] for r in rs) for e in range(epochs)],
            "std_accuracy": [statistics.stdev(r["accuracy"][e] for r in rs) if len(rs) > 1 else None
                             for e in range(epochs)],
            "mean_best": statistics.mean(max(r["accuracy"]) for r in rs),
            "mean_loss_epoch1": statistics.mean(r["loss"][0] for r in rs)})
    return rows


def missing(report) -> list[tuple]:
    """(batch, config, seed) of the requested grid that have no run in the report."""
    s, done = report["settings"], {(r["batch"], r["config"], r["seed"]) for r in report["runs"]}
    return [(b, c, seed) for b in s["batch_sizes"] for c in s["configs"] for seed in s["seeds"]
            if (b, c, seed) not in done]


def findings(rows, target: float, epochs: int) -> str:
    """What the numbers show, in sentences: reached counts and the spread across seeds."""
    pct, out = f"{target:.0%}", []
    late = range(epochs // 2, epochs)  # the second half of the epochs: the plateau
    for batch in sorted({r["batch"] for r in rows}, reverse=True):
        rs = [r for r in rows if r["batch"] == batch]
        parts = [f"{r['config']} {r['reached']}/{r['runs']} (mean epoch {r['mean_epoch']:.2f})" for r in rs]
        text = f"At batch {batch}, runs reaching {pct} within {epochs} epochs: " + "; ".join(parts) + "."
        stds = [100 * r["std_accuracy"][e] for r in rs for e in late if r["std_accuracy"][e] is not None]
        gaps = [100 * (max(r["mean_accuracy"][e] for r in rs) - min(r["mean_accuracy"][e] for r in rs)) for e in late]
        if stds and len(rs) > 1:
            text += (f" Over epochs {late.start + 1}-{epochs}, the across-seed standard deviation of one config's "
                     f"test accuracy is {min(stds):.2f}-{max(stds):.2f} points, and the seed-mean accuracies of the "
                     f"configs differ by at most {max(gaps):.2f} points.")
        best = max(rs, key=lambda r: r["mean_accuracy"][0])
        text += (f" After epoch 1 the highest seed-mean accuracy is {best['config']}'s "
                 f"({100 * best['mean_accuracy'][0]:.2f}%).")
        by_name = {r["config"]: r for r in rs}
        pairs = {"xpmlp's init": ("xpmlp-default", "torch-xpmlp-init"),
                 "nn.Linear's init": ("torch-default", "xpmlp-torch-init")}
        if all(name in by_name for pair in pairs.values() for name in pair):  # both libraries with both inits
            parts = []
            for init, pair in pairs.items():
                a, b = (by_name[name] for name in pair)
                parts.append(f"{init} ({pair[0]}, {pair[1]}): epoch-1 accuracy {100 * a['mean_accuracy'][0]:.2f}% "
                             f"and {100 * b['mean_accuracy'][0]:.2f}%, epoch-1 training loss "
                             f"{a['mean_loss_epoch1']:.3f} and {b['mean_loss_epoch1']:.3f}, reaching {pct} in "
                             f"{a['reached'] + b['reached']}/{a['runs'] + b['runs']} runs")
            text += " By initialisation, whichever library trains: " + "; ".join(parts) + "."
        out.append(text)
    return "\n\n".join(out)


def markdown(report) -> str:
    s, runs = report["settings"], report["runs"]
    target, epochs, pct = s["target"], s["epochs"], f"{s['target']:.0%}"
    out = [f"# Time to {pct} MNIST test accuracy over seeds: xpmlp and PyTorch eager", ""]
    if report.get("note"):
        out += [report["note"], ""]
    out += [f"MNIST {'-'.join(map(str, SIZES))} ReLU, Adam lr={LR:g}, float32, a fresh shuffle per epoch, "
            f"{s['n_train']} training / {s['n_test']} test rows, {epochs} epochs; test accuracy after every epoch "
            "(bench/seeds.py says how each config is built).", ""]
    out += [f"- {name}: {CONFIGS.get(name, ('', '?'))[1]}" for name in dict.fromkeys(r["config"] for r in runs)]
    out.append("")
    rows = summarize(runs, target, epochs)
    if rows:
        out += [f"| batch | config | runs reaching {pct} | epoch reached, per seed | mean epoch to {pct} "
                f"(a miss counts as {epochs + 1}) | seed-mean test accuracy after epoch 1..{epochs}, % | "
                "mean best, % | mean epoch-1 training loss |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            per_seed = ", ".join(f"{seed}: {h or '-'}" for seed, h in zip(r["seeds"], r["hits"]))
            out.append(f"| {r['batch']} | {r['config']} | {r['reached']}/{r['runs']} | {per_seed} | "
                       f"{r['mean_epoch']:.2f} | {' '.join(f'{100 * a:.2f}' for a in r['mean_accuracy'])} | "
                       f"{100 * r['mean_best']:.2f} | {r['mean_loss_epoch1']:.3f} |")
        out += ["", "## What the numbers show", "", findings(rows, target, epochs), ""]
        out += ["## Every run", "", f"| batch | config | seed | test accuracy after epoch 1..{epochs}, % | "
                f"first epoch >= {pct} | initial pre-activation std per layer |", "|---|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: (-r["batch"], list(CONFIGS).index(r["config"]), r["seed"])):
            out.append(f"| {r['batch']} | {r['config']} | {r['seed']} | "
                       f"{' '.join(f'{100 * a:.2f}' for a in r['accuracy'])} | "
                       f"{first_epoch(r['accuracy'], target) or '-'} | {r['init_preact_std']} |")
        out.append("")
    gaps = missing(report)
    if gaps:
        out += [f"Not run ({len(gaps)} of the requested grid): "
                + "; ".join(f"batch {b} {c} seed {seed}" for b, c, seed in gaps) + ".", ""]
    for name, reason in s.get("left_out", {}).items():
        out.append(f"- {name} left out: {reason}")
    if report.get("partial"):
        out += ["**Partial results: the run did not finish.**", ""]
    m = report["machine"]
    out.append(f"Machine: {m['cpu']}, {m['cores']} cores; versions: {m['versions']}.")
    return "\n".join(out) + "\n"


def write(report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{NAME}.md").write_text(markdown(report))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 64])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help=f"default: {' '.join(DEFAULT_CONFIGS)}")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--quick", action="store_true",
                        help="harness check: 2 epochs of 512 training / 500 test rows, seed 0, batch 128")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON; train nothing")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    previous = json.loads((out / f"{NAME}.json").read_text()) if (out / f"{NAME}.json").exists() else None
    if args.report_only:
        if previous is None:
            parser.error(f"--report-only: no {out / NAME}.json")
        write(previous, out)
        print(markdown(previous))
        return previous

    n_train, n_test = (512, 500) if args.quick else (None, None)
    if args.quick:
        args.seeds, args.batch_sizes, args.epochs = [0], [128], 2
    configs, left_out = list(args.configs or DEFAULT_CONFIGS), {}
    try:
        import torch  # noqa: F401
    except ImportError:
        left_out = {c: "PyTorch is not installed" for c in configs if CONFIGS[c][0] == "torch"}
        configs = [c for c in configs if c not in left_out]
    settings = {"configs": configs, "batch_sizes": args.batch_sizes, "seeds": args.seeds, "epochs": args.epochs,
                "target": args.target, "n_train": None, "n_test": None, "lr": LR, "sizes": SIZES,
                "dtype": "float32", "quick": args.quick, "left_out": left_out}

    def check(keys):  # a resumed study keeps the settings that make its runs comparable
        changed = [k for k in keys if previous is not None and previous["settings"].get(k) != settings[k]]
        if changed:
            parser.error(f"{out / NAME}.json holds runs with other {', '.join(changed)} "
                         f"({ {k: previous['settings'].get(k) for k in changed} }); use another --out or remove it")

    check(("epochs", "lr", "sizes"))
    data = mnist_float32(n_train, n_test)
    settings["n_train"], settings["n_test"] = len(data[0][0]), len(data[1][0])
    check(("n_train", "n_test"))
    runs = previous["runs"] if previous is not None else []
    report = {"machine": describe("numpy", "torch", "xpmlp"), "settings": settings, "runs": runs,
              "note": previous.get("note") if previous else None, "partial": True}
    done = {(r["batch"], r["config"], r["seed"]) for r in runs}
    for batch in args.batch_sizes:
        for config in configs:
            for seed in args.seeds:
                if (batch, config, seed) in done:
                    print(f"batch {batch} {config} seed {seed}: already in {out / NAME}.json, skipped", flush=True)
                    continue
                r = run(config, seed, batch, data, args.epochs)
                runs.append(r)
                print(f"batch {batch} {config} seed {seed}: accuracy {' '.join(f'{a:.4f}' for a in r['accuracy'])}"
                      f"  ({r['wall_s']} s)", flush=True)
                write(report, out)  # after every run: a stopped study keeps what it measured
    report["partial"] = False
    write(report, out)
    print(markdown(report))
    print(f"wrote {out / NAME}.json, {out / NAME}.md")
    return report


if __name__ == "__main__":
    main()
