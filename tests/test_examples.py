"""Every example runs with a small budget and still shows that learning happened; the full MNIST
example, with its documented targets, is marked slow (it still runs in CI)."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    """Every example runs in an empty current directory, which must still be empty afterwards:
    examples write into the folder they are given, or a temporary one."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert sorted(p.name for p in cwd.iterdir()) == [], "an example wrote into the current directory"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _need(data_dir, sub):
    if data_dir is None or not (data_dir / sub).exists():
        pytest.skip(f"real data {sub} not in $XPMLP_DATA")


def test_xor_example():
    assert _example("xor").main(epochs=300)["accuracy"] == 1.0


def test_sine_example_learns_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    result = _example("sine_regression").main(epochs=100, out=str(tmp_path))
    assert result["mse"] < 0.005
    png = tmp_path / "sine_regression.png"
    assert result["plot"] == str(png)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_sine_example_without_a_folder_uses_a_temporary_one(tmp_path):
    pytest.importorskip("matplotlib")
    result = _example("sine_regression").main(epochs=2, n=200)
    png = Path(result["plot"])
    try:
        assert png.read_bytes()[:4] == b"\x89PNG" and png.parent.name.startswith("xpmlp-sine-")
    finally:
        shutil.rmtree(png.parent)


def test_example_script_writes_into_its_out_folder(tmp_path, empty_cwd):
    pytest.importorskip("matplotlib")
    done = subprocess.run([sys.executable, str(EXAMPLES / "sine_regression.py"), "--epochs", "2",
                           "--out", str(tmp_path / "results")], cwd=empty_cwd, capture_output=True, text=True,
                          env={**os.environ, "XPMLP_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results" / "sine_regression.png").read_bytes()[:4] == b"\x89PNG"


def test_overfit_small_example():
    result = _example("overfit_small").main(epochs=30)
    assert result["final_loss"] < 0.1 * result["first_loss"]


def test_heart_disease_example(data_dir):
    _need(data_dir, "uci-heart/processed.cleveland.data")
    result = _example("heart_disease").main(epochs=60)
    assert result["accuracy"] > 0.75
    assert result["severity_mae"] < result["severity_baseline_mae"]


def test_mnist_example_small_budget(data_dir):
    _need(data_dir, "mnist")
    result = _example("mnist").main(epochs=1, subset=10000)
    assert all(accuracy > 0.85 for accuracy in result.values()), result


@pytest.mark.slow
def test_mnist_example_reaches_its_targets(data_dir):
    _need(data_dir, "mnist")
    module = _example("mnist")
    result = module.main()
    for name, accuracy in result.items():
        assert accuracy >= module.ARCHITECTURES[name][-1], (name, accuracy)


def test_training_curves_example(data_dir, tmp_path):
    _need(data_dir, "mnist")
    pytest.importorskip("matplotlib")
    result = _example("training_curves").main(epochs=3, subset=3000, out=str(tmp_path))
    assert result["accuracy"] > 0.85 and result["epochs_run"] == 3
    assert result["plot"] == str(tmp_path / "training_curves.png") and result["log"] == str(tmp_path / "training_log.csv")
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "training_log.csv").read_text().splitlines()) == 4  # header + 3 epochs


def test_doctor_example_names_each_mistake_and_the_fixed_runs_are_clean(data_dir):
    _need(data_dir, "mnist")
    lines = []
    results = _example("doctor").main(n=2000, epochs=2, print_fn=lines.append)
    expected = {"raw pixels": "unscaled_inputs", "sorted classes": "sorted_classes",
                "sigmoid for ten classes": "targets_outside_output_range", "double softmax": "probabilities_as_logits",
                "labels from 1": "label_range", "learning rate far too high": "update_ratio_too_large",
                "learning rate far too low": "update_ratio_too_small"}
    assert set(results) == set(expected)
    for case, check in expected.items():
        assert check in results[case]["found"], (case, results[case])
        assert results[case]["fixed_found"] == [] and results[case]["fixed_accuracy"] > 0.75, (case, results[case])
    assert any("MLP doctor:" in line and "error" in line for line in lines)
