"""GPU check: verify and benchmark xpmlp on a machine with an NVIDIA GPU, in one command, in under 8 minutes.

    bash bench/gpu_check.sh OUTDIR        (or: python3 bench/gpu_check.py OUTDIR)

Run from anywhere; the steps run in the repository root with this ``python3`` and the
environment as given (PYTHONPATH, XPMLP_DATA): nothing is installed. Each step runs in its own
process group with its own time budget, and the whole run stops starting new work after
``--budget-s`` seconds (default 450). A step that fails, errors or times out is recorded, and
the next step runs. Results: OUTDIR/gpu_check.json and OUTDIR/gpu_check.md (rewritten after every
step), OUTDIR/gpu_check.log (every step's output), OUTDIR/junit.xml (the whole test suite) and
OUTDIR/mnist_cuda.json / .md (the benchmark). That is six files: the device tool brings back at
most eight.

Exit status: 0 when every step passed, 1 when any step failed, errored or timed out, 2 when no
NVIDIA GPU is usable (checked first, in a few seconds: nothing else runs, nothing is written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable or "python3"
MIB = 2**20

MEMORY_TOLERANCE = MIB  # allowed growth of the pool's bytes after epoch 2 (epochs 3..5 against epoch 2)
BENCH_CONTENDERS = ["xpmlp-cupy", "torch-eager-cuda", "torch-eager-fused-cuda", "torch-compile-cuda"]
AGREEMENT_SELECTION = ["tests/test_backend.py", "tests/test_train.py", "-k", "backend or same_seed"]
# The kernel tests: NVRTC compiles and host runs of every kernel, the real-CuPy cases (which skip
# without a GPU) and the CuPy stand-in's. Their slow tests (each step kernel compiled alone, for
# every dtype and architecture: minutes, no GPU needed) run in test_suite.
KERNEL_TEST_FILES = ["tests/test_cuda_kernels.py", "tests/test_step_cuda.py", "tests/test_update.py"]
KERNEL_TEST_MARKS = ["-m", "not slow"]

# name, time budget in seconds, what it runs
STEPS = [
    ("environment", 45,
     "GPU model, driver, CUDA runtime/driver versions, compute capability (nvidia-smi, cupy.cuda.runtime, "
     "cupy.show_config), CuPy/NumPy/torch/array-api-compat versions, torch.version.cuda"),
    ("nvrtc_probe", 45,
     "xpmlp.backend.fast_kernels on array_api_compat.cupy: which kernels object comes back, whether a "
     "RuntimeWarning about the fast path is emitted, and one fused Adam step against the reference"),
    ("agreement_tests", 60,
     "python3 -m pytest -q -rs " + " ".join(shlex.quote(a) for a in AGREEMENT_SELECTION)
     + " (NumPy vs CuPy vs torch CUDA: same seed, same run; every gpu test must run)"),
    ("cuda_kernel_tests", 60,
     "python3 -m pytest -q -rs " + " ".join(shlex.quote(a) for a in KERNEL_TEST_MARKS + KERNEL_TEST_FILES)
     + " (the kernels compiled with NVRTC, run on the host and on the GPU; a file missing from this "
     "checkout is left out, the step recorded as skipped if none exists; every gpu test must run)"),
    ("memory_flatness", 90,
     "MLP([784, 512, 512, 10], device='cuda', float32, seed=0), Adam, batch 128, 5 epochs of MNIST: "
     "CuPy pool used_bytes/total_bytes after each epoch; passes if epochs 3-5 exceed epoch 2 by at most "
     f"{MEMORY_TOLERANCE // MIB} MiB"),
    ("test_suite", 240,
     "python3 -m pytest -q -rs --junitxml OUTDIR/junit.xml (the whole suite; any skipped gpu test fails the step; "
     "with -n N through pytest-xdist when it is installed, see --suite-workers)"),
    ("mnist_benchmark", 180,
     "python3 bench/mnist.py --device cuda --arch 784-512-512-10 --batch-sizes 128 1024 --epochs 4 "
     f"--contenders {' '.join(BENCH_CONTENDERS)} --call-timeout 150 --no-plot --out OUTDIR"),
]
BUDGETS = {name: budget for name, budget, _ in STEPS}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# running a step
# ------------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, outdir: Path, budget_s: float, argv: list[str]):
        self.outdir, self.budget_s, self.start = outdir, budget_s, time.monotonic()
        self.suite_workers = "auto"
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.log_path = outdir / "gpu_check.log"
        self.log_path.write_text(f"gpu_check started {_now()}: {' '.join(argv)}\n")
        self.report = {"tool": "bench/gpu_check.py", "started": _now(), "finished": None, "complete": False,
                       "budget_s": budget_s, "outdir": str(outdir), "status": "running",
                       "memory_tolerance_bytes": MEMORY_TOLERANCE, "machine": {}, "versions": {}, "steps": []}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def env(self, **extra) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
        return env

    def run(self, name: str, cmd: list[str], timeout: float, env=None) -> dict:
        """Run cmd in the repository root in its own process group; its output goes to the log."""
        out = self.tmp / f"{name}.out"
        started = time.monotonic()
        with open(out, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env or self.env(), start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                # SIGINT first: pytest then still writes its summary, junit XML and records
                for sig, grace in ((signal.SIGINT, 8), (signal.SIGTERM, 4), (signal.SIGKILL, 10)):
                    try:
                        os.killpg(proc.pid, sig)  # the step's whole process group: its workers too
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the step left running in its group
        duration = time.monotonic() - started
        text = out.read_text(errors="replace")
        with open(self.log_path, "a") as log:
            log.write(f"\n{'=' * 100}\n== {name}: {' '.join(shlex.quote(c) for c in cmd)}\n"
                      f"== rc {proc.returncode}{' (TIMED OUT after %.0f s)' % timeout if timed_out else ''}, "
                      f"{duration:.1f} s\n{'=' * 100}\n{text}")
        return {"returncode": proc.returncode, "timed_out": timed_out, "duration_s": round(duration, 1),
                "output": text, "command": " ".join(shlex.quote(c) for c in cmd)}

    def record(self, step: dict):
        self.report["steps"].append(step)
        self.write()

    def write(self):
        (self.outdir / "gpu_check.json").write_text(json.dumps(self.report, indent=1, default=str) + "\n")
        (self.outdir / "gpu_check.md").write_text(markdown(self.report))


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _internal(runner: Runner, name: str, mode: str, timeout: float, env=None) -> tuple[dict, dict | None]:
    """Run one of this file's internal modes; returns (run facts, the JSON it wrote or None)."""
    result = runner.tmp / f"{name}.json"
    done = runner.run(name, [PY, str(HERE / "gpu_check.py"), "--internal", mode, str(result)], timeout, env)
    data = json.loads(result.read_text()) if result.exists() else None
    return done, data


