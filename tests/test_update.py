"""Each optimiser update is written once (xpmlp.update) and every executor made from it agrees.

- NumPy in place, both executors: chunked passes (xpmlp.kernels_numpy.chunked) and numba's
  compiled loop (kernels_numpy.compiled, from Update.loop_source) == the Array API reference,
  BITWISE, for every optimiser and option, float32 and float64, over several steps and chunk
  boundaries (the numba cases skip without numba, unless XPMLP_REQUIRE_NUMBA=1, as .ci/run
  sets: the test extras install it);
- the CUDA ElementwiseKernel body, compiled for the host by g++ (tests/cuda_host.py, without
  multiply-add contraction) == the reference, BITWISE (on a GPU, NVRTC's FMA contraction and
  float32 denormal flushing make it close instead: 1e-6 relative in float32, 1e-12 in float64);
- the same through the fake CuPy, one launch per update;
- every generated CUDA source compiles with NVRTC for sm_80 and sm_90;
- random descriptions (the lowering to in-place operations on scratch buffers is the part that
  could go wrong) give the same bits on all three;
- state_dict / load_state_dict: a round trip continues exactly as an uninterrupted run, and
  wrong names, shapes, dtypes are refused with clear errors.

The reference itself is checked against torch.optim and hand-derived updates in test_optim.py.
"""

from __future__ import annotations

import os
import random

import array_api_compat.numpy as xnp
import numpy as np
import pytest

import fake_cupy
import xpmlp.optim
from cuda_host import HostElementwiseKernel, find_compiler
from test_cuda_kernels import _numbered, _nvrtc_compile, _unavailable, cupy_kernel_source, nvrtc_setup  # noqa: F401
from xpmlp import SGD, Adagrad, Adam, AdamW, RMSprop, kernels_numpy
from xpmlp.schedules import CosineDecay, ExponentialDecay, OneCycle, Scaled, StepDecay
from xpmlp.update import Update

CONFIGS = {
    "sgd": lambda: SGD(lr=0.1),
    "sgd-l2": lambda: SGD(lr=0.1, weight_decay=0.01),
    "sgd-momentum-dampening": lambda: SGD(lr=0.1, momentum=0.9, dampening=0.1),
    "sgd-nesterov-l2": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd-momentum-stepdecay": lambda: SGD(lr=StepDecay(0.1, step_size=2, gamma=0.5), momentum=0.8),
    "adam": lambda: Adam(lr=1e-2),
    "adam-l2-clip": lambda: Adam(lr=1e-2, weight_decay=1e-3, clipnorm=1.0),
    "adam-cosine": lambda: Adam(lr=CosineDecay(1e-2, total_steps=10, warmup_steps=2), beta_1=0.8, eps=1e-6),
    "adamw": lambda: AdamW(lr=1e-2, weight_decay=0.1),
    "adamw-onecycle-clip": lambda: AdamW(lr=OneCycle(1e-2, total_steps=10), clipnorm=0.5),
    "rmsprop": lambda: RMSprop(lr=1e-2),
    "rmsprop-centered": lambda: RMSprop(lr=1e-2, centered=True),
    "rmsprop-momentum-l2": lambda: RMSprop(lr=1e-2, momentum=0.5, weight_decay=1e-2),
    "rmsprop-centered-momentum": lambda: RMSprop(lr=1e-2, alpha=0.9, momentum=0.5, centered=True),
    "adagrad": lambda: Adagrad(lr=0.1),
    "adagrad-decay-init-l2": lambda: Adagrad(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.5, weight_decay=1e-2),
    "adagrad-exponential": lambda: Adagrad(lr=ExponentialDecay(0.1, 0.5, 2), initial_accumulator_value=0.1),
}
DTYPES = ["float32", "float64"]
SIZE, CHUNK, N_STEPS = 2500, 1000, 5  # three chunks, the last one partial


