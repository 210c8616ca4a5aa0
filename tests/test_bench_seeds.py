"""bench/seeds.py (time to 98% over seeds): the summary's arithmetic by hand, and a --quick run that
writes JSON and markdown from what it trained, resumes without retraining, and starts the
torch-with-xpmlp-init run from exactly xpmlp's initial weights."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def seeds():
    spec = importlib.util.spec_from_file_location("bench_seeds", BENCH / "seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out, *args):
    done = subprocess.run([sys.executable, str(BENCH / "seeds.py"), "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _runs(config, batch, accs, seed0=0):
    return [{"config": config, "batch": batch, "seed": seed0 + i, "accuracy": a, "loss": [0.3 + i, 0.1]}
            for i, a in enumerate(accs)]


def test_summary_counts_a_miss_as_epochs_plus_one(seeds):
    runs = (_runs("xpmlp-default", 128, [[0.97, 0.981, 0.975], [0.96, 0.97, 0.979], [0.98, 0.99, 0.99]])
            + _runs("torch-default", 128, [[0.95, 0.96, 0.982]]) + _runs("xpmlp-default", 64, [[0.5, 0.6, 0.7]]))
    rows = seeds.summarize(runs, target=0.98, epochs=3)
    assert [(r["batch"], r["config"]) for r in rows] == [(128, "xpmlp-default"), (128, "torch-default"),
                                                        (64, "xpmlp-default")]
    xp = rows[0]
    assert xp["hits"] == [2, None, 1] and xp["reached"] == 2 and xp["runs"] == 3
    assert xp["mean_epoch"] == pytest.approx((2 + 4 + 1) / 3)  # the miss counts as 3 + 1
    assert xp["mean_accuracy"] == pytest.approx([(0.97 + 0.96 + 0.98) / 3, (0.981 + 0.97 + 0.99) / 3,
                                                 (0.975 + 0.979 + 0.99) / 3])
    assert xp["std_accuracy"][0] == pytest.approx(0.01)
    assert xp["mean_best"] == pytest.approx((0.981 + 0.979 + 0.99) / 3)
    assert xp["mean_loss_epoch1"] == pytest.approx(1.3)
    assert rows[1]["hits"] == [3] and rows[1]["std_accuracy"] == [None] * 3
    assert rows[2]["reached"] == 0 and rows[2]["mean_epoch"] == 4
    text = seeds.findings(rows, 0.98, 3)
    assert "At batch 128, runs reaching 98% within 3 epochs: xpmlp-default 2/3 (mean epoch 2.33); " \
           "torch-default 1/1 (mean epoch 3.00)." in text
    assert "At batch 64" in text and "xpmlp-default 0/1 (mean epoch 4.00)" in text


def test_torch_like_weights_follow_nn_linear_bounds(seeds):
    sizes = [784, 512, 10]
    weights = seeds.torch_like_weights(0, sizes)
    assert [w.shape for w in weights] == [(784, 512), (512,), (512, 10), (10,)]
    for w, fan_in in zip(weights, [784, 784, 512, 512]):
        k = 1 / np.sqrt(fan_in)
        assert w.dtype == np.float32 and np.abs(w).max() <= k
        assert w.size < 512 or np.abs(w).max() > 0.95 * k  # uniform over the whole range: 512 draws reach its edge
    assert all(b.std() > 0 for b in weights[1::2])  # biases are drawn too, not zero


def test_quick_run_writes_what_it_trained_and_resumes(tmp_path, data_dir, seeds):
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    seeds.main(["--quick", "--out", str(tmp_path), "--configs", "xpmlp-default"])  # in this process: faster
    first = json.loads((tmp_path / "time_to_98.json").read_text())["runs"]
    stdout = _run(tmp_path)  # the default configs: xpmlp-default is already there and is not trained again
    assert "batch 128 xpmlp-default seed 0: already in" in stdout
    report = json.loads((tmp_path / "time_to_98.json").read_text())
    s = report["settings"]
    assert s["quick"] and s["epochs"] == 2 and s["seeds"] == [0] and s["batch_sizes"] == [128]
    assert s["n_train"] == 512 and s["n_test"] == 500 and report["partial"] is False
    assert report["machine"]["versions"]["xpmlp"]
    runs = {r["config"]: r for r in report["runs"]}
    xp, torch_xp = runs["xpmlp-default"], runs.get("torch-xpmlp-init")
    assert runs["xpmlp-default"] == first[0]
    expected = ["xpmlp-default", "torch-default", "xpmlp-torch-init", "torch-xpmlp-init"] if HAS_TORCH \
        else ["xpmlp-default", "xpmlp-torch-init"]
    assert list(runs) == expected
    for r in runs.values():
        assert len(r["accuracy"]) == 2 and len(r["loss"]) == 2
        assert all(0 <= a <= 1 for a in r["accuracy"]) and r["accuracy"][-1] > 0.3  # 10 classes: chance is 0.1
        assert all(np.isfinite(r["loss"])) and 0 < r["loss"][1] < r["loss"][0] < 3
        assert np.asarray(r["initial_logits"]).shape == (4, 10) and len(r["init_preact_std"]) == 3
    # nn.Linear's init gives pre-activations about a third the size of He's (see bench/seeds.py)
    assert runs["xpmlp-torch-init"]["init_preact_std"][0] < 0.5 * runs["xpmlp-default"]["init_preact_std"][0]
    md = (tmp_path / "time_to_98.md").read_text()
    assert md.startswith("# Time to 98% MNIST test accuracy")
    acc = " ".join(f"{100 * a:.2f}" for a in runs["xpmlp-default"]["accuracy"])
    assert f"| 128 | xpmlp-default | 0 | {acc} | - |" in md
    assert "(a miss counts as 3)" in md and "## What the numbers show" in md and "Not run" not in md
    assert ("By initialisation, whichever library trains: xpmlp's init (xpmlp-default, torch-xpmlp-init): "
            f"epoch-1 accuracy {100 * xp['accuracy'][0]:.2f}% and {100 * torch_xp['accuracy'][0]:.2f}%") in md \
        if HAS_TORCH else "By initialisation" not in md
    if not HAS_TORCH:
        assert "- torch-default left out: PyTorch is not installed" in md
        pytest.skip("PyTorch not installed: the torch configs did not run")
    # torch-xpmlp-init starts from xpmlp's weights: the same first forward pass, and the same statistics
    logits = np.asarray(xp["initial_logits"])
    assert np.abs(np.asarray(torch_xp["initial_logits"]) - logits).max() <= 1e-6 * max(1.0, np.abs(logits).max())
    assert torch_xp["init_preact_std"] == xp["init_preact_std"]
    assert np.abs(np.asarray(runs["torch-default"]["initial_logits"]) - logits).max() > 1e-2  # it is a real check


def test_resume_refuses_other_epochs(tmp_path, seeds, capsys):
    (tmp_path / "time_to_98.json").write_text(json.dumps(
        {"settings": {"epochs": 6, "n_train": 60000, "n_test": 10000, "lr": 1e-3, "sizes": seeds.SIZES}, "runs": []}))
    with pytest.raises(SystemExit):  # --quick trains 2 epochs: its runs would not compare with the file's
        seeds.main(["--quick", "--out", str(tmp_path)])
    assert "holds runs with other epochs ({'epochs': 6})" in capsys.readouterr().err