def _status_from_run(done: dict, ok: bool) -> str:
    if done["timed_out"]:
        return "timeout"
    if done["returncode"] != 0:
        return "error"
    return "ok" if ok else "failed"


# ------------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------------

def step_environment(runner: Runner, timeout: float) -> dict:
    done, data = _internal(runner, "environment", "environment", timeout)
    notes = []
    if data:
        runner.report["machine"], runner.report["versions"] = data["machine"], data["versions"]
        if not data["cupy"].get("device_count"):
            notes.append(f"CuPy sees no GPU: {data['cupy'].get('error')}")
        if not data["torch"].get("cuda_available"):
            notes.append(f"torch sees no GPU: {data['torch'].get('error') or 'torch.cuda.is_available() is False'}")
        if data["nvidia_smi"].get("error"):
            notes.append(f"nvidia-smi: {data['nvidia_smi']['error']}")
    status = _status_from_run(done, data is not None and not notes)
    summary = {}
    if data:
        smi, cp, th = data["nvidia_smi"], data["cupy"], data["torch"]
        summary = {"gpu": smi.get("name") or cp.get("device_name"), "driver": smi.get("driver_version"),
                   "memory_total": smi.get("memory_total"),
                   "compute_capability": cp.get("compute_capability") or smi.get("compute_cap"),
                   "cuda_runtime": cp.get("runtime_version"), "cuda_driver": cp.get("driver_version"),
                   "nvrtc": cp.get("nvrtc_version"), "torch_cuda": th.get("version_cuda"),
                   **{k: v for k, v in data["versions"].items()}}
    return {"summary": summary, "details": data, "notes": notes, **_facts(done, status)}


def _facts(done: dict, status: str) -> dict:
    out = {"status": status, "duration_s": done["duration_s"], "command": done["command"],
           "returncode": done["returncode"]}
    if status != "ok":
        out["tail"] = _tail(done["output"])
    return out