class StandInKernels:
    """The part of xpmlp.kernels_cupy's ``Kernels`` the optimisers use, for any kernel class:
    ``elementwise(spec)`` (one cached ``kernel_class(*spec)``: HostElementwiseKernel, or CuPy's or
    fake CuPy's ElementwiseKernel) and ``usable(*arrays)`` (arrays of type ``ndarray``, one shape,
    C-contiguous, one dtype of float16/32/64), as that class has them."""

    def __init__(self, kernel_class, ndarray=np.ndarray):
        self.kernel_class, self.ndarray, self.cache, self.specs = kernel_class, ndarray, {}, []

    def usable(self, *arrays):
        first = arrays[0]
        return (all(isinstance(a, self.ndarray) and a.flags.c_contiguous and a.dtype == first.dtype
                    and a.shape == first.shape for a in arrays)
                and str(first.dtype) in ("float16", "float32", "float64"))

    def elementwise(self, spec):
        if spec not in self.cache:
            self.specs.append(spec)
            self.cache[spec] = self.kernel_class(*spec)
        return self.cache[spec]


def require_numba():
    """Skip without numba (the GPU machine's image has none), or fail when XPMLP_REQUIRE_NUMBA=1."""
    if kernels_numpy.numba_jit() is None:
        if os.environ.get("XPMLP_REQUIRE_NUMBA", "") == "1":
            pytest.fail("XPMLP_REQUIRE_NUMBA=1 but numba is not usable (pip install numba)")
        pytest.skip("numba is not usable: not installed (pip install 'xpmlp[fast]'), or NUMBA_DISABLE_JIT is set")


class NumpyExecutor:
    """xpmlp.kernels_numpy with ``inplace`` pinned to one executor: ``chunked`` or ``compiled``."""

    def __init__(self, name):
        self.name = name
        self.usable = kernels_numpy.usable

    def inplace(self, update):
        run = getattr(kernels_numpy, self.name)(update)
        assert run is not None, f"kernels_numpy.{self.name} is unavailable"
        return run


NUMPY_EXECUTORS = ["chunked", "compiled"]


@pytest.fixture(scope="module")
def host_compiler():
    if find_compiler() is None:
        _unavailable("g++ is not installed; tests/cuda_host.py needs it")


def _grads(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=SIZE).astype(dtype), [rng.normal(size=SIZE).astype(dtype) for _ in range(N_STEPS)]


def _run(make, dtype, kernels):
    """(data, state) as NumPy after N_STEPS updates through make_update(xp, kernels)."""
    data, grads = _grads(dtype)
    opt = make()
    update = opt.make_update(xnp, kernels)
    for g in grads:
        update(data, g)
    assert data.dtype == np.dtype(dtype) and opt.t == N_STEPS
    return data, {k: v.copy() for k, v in opt.state.items()}


def _assert_same_bits(got, want):
    (gd, gs), (wd, ws) = got, want
    assert gd.dtype == wd.dtype
    np.testing.assert_array_equal(gd, wd)
    assert gs.keys() == ws.keys()
    for k in ws:
        assert gs[k].dtype == ws[k].dtype
        np.testing.assert_array_equal(gs[k], ws[k], err_msg=k)


@pytest.mark.parametrize("executor", NUMPY_EXECUTORS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CONFIGS)
def test_numpy_executors_are_bitwise_equal_to_reference(monkeypatch, name, dtype, executor):
    monkeypatch.setattr(kernels_numpy, "CHUNK", CHUNK)
    if executor == "compiled":
        require_numba()
    want = _run(CONFIGS[name], dtype, None)
    _assert_same_bits(_run(CONFIGS[name], dtype, NumpyExecutor(executor)), want)
    monkeypatch.setattr(kernels_numpy, "LOOP_MIN", 1000)  # SIZE is above it: the loop, when numba is here
    _assert_same_bits(_run(CONFIGS[name], dtype, kernels_numpy), want)  # what fit uses


