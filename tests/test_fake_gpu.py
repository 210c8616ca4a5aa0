"""The CuPy backend without a GPU: the stand-in keeps CuPy's contracts, and xpmlp keeps them too.

- the stand-in (tests/fake_cupy.py) against the real ``cupy`` package: signatures, the keywords
  ufuncs take, Device equality (CuPy imports without a GPU, so this runs in CI);
- models built with ``device="cuda:1"`` do all their work on GPU 1 while GPU 0 is current;
- ``device="cuda"``, ``"cuda:N"`` and ``"auto"`` resolve through CuPy's own device API;
- no host synchronisation inside an epoch (one per epoch, for the loss), for every loss and metric;
- the launch budget of one training step;
- the fused kernels' probe, and its fallback with one warning.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings

import numpy as np
import pytest

import fake_cupy
import xpmlp
from xpmlp import Adam, SGD, to_numpy

REQUIRE_TOOLS = os.environ.get("XPMLP_REQUIRE_CUDA_TOOLS", "") == "1"


@pytest.fixture
def real_cupy():
    """The installed cupy package (no GPU needed); a failure, not a skip, where CI requires it."""
    try:
        import cupy
    except ImportError as e:
        if REQUIRE_TOOLS:
            pytest.fail(f"XPMLP_REQUIRE_CUDA_TOOLS=1 but cupy does not import: {e}")
        pytest.skip("cupy is not installed")
    assert not isinstance(cupy.ndarray, type(fake_cupy.ndarray)) or cupy.ndarray is not fake_cupy.ndarray
    return cupy


@pytest.fixture
def fake():
    with fake_cupy.installed(device_count=2) as cupy:
        fake_cupy.COUNTS.reset()
        yield cupy


def _params(sig):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


# -- the stand-in keeps CuPy's contracts -----------------------------------------------------------
def test_signatures_match_real_cupy(real_cupy):
    for name in fake_cupy.SIGNATURE_CHECKED:
        real = getattr(real_cupy, name)
        assert _params(inspect.signature(real)) == _params(fake_cupy.signature_of(name)), name


def _cython_signature(doc: str) -> inspect.Signature:
    """The signature on the first line of a Cython method's docstring, as a Python signature."""
    first = doc.strip().splitlines()[0]
    params = re.fullmatch(r"[\w.]+\((.*)\)(?:\s*->.*)?", first).group(1)
    params = re.sub(r"\b(?:Py_ssize_t|int|bint|object)\s+(\w)", r"\1", params)  # drop Cython types
    return inspect.signature(eval(f"lambda {params}: None"))


@pytest.mark.parametrize("method", ["get", "astype", "copy", "reshape", "fill", "transpose", "sum", "mean",
                                    "max", "min", "all", "any", "argmax", "take", "item", "tolist", "ravel",
                                    "swapaxes", "squeeze", "view", "set"])
def test_array_methods_match_real_cupy(real_cupy, method):
    real = getattr(real_cupy.ndarray, method)
    try:
        expected = inspect.signature(real)
    except ValueError:
        expected = _cython_signature(real.__doc__)
    assert _params(expected) == _params(inspect.signature(getattr(fake_cupy.ndarray, method))), method


def test_ufuncs_exist_in_cupy_and_take_the_same_keywords(real_cupy):
    for name, uf in fake_cupy._UFUNCS.items():
        if name == "matmul":
            continue
        real = getattr(real_cupy, name)
        assert isinstance(real, real_cupy.ufunc), name
        assert (real.nin, real.nout) == (uf.nin, uf.nout), name
    # CuPy checks keywords before touching the GPU: a refused keyword is a TypeError here, an
    # accepted one gets as far as the (missing) driver.
    for keyword, value in (("out", None), ("dtype", None), ("casting", "same_kind")):
        with pytest.raises(Exception) as info:
            real_cupy.exp(1.0, **{keyword: value})
        assert "Wrong arguments" not in str(info.value), keyword
        assert keyword in fake_cupy.ufunc._KEYWORDS
    for keyword in ("where", "order", "subok"):
        with pytest.raises(TypeError, match="Wrong arguments"):
            real_cupy.exp(1.0, **{keyword: True})
        with pytest.raises(TypeError, match="Wrong arguments"):
            fake_cupy._UFUNCS["exp"](1.0, **{keyword: True})


