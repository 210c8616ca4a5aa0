"""The benchmark harnesses run (quick mode) and write what they promise; no speed is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script, out, *args):
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_accuracy_vs_sklearn_quick(tmp_path, data_dir):
    pytest.importorskip("sklearn")
    if data_dir is None or not (data_dir / "mnist").is_dir() or not (data_dir / "uci-heart").is_dir():
        pytest.skip("MNIST and UCI heart data not in $XPMLP_DATA")
    stdout = _run("accuracy_vs_sklearn.py", tmp_path)
    results = json.loads((tmp_path / "accuracy_vs_sklearn.json").read_text())
    for name in ("heart", "mnist"):
        r = results[name]
        assert 0.5 < r["xpmlp"] <= 1 and 0.5 < r["sklearn"] <= 1, r
        assert r["wins"] + r["ties"] + r["losses"] == r["runs"] > 0
        assert f"| {name} |" in stdout
    assert (tmp_path / "accuracy_vs_sklearn.md").read_text().startswith("# xpmlp.MLPClassifier vs scikit-learn")


def test_mnist_benchmark_quick(tmp_path, data_dir):
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    stdout = _run("mnist.py", tmp_path)
    report = json.loads((tmp_path / "mnist_cpu.json").read_text())
    assert report["settings"]["quick"] and list(report["devices"]) == ["cpu"]
    assert report["devices"]["cpu"]["matmul"]["gflops"] > 0
    (config,) = report["devices"]["cpu"]["configs"]
    xp = config["results"]["xpmlp-numpy"]
    assert len(xp["epoch_s"]) == 3 and xp["ms_per_epoch"] > 0 and 0.5 < xp["final_accuracy"] <= 1
    assert 0 < xp["floor_fraction"] < 1
    for name, r in config["results"].items():  # every contender either ran or says why not
        assert "ms_per_epoch" in r or r.get("skipped") or r.get("failed"), name
    if "ms_per_epoch" in config["results"].get("torch-eager-cpu", {}):
        assert config["results"]["torch-eager-cpu"]["ratio_to_torch_eager"] == 1.0
    assert "| 784-128-64-10 | 128 | xpmlp-numpy |" in stdout
    assert (tmp_path / "mnist_cpu.md").exists()


def test_scaling_quick(tmp_path, data_dir):
    pytest.importorskip("torch")
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    _run("scaling.py", tmp_path)
    report = json.loads((tmp_path / "scaling_cpu.json").read_text())
    assert [(r["vary"], r["value"]) for r in report["rows"]] == [("width", 512), ("width", 1024), ("depth", 1),
                                                                 ("depth", 2)]
    for r in report["rows"]:
        assert r["xpmlp"]["epoch_s"] > 0 and r["torch"]["epoch_s"] > 0 and r["gemm_gflop_per_epoch"] > 0