def test_numba_is_used_when_installed(monkeypatch):
    """The test extras install numba: the compiled loop must be what NumPy updates of LOOP_MIN
    elements or more run here; smaller ones, float16, and runs without numba (or with its JIT
    off) take the chunked passes."""
    require_numba()
    import numba

    assert kernels_numpy.numba_jit() is not None
    assert kernels_numpy.executor_name() == f"numba {numba.__version__} loop"
    update = Adam().description()
    assert kernels_numpy.compiled(update) is not None
    ran = []
    monkeypatch.setattr(kernels_numpy, "compiled", lambda u: lambda a, v: ran.append(("loop", a["p"].size)))
    monkeypatch.setattr(kernels_numpy, "chunked", lambda u: lambda a, v: ran.append(("passes", a["p"].size)))
    run = kernels_numpy.inplace(update)
    n = kernels_numpy.LOOP_MIN
    for size, dtype in [(n - 1, np.float32), (n, np.float32), (n, np.float64), (n, np.float16), (3 * n, np.float64)]:
        run({k: np.zeros(size, dtype) for k in ("p", "g", "m", "v")}, {})
    assert ran == [("passes", n - 1), ("loop", n), ("loop", n), ("passes", n), ("loop", 3 * n)]
    monkeypatch.undo()

    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    assert kernels_numpy.numba_jit.__wrapped__() is None
    monkeypatch.setattr(kernels_numpy, "numba_jit", lambda: None)
    assert kernels_numpy.compiled(update) is None
    assert kernels_numpy.executor_name() == "NumPy chunked passes"
    monkeypatch.setattr(kernels_numpy, "LOOP_MIN", 100)
    _assert_same_bits(_run(CONFIGS["adam"], "float32", kernels_numpy), _run(CONFIGS["adam"], "float32", None))


def test_a_loop_numba_cannot_compile_falls_back_to_the_passes_with_a_warning(monkeypatch):
    """A numba (or llvmlite) error at the loop's first call for a dtype: a RuntimeWarning, then the
    passes, the buffers untouched by the failed call and the result the reference's; other errors
    propagate."""
    require_numba()
    from numba.core.errors import TypingError

    def broken(update):
        def run(arrays, values):
            raise TypingError("Failed in nopython mode pipeline (step: nopython frontend)\nmore")
        return run

    monkeypatch.setattr(kernels_numpy, "compiled", broken)
    monkeypatch.setattr(kernels_numpy, "LOOP_MIN", 1000)
    with pytest.warns(RuntimeWarning, match=r"numba could not compile the adam update \(TypingError: Failed in "
                                            r"nopython mode pipeline \(step: nopython frontend\)\); NumPy's passes"):
        got = _run(CONFIGS["adam"], "float32", kernels_numpy)
    _assert_same_bits(got, _run(CONFIGS["adam"], "float32", None))

    def failing(update):
        def run(arrays, values):
            raise MemoryError("not numba's")
        return run

    monkeypatch.setattr(kernels_numpy, "compiled", failing)
    with pytest.raises(MemoryError, match="not numba's"):
        _run(CONFIGS["adam"], "float32", kernels_numpy)