def test_elementwise_kernels_take_cupys_keywords(real_cupy, fake):
    """ElementwiseKernel calls take size=, stream= and block_size= only (CuPy checks before the GPU)."""
    kernels = [m.ElementwiseKernel("raw T x", "T y", "y = x[i];", "xpmlp_copy") for m in (real_cupy, fake)]
    for k in kernels:
        with pytest.raises(TypeError, match="Wrong arguments"):
            k(1.0, foo=2)
    with pytest.raises(Exception) as info:  # accepted: it gets as far as the (missing) driver
        kernels[0](1.0, size=3, stream=None, block_size=64)
    assert "Wrong arguments" not in str(info.value)
    x = fake.asarray(np.arange(3.0, dtype=np.float32))
    y = fake.empty(3, dtype=np.float32)
    assert kernels[1](x, y, stream=None, block_size=64) is y
    np.testing.assert_array_equal(y.get(), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="Loop size is undecided"):
        fake.ElementwiseKernel("raw T x", "raw T y", "y[i] = x[i];", "xpmlp_raw_copy")(x, y)


def test_streams_events_and_pinned_memory_match_real_cupy(real_cupy):
    """What Backend.copy_ahead uses: cupyx.empty_pinned, cupy.cuda.Stream and Event, get_current_stream."""
    import cupyx

    def sig(f):
        try:
            return _params(inspect.signature(f))
        except ValueError:  # a Cython function without a signature: read its docstring
            return _params(_cython_signature(f.__doc__))

    assert sig(cupyx.empty_pinned) == sig(fake_cupy.empty_pinned)
    with fake_cupy.installed() as fake:
        import cupyx as fake_cupyx

        assert fake_cupyx.empty_pinned is fake_cupy.empty_pinned
        for name in ("Stream", "Event", "get_current_stream"):
            assert sig(getattr(real_cupy.cuda, name)) == sig(getattr(fake.cuda, name)), name
        for cls, methods in (("Stream", ("record", "wait_event", "synchronize")), ("Event", ("record", "synchronize"))):
            real, stand_in = getattr(real_cupy.cuda, cls), getattr(fake.cuda, cls)
            for method in methods:
                assert sig(getattr(real, method)) == sig(getattr(stand_in, method)), (cls, method)
            assert isinstance(real.done, property) and isinstance(stand_in.done, property), cls
        assert isinstance(real_cupy.cuda.Stream.null, real_cupy.cuda.Stream)
        assert fake.cuda.Stream.null == fake.cuda.get_current_stream()
    # CuPy checks Event's flags before asking the driver
    for mod in (real_cupy.cuda, fake_cupy):
        with pytest.raises(ValueError, match="Timing must be disabled for interprocess events"):
            mod.Event(interprocess=True)


def test_devices_compare_as_in_cupy(real_cupy):
    for mod in (real_cupy.cuda, fake_cupy):
        assert mod.Device(1) == mod.Device(1) and mod.Device(0) != mod.Device(1)
        assert mod.Device(0) != 0  # a Device never equals an int
        assert mod.Device(1).id == 1 and int(mod.Device(1)) == 1


def test_real_cupy_refuses_what_the_fake_refuses(real_cupy, fake):
    for call in (lambda m: m.asarray(0.0, device=0), lambda m: m.zeros(3, device=0),
                 lambda m: m.arange(3, device=0), lambda m: m.sum(1, foo=2)):
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            call(real_cupy)
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            call(fake)


def test_fake_arrays_refuse_numpy_and_other_devices(fake):
    a = fake.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        fake.add(a, np.ones(3))
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3)
    with fake.cuda.Device(1):
        b = fake.zeros_like(a)  # new arrays go on the current device, not the prototype's
        assert b.device == fake.cuda.Device(1)
        with pytest.raises(ValueError, match="not the current device"):
            a * 2.0
    np.testing.assert_array_equal(a.get(), [0.0, 1.0, 2.0])
    assert fake_cupy.COUNTS.syncs == 1


