"""The backend matrix: every numeric test takes ``case`` (all combinations) or ``case64``
(the float64 ones, for gradient checks and tight comparisons).

numpy; array_api_strict on CPU_DEVICE/float64, device1/float32 and no_float64/float32 (the last
raises on any float64 array: the best detector of accidental promotion); torch on the CPU when
installed; the fake GPU (tests/fake_cupy.py: the CuPy backend on a NumPy-backed stand-in for
CuPy with two devices, always run); torch CUDA and CuPy when a GPU is usable (skipped otherwise,
and reported as skips).

The CuPy columns, real and fake, build their models as users do, through ``device="cuda"``,
``"cuda:1"`` and ``"auto"``, not through ``xp=``. Every other test runs with
``$XPMLP_DEVICE=cpu`` (an autouse fixture), so the suite means the same on a machine with a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import fake_cupy
import xpmlp
from xpmlp.backend import to_numpy


def _gpu_reason() -> str | None:
    """None when CuPy sees a CUDA device, else why not."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    try:
        import cupy

        return None if cupy.cuda.runtime.getDeviceCount() > 0 else "no CUDA device"
    except Exception as e:  # driver missing or broken
        return f"CUDA unusable: {e}"


GPU_REASON = _gpu_reason()
HAS_TORCH = importlib.util.find_spec("torch") is not None
TORCH_CUDA = False
if HAS_TORCH:
    import torch

    TORCH_CUDA = torch.cuda.is_available()
    # Test arrays are tiny: torch's thread pool only adds contention (tens of ms per op on 2 cores).
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Case:
    """One (namespace, device, dtype) combination."""

    lib: str
    device_name: str | None
    dtype: str

    def activate(self):
        return self.backend.activate()

    @property
    def cupy_like(self) -> bool:
        """The real or the fake CuPy column: models are built from a device string, as users do."""
        return self.lib in ("cupy", "fakecupy")

    @property
    def xp(self):
        if self.cupy_like:
            return self.backend.xp
        return {"numpy": lambda: np, "strict": lambda: __import__("array_api_strict"),
                "torch": lambda: __import__("torch")}[self.lib]()

    @property
    def device(self):
        if self.lib == "strict":
            return self.xp.Device(self.device_name)
        return self.device_name

    @property
    def backend(self):
        if self.cupy_like:
            return xpmlp.resolve(self.device_name)
        return xpmlp.resolve(self.device, xp=self.xp)

    def model_kwargs(self) -> dict:
        if self.cupy_like:
            return {"device": self.device_name, "dtype": self.dtype}
        return {"xp": self.xp, "device": self.device, "dtype": self.dtype}

    def asarray(self, a, dtype=None):
        """Host data -> this case's namespace and device (floats in the case's dtype)."""
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(dtype or self.dtype)
        return self.backend.from_host(a)

    @property
    def rtol(self) -> float:
        return 1e-10 if self.dtype == "float64" else 1e-4

    def __str__(self):
        return f"{self.lib}-{self.device_name}-{self.dtype}"


def _cases():
    gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"needs CuPy and a GPU: {GPU_REASON}")
    cases = [
        pytest.param(Case("numpy", None, "float64"), id="numpy-f64"),
        pytest.param(Case("numpy", None, "float32"), id="numpy-f32"),
        pytest.param(Case("strict", "CPU_DEVICE", "float64"), id="strict-cpu-f64"),
        pytest.param(Case("strict", "device1", "float32"), id="strict-device1-f32"),
        pytest.param(Case("strict", "no_float64", "float32"), id="strict-nof64-f32"),
    ]
    if HAS_TORCH:
        cases += [pytest.param(Case("torch", "cpu", "float64"), id="torch-cpu-f64"),
                  pytest.param(Case("torch", "cpu", "float32"), id="torch-cpu-f32")]
    torch_gpu = pytest.mark.skipif(not TORCH_CUDA, reason="needs torch with CUDA")
    cases += [pytest.param(Case("torch", "cuda", "float64"), id="torch-cuda-f64", marks=[torch_gpu, pytest.mark.gpu]),
              pytest.param(Case("torch", "cuda", "float32"), id="torch-cuda-f32", marks=[torch_gpu, pytest.mark.gpu]),
              pytest.param(Case("cupy", "cuda", "float64"), id="cupy-cuda-f64", marks=[gpu, pytest.mark.gpu]),
              pytest.param(Case("cupy", "auto", "float32"), id="cupy-auto-f32", marks=[gpu, pytest.mark.gpu])]
    # The fake GPU: model on GPU 1 of two (catches work done on the wrong current device), and "auto".
    cases += [pytest.param(Case("fakecupy", "cuda:1", "float64"), id="fakecupy-cuda1-f64", marks=pytest.mark.fakegpu),
              pytest.param(Case("fakecupy", "auto", "float32"), id="fakecupy-auto-f32", marks=pytest.mark.fakegpu)]
    return cases


CASES = _cases()
CASES64 = [c for c in CASES if c.values[0].dtype == "float64"]


# Test modules that drive layers, losses and optimisers directly, outside a model: they run with
# the case's GPU current, as a user of those pieces on GPU N writes ``with cupy.cuda.Device(N):``
# (CuPy allocates on the current device). Everywhere else GPU 0 stays current, so a model on
# "cuda:1" that did any of its work outside its own device context fails there.
LOW_LEVEL_MODULES = {"test_layers", "test_losses", "test_optim", "test_autograd_torch", "test_dropout"}


def _with_backend(case: Case, module: str):
    low_level = module in LOW_LEVEL_MODULES
    if case.lib == "fakecupy":
        with fake_cupy.installed():
            fake_cupy.COUNTS.reset()
            with case.backend.activate() if low_level else contextlib.nullcontext():
                yield case
    elif case.lib == "cupy" and low_level:
        with case.backend.activate():
            yield case
    else:
        yield case


@pytest.fixture(params=CASES)
def case(request) -> Case:
    yield from _with_backend(request.param, request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(params=CASES64)
def case64(request) -> Case:
    yield from _with_backend(request.param, request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(autouse=True)
def _cpu_unless_asked(monkeypatch):
    """Tests that are not about a backend run on the CPU, on every machine (GPU or not)."""
    monkeypatch.setenv("XPMLP_DEVICE", "cpu")
    monkeypatch.delenv("XPMLP_STRICT_DEVICE", raising=False)


@pytest.fixture
def data_dir() -> Path | None:
    """``$XPMLP_DATA`` when it points at a folder, else None."""
    path = os.environ.get("XPMLP_DATA")
    return Path(path) if path and Path(path).is_dir() else None