def test_small_models_do_not_import_numba():
    """numba's start-up (about 0.7 s) is paid only by updates that use the loop: a fit of a small
    model in a fresh process never imports numba; one with a buffer of LOOP_MIN elements does."""
    require_numba()
    code = """if True:
        import sys, numpy as np, xpmlp
        from xpmlp import kernels_numpy
        hidden = int(sys.argv[1])
        X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
        model = xpmlp.MLP([8, hidden, 3], seed=0)
        model.fit(X, np.arange(64) % 3, loss="softmax_cross_entropy", epochs=1, batch_size=32, verbose=0)
        print(model.flat.data.shape[0] >= kernels_numpy.LOOP_MIN, "numba" in sys.modules)
    """
    import subprocess
    import sys

    def run(hidden):
        done = subprocess.run([sys.executable, "-c", code, str(hidden)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    assert run(16) == ["False", "False"]
    assert run(8192) == ["True", "True"]  # 8*8192 + 8192 + 8192*3 + 3 parameters


def test_loop_source_names_cannot_meet_python_names():
    """Temporaries, host scalars and arrays named like Python builtins or the loop's own names."""
    require_numba()
    u = Update("""
        range = g * update
        p = p - range * sqrt(m)
        m = range
    """, state=("m",), name="names")
    src = u.loop_source()
    assert src.startswith("def _update(_a_p, _a_g, _a_m, _h_update):") and "_t_range" in src
    start = {"p": np.arange(1.0, 5.0), "g": np.full(4, 2.0), "m": np.arange(4.0, 8.0)}
    values = u.host_values({"update": 0.5})
    got = {k: v.copy() for k, v in start.items()}
    kernels_numpy.compiled(u)(got, values)
    want = {k: v.copy() for k, v in start.items()}
    u.reference_inplace(xnp, want, values)
    for k in start:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CONFIGS)
def test_host_cuda_kernel_is_bitwise_equal_to_reference(host_compiler, name, dtype):
    """The generated kernel body, compiled by g++ without FMA contraction: the same bits."""
    kernels = StandInKernels(HostElementwiseKernel)
    got = _run(CONFIGS[name], dtype, kernels)
    assert len(kernels.specs) == 1  # one kernel for the whole update, made once
    _assert_same_bits(got, _run(CONFIGS[name], dtype, None))


# float16 has no fast path of its own on NumPy beyond the chunked executor (bitwise, above); on
# CuPy, float16 is a storage type: each expression runs in float32 and rounds to half where it is
# stored, while the reference rounds after every operation. eps 1e-3: 1e-8 is 0 in half precision.
HALF = {
    "sgd-nesterov-l2": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam-l2": lambda: Adam(lr=1e-2, eps=1e-3, weight_decay=1e-3),
    "adamw": lambda: AdamW(lr=1e-2, eps=1e-3),
    # (centered: the reference's half-rounded E[g^2] - E[g]^2 goes negative, a NaN the kernel avoids)
    "rmsprop-momentum": lambda: RMSprop(lr=1e-2, eps=1e-3, momentum=0.5),
    "adagrad-decay-init": lambda: Adagrad(lr=0.1, eps=1e-3, lr_decay=0.1, initial_accumulator_value=0.5),
}


@pytest.mark.parametrize("name", HALF)
def test_float16_host_kernel_is_close_to_reference(host_compiler, monkeypatch, name):
    monkeypatch.setattr(kernels_numpy, "CHUNK", CHUNK)
    got = _run(HALF[name], "float16", StandInKernels(HostElementwiseKernel))
    want = _run(HALF[name], "float16", None)
    _assert_same_bits(_run(HALF[name], "float16", kernels_numpy), want)
    for g, w in [(got[0], want[0])] + [(got[1][k], want[1][k]) for k in want[1]]:
        assert g.dtype == np.float16
        w64 = w.astype(np.float64)
        np.testing.assert_allclose(g.astype(np.float64), w64, rtol=1e-2, atol=1e-2 * float(np.abs(w64).max()))


@pytest.mark.fakegpu
@pytest.mark.parametrize("name", ["sgd-nesterov-l2", "adam-l2-clip", "adamw", "rmsprop-centered-momentum",
                                  "adagrad-decay-init-l2"])
def test_fake_cupy_step_is_one_launch_and_bitwise_equal_to_reference(monkeypatch, name):
    """Optimizer.step on (fake) CuPy arrays: one ElementwiseKernel launch per update, its own CUDA C
    run on the host; with the real Kernels once it has elementwise(), else the stand-in."""
    data, grads = _grads("float32")
    want = _run(CONFIGS[name], "float32", None)
    with fake_cupy.installed() as cupy:
        from xpmlp import backend

        monkeypatch.setattr(backend, "_CUPY_KERNELS", {})
        real = backend.fast_kernels(backend.namespace_of(cupy.zeros(1)))
        if not hasattr(real, "elementwise"):
            monkeypatch.setattr(xpmlp.optim, "fast_kernels", lambda xp: StandInKernels(cupy.ElementwiseKernel, cupy.ndarray))
        d = cupy.asarray(data)
        opt = CONFIGS[name]()
        fake_cupy.COUNTS.reset()
        for g in grads:
            opt.step(d, cupy.asarray(g))
        fused = {k: v for k, v in fake_cupy.COUNTS.by_name.items() if k.startswith("xpmlp_")}
        assert fused == {f"xpmlp_{type(opt).__name__.lower()}": N_STEPS}
        got = cupy.asnumpy(d), {k: cupy.asnumpy(v) for k, v in opt.state.items()}
    _assert_same_bits(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("name", CONFIGS)
def test_gpu_kernel_is_close_to_reference(monkeypatch, name, dtype, tol):
    """On a real GPU (skipped without one): NVRTC contracts multiply-adds into FMAs and CuPy flushes
    float32 denormals, so the fused kernel is close to the reference, not bitwise."""
    from conftest import GPU_REASON

    if GPU_REASON is not None:
        pytest.skip(f"needs CuPy and a GPU: {GPU_REASON}")
    import cupy

    from xpmlp import backend

    monkeypatch.delenv("XPMLP_REFERENCE", raising=False)
    kernels = backend.fast_kernels(backend.namespace_of(cupy.zeros(1)))
    if not hasattr(kernels, "elementwise"):
        kernels = StandInKernels(cupy.ElementwiseKernel, cupy.ndarray)
    data, grads = _grads(dtype)
    opt = CONFIGS[name]()
    update = opt.make_update(backend.namespace_of(cupy.zeros(1)), kernels)
    d = cupy.asarray(data)
    for g in grads:
        update(d, cupy.asarray(g))
    want_data, want_state = _run(CONFIGS[name], dtype, None)
    np.testing.assert_allclose(cupy.asnumpy(d), want_data, rtol=tol, atol=tol)
    for k, v in want_state.items():
        np.testing.assert_allclose(cupy.asnumpy(opt.state[k]), v, rtol=tol, atol=tol, err_msg=k)


def _all_specs():
    """Every distinct kernel the configurations make, renamed apart (one translation unit)."""
    specs = {}
    for make in (*CONFIGS.values(), *HALF.values()):
        spec = make().description().kernel_spec()
        specs.setdefault(spec, spec._replace(name=f"{spec.name}_{len(specs)}"))
    return list(specs.values())


@pytest.mark.parametrize("arch,index_32_bits", [("sm_80", True), ("sm_90", True), ("sm_90", False)],
                         ids=["sm_80", "sm_90", "sm_90-idx64"])
@pytest.mark.parametrize("dtype", [*DTYPES, "float16"])
def test_every_generated_kernel_compiles_with_nvrtc(nvrtc_setup, dtype, arch, index_32_bits):
    """As CuPy 14.2 generates the source for these specs (64-bit indices: buffers over 2**31 elements)."""
    nvrtc, options = nvrtc_setup
    specs = _all_specs()
    assert len(specs) >= 12
    source = "\n".join(cupy_kernel_source(spec, dtype, index_32_bits=index_32_bits) for spec in specs)
    cubin, log = _nvrtc_compile(nvrtc, source, (*options, f"-arch={arch}"))
    assert cubin, f"NVRTC failed for {dtype}, {arch}:\n{log}\n--- source ---\n{_numbered(source)}"


# -- the description language -------------------------------------------------------------------

def test_host_subexpressions_are_folded_in_double():
    u = Update("""
        m = b1 * m + (1 - b1) * g
        p = p - 2 * lr * m
    """, state=("m",), name="demo")
    assert u.scalars == ("b1", "lr")
    assert u.host_names == ("b1", "h0", "h1")
    assert u.host_values({"b1": 0.9, "lr": 0.1, "unused": 5.0}) == {"b1": 0.9, "h0": 1 - 0.9, "h1": 2 * 0.1}
    spec = u.kernel_spec()
    assert spec.in_params == "T g, float64 b1, float64 h0, float64 h1" and spec.out_params == "T p, T m"
    assert spec.operation == "m = (((T)b1 * m) + ((T)h0 * g));\np = (p - ((T)h1 * m));"
    assert spec.name == "xpmlp_demo"
    with pytest.raises(ValueError, match=r"no value for the host scalars \['lr'\]"):
        u.host_values({"b1": 0.9})


@pytest.mark.parametrize("text,match", [
    ("p += g", "only 'name = expression'"),
    ("p, m = g, g", "only 'name = expression'"),
    ("p = p ** 2", "unsupported expression"),
    ("p = exp(g)", "unsupported call"),
    ("p = p - lr * g\nlr = 2 * lr", "cannot assign the host scalar 'lr'"),
    ("t = 2 * lr\np = p - t * g", "uses host scalars only"),
    ("p = p - 'a' * g", "only numbers"),
    ("i = g\np = p - i", r"reserved"),
    ("p = p -", "not a list of assignments"),
])
def test_descriptions_outside_the_language_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        Update(text, state=(), name="bad")


def _apply(update, executor, arrays, values):
    with np.errstate(all="ignore"):  # random descriptions take square roots of negative numbers
        _apply_quietly(update, executor, arrays, values)


def _apply_quietly(update, executor, arrays, values):
    if executor == "reference":
        update.reference_inplace(xnp, arrays, values)
    elif executor == "numpy":
        kernels_numpy.chunked(update)(arrays, values)
    elif executor == "numba":
        kernels_numpy.compiled(update)(arrays, values)
    else:
        kernel = HostElementwiseKernel(*update.kernel_spec())
        kernel(arrays["g"], *(values[h] for h in update.host_names), arrays["p"], *(arrays[s] for s in update.state))


def _random_description(rnd: random.Random) -> str:
    """A few statements over p, g, m, v, temporaries, host scalars a, b and numbers."""
    temps: list[str] = []

    def expr(depth):
        arrays = ["p", "g", "m", "v", *temps]
        if depth == 0 or rnd.random() < 0.25:
            return rnd.choice(arrays)
        kind = rnd.random()
        if kind < 0.1:
            return f"sqrt({expr(depth - 1)})"
        if kind < 0.15:
            return f"-{expr(depth - 1)}"
        host = rnd.choice(["a", "b", "2", "(1 - a)", "(a * b + 0.5)"])
        left, right = expr(depth - 1), (host if rnd.random() < 0.4 else expr(depth - 1))
        if rnd.random() < 0.5:
            left, right = right, left
        op = rnd.choice("+-*/") if not right.startswith(("(", "a", "b", "2")) else rnd.choice("+-*")
        return f"({left} {op} {right})"

    lines = []
    for _ in range(rnd.randint(1, 5)):
        target = rnd.choice(["p", "m", "v", "g", "t0", "t1"])
        lines.append(f"{target} = {expr(3)}")
        if target.startswith("t") and target not in temps:
            temps.append(target)
    lines.append(f"p = {expr(2)}")
    return "\n".join(lines)


def _random_case(seed, dtype):
    rnd = random.Random(seed)
    text = _random_description(rnd)
    update = Update(text, state=("m", "v"), name=f"random{seed}")
    rng = np.random.default_rng(seed)
    start = {k: rng.uniform(0.5, 2.0, size=SIZE).astype(dtype) for k in ("p", "g", "m", "v")}
    values = update.host_values({"a": 0.3, "b": 1.7})
    return text, update, start, values


def _assert_random_case_agrees(seed, dtype, executor):
    """One random description run by ``executor`` and by the reference from the same start: bitwise equal."""
    text, update, start, values = _random_case(seed, dtype)
    results = {}
    for name in ("reference", executor):
        arrays = {k: v.copy() for k, v in start.items()}
        _apply(update, name, arrays, values)
        results[name] = arrays
    for k in ("p", "m", "v", "g"):
        np.testing.assert_array_equal(results[executor][k], results["reference"][k], err_msg=f"{k} of\n{text}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_descriptions_numpy_equals_reference(monkeypatch, dtype):
    monkeypatch.setattr(kernels_numpy, "CHUNK", CHUNK)
    for seed in range(150):
        _assert_random_case_agrees(seed, dtype, "numpy")


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_descriptions_numba_loop_equals_reference(dtype):
    """Each random description is one more numba compile (about 0.2 s): 40 of them per dtype."""
    require_numba()
    for seed in range(40):
        _assert_random_case_agrees(seed, dtype, "numba")


@pytest.mark.parametrize("seed", range(4))
def test_random_descriptions_host_kernel_equals_reference(host_compiler, seed):
    _assert_random_case_agrees(1000 + seed, "float32", "host")


@pytest.mark.parametrize("executor", ["numpy", "numba", "host"])
def test_copies_and_reassigned_gradient_keep_statement_order(executor):
    """v = m copies the OLD m (the reference must not write m back first); g reassigned is a local."""
    if executor == "numba":
        require_numba()
    if executor == "host" and find_compiler() is None:
        _unavailable("g++ is not installed; tests/cuda_host.py needs it")
    update = Update("""
        v = m
        g = g * a
        m = m + g
        p = -p + v
    """, state=("m", "v"), name="order")
    start = {k: np.arange(1.0, 6.0) * s for k, s in (("p", 1), ("g", 10), ("m", 100), ("v", 1000))}
    want = {"p": -start["p"] + start["m"], "m": start["m"] + start["g"] * 0.5, "v": start["m"], "g": start["g"]}
    for executor in ("reference", executor):
        arrays = {k: v.copy() for k, v in start.items()}
        _apply(update, executor, arrays, update.host_values({"a": 0.5}))
        for k in want:
            np.testing.assert_array_equal(arrays[k], want[k], err_msg=f"{executor}: {k}")


# -- state dicts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_round_trip_is_bitwise_an_uninterrupted_run(name):
    data, grads = _grads("float32")
    whole = CONFIGS[name]()
    uninterrupted = data.copy()
    for g in grads:
        whole.step(uninterrupted, g)
    first = CONFIGS[name]()
    for g in grads[:2]:
        first.step(data, g)
    sd = first.state_dict()
    assert sd["t"] == 2 and sorted(sd["state"]) == first.state_names()
    assert all(sd["state"][k] is first.state[k] for k in sd["state"])  # live buffers
    fresh, warm = CONFIGS[name](), CONFIGS[name]()
    warm.step(np.zeros(SIZE, np.float32), np.ones(SIZE, np.float32))  # has buffers: loaded in place
    buffers = dict(warm.state)
    warm.load_state_dict(sd)
    assert all(warm.state[k] is buffers[k] for k in buffers)
    fresh.load_state_dict(sd)
    for opt in (fresh, warm):
        resumed = data.copy()
        for g in grads[2:]:
            opt.step(resumed, g)
        _assert_same_bits((resumed, opt.state), (uninterrupted, whole.state))
        assert opt.t == N_STEPS


@pytest.mark.fakegpu
def test_state_loaded_from_host_arrays_moves_to_the_parameters_device(monkeypatch):
    """A file gives NumPy arrays; the model is on a (fake) GPU: the first update moves the buffers there."""
    monkeypatch.setenv("XPMLP_REFERENCE", "1")  # the reference on both sides: NumPy underneath, the same bits
    data, grads = _grads("float32")
    whole, uninterrupted = Adam(lr=0.1), data.copy()
    for g in grads:
        whole.step(uninterrupted, g)
    first = Adam(lr=0.1)
    for g in grads[:2]:
        first.step(data, g)
    host_sd = {"t": first.t, "state": {k: v.copy() for k, v in first.state.items()}}
    with fake_cupy.installed() as cupy:
        with cupy.cuda.Device(1):
            resumed = Adam(lr=0.1)
            resumed.load_state_dict(host_sd)
            d = cupy.asarray(data)
            for g in grads[2:]:
                resumed.step(d, cupy.asarray(g))
            assert all(isinstance(v, cupy.ndarray) and v.device.id == 1 for v in resumed.state.values())
            got = cupy.asnumpy(d), {k: cupy.asnumpy(v) for k, v in resumed.state.items()}
    _assert_same_bits(got, (uninterrupted, whole.state))


def test_state_dict_before_any_update():
    sd = Adam().state_dict()
    assert sd == {"t": 0, "state": None}
    opt = Adam()
    opt.load_state_dict(sd)
    assert opt.state is None and opt.t == 0


def test_load_state_dict_refuses_what_does_not_fit():
    adam = Adam()
    adam.step(np.zeros(4, np.float32), np.ones(4, np.float32))
    good = adam.state_dict()
    m, v = good["state"]["m"], good["state"]["v"]
    cases = [
        ([1, 2], r"expected a dict with keys 't' and 'state', got list"),
        ({"t": 1}, r"expected a dict with keys 't' and 'state', got \['t'\]"),
        ({"t": -1, "state": good["state"]}, "t must be a non-negative int, got -1"),
        ({"t": True, "state": good["state"]}, "t must be a non-negative int, got True"),
        ({"t": 1, "state": {"m": m}}, r"keeps the buffers \['m', 'v'\], the state dict has \['m'\]"),
        ({"t": 1, "state": {"m": m, "momentum": v}}, r"the state dict has \['m', 'momentum'\]"),
        ({"t": 1, "state": {"m": m, "v": np.zeros(5, np.float32)}}, r"buffer 'v' has shape \(5,\) and dtype float32"),
        ({"t": 1, "state": {"m": m, "v": v.astype(np.float64)}}, r"buffer 'v' has shape \(4,\) and dtype float64"),
        ({"t": 1, "state": {"m": m, "v": v.reshape(2, 2)}}, r"buffer 'v' has shape \(2, 2\); the buffers are 1-D"),
    ]
    for sd, match in cases:
        for target in (Adam(), adam):  # without buffers yet, and with them
            before = None if target.state is None else {k: x.copy() for k, x in target.state.items()}
            with pytest.raises(ValueError, match=match):
                target.load_state_dict(sd)
            if before is not None:  # nothing half-loaded
                assert target.t == 1
                for k in before:
                    np.testing.assert_array_equal(target.state[k], before[k])
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: this optimizer keeps the buffers \['momentum'\]"):
        SGD(momentum=0.9).load_state_dict(good)
    with pytest.raises(ValueError, match=r"buffer 'm' has shape \(4,\) and dtype float32, expected the shape \(3,\)"):
        other = Adam()
        other.step(np.zeros(3, np.float32), np.ones(3, np.float32))
        other.load_state_dict(good)


def test_a_different_buffer_is_refused_by_step():
    opt = Adam()
    opt.step(np.zeros(4, np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="holds the state .* but was given parameters of shape \\(5,\\)"):
        opt.step(np.zeros(5, np.float32), np.ones(5, np.float32))
    with pytest.raises(ValueError, match="1-D of one shape and dtype"):
        opt.step(np.zeros(4, np.float32), np.ones(4, np.float64))


@pytest.mark.parametrize("schedule", [StepDecay(0.1, 2), ExponentialDecay(0.1, 0.5), CosineDecay(0.1, 10),
                                      OneCycle(0.1, 10), Scaled(StepDecay(0.1, 2), 0.5)])
def test_schedules_have_an_empty_state_dict(schedule):
    assert schedule.state_dict() == {}
    schedule.load_state_dict({})
    with pytest.raises(ValueError, match="a schedule has no state"):
        schedule.load_state_dict({"step": 3})