# -- resolving devices through CuPy's API ----------------------------------------------------------
def test_device_strings_resolve_on_the_fake_gpu(fake):
    assert xpmlp.resolve("cuda").device == fake.cuda.Device(0)
    assert xpmlp.resolve("cuda:1").device == fake.cuda.Device(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xpmlp.resolve("auto").name == "cupy"
    b = xpmlp.resolve("cuda:1")
    assert b.name == "cupy" and b.is_gpu and b.xp.__name__ == "array_api_compat.cupy"
    with pytest.raises(ValueError, match=r"'cuda:2' was requested but only 2 CUDA device"):
        xpmlp.resolve("cuda:2")
    # xp= with a CuPy namespace takes CuPy devices (an int or a Device), never passes device= to cupy
    assert xpmlp.resolve(1, xp=fake).device == fake.cuda.Device(1)
    assert xpmlp.resolve(fake.cuda.Device(1), xp=b.xp).device == fake.cuda.Device(1)
    assert xpmlp.resolve(None, xp=fake).device == fake.cuda.Device(0)


def test_no_device_means_auto_and_picks_the_gpu(fake, monkeypatch):
    monkeypatch.delenv("XPMLP_DEVICE")
    model = xpmlp.MLP([2, 3, 1], seed=0)
    assert model.backend.name == "cupy"


def test_zero_gpus_fall_back_with_a_warning():
    with fake_cupy.installed(device_count=0):
        with pytest.warns(RuntimeWarning, match="no CUDA device was found.*falling back to the CPU"):
            assert xpmlp.resolve("cuda").name == "numpy"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert xpmlp.resolve("auto").name == "numpy"


def test_a_gpu_that_cannot_allocate_falls_back(fake, monkeypatch):
    def broken(*a, **k):
        raise fake_cupy.CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    monkeypatch.setattr(fake, "zeros", broken)
    with pytest.warns(RuntimeWarning, match="CUDA device 0 cannot be used.*InsufficientDriver"):
        assert xpmlp.resolve("cuda").name == "numpy"
    # "auto" is silent only when there is no GPU; a GPU that is there but broken is worth a word
    with pytest.warns(RuntimeWarning, match="'auto' is not usable: CUDA device 0 cannot be used"):
        assert xpmlp.resolve("auto").name == "numpy"


def test_without_nvrtc_the_gpu_is_refused_before_training():
    """CuPy compiles even its ufuncs with NVRTC: a GPU without it must mean the CPU fallback, chosen
    when the model is made, not a crash at the first kernel of fit."""
    with fake_cupy.installed(nvrtc=False):
        for spec in ("cuda", "auto"):
            with pytest.warns(RuntimeWarning, match=f"'{spec}' is not usable: CUDA device 0 cannot be used.*libnvrtc"):
                model = xpmlp.MLP([2, 4, 2], device=spec, seed=0)
            assert model.backend.name == "numpy"
            model.fit(np.zeros((8, 2)), np.zeros(8, dtype=int), loss="softmax_cross_entropy", epochs=1)


# -- a model on GPU 1 keeps all its work there ----------------------------------------------------
def _on(fake, arrays, index):
    for a in arrays:
        assert a.device == fake.cuda.Device(index), a.device


@pytest.mark.parametrize("optimizer", [lambda: Adam(lr=1e-2), lambda: SGD(lr=0.1, momentum=0.9),
                                       lambda: xpmlp.RMSprop(lr=1e-2, momentum=0.5, centered=True)])
def test_model_on_gpu1_trains_predicts_saves_and_loads_while_gpu0_is_current(fake, tmp_path, optimizer):
    from xpmlp.callbacks import EarlyStopping

    X, y = xpmlp.datasets.make_spirals(120, n_classes=3, seed=0)
    assert fake.cuda.runtime.getDevice() == 0
    model = xpmlp.MLP([2, 16, 16, 3], dropout=0.1, standardize=True, device="cuda:1", seed=0)
    history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=optimizer(), epochs=3, batch_size=16,
                        validation_split=0.2, metrics=["accuracy", "top_2_accuracy"],
                        callbacks=[EarlyStopping(patience=1, restore_best_weights=True)])
    assert fake.cuda.runtime.getDevice() == 0
    _on(fake, [p.value for p in model.parameters()] + [model.flat.data, model.flat.grad], 1)
    _on(fake, model.optimizer.state_dict()["state"].values(), 1)
    _on(fake, model.layers[0].state.values(), 1)
    assert np.isfinite(history.history["val_loss"]).all()
    p = model.predict(X)
    _on(fake, [p], 1)
    np.testing.assert_allclose(to_numpy(p).sum(axis=1), 1.0, rtol=1e-6)
    assert set(model.evaluate(X, y, metrics=["accuracy"])) == {"loss", "accuracy"}
    model.save(tmp_path / "m.safetensors")
    loaded = xpmlp.load(tmp_path / "m.safetensors", device="cuda:1")
    _on(fake, [p.value for p in loaded.parameters()] + [loaded.flat.data, loaded.flat.grad], 1)
    _on(fake, loaded.optimizer.state_dict()["state"].values(), 1)
    np.testing.assert_allclose(to_numpy(loaded.predict(X)), to_numpy(p), rtol=1e-6)
    loaded.fit(X, y, epochs=1, batch_size=32)  # resumes on GPU 1 with its optimiser state
    model.set_weights(model.get_weights())
    _on(fake, [p.value for p in model.parameters()], 1)
    assert fake.cuda.runtime.getDevice() == 0