def step_probe(runner: Runner, timeout: float) -> dict:
    done, data = _internal(runner, "nvrtc_probe", "probe", timeout)
    notes, ok = [], False
    if data:
        ok = data["fused_kernels_in_use"] and not data["fast_path_warnings"] and data.get("matches_reference", False)
        if not data["fused_kernels_in_use"]:
            notes.append(f"fused kernels NOT in use: fast_kernels returned {data.get('kernels_after_use', data.get('kernels_first_call'))}")
        notes += [f"fast-path warning: {w}" for w in data["fast_path_warnings"]]
        if data.get("error"):
            notes.append(f"error: {data['error']}")
        if data["fused_kernels_in_use"] and not data.get("matches_reference"):
            notes.append(f"fused Adam step differs from the reference: max relative difference {data.get('max_rel_diff')}")
    summary = {k: data.get(k) for k in ("fused_kernels_in_use", "kernels_first_call", "kernels_after_use",
                                         "runtime_warning", "fast_path_warnings", "max_rel_diff", "nvrtc_version")} \
        if data else {}
    return {"summary": summary, "details": data, "notes": notes, **_facts(done, _status_from_run(done, ok))}


def _pytest_step(runner: Runner, name: str, args: list[str], timeout: float, junit: Path | None,
                 require_gpu_tests: bool) -> dict:
    records_path = runner.tmp / f"{name}.records.json"
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(HERE)) if p)
    env = runner.env(GPU_CHECK_RECORDS=str(records_path), PYTHONPATH=pythonpath)
    cmd = [PY, "-m", "pytest", "-q", "-rs", "-p", "gpu_check_plugin", *args]
    if junit is not None:
        cmd[4:4] = [f"--junitxml={junit}"]
    done = runner.run(name, cmd, timeout, env)
    summary, notes = {}, []
    records = json.loads(records_path.read_text())["tests"] if records_path.exists() else None
    if records is not None:
        counts = {}
        for r in records.values():
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        gpu = [(k, r) for k, r in records.items() if r["gpu"]]
        gpu_skipped = [(k, r["detail"]) for k, r in gpu if r["outcome"] == "skipped"]
        summary = {"collected": len(records), **{k: counts.get(k, 0) for k in
                                                   ("passed", "failed", "error", "skipped", "xfailed", "xpassed")},
                   "gpu_tests": len(gpu), "gpu_passed": sum(r["outcome"] == "passed" for _, r in gpu),
                   "gpu_skipped": len(gpu_skipped)}
        failures = [(k, r["outcome"], r["detail"]) for k, r in records.items() if r["outcome"] in ("failed", "error")]
        summary["failures"] = [{"test": k, "outcome": o, "message": d} for k, o, d in failures[:40]]
        summary["gpu_skips"] = [{"test": k, "reason": d} for k, d in gpu_skipped[:40]]
        reasons = {}
        for k, r in records.items():
            if r["outcome"] == "skipped" and not r["gpu"]:
                reasons[r["detail"]] = reasons.get(r["detail"], 0) + 1
        summary["other_skip_reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:15])
        if gpu_skipped:
            notes.append(f"{len(gpu_skipped)} test(s) marked gpu were SKIPPED on a GPU machine (a failure of this "
                         f"step); first reason: {gpu_skipped[0][1]}")
        if require_gpu_tests and not gpu:
            notes.append("no test marked gpu was collected")
        if failures:
            notes.append(f"{summary['failed']} failed, {summary['error']} errors; first: {failures[0][0]}")
    if junit is not None and junit.exists():
        try:
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            summary["junit"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            summary["junit"]["time_s"] = float(suite.get("time", 0))
        except (ET.ParseError, AttributeError, ValueError) as e:
            notes.append(f"junit XML unreadable: {e}")
    if done["timed_out"]:
        notes.append(f"stopped at its time limit ({timeout:.0f} s): the counts are of the tests that ran before")
    if records is None and not done["timed_out"]:
        notes.append("pytest wrote no per-test records (it did not get to the end of the session)")
    ok = (done["returncode"] == 0 and records is not None and not summary.get("gpu_skipped")
          and (summary.get("gpu_tests", 0) > 0 or not require_gpu_tests))
    if done["timed_out"]:
        status = "timeout"
    elif done["returncode"] in (0, 1) and records is not None:  # 0 passed, 1 tests failed
        status = "ok" if ok else "failed"
    else:  # 2 interrupted, 3 internal error, 4 usage error, 5 nothing collected, or killed
        status = "error"
        notes.append(f"pytest exit status {done['returncode']}")
    return {"summary": summary, "notes": notes, **_facts(done, status)}


def step_agreement(runner: Runner, timeout: float) -> dict:
    return _pytest_step(runner, "agreement_tests", AGREEMENT_SELECTION, timeout, None, require_gpu_tests=True)


def step_cuda_kernels(runner: Runner, timeout: float) -> dict:
    files = [f for f in KERNEL_TEST_FILES if (ROOT / f).exists()]
    missing = [f for f in KERNEL_TEST_FILES if f not in files]
    if not files:
        return {"status": "skipped", "duration_s": 0.0, "summary": {},
                "notes": [f"none of {', '.join(KERNEL_TEST_FILES)} exists in this checkout: nothing to run"]}
    step = _pytest_step(runner, "cuda_kernel_tests", KERNEL_TEST_MARKS + files, timeout, None,
                        require_gpu_tests=False)
    if missing:
        step["notes"].append(f"not in this checkout, left out: {', '.join(missing)}")
    return step


def step_memory(runner: Runner, timeout: float) -> dict:
    done, data = _internal(runner, "memory_flatness", "memory", timeout, runner.env(XPMLP_STRICT_DEVICE="1"))
    notes, ok, summary = [], False, {}
    if data and data.get("epochs"):
        summary = {k: data[k] for k in ("used_bytes", "total_bytes", "growth_used_bytes", "growth_total_bytes",
                                         "tolerance_bytes", "epoch_s", "loss", "test_accuracy", "backend",
                                         "fast_kernels") if k in data}
        ok = data.get("flat", False)
        if not ok:
            notes.append(f"pool grew after epoch 2: used +{data.get('growth_used_bytes')} B, total "
                         f"+{data.get('growth_total_bytes')} B (tolerance {MEMORY_TOLERANCE} B)")
    if data and data.get("error"):
        notes.append(f"error: {data['error']}")
    return {"summary": summary, "details": data, "notes": notes, **_facts(done, _status_from_run(done, ok))}


def suite_workers(requested: str) -> tuple[int, str]:
    """(pytest-xdist workers for the whole suite, why): 0 means one plain pytest process."""
    import importlib.util

    if requested != "auto":
        return int(requested), "as asked (--suite-workers)"
    if importlib.util.find_spec("xdist") is None:
        return 0, "pytest-xdist is not installed"
    n = min(4, (os.cpu_count() or 1) // 2)
    if n < 2:
        return 0, f"only {os.cpu_count()} CPUs"
    return n, (f"pytest-xdist installed and {os.cpu_count()} CPUs: the serial suite took over 3 minutes on 2 "
               "cores, mostly CPU-bound example and benchmark tests, which fit the time budget only in parallel")


def step_suite(runner: Runner, timeout: float) -> dict:
    (runner.outdir / "junit.xml").unlink(missing_ok=True)
    workers, why = suite_workers(runner.suite_workers)
    step = _pytest_step(runner, "test_suite", ["-n", str(workers)] if workers else [], timeout,
                        runner.outdir / "junit.xml", require_gpu_tests=True)
    step["summary"]["xdist_workers"] = workers
    step["notes"].insert(0, f"{'-n %d' % workers if workers else 'one process'}: {why}")
    return step


def step_bench(runner: Runner, timeout: float) -> dict:
    cmd = [PY, "bench/mnist.py", "--device", "cuda", "--arch", "784-512-512-10", "--batch-sizes", "128", "1024",
           "--epochs", "4", "--contenders", *BENCH_CONTENDERS, "--call-timeout", "150", "--no-plot",
           "--out", str(runner.outdir)]
    path = runner.outdir / "mnist_cuda.json"
    for stale in (path, path.with_suffix(".md")):  # never report an earlier run's numbers
        stale.unlink(missing_ok=True)
    done = runner.run("mnist_benchmark", cmd, timeout)
    notes, rows, errors = [], [], []
    report = json.loads(path.read_text()) if path.exists() else None
    if report:
        block = report["devices"].get("cuda", {})
        for cfg in block.get("configs", []):
            for name, r in cfg["results"].items():
                row = {"batch_size": cfg["batch_size"], "contender": name}
                if "ms_per_epoch" in r:
                    row.update(ms_per_epoch=round(r["ms_per_epoch"], 1), samples_per_s=round(r["samples_per_s"]),
                               ratio_to_torch_eager=r.get("ratio_to_torch_eager"),
                               first_epoch_s=round(r["first_epoch_s"], 2), final_accuracy=r["final_accuracy"],
                               peak_gpu_mb=round(r["memory"]["bytes"] / MIB, 1) if r.get("memory") else None,
                               fast_kernels=r.get("info", {}).get("fast_kernels"),
                               train_step=r.get("info", {}).get("train_step"))
                if r.get("info", {}).get("warnings"):
                    row["warnings"] = r["info"]["warnings"]
                if "error" in r:
                    row.update(error=r["error"], error_stage=r["error_stage"])
                    errors.append(f"batch {cfg['batch_size']} {name} ({r['error_stage']}): {r['error']}")
                rows.append(row)
        if report.get("partial"):
            notes.append("the benchmark did not finish: partial results")
        notes += [f"contender error: {e}" for e in errors]
        summary = {"matmul_gflops": block.get("matmul", {}).get("by_library"), "rows": rows,
                   "files": ["mnist_cuda.json", "mnist_cuda.md"]}
    else:
        summary = {}
        notes.append("mnist.py wrote no mnist_cuda.json")
    ok = report is not None and not report.get("partial") and not errors
    return {"summary": summary, "notes": notes, **_facts(done, _status_from_run(done, ok))}


STEP_FUNCTIONS = {"environment": step_environment, "nvrtc_probe": step_probe, "agreement_tests": step_agreement,
                  "cuda_kernel_tests": step_cuda_kernels, "memory_flatness": step_memory,
                  "test_suite": step_suite, "mnist_benchmark": step_bench}


# ------------------------------------------------------------------------------------------------
# internal modes: each runs in its own process and writes JSON to the path given
# ------------------------------------------------------------------------------------------------

def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _nvidia_smi() -> dict:
    fields = ["name", "driver_version", "memory.total", "compute_cap"]
    out = {}
    for query in (fields, fields[:3]):  # compute_cap needs a recent driver
        try:
            done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"error": _err(e)}
        if done.returncode == 0 and done.stdout.strip():
            gpus = [dict(zip([q.replace(".", "_") for q in query], (v.strip() for v in line.split(","))))
                    for line in done.stdout.strip().splitlines()]
            return {**gpus[0], "count": len(gpus), "all": gpus}
        out = {"error": (done.stderr or done.stdout).strip()[-500:] or f"exit status {done.returncode}"}
    return out


def internal_environment() -> dict:
    sys.path.insert(0, str(HERE))
    from machine import describe, versions

    data = {"nvidia_smi": _nvidia_smi(), "cupy": {}, "torch": {}}
    data["machine"] = describe()
    data["versions"] = versions("numpy", "cupy", "torch", "array_api_compat", "xpmlp", "pytest", "sklearn",
                                "array_api_strict", "hypothesis")
    cp = data["cupy"]
    try:
        import cupy

        rt = cupy.cuda.runtime
        cp["runtime_version"] = rt.runtimeGetVersion()
        cp["driver_version"] = rt.driverGetVersion()
        cp["device_count"] = rt.getDeviceCount()
        props = rt.getDeviceProperties(0)
        name = props["name"]
        cp["device_name"] = name.decode() if isinstance(name, bytes) else str(name)
        cp["compute_capability"] = f"{props['major']}.{props['minor']}"
        cp["total_memory_bytes"] = int(props["totalGlobalMem"])
        cp["multiprocessors"] = int(props["multiProcessorCount"])
        try:
            cp["nvrtc_version"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
        except Exception as e:
            cp["nvrtc_version"] = f"unavailable: {_err(e)}"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cupy.show_config()
        cp["show_config"] = buf.getvalue()
    except Exception as e:
        cp["error"] = _err(e)
    th = data["torch"]
    try:
        import torch

        th["version"], th["version_cuda"] = torch.__version__, torch.version.cuda
        th["cuda_available"] = torch.cuda.is_available()
        if th["cuda_available"]:
            th["device_name"] = torch.cuda.get_device_name(0)
            th["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            th["cudnn"] = torch.backends.cudnn.version()
    except Exception as e:
        th["error"] = _err(e)
    data["machine"]["gpu_name"] = cp.get("device_name") or data["nvidia_smi"].get("name")
    data["versions"]["cuda_runtime"] = cp.get("runtime_version")
    data["versions"]["cuda_driver"] = cp.get("driver_version")
    data["versions"]["torch_cuda"] = th.get("version_cuda")
    data["versions"]["driver"] = data["nvidia_smi"].get("driver_version")
    return data


FAST_PATH_WORDS = ("fast", "fused", "kernel", "nvrtc", "compile", "reference path")


def internal_probe() -> dict:
    import warnings

    import numpy as np

    data = {"fused_kernels_in_use": False, "fast_path_warnings": [], "runtime_warning": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import array_api_compat.cupy as cpx
            import cupy

            import xpmlp
            from xpmlp.backend import fast_kernels

            data["nvrtc_version"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
            first = fast_kernels(cpx)
            data["kernels_first_call"] = getattr(first, "__name__", repr(first))
            rng = np.random.default_rng(0)
            p0, g0 = (rng.normal(size=(257, 65)).astype(np.float32) for _ in range(2))

            def adam_step(reference: bool):
                if reference:
                    os.environ["XPMLP_REFERENCE"] = "1"
                try:
                    p, g = cupy.asarray(p0.reshape(-1)), cupy.asarray(g0.reshape(-1))  # flat, as a model's
                    opt = xpmlp.Adam(lr=1e-2)
                    for _ in range(3):
                        opt.step(p, g)
                    return cupy.asnumpy(p)
                finally:
                    os.environ.pop("XPMLP_REFERENCE", None)

            fast, ref = adam_step(False), adam_step(True)
            data["max_rel_diff"] = float(np.max(np.abs(fast - ref)) / np.max(np.abs(ref)))
            data["matches_reference"] = bool(np.isfinite(fast).all() and data["max_rel_diff"] < 1e-5)
            after = fast_kernels(cpx)
            data["kernels_after_use"] = getattr(after, "__name__", repr(after))
            data["kernels_repr"] = repr(after)
            data["fused_kernels_in_use"] = after is not None
        except Exception as e:
            data["error"] = _err(e)
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    data["warnings"] = messages
    runtime = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning)]
    data["runtime_warning"] = bool(runtime)
    data["fast_path_warnings"] = [m for m in runtime if any(word in m.lower() for word in FAST_PATH_WORDS)]
    print(json.dumps(data, indent=1))
    return data


def internal_memory() -> dict:
    data = {"tolerance_bytes": MEMORY_TOLERANCE, "epochs": 0, "flat": False}
    try:
        sys.path.insert(0, str(HERE))
        import cupy
        import numpy as np

        import xpmlp
        from data import mnist_float32
        from xpmlp.backend import fast_kernels
        from xpmlp.callbacks import Callback

        (X, y), (Xt, yt) = mnist_float32()
        pool = cupy.get_default_memory_pool()
        used, total, times, losses = [], [], [], []
        clock = [time.perf_counter()]

        class PoolAfterEpoch(Callback):
            def on_epoch_end(self, epoch, logs=None):
                cupy.cuda.get_current_stream().synchronize()
                used.append(int(pool.used_bytes()))
                total.append(int(pool.total_bytes()))
                now = time.perf_counter()
                times.append(round(now - clock[0], 3))
                clock[0] = now
                losses.append(float((logs or {}).get("loss", float("nan"))))
                print(f"epoch {len(used)}: used {used[-1]} B, total {total[-1]} B, {times[-1]} s, "
                      f"loss {losses[-1]:.4f}", flush=True)

        model = xpmlp.MLP([784, 512, 512, 10], device="cuda", dtype="float32", seed=0)
        data["backend"] = str(model.backend)
        if model.backend.name != "cupy":
            raise RuntimeError(f"the model runs on {model.backend}, not CuPy")
        clock[0] = time.perf_counter()
        model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=1e-3), epochs=5, batch_size=128,
                  callbacks=[PoolAfterEpoch()], verbose=0)
        kernels = fast_kernels(model.backend.xp)
        data["fast_kernels"] = getattr(kernels, "__name__", repr(kernels))
        pred = np.argmax(xpmlp.to_numpy(model.predict(Xt)), axis=1)
        data["test_accuracy"] = float(np.mean(pred == yt))
        data.update(used_bytes=used, total_bytes=total, epoch_s=times, loss=losses, epochs=len(used))
        if len(used) == 5:
            data["growth_used_bytes"] = max(used[2:]) - used[1]
            data["growth_total_bytes"] = max(total[2:]) - total[1]
            data["flat"] = (data["growth_used_bytes"] <= MEMORY_TOLERANCE
                            and data["growth_total_bytes"] <= MEMORY_TOLERANCE)
    except Exception as e:
        data["error"] = _err(e)
    return data


INTERNAL = {"environment": internal_environment, "probe": internal_probe, "memory": internal_memory}


# ------------------------------------------------------------------------------------------------
# GPU presence, report, main
# ------------------------------------------------------------------------------------------------

def gpu_presence() -> tuple[bool, str]:
    """(usable, why): nvidia-smi listing a GPU, else CuPy counting one. Takes seconds, not minutes."""
    reasons = []
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        listed = [line for line in done.stdout.splitlines() if line.startswith("GPU ")]
        if done.returncode == 0 and listed:
            return True, listed[0]
        reasons.append(f"nvidia-smi -L lists no GPU (exit status {done.returncode}: "
                       f"{(done.stderr or done.stdout).strip()[:200]})")
    except FileNotFoundError:
        reasons.append("nvidia-smi not found")
    except (OSError, subprocess.TimeoutExpired) as e:
        reasons.append(f"nvidia-smi: {_err(e)}")
    code = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
    try:
        done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip().isdigit() and int(done.stdout.strip()) > 0:
            return True, f"CuPy counts {done.stdout.strip()} CUDA device(s) (nvidia-smi: {reasons[0]})"
        last = (done.stderr.strip().splitlines() or [done.stdout.strip() or "no output"])[-1]
        reasons.append(f"CuPy: {last[:300]}")
    except (OSError, subprocess.TimeoutExpired) as e:
        reasons.append(f"CuPy probe: {_err(e)}")
    return False, "; ".join(reasons)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(report: dict) -> str:
    out = [f"# GPU check: {report['status'].upper()}", ""]
    m, v = report.get("machine", {}), report.get("versions", {})
    out += [f"Started {report['started']}, finished {report.get('finished') or '(running)'}; "
            f"budget {report['budget_s']:.0f} s; results in `{report['outdir']}`.", ""]
    if m:
        out += [f"Machine: GPU {m.get('gpu_name')}, driver {v.get('driver')}, CUDA runtime {v.get('cuda_runtime')}, "
                f"CUDA driver API {v.get('cuda_driver')}; CPU {m.get('cpu')}, {m.get('cores')} cores; "
                f"{m.get('platform')}.", ""]
        out += ["Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]
    out += ["| step | status | time s | budget s | key numbers |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        out.append(f"| {s['name']} | **{s['status']}** | {s.get('duration_s', 0):.0f} | {s.get('budget_s', 0):.0f} | "
                   f"{_key_numbers(s)} |")
    out.append("")
    for s in report["steps"]:
        out += [f"## {s['name']}: {s['status']}", "", s.get("description", ""), ""]
        if s.get("command"):
            out += [f"`{s['command']}` (exit status {s.get('returncode')})", ""]
        out += [f"- {n}" for n in s.get("notes", [])]
        summary = s.get("summary", {})
        if s["name"] == "memory_flatness" and summary.get("used_bytes"):
            out += ["", "| epoch | pool used MiB | pool total MiB | epoch s | loss |", "|---|---|---|---|---|"]
            for i, (u, t) in enumerate(zip(summary["used_bytes"], summary["total_bytes"])):
                out.append(f"| {i + 1} | {u / MIB:.2f} | {t / MIB:.2f} | {summary['epoch_s'][i]} | "
                           f"{summary['loss'][i]:.4f} |")
        if s["name"] == "mnist_benchmark" and summary.get("rows"):
            out += ["", "| batch | contender | ms/epoch | samples/s | vs torch eager | first epoch s | test acc | "
                        "peak GPU MiB in use | error |", "|---|---|---|---|---|---|---|---|---|"]
            for r in summary["rows"]:
                out.append(f"| {r['batch_size']} | {r['contender']} | {r.get('ms_per_epoch', '-')} | "
                           f"{r.get('samples_per_s', '-')} | {_fmt(r.get('ratio_to_torch_eager') or '-')} | "
                           f"{r.get('first_epoch_s', '-')} | {r.get('final_accuracy', '-')} | "
                           f"{r.get('peak_gpu_mb', '-')} | {r.get('error', '')} |")
            out += ["", "Full tables: mnist_cuda.md."]
        for key in ("failures", "gpu_skips"):
            if summary.get(key):
                out += ["", f"{key.replace('_', ' ')}:", ""]
                out += [f"- `{f['test']}`: {f.get('message') or f.get('reason')}" for f in summary[key]]
        if summary.get("other_skip_reasons"):
            out += ["", "other skips (count: reason):", ""]
            out += [f"- {n}: {reason}" for reason, n in summary["other_skip_reasons"].items()]
        if s.get("tail"):
            out += ["", "<details><summary>end of output</summary>", "", "```", s["tail"], "```", "</details>"]
        out.append("")
    out.append("Every step's full output: gpu_check.log.")
    return "\n".join(out) + "\n"


def _key_numbers(s: dict) -> str:
    summary = s.get("summary", {})
    name = s["name"]
    if name == "environment" and summary:
        return (f"{summary.get('gpu')}, cc {summary.get('compute_capability')}, driver {summary.get('driver')}, "
                f"CUDA rt {summary.get('cuda_runtime')}, torch CUDA {summary.get('torch_cuda')}")
    if name == "nvrtc_probe" and summary:
        return (f"fused kernels in use: {summary.get('fused_kernels_in_use')} ({summary.get('kernels_after_use')}); "
                f"RuntimeWarning: {summary.get('runtime_warning')}")
    if "passed" in summary:
        return (f"{summary['passed']} passed, {summary['failed']} failed, {summary['error']} errors, "
                f"{summary['skipped']} skipped ({summary['gpu_skipped']} gpu), {summary['xfailed']} xfailed; "
                f"gpu tests run: {summary['gpu_passed']}/{summary['gpu_tests']} passed")
    if name == "memory_flatness" and summary.get("used_bytes"):
        return (f"growth after epoch 2: used {summary.get('growth_used_bytes')} B, total "
                f"{summary.get('growth_total_bytes')} B (tolerance {MEMORY_TOLERANCE} B); "
                f"acc {summary.get('test_accuracy')}")
    if name == "mnist_benchmark" and summary.get("rows"):
        xp = {r["batch_size"]: r.get("ratio_to_torch_eager") for r in summary["rows"] if r["contender"] == "xpmlp-cupy"}
        return "xpmlp-cupy / torch eager: " + ", ".join(f"batch {b}: {_fmt(x) if x else '-'}" for b, x in xp.items())
    return "; ".join(s.get("notes", []))[:200]


def help_text() -> str:
    lines = [__doc__.strip(), "", "Steps, in order (time budget in seconds):", ""]
    for name, budget, what in STEPS:
        lines.append(f"  {name:18s} {budget:4d} s  {what}")
    lines += ["", f"Budgets add up to {sum(BUDGETS.values())} s; a step never runs past the time left of the whole "
                  "budget, and a step with under 10 s left is recorded as a timeout without starting.",
              "", "Options: --budget-s S (default 450); --steps NAME... (a subset, in the order above);",
              "--suite-workers N|auto (default auto: -n min(4, CPUs/2) when pytest-xdist is installed, else one "
              "process; 0: always one process)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--internal"]:
        mode, path = argv[1], argv[2]
        data = INTERNAL[mode]()
        Path(path).write_text(json.dumps(data, indent=1, default=str))
        return 0 if not data.get("error") else 1
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    parser.add_argument("outdir", nargs="?")
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--budget-s", type=float, default=450.0)
    parser.add_argument("--steps", nargs="*", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--suite-workers", default="auto", type=lambda v: v if v == "auto" else str(int(v)))
    args = parser.parse_args(argv)
    if args.help:
        print(help_text())
        return 0
    if not args.outdir:
        parser.print_usage(sys.stderr)
        print("gpu_check: give the output folder, e.g. bash bench/gpu_check.sh /tmp/gpu (--help: what it runs)",
              file=sys.stderr)
        return 2
    usable, why = gpu_presence()
    if not usable:
        print(f"gpu_check: no usable NVIDIA GPU on this machine ({why}).\n"
              "gpu_check: nothing was run and nothing was written: these checks only mean something on a GPU.",
              file=sys.stderr)
        return 2
    outdir = Path(args.outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(outdir, args.budget_s, [PY, *sys.argv])
    runner.report["gpu_presence"] = why
    runner.suite_workers = args.suite_workers
    print(f"gpu_check: {why}; writing {outdir}/gpu_check.json, .md, .log", flush=True)
    for name, budget, what in STEPS:
        if name not in args.steps:
            continue
        left = runner.left()
        timeout = min(budget, left)
        print(f"gpu_check: {name} (budget {budget} s, {timeout:.0f} s allowed) ...", flush=True)
        if timeout < 10:
            step = {"status": "timeout", "duration_s": 0.0, "summary": {},
                    "notes": [f"not started: only {max(left, 0):.0f} s of the {args.budget_s:.0f} s budget left"]}
        else:
            try:
                step = STEP_FUNCTIONS[name](runner, timeout)
            except Exception as e:  # a bug in this driver: the step is an error, the others still run
                step = {"status": "error", "duration_s": 0.0, "summary": {}, "notes": [f"gpu_check.py: {_err(e)}"]}
        step = {"name": name, "description": what, "budget_s": budget, "timeout_s": round(timeout, 1), **step}
        runner.record(step)
        print(f"gpu_check: {name}: {step['status']} in {step.get('duration_s', 0):.0f} s. "
              f"{_key_numbers(step)}", flush=True)
    bad = [s["name"] for s in runner.report["steps"] if s["status"] not in ("ok", "skipped")]
    runner.report.update(finished=_now(), complete=True, status="failed" if bad else "ok",
                         failed_steps=bad, duration_s=round(time.monotonic() - runner.start, 1))
    runner.write()
    shutil.rmtree(runner.tmp, ignore_errors=True)
    print(f"gpu_check: {'FAILED steps: ' + ', '.join(bad) if bad else 'all steps ok'}; "
          f"{runner.report['duration_s']:.0f} s; see {outdir}/gpu_check.md", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
