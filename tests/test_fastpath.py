"""The NumPy fast path (in-place, chunked optimiser updates) equals the Array API reference path.

The kernels do the reference's operations in the same order with the same scalars, so the
results must be bitwise equal, not merely close.
"""

import os

import numpy as np
import pytest

import xpmlp
import xpmlp.optim
from xpmlp import SGD, Adam, AdamW, kernels_numpy
from xpmlp import backend
from xpmlp.backend import fast_kernels

import fake_cupy

OPTIMIZERS = {
    "adam": lambda: Adam(lr=1e-2),
    "adamw": lambda: AdamW(lr=1e-2, weight_decay=0.1),
    "adam-l2-clip": lambda: Adam(lr=1e-2, weight_decay=1e-3, clipnorm=1.0),
    "sgd": lambda: SGD(lr=0.1),
    "sgd-momentum": lambda: SGD(lr=0.1, momentum=0.9, dampening=0.1),
    "sgd-nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
}
# one parameter larger than a chunk (and not a multiple of it), one small
SHAPES = [(kernels_numpy.CHUNK // 100 + 7, 100 + 3), (13,)]


def _steps(make, dtype, n_steps=6):
    """The flat buffer and optimiser state after n_steps updates of random gradients."""
    rng = np.random.default_rng(0)
    size = sum(int(np.prod(s)) for s in SHAPES)
    data = rng.normal(size=size).astype(dtype)
    opt = make()
    for _ in range(n_steps):
        opt.step(data, rng.normal(size=size).astype(dtype))
    return data, opt.state
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fast_update_is_bitwise_equal_to_reference(monkeypatch, name, dtype):
    fast_data, fast_state = _steps(OPTIMIZERS[name], dtype)
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    ref_data, ref_state = _steps(OPTIMIZERS[name], dtype)
    assert fast_data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast_data, ref_data)
    assert fast_state.keys() == ref_state.keys()
    for key in ref_state:
        np.testing.assert_array_equal(fast_state[key], ref_state[key])


def test_reference_switch_and_selection(monkeypatch):
    import array_api_compat.numpy as np_compat
    import array_api_strict

    assert fast_kernels(np_compat) is kernels_numpy
    assert fast_kernels(array_api_strict) is None
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    assert fast_kernels(np_compat) is None


def test_unusable_arrays_take_the_reference_path():
    base = np.arange(12.0).reshape(3, 4)
    readonly = base.copy()
    readonly.flags.writeable = False
    assert kernels_numpy.usable(base, base.copy())
    assert not kernels_numpy.usable(base.T, base.T.copy())  # not C-contiguous
    assert not kernels_numpy.usable(readonly, base)
    assert not kernels_numpy.usable(base, base.astype(np.float32))
    # a strided view of a buffer: updated in place by the reference path, as a contiguous copy is by the kernels
    rng = np.random.default_rng(0)
    strided = rng.normal(size=20)[::2]
    contiguous = strided.copy()
    grads = [rng.normal(size=10) for _ in range(3)]
    for data in (strided, contiguous):
        opt = Adam(lr=0.1)
        for g in grads:
            opt.step(data, g)
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(strided, contiguous)


@pytest.mark.parametrize("update", ["passes", "numba"])
def test_whole_fit_is_bitwise_equal_to_reference(monkeypatch, update):
    """A whole fit on the fast path (NumPy's chunked passes, or numba's loop with LOOP_MIN lowered
    to this model's size) against one with XPMLP_REFERENCE=1."""
    if update == "numba":
        from test_update import require_numba

        require_numba()
        monkeypatch.setattr(kernels_numpy, "LOOP_MIN", 1)
    ran = []
    made = kernels_numpy.compiled
    monkeypatch.setattr(kernels_numpy, "compiled", lambda u: ran.append(u.name) or made(u))
    X, y = xpmlp.datasets.make_spirals(400, n_classes=3, seed=0)

    def run():
        model = xpmlp.MLP([2, 64, 64, 3], device="cpu", seed=0)
        model.fit(X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=1e-2), epochs=3, batch_size=32)
        return model.get_weights(), model.history["loss"]

    fast_w, fast_loss = run()
    assert ran == (["adam"] if update == "numba" else [])
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    ref_w, ref_loss = run()
    assert fast_loss == ref_loss
    for a, b in zip(fast_w, ref_w):
        np.testing.assert_array_equal(a, b)


def test_backward_without_input_gradient_gives_the_same_parameter_gradients():
    rng = np.random.default_rng(0)
    model = xpmlp.MLP([5, 7, 3], standardize=True, device="cpu", seed=0)
    model.build(5)
    x, g = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    model.layers[0].adapt(x)
    model.forward(x, training=True)
    dx = model.backward(g)
    def grads():
        return [np.array(v, copy=True) for layer in model.layers for v in layer.grads.values()]

    full = grads()
    assert len(full) == 4  # the two Dense layers' W and b
    model.forward(x, training=True)
    assert dx.shape == (4, 5) and model.backward(g, input_grad=False) is None
    for a, b in zip(full, grads(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(params=[pytest.param("cupy", marks=pytest.mark.gpu), pytest.param("fakecupy", marks=pytest.mark.fakegpu)])
def cupy_module(request):
    """Real CuPy on a GPU (skipped without one), or the stand-in, whose kernels run their CUDA C on the host."""
    if request.param == "fakecupy":
        with fake_cupy.installed() as cupy:
            yield cupy
        return
    cupy = pytest.importorskip("cupy", reason="needs CuPy and a GPU")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy installed but no usable GPU
        pytest.skip(f"needs a GPU: {e}")
    yield cupy


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cupy_fused_update_matches_reference(monkeypatch, cupy_module, name):
    """The fused CuPy kernels against the Array API reference (float32 and float64)."""
    cupy = cupy_module
    import array_api_compat

    monkeypatch.setattr(backend, "_CUPY_KERNELS", {})
    kernels = fast_kernels(array_api_compat.array_namespace(cupy.zeros(1)))
    assert kernels is not None
    if not hasattr(kernels, "elementwise"):  # until xpmlp.kernels_cupy has it: the stand-in
        from test_update import StandInKernels

        stand_in = StandInKernels(cupy.ElementwiseKernel, cupy.ndarray)
        monkeypatch.setattr(xpmlp.optim, "fast_kernels",
                            lambda xp: None if os.environ.get("XPMLP_REFERENCE") == "1" else stand_in)
    for dtype, rtol in (("float64", 1e-12), ("float32", 1e-6)):
        def run():
            rng = np.random.default_rng(0)
            size = sum(int(np.prod(s)) for s in SHAPES)
            data = cupy.asarray(rng.normal(size=size).astype(dtype))
            opt = OPTIMIZERS[name]()
            for _ in range(6):
                opt.step(data, cupy.asarray(rng.normal(size=size).astype(dtype)))
            return {"data": cupy.asnumpy(data), **{k: cupy.asnumpy(v) for k, v in opt.state.items()}}

        monkeypatch.delenv("XPMLP_REFERENCE", raising=False)
        fake_cupy.COUNTS.reset()
        fast = run()
        if cupy is fake_cupy.installed_module():  # the fused kernels ran (their C, on the host)
            # one launch per update over the whole flat buffer
            assert sum(v for k, v in fake_cupy.COUNTS.by_name.items() if k.startswith("xpmlp_")) == 6
        monkeypatch.setenv("XPMLP_REFERENCE", "1")
        ref = run()
        for k in ref:
            np.testing.assert_allclose(fast[k], ref[k], rtol=rtol, atol=rtol)