def test_estimator_on_gpu1(fake):
    X, y = xpmlp.datasets.make_spirals(90, n_classes=3, seed=1)
    clf = xpmlp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, device="cuda:1", random_state=0)
    clf.fit(X, y)
    assert clf.predict_proba(X).shape == (90, 3) and 0 <= clf.score(X, y) <= 1
    clf.partial_fit(X, y)
    reg = xpmlp.MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, device="cuda:1", random_state=0)
    reg.fit(X, X[:, 0])
    assert reg.predict(X).shape == (90,)
    assert fake.cuda.runtime.getDevice() == 0


def test_estimators_default_to_float32_on_a_gpu(fake):
    X, y = xpmlp.datasets.make_spirals(60, n_classes=2, seed=1)
    clf = xpmlp.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, device="cuda", random_state=0)
    clf.fit(X.astype(np.float64), y)
    assert clf.coefs_[0].dtype == np.float32
    cpu = xpmlp.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, device="cpu", random_state=0)
    assert cpu.fit(X.astype(np.float64), y).coefs_[0].dtype == np.float64  # follows the input, as scikit-learn


# -- the fused kernels: probed at first use, with a fallback -----------------------------------------
def _train(device="cuda"):
    X, y = xpmlp.datasets.make_spirals(64, n_classes=2, seed=0)
    model = xpmlp.MLP([2, 8, 2], device=device, seed=0)
    model.fit(X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=1e-2), epochs=1, batch_size=16)
    return model


