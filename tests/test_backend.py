import sys
import types
import warnings

import numpy as np
import pytest

import xpmlp
from xpmlp import DeviceMismatchError, resolve, to_numpy
from xpmlp.backend import namespace_of
from conftest import GPU_REASON


def _fake_cupy(count=None, error=None):
    """A stand-in cupy module whose device count is ``count`` or whose driver raises ``error``."""
    def get_count():
        if error is not None:
            raise error
        return count

    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_count))
    return mod


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    monkeypatch.delenv("XPMLP_STRICT_DEVICE", raising=False)
    monkeypatch.delenv("XPMLP_DEVICE", raising=False)


def test_cpu_is_numpy():
    b = resolve("cpu")
    assert b.name == "numpy" and b.device == "cpu" and not b.is_gpu


def test_auto_without_gpu_is_numpy_and_silent(no_cupy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve("auto").name == "numpy"
        assert resolve(None).name == "numpy"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1", "gpu"])
def test_cuda_without_cupy_falls_back_with_one_warning(no_cupy, spec):
    with pytest.warns(RuntimeWarning) as record:
        b = resolve(spec)
    assert b.name == "numpy"
    assert len(record) == 1
    message = str(record[0].message)
    assert "CuPy is not installed" in message and "falling back to the CPU" in message


@pytest.mark.parametrize("fake,reason", [
    (_fake_cupy(count=0), "no CUDA device was found"),
    (_fake_cupy(error=RuntimeError("cudaErrorInsufficientDriver")), "CUDA driver reported an error: cudaErrorInsufficientDriver"),
])
def test_cuda_fallback_names_the_reason(monkeypatch, fake, reason):
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv("XPMLP_STRICT_DEVICE", raising=False)
    with pytest.warns(RuntimeWarning, match=reason):
        assert resolve("cuda").name == "numpy"


def test_cuda_index_beyond_device_count_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count=1))
    with pytest.raises(ValueError, match=r"'cuda:3' was requested but only 1 CUDA device"):
        resolve("cuda:3")


def test_strict_device_turns_fallback_into_error(no_cupy, monkeypatch):
    monkeypatch.setenv("XPMLP_STRICT_DEVICE", "1")
    with pytest.raises(RuntimeError, match="CuPy is not installed.*XPMLP_STRICT_DEVICE=1"):
        resolve("cuda")


def test_xpmlp_device_sets_the_default(no_cupy, monkeypatch):
    monkeypatch.setenv("XPMLP_DEVICE", "cuda")
    with pytest.warns(RuntimeWarning, match="'cuda' is not usable"):
        xpmlp.MLP([2, 2], seed=0)
    monkeypatch.setenv("XPMLP_DEVICE", "cpu")
    assert xpmlp.MLP([2, 2], seed=0).backend.name == "numpy"
    monkeypatch.setenv("XPMLP_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown \\$XPMLP_DEVICE 'tpu'; expected 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        xpmlp.MLP([2, 2])


def test_model_on_fallback_device_trains(no_cupy):
    with pytest.warns(RuntimeWarning):
        model = xpmlp.MLP([2, 3, 1], device="cuda", seed=0)
    model.fit(np.zeros((4, 2)), np.zeros(4), loss="mse", epochs=1)
    assert model.backend.name == "numpy"


def test_unknown_device_and_bad_type():
    with pytest.raises(ValueError, match="unknown device 'cuda0'"):
        resolve("cuda0")
    with pytest.raises(TypeError, match="device must be a string"):
        resolve(3)


def test_namespace_and_device_of_explicit_xp(case):
    b = case.backend
    assert b.name == {"numpy": "numpy", "strict": "array_api_strict", "torch": "torch", "cupy": "cupy", "fakecupy": "cupy"}[case.lib]
    a = case.asarray(np.arange(3.0))
    assert namespace_of(a) is b.xp
    np.testing.assert_array_equal(to_numpy(a), [0.0, 1.0, 2.0])


def test_arrays_of_another_library_are_refused():
    torch = pytest.importorskip("torch")
    model = xpmlp.MLP([2, 2], device="cpu", seed=0)
    with pytest.raises(DeviceMismatchError, match="X is a torch array but the model runs on numpy"):
        model.fit(torch.zeros(3, 2), np.zeros(3, dtype=int), loss="cross_entropy")
    with pytest.raises(DeviceMismatchError, match="y is a torch array"):
        model.fit(np.zeros((3, 2)), torch.zeros(3, dtype=torch.int64), loss="cross_entropy")
    with pytest.raises(DeviceMismatchError, match="different libraries"):
        namespace_of(np.zeros(2), torch.zeros(2))


def test_arrays_on_another_device_are_refused():
    strict = pytest.importorskip("array_api_strict")
    model = xpmlp.MLP([2, 2], xp=strict, device=strict.Device("CPU_DEVICE"), seed=0)
    other = strict.asarray(np.zeros((3, 2)), device=strict.Device("device1"))
    with pytest.raises(DeviceMismatchError, match="X is on device .*device1.* but the model is on .*CPU_DEVICE"):
        model.fit(other, np.zeros(3, dtype=int), loss="cross_entropy")


class _GpuData:
    """Stands for cuDF or Numba device data: exports __cuda_array_interface__, refuses implicit host copies."""

    __cuda_array_interface__ = {"shape": (3, 2), "typestr": "<f8", "data": (0, False), "version": 3}

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a host NumPy array via __array__ is not allowed")


class _HostArrayLike:
    """A host container known only by ``__array__`` (as polars and xarray objects are)."""

    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_gpu_data_of_other_libraries_is_refused_by_name():
    model = xpmlp.MLP([2, 2], device="cpu", seed=0)
    with pytest.raises(DeviceMismatchError, match=r"X is GPU data of type .*\._GpuData, which xpmlp does not copy "
                                                  r"implicitly; the model runs on numpy on cpu"):
        model.fit(_GpuData(), np.zeros(3, dtype=int), loss="cross_entropy")
    with pytest.raises(DeviceMismatchError, match="y is GPU data"):
        model.fit(np.zeros((3, 2)), _GpuData(), loss="cross_entropy")


def test_host_array_likes_are_taken_by_their_array_protocol():
    X, y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 1, 0])
    model = xpmlp.MLP([2, 2], device="cpu", seed=0)
    model.fit(_HostArrayLike(X), _HostArrayLike(y), loss="cross_entropy", epochs=2)
    np.testing.assert_array_equal(to_numpy(model.predict(_HostArrayLike(X))), to_numpy(model.predict(X)))
    with pytest.raises(TypeError, match="X of type dict is not an array"):
        model.predict({"a": 1})


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"needs CuPy and a GPU: {GPU_REASON}")
def test_cuda_resolves_to_cupy():
    b = resolve("cuda")
    assert b.name == "cupy" and b.is_gpu
    assert resolve("auto").name == "cupy"
