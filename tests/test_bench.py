"""The benchmark harnesses run (quick mode) and write what they promise; no speed is asserted.
The GPU check (bench/gpu_check.sh) explains itself and refuses to run without a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
GPU_CHECK_STEPS = ["environment", "nvrtc_probe", "agreement_tests", "cuda_kernel_tests", "memory_flatness",
                   "test_suite", "mnist_benchmark"]


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


def test_digits_vs_sklearn_quick(tmp_path):
    pytest.importorskip("sklearn")
    stdout = _run("digits_vs_sklearn.py", tmp_path)
    result = json.loads((tmp_path / "digits_vs_sklearn.json").read_text())
    (run,) = result["runs"]
    for who in ("xpmlp", "sklearn"):
        assert 1 <= run[who]["epochs"] <= 200 and run[who]["seconds"] > 0 and 0.5 < run[who]["test_accuracy"] <= 1
    assert result["summary"]["epochs"]["ratio"] == run["xpmlp"]["epochs"] / run["sklearn"]["epochs"]
    assert "seed 0: epochs" in stdout and (tmp_path / "digits_vs_sklearn.md").read_text().startswith("# xpmlp vs")


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
        assert "ms_per_epoch" in r or (r["error"] and r["error_stage"]), name
    if "ms_per_epoch" in config["results"].get("torch-eager-cpu", {}):
        assert config["results"]["torch-eager-cpu"]["ratio_to_torch_eager"] == 1.0
    assert xp["memory"]["measure"] == "host_peak_rss" and xp["memory"]["bytes"] > 2**20
    assert report["settings"]["left_out"] == {"torch-compile-cpu": "torch.compile is left out of --quick runs"}
    assert "| 784-128-64-10 | 128 | xpmlp-numpy |" in stdout
    # with numba (a test extra; XPMLP_REQUIRE_NUMBA=1 in CI) and without: each worker says which update it ran
    from test_update import require_numba
    from xpmlp import kernels_numpy

    if os.environ.get("XPMLP_REQUIRE_NUMBA", "") == "1":
        require_numba()  # fails without numba (where it is not required, both workers run the passes)
    assert xp["info"]["numpy_update"] == kernels_numpy.executor_name()
    passes = config["results"]["xpmlp-numpy-passes"]
    assert passes["info"]["numpy_update"] == "NumPy chunked passes" and passes["ms_per_epoch"] > 0
    assert "xpmlp-numpy-passes: NumPy chunked passes" in stdout
    md = (tmp_path / "mnist_cpu.md").read_text()
    assert "peak RSS of the worker process, MB |" in md and "torch-compile-cpu left out" in md


def test_mnist_benchmark_reports_failing_contenders_as_errors(tmp_path, data_dir):
    """A contender failing to build, or in an epoch, is an error with its message - not skipped, not dropped."""
    pytest.importorskip("sklearn")
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    stdout = _run("mnist.py", tmp_path, "--contenders", "xpmlp-numpy", "torch-eager-cpu", "sklearn-cpu",
                  "--fail-contender", "torch-eager-cpu", "sklearn-cpu:epoch", "--no-plot")
    results = json.loads((tmp_path / "mnist_cpu.json").read_text())["devices"]["cpu"]["configs"][0]["results"]
    assert list(results) == ["xpmlp-numpy", "torch-eager-cpu", "sklearn-cpu"]
    built = "InjectedFailure: torch-eager-cpu failed to build (injected by --fail-contender)"
    ran = "InjectedFailure: sklearn-cpu failed in an epoch (injected by --fail-contender)"
    assert results["torch-eager-cpu"]["error"] == built and results["torch-eager-cpu"]["error_stage"] == "build"
    assert results["sklearn-cpu"]["error"] == ran and results["sklearn-cpu"]["error_stage"] == "epoch 1"
    for r in results.values():
        assert "skipped" not in r and "failed" not in r
    assert "error" not in results["xpmlp-numpy"] and results["xpmlp-numpy"]["ms_per_epoch"] > 0  # the others go on
    md = (tmp_path / "mnist_cpu.md").read_text()
    assert f"| torch-eager-cpu | **ERROR** in build: {built} |" in md
    assert f"| sklearn-cpu | **ERROR** in epoch 1: {ran} |" in md
    assert "2 contender error(s)" in md and "skipped" not in md
    assert "2 contender error(s)" in stdout
    assert not (tmp_path / "mnist_cpu.png").exists()


def _load(name, request):
    """bench/NAME.py as a module; what it adds to sys.path and sys.modules from bench/ is undone after the test."""
    path = list(sys.path)

    def restore():
        sys.path[:] = path
        for key, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(BENCH)):
                del sys.modules[key]

    request.addfinalizer(restore)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mnist_markdown_labels_gpu_memory_and_errors(request):
    """On a GPU the memory column is the device allocator's peak in use, for CuPy and torch alike."""
    mnist = _load("mnist", request)
    ok = {"ms_per_epoch": 500.0, "samples_per_s": 120000.0, "ratio_to_torch_eager": 0.9, "first_epoch_s": 1.0,
          "final_accuracy": 0.97, "time_to_target_s": None, "floor_fraction": 0.1,
          "memory": {"measure": "gpu_peak_in_use", "bytes": 300 * 2**20}}
    report = {"devices": {"cuda": {"matmul": {"gflops": 5e4, "by_library": {"torch": 5e4}, "errors": {}},
                                   "configs": [{"arch": "784-512-512-10", "batch_size": 128, "results": {
                                       "xpmlp-cupy": ok,
                                       "torch-compile-cuda": {"error": "BackendCompilerFailed: boom",
                                                              "error_stage": "epoch 1"}}}]}},
              "settings": {"epochs": 4, "target": 0.98}, "machine": {"cpu": "x", "cores": 1, "gpu": None,
                                                                      "versions": {}}}
    md = mnist.markdown(report)
    assert "| peak GPU memory in use (device allocator), MB |" in md and "| 300 |" in md
    assert "cupy.cuda.MemoryHook" in md and "torch.cuda.max_memory_allocated" in md
    assert "| torch-compile-cuda | **ERROR** in epoch 1: BackendCompilerFailed: boom |" in md


def test_gpu_check_help_names_every_step():
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    for step in GPU_CHECK_STEPS:
        assert f"  {step} " in done.stdout, step
    for promise in ("OUTDIR/gpu_check.json", "OUTDIR/gpu_check.md", "OUTDIR/junit.xml", "mnist_cuda.json",
                    "--junitxml", "tests/test_cuda_kernels.py", "bench/mnist.py --device cuda"):
        assert promise in done.stdout, promise


def test_gpu_check_without_a_gpu_fails_fast(tmp_path, request):
    if _load("gpu_check", request).gpu_presence()[0]:
        pytest.skip("a GPU is present: the check would run for minutes")
    start = time.monotonic()
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no usable NVIDIA GPU" in done.stderr and "nothing was run" in done.stderr
    assert not (tmp_path / "out").exists() and time.monotonic() - start < 60


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


def test_worker_peak_memory_is_its_own_not_the_harness_peak():
    """bench/mnist.py's CPU memory column: a worker started by a process at a high peak reports its own
    peak (ru_maxrss would report at least the parent's: Linux keeps it across fork and exec)."""
    held = np.ones(2**25 + 7)  # 256 MiB, touched, held by this process while the child runs
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import contenders; print(contenders._host_peak())"
    child_peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    assert 2**20 < child_peak < held.nbytes, child_peak