def test_fused_kernels_are_probed_and_used(fake, monkeypatch):
    from xpmlp import backend

    monkeypatch.setattr(backend, "_CUPY_KERNELS", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train()
    assert fake_cupy.COUNTS.by_name["xpmlp_bias_identity"] == 1  # the probe
    assert fake_cupy.COUNTS.by_name["xpmlp_adam"] == 4  # 4 batches, one update over the flat buffer each


def test_a_fused_kernel_that_fails_means_one_warning_and_the_reference_path(fake, monkeypatch):
    """NVRTC works (ufuncs run) but our kernel source fails on this GPU: the reference path takes over."""
    from xpmlp import backend

    class Rejected(fake_cupy.ElementwiseKernel):
        def __call__(self, *args, **kwargs):
            raise RuntimeError("NVRTC_ERROR_COMPILATION: xpmlp_sgd: unsupported for this architecture (simulated)")

    monkeypatch.setattr(backend, "_CUPY_KERNELS", {})
    monkeypatch.setattr(fake, "ElementwiseKernel", Rejected)
    with pytest.warns(RuntimeWarning, match="fused CuPy kernels failed to compile or run.*NVRTC_ERROR.*reference path") as record:
        first = _train()
        second = _train()
    assert len([w for w in record if "fused" in str(w.message)]) == 1
    assert not any(k.startswith("xpmlp_") for k in fake_cupy.COUNTS.by_name)
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    reference = _train()
    for a, b, c in zip(first.get_weights(), second.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


# -- no host synchronisation inside an epoch -------------------------------------------------------
def _fit_syncs(loss, y, metrics, n_batches, epochs, **fit_kwargs):
    X = np.random.default_rng(0).normal(size=(8 * n_batches, 4))
    model = xpmlp.MLP([4, 6, y.shape[1] if y.ndim == 2 else (3 if loss == "softmax_cross_entropy" else 1)],
                      device="cuda", seed=0)
    model.fit(X, y[: len(X)], loss=loss, epochs=1, batch_size=8)  # prepare once: build, compile probe
    fake_cupy.COUNTS.reset()
    before = fake_cupy.COUNTS.syncs
    model.fit(X, y[: len(X)], epochs=epochs, batch_size=8, metrics=metrics, **fit_kwargs)
    return fake_cupy.COUNTS.syncs - before, dict(fake_cupy.COUNTS.sync_reasons)


@pytest.mark.parametrize("loss,metrics", [
    ("softmax_cross_entropy", ["accuracy", "top_2_accuracy"]),
    ("sigmoid_binary_cross_entropy", ["accuracy"]),
    ("mse", ["mse", "mae", "r2"]),
    ("mae", ["mae"]),
    ("huber", ["mse"]),
])
def test_syncs_do_not_grow_with_batches(fake, loss, metrics):
    rng = np.random.default_rng(1)
    y = {"softmax_cross_entropy": rng.integers(0, 3, 160), "sigmoid_binary_cross_entropy": rng.integers(0, 2, 160)
         }.get(loss, rng.normal(size=160))
    few, _ = _fit_syncs(loss, y, metrics, n_batches=2, epochs=2)
    many, reasons = _fit_syncs(loss, y, metrics, n_batches=20, epochs=2)
    assert few == many, reasons  # per-epoch reads only: none per batch
    assert "boolean-mask indexing" not in reasons and "boolean-mask assignment" not in reasons, reasons


def test_one_sync_per_epoch_for_the_loss(fake):
    y = np.random.default_rng(1).integers(0, 3, 160)
    two, _ = _fit_syncs("softmax_cross_entropy", y, [], n_batches=20, epochs=2)
    five, reasons = _fit_syncs("softmax_cross_entropy", y, [], n_batches=20, epochs=5)
    assert five - two == 3, reasons  # exactly one more read per epoch


# -- the launch budget of one step ------------------------------------------------------------------
# 784-512-512-10 ReLU, softmax cross-entropy, Adam, batch 128, float32. The counts are written here
# so that a regression fails. The fused step (xpmlp.step_cuda.CupyOps): 2 gathers of the batch,
# 3 forward GEMMs, 2 bias+ReLU kernels, 1 softmax cross-entropy kernel (value and gradient, the
# last bias added), 3 weight-gradient GEMMs, 3 bias sums, 2 input-gradient GEMMs, 2 ReLU-backward
# kernels and 1 Adam update over the flat buffer (issue 14's target: at most 20).
FAST_STEP_LAUNCHES = 19
FAST_STEP_KERNELS = {"matmul": 8, "sum": 3, "take": 2, "xpmlp_bias_relu": 2, "xpmlp_relu_grad": 2,
                     "xpmlp_softmax_ce_labels_bias": 1, "xpmlp_adam": 1}
REFERENCE_STEP_LAUNCHES = 63


def _step_counts(monkeypatch, reference: bool):
    if reference:
        monkeypatch.setenv("XPMLP_REFERENCE", "1")
    else:
        monkeypatch.delenv("XPMLP_REFERENCE", raising=False)
    rng = np.random.default_rng(0)
    X = rng.random((128 * 6, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128 * 6)
    model = xpmlp.MLP([784, 512, 512, 10], device="cuda", dtype="float32", seed=0)
    model.fit(X[:128], y[:128], loss="softmax_cross_entropy", optimizer=Adam(lr=1e-3), epochs=1, batch_size=128)
    counts = {}
    for steps in (2, 6):
        fake_cupy.COUNTS.reset()
        model.fit(X[: 128 * steps], y[: 128 * steps], epochs=1, batch_size=128)
        counts[steps] = (fake_cupy.COUNTS.snapshot(), dict(fake_cupy.COUNTS.by_name))
    per_step = {k: (counts[6][0][k] - counts[2][0][k]) / 4 for k in ("launches", "syncs", "h2d")}
    by_name = {k: (counts[6][1].get(k, 0) - counts[2][1].get(k, 0)) / 4 for k in counts[6][1]}
    return per_step, {k: v for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v}, counts[6][0]


def test_launch_and_sync_budget_of_one_step(fake, monkeypatch, capsys):
    fast, fast_names, fast_epoch = _step_counts(monkeypatch, reference=False)
    ref, ref_names, _ = _step_counts(monkeypatch, reference=True)
    with capsys.disabled():
        print(f"\n[launch budget] 784-512-512-10 ReLU, softmax CE, Adam, batch 128, float32, per step: "
              f"fast path {fast['launches']:g} launches, reference path {ref['launches']:g}; "
              f"syncs per step {fast['syncs']:g}, host-to-device copies per step {fast['h2d']:g}; "
              f"one 6-step epoch: {fast_epoch}")
        print(f"[launch budget] fast path by kernel: {fast_names}")
    assert fast["syncs"] == 0 and ref["syncs"] == 0
    assert fast["h2d"] == 0 and ref["h2d"] == 0
    # a one-epoch fit: 3 reads check the data before training (finite X, the label range), then
    # the epoch's losses are read once; copies: X, y, the epoch's permutation
    assert fast_epoch["syncs"] == 4 and fast_epoch["h2d"] == 3
    assert fast["launches"] <= FAST_STEP_LAUNCHES <= 20, fast_names
    assert fast_names == FAST_STEP_KERNELS  # each kernel once where it should be: no stray copy or fill
    assert ref["launches"] <= REFERENCE_STEP_LAUNCHES, ref_names


def test_gradcheck_on_gpu1_while_gpu0_is_current(fake):
    from xpmlp.testing import gradcheck

    rng = np.random.default_rng(0)
    b = xpmlp.resolve("cuda:1")
    x = b.from_host(rng.normal(size=(4, 3)))
    assert fake.cuda.runtime.getDevice() == 0
    gradcheck(xpmlp.Dense(2), x)
    gradcheck(xpmlp.Tanh(), x)
    model = xpmlp.MLP([3, 5, 2], activation="tanh", device="cuda:1", dtype="float64", seed=0)
    gradcheck(model, x, b.from_host(np.array([0, 1, 1, 0])), loss="softmax_cross_entropy")
    assert fake.cuda.runtime.getDevice() == 0


# -- TF32 ---------------------------------------------------------------------------------------------
def test_tf32_compute_type_functions_match_real_cupy(real_cupy):
    """The stand-in's get/set_compute_type and constants are CuPy's (read from the installed package)."""
    real = real_cupy._core._routines_linalg
    with fake_cupy.installed() as fake:
        stand_in = fake._core._routines_linalg
        for name in ("get_compute_type", "set_compute_type"):
            assert _params(_cython_signature(getattr(real, name).__doc__)) == \
                   _params(inspect.signature(getattr(stand_in, name))), name
        for name in ("COMPUTE_TYPE_TBD", "COMPUTE_TYPE_DEFAULT", "COMPUTE_TYPE_TF32"):
            assert getattr(real, name) == getattr(stand_in, name), name


def test_tf32_is_on_only_while_a_tf32_model_runs(fake):
    X, y = xpmlp.datasets.make_spirals(64, n_classes=3, seed=0)
    routines = fake._core._routines_linalg
    plain = xpmlp.MLP([2, 8, 3], device="cuda", seed=0)
    plain.fit(X, y, loss="softmax_cross_entropy", epochs=1, batch_size=32)
    assert fake_cupy.COUNTS.compute_types == []  # off by default: CuPy's setting is never touched
    fast = xpmlp.MLP([2, 8, 3], device="cuda", seed=0, tf32=True)
    seen = []

    class Probe(xpmlp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(routines.get_compute_type(np.float32))

    fast.fit(X, y, loss="softmax_cross_entropy", epochs=1, batch_size=32, callbacks=[Probe()])
    assert seen == [routines.COMPUTE_TYPE_TF32]  # inside fit: float32 products may use TF32
    assert routines.get_compute_type(np.float32) == routines.COMPUTE_TYPE_DEFAULT  # put back afterwards
    fast.predict(X)
    assert fake_cupy.COUNTS.compute_types[-2:] == [("float32", 7), ("float32", 1)]
    # the stand-in computes in float32 either way: same weights as without TF32
    for a, b in zip(plain.get_weights(), fast.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tf32_does_nothing_on_the_cpu():
    X, y = xpmlp.datasets.make_spirals(64, n_classes=3, seed=0)
    runs = [xpmlp.MLP([2, 8, 3], device="cpu", seed=0, tf32=t) for t in (False, True)]
    for m in runs:
        m.fit(X, y, loss="softmax_cross_entropy", epochs=2, batch_size=32)
    for a, b in zip(runs[0].get_weights(), runs[1].get_weights()):
        np.testing.assert_array_equal(a, b)
