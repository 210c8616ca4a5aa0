"""The fused CuPy step's operations (xpmlp.step_cuda.CupyOps) on the fake GPU, against the reference.

Each ``CupyOps`` method runs on the stand-in (tests/fake_cupy.py), whose ``ElementwiseKernel``
executes the kernel's own CUDA C source on the host (tests/cuda_host.py), and is compared with the
reference code it replaces, called with NumPy arrays: ``Dense.forward`` (``x @ W``, ``y += b``),
the activation layers' ``forward``/``backward``, the losses' ``forward``/``backward`` and per-row
values, ``Dense.backward_params``. Every call must be exactly one launch (none where there is
nothing to compute), with no host sync and no host-to-device copy.

Equality, per result (the kernels keep the reference's operations and their order, and the host
compiles them without FMA contraction):

- bitwise: bias add, ReLU and LeakyReLU forward; every backward that uses no transcendental
  function (ReLU, LeakyReLU, ELU, Sigmoid, Tanh); MSE gradients, and MSE row values for rows
  of fewer than 8 entries (NumPy sums those left to right, as the kernel does); the GEMMs and
  reductions (the stand-in runs NumPy's, so this checks the arguments, not cuBLAS);
- 1e-6 relative in float32 and 1e-12 in float64 (absolute: the same times the largest reference
  value) where the kernel calls ``exp``/``log``/``tanh``/``expm1``/``log1p`` (the host's libm,
  NumPy's own SIMD versions and CUDA's differ in the last bits) or where NumPy sums 8 or more
  entries pairwise while the kernel sums a row left to right. A GPU must meet these too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fake_cupy
import xpmlp
from cuda_host import find_compiler
from xpmlp import kernels_cupy
from xpmlp.kernels_cupy import ACTIVATIONS
from xpmlp.layers import ACTIVATIONS as LAYERS, Dense
from xpmlp.losses import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from xpmlp.step_cuda import CupyOps

DTYPES = kernels_cupy.STEP_DTYPES
TOL = {"float32": 1e-6, "float64": 1e-12}
CONFIG = {"leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 0.7}}  # not the defaults: passed, not assumed
BITWISE_FORWARD = {"identity", "relu", "leaky_relu"}
BITWISE_BACKWARD = {"relu", "leaky_relu", "elu", "sigmoid", "tanh"}


def _unavailable(reason: str):
    if os.environ.get("XPMLP_REQUIRE_CUDA_TOOLS", "") == "1":
        pytest.fail(f"{reason} (XPMLP_REQUIRE_CUDA_TOOLS=1 makes this a failure instead of a skip)")
    pytest.skip(reason)


_ON_A_GPU = [False]  # True while a test runs on real CuPy: nothing is counted, nothing is bitwise


@pytest.fixture
def fake_gpu():
    """(fake cupy module, CupyOps over its kernels), counters reset."""
    if find_compiler() is None:
        _unavailable("g++ is not installed; tests/cuda_host.py needs it")
    with fake_cupy.installed(device_count=1) as cupy:
        ops = CupyOps(kernels_cupy.build(cupy), "float32")  # its dtype is only that of ops.empty
        fake_cupy.COUNTS.reset()
        yield cupy, ops


@pytest.fixture(params=["fake", "cupy"])
def gpu(request):
    """The numeric tests run on the fake GPU here, and on real CuPy the day a GPU is there (skipped
    otherwise): the same kernels, compiled by NVRTC and run on the GPU, against the same reference."""
    if request.param == "fake":
        yield request.getfixturevalue("fake_gpu")
        return
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as e:
        pytest.skip(f"needs CuPy and a GPU: {type(e).__name__}: {e}")
    _ON_A_GPU[0] = True
    try:
        yield cupy, CupyOps(kernels_cupy.build(cupy), "float32")
    finally:
        _ON_A_GPU[0] = False


def _counted(fn, *args):
    """Run fn(*args) and return the counters' change: ({"launches", "syncs", "h2d"}, by kernel name);
    None on a real GPU (nothing counts there)."""
    if _ON_A_GPU[0]:
        fn(*args)
        return None
    fake_cupy.COUNTS.reset()
    fn(*args)
    return fake_cupy.COUNTS.snapshot(), dict(fake_cupy.COUNTS.by_name)


def _assert_one_launch(counts, name, expected=1):
    if counts is None:
        return
    snapshot, by_name = counts
    assert snapshot == {"launches": expected, "syncs": 0, "h2d": 0}, (snapshot, by_name)
    if expected:
        assert by_name == {name: 1}, by_name


def _close(got, want, dtype, bitwise, what=""):
    """Equal, bitwise or within TOL[dtype]; on a real GPU never bitwise (NVRTC contracts a * b + c
    into FMAs, cuBLAS sums in its own order)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if bitwise and not _ON_A_GPU[0]:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        tol = TOL[dtype]
        scale = float(np.nanmax(np.abs(np.where(np.isfinite(want), want, 0)))) or 1.0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def _backend():
    return xpmlp.resolve("cpu")


def _inputs(n, k, dtype, seed=0, special=True):
    """x (n, 3), W (3, k), b (k,) and g (n, k); the pre-activations x @ W + b span about [-6, 6], and
    with ``special`` the last row's pre-activations hold 0, -0, +-inf, NaN and large values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(dtype)
    W = (2 * rng.normal(size=(3, k))).astype(dtype)
    b = rng.normal(size=k).astype(dtype)
    g = rng.normal(size=(n, k)).astype(dtype)
    return x, W, b, g


def _dense(x, W, b):
    """The reference Dense layer with these weights: its forward is x @ W, then y += b."""
    d = Dense(W.shape[1], in_features=W.shape[0], bias=b is not None)
    d.build(W.shape[0], _backend(), str(W.dtype), np.random.default_rng(0))
    d.params["W"][...] = W
    if b is not None:
        d.params["b"][...] = b
    return d


def _special(z):
    """Put 0, -0, +-inf, NaN and large finite values in z's last row (in place)."""
    vals = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 50.0, -50.0, 1e-3], dtype=z.dtype)
    z[-1, :] = np.resize(vals, z.shape[1])
    return z


def _layer(name, k, dtype):
    layer = LAYERS[name](**CONFIG.get(name, {}))
    layer.build(k, _backend(), dtype, np.random.default_rng(0))
    return layer


# -- bias + activation forward, activation backward ---------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_bias_act_equals_dense_and_activation_forward(gpu, name, dtype, bias):
    cupy, ops = gpu
    x, W, b, _ = _inputs(9, 8, dtype)
    b = b if bias else None
    z_ref = _dense(x, W, b).forward(x, training=True)
    h_ref = _layer(name, 8, dtype).forward(z_ref, training=True)
    z = cupy.asarray(x @ W)  # the GEMM's result: the kernel adds the bias in place
    h = cupy.empty(z.shape, dtype=dtype)
    args = (z, None if b is None else cupy.asarray(b), _layer(name, 8, dtype), h)
    counts = _counted(ops.bias_act, *args)
    if name == "identity" and not bias:
        _assert_one_launch(counts, None, expected=0)
        np.testing.assert_array_equal(z.get(), z_ref)
        return
    _assert_one_launch(counts, f"xpmlp_{'bias_' if bias else ''}{name}")
    np.testing.assert_array_equal(z.get(), z_ref)  # z + b: one rounding, bitwise
    if name != "identity":
        _close(h.get(), h_ref, dtype, name in BITWISE_FORWARD, name)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's inf * 0
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_bias_act_special_values(gpu, name, dtype):
    """0, -0, +-inf, NaN and large inputs give what the reference gives (NaN where it does)."""
    cupy, ops = gpu
    rng = np.random.default_rng(1)
    z0 = _special(rng.normal(size=(3, 8)).astype(dtype))
    layer = _layer(name, 8, dtype)
    h_ref = layer.forward(z0.copy(), training=True)
    z, h = cupy.asarray(z0), cupy.empty(z0.shape, dtype=dtype)
    ops.bias_act(z, cupy.asarray(np.zeros(8, dtype)), layer, h)
    got = z.get() if name == "identity" else h.get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(h_ref), err_msg=name)
    _close(got, h_ref, dtype, name in BITWISE_FORWARD, name)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's inf * 0
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_act_backward_equals_the_layer_backward(gpu, name, dtype):
    cupy, ops = gpu
    x, W, b, g0 = _inputs(9, 8, dtype)
    z0 = _special(x @ W + b)
    g0[-1, 4] = 0.0  # 0 * inf and 0 * NaN as the reference computes them
    layer = _layer(name, 8, dtype)
    h0 = layer.forward(z0, training=True)
    want = layer.backward(g0.copy())
    g = cupy.asarray(g0)
    counts = _counted(ops.act_backward, g, cupy.asarray(z0), cupy.asarray(h0), layer)
    if name == "identity":
        _assert_one_launch(counts, None, expected=0)
        np.testing.assert_array_equal(g.get(), want)
        return
    _assert_one_launch(counts, f"xpmlp_{name}_grad")
    np.testing.assert_array_equal(np.isnan(g.get()), np.isnan(want), err_msg=name)
    _close(g.get(), want, dtype, name in BITWISE_BACKWARD, name)


# -- loss value and gradient ---------------------------------------------------------------------
def _loss_reference(loss, z, y, w):
    """(per-row losses times w, dL/dz) from the loss's reference code on NumPy arrays."""
    rows = loss.row_losses(z, y, w)
    return rows, loss.backward()


LOSS_CASES = {
    "ce-labels": (lambda: SoftmaxCrossEntropy(), "labels", 10),
    "ce-labels-smooth": (lambda: SoftmaxCrossEntropy(label_smoothing=0.1), "labels", 10),
    "ce-probs": (lambda: SoftmaxCrossEntropy(), "probs", 10),
    "ce-probs-smooth": (lambda: SoftmaxCrossEntropy(label_smoothing=0.2), "probs", 4),
    "ce-2-classes": (lambda: SoftmaxCrossEntropy(), "labels", 2),
    "bce": (lambda: SigmoidBinaryCrossEntropy(), "binary", 3),
    "bce-1-output": (lambda: SigmoidBinaryCrossEntropy(), "binary", 1),
    "mse": (lambda: MeanSquaredError(), "real", 3),
    "mse-wide": (lambda: MeanSquaredError(), "real", 10),
}


def _targets(kind, n, k, dtype, rng):
    if kind == "labels":
        return rng.integers(0, k, n).astype(np.int64)
    if kind == "probs":
        p = rng.random((n, k)).astype(dtype)
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    if kind == "binary":
        return rng.integers(0, 2, (n, k)).astype(dtype)
    return rng.normal(size=(n, k)).astype(dtype)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_grad_equals_the_loss_reference(gpu, case, dtype, bias, weighted):
    cupy, ops = gpu
    make, kind, k = LOSS_CASES[case]
    n = 13
    rng = np.random.default_rng(2)
    x, W, b, _ = _inputs(n, k, dtype, seed=3)
    b = b if bias else None
    y = _targets(kind, n, k, dtype, rng)
    w = rng.random(n).astype(dtype) if weighted else None
    z_ref = _dense(x, W, b).forward(x, training=True)
    rows_ref, grad_ref = _loss_reference(make(), z_ref, y, w)
    loss = make()
    z, grad, rows = cupy.asarray(x @ W), cupy.empty((n, k), dtype=dtype), cupy.empty(n, dtype=dtype)
    args = (loss, z, None if b is None else cupy.asarray(b), cupy.asarray(y), None if w is None else cupy.asarray(w),
            grad, rows)
    counts = _counted(ops.loss_grad, *args)
    if counts is not None:
        assert counts[0] == {"launches": 1, "syncs": 0, "h2d": 0} and len(counts[1]) == 1, counts
    np.testing.assert_array_equal(z.get(), z_ref)  # the bias added in the kernel, bitwise
    exact = case == "mse"  # no transcendental function, rows of 3 summed left to right as NumPy does
    _close(grad.get(), grad_ref, dtype, exact or case == "mse-wide", f"{case} grad")
    _close(rows.get(), rows_ref, dtype, exact, f"{case} row losses")
    # the epoch loss fit will take from the rows: the reference's batch value
    np.testing.assert_allclose(rows.get().sum(dtype=np.float64) / n, float(make().forward(z_ref, y, w)),
                               rtol=10 * TOL[dtype])


def test_loss_grad_stays_finite_for_huge_logits(gpu):
    """The log-sum-exp and log1p(exp(-|z|)) forms: logits of +-1e4 give finite values and gradients."""
    cupy, ops = gpu
    z0 = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32)
    for loss, y in ((SoftmaxCrossEntropy(), np.array([1, 2])), (SigmoidBinaryCrossEntropy(), np.eye(2, 3, dtype=np.float32))):
        rows_ref, grad_ref = _loss_reference(loss, z0, y, None)
        z, grad, rows = cupy.asarray(z0), cupy.empty((2, 3), np.float32), cupy.empty(2, np.float32)
        ops.loss_grad(loss, z, None, cupy.asarray(y), None, grad, rows)
        assert np.isfinite(rows.get()).all() and np.isfinite(grad.get()).all()
        _close(rows.get(), rows_ref, "float32", False, loss.name)
        _close(grad.get(), grad_ref, "float32", False, loss.name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_kernel_keeps_its_precision_for_confident_logits_of_1e4(gpu, dtype):
    """The kernel's own source forms (z - m) - log(sum(exp(z - m))), as the reference does: losses
    from logits near 1e4 are right to a few roundings of the dtype (see tests/test_losses.py)."""
    cupy, ops = gpu
    z0 = np.array([[1e4, 1e4 - 5, 1e4 - 10], [-1e4, -1e4 - 0.25, -1e4 - 30]])
    shifts = z0 - z0.max(axis=1, keepdims=True)
    logp = shifts - np.log(np.exp(shifts).sum(axis=1, keepdims=True))
    eps = float(np.finfo(dtype).eps)
    for label in range(3):
        y = np.array([label, label])
        z, grad, rows = cupy.asarray(z0.astype(dtype)), cupy.empty((2, 3), dtype), cupy.empty(2, dtype)
        ops.loss_grad(SoftmaxCrossEntropy(), z, None, cupy.asarray(y), None, grad, rows)
        np.testing.assert_allclose(rows.get(), -logp[:, label], rtol=4 * eps, atol=4 * eps)
        np.testing.assert_allclose(grad.get(), (np.exp(logp) - np.eye(3)[y]) / 2, rtol=4 * eps, atol=4 * eps)


def test_loss_grad_refuses_other_losses(gpu):
    cupy, ops = gpu
    z = cupy.zeros((2, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="no kernel for loss 'mae'"):
        ops.loss_grad(xpmlp.losses.MeanAbsoluteError(), z, None, z, None, z, cupy.zeros(2, dtype=np.float32))


# -- GEMMs, bias gradients, dropout masks -----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_bias_grad_and_mul_are_one_launch_each(gpu, dtype):
    """The Dense layer's three GEMMs (forward x @ W, dW = x.T @ g, dX = g @ W.T), its bias gradient
    and the dropout product, each written into a preallocated buffer in one launch."""
    cupy, ops = gpu
    x0, W0, b0, g0 = _inputs(9, 8, dtype)
    dense = _dense(x0, W0, b0)
    z_ref = dense.forward(x0, training=True)
    dx_ref = dense.backward(g0)
    x, W, g = cupy.asarray(x0), cupy.asarray(W0), cupy.asarray(g0)
    z, dW, db, dx = (cupy.empty(s, dtype=dtype) for s in ((9, 8), (3, 8), (8,), (9, 3)))
    _assert_one_launch(_counted(ops.matmul, x, W, z), "matmul")
    _assert_one_launch(_counted(ops.matmul, x.T, g, dW), "matmul")
    _assert_one_launch(_counted(ops.matmul, g, W.T, dx), "matmul")
    _assert_one_launch(_counted(ops.bias_grad, g, db), "sum")
    _close(z.get() + b0, z_ref, dtype, True, "x @ W")
    _close(dW.get(), dense.grads["W"], dtype, True, "dW")
    _close(db.get(), dense.grads["b"], dtype, True, "db")
    _close(dx.get(), dx_ref, dtype, True, "dx")
    mask0 = np.random.default_rng(5).random((9, 8)).astype(dtype)
    a, mask, out = cupy.asarray(g0), cupy.asarray(mask0), cupy.empty((9, 8), dtype=dtype)
    _assert_one_launch(_counted(ops.mul, a, mask, out), "multiply")  # dropout forward: d = h * mask
    np.testing.assert_array_equal(out.get(), g0 * mask0)
    _assert_one_launch(_counted(ops.mul, a, mask, a), "multiply")  # dropout backward: g *= mask, in place
    np.testing.assert_array_equal(a.get(), g0 * mask0)


def test_the_stand_in_counts_what_cupy_adds_for_bad_buffers(fake_gpu):
    """CuPy's matmul copies when out overlaps an operand or is not C-contiguous, or when an operand
    is neither C- nor F-contiguous; ufuncs copy an input that overlaps a different output array.
    The stand-in counts those copies, so a step that passed such buffers would exceed its budget."""
    cupy, ops = fake_gpu
    a = cupy.asarray(np.ones((4, 4), np.float32))
    assert _counted(ops.matmul, a, a, a)[0]["launches"] == 2  # out is an operand
    out_t = cupy.empty((4, 4), dtype=np.float32).T
    assert _counted(ops.matmul, a, a, out_t)[0]["launches"] == 2  # out not C-contiguous
    wide = cupy.asarray(np.ones((4, 8), np.float32))
    assert _counted(ops.matmul, wide[:, ::2], a, cupy.empty((4, 4), dtype=np.float32))[0]["launches"] == 2
    view, other = a[1:], cupy.asarray(np.ones((3, 4), np.float32))
    fake_cupy.COUNTS.reset()
    cupy.multiply(a[1:], other, out=view)  # a[1:] is another object over out's memory: copied first
    assert fake_cupy.COUNTS.launches == 2
    fake_cupy.COUNTS.reset()
    cupy.multiply(view, other, out=view)  # out itself as an input (ops.mul(g, mask, g)): not copied
    assert fake_cupy.COUNTS.launches == 1
    with pytest.raises(ValueError, match="invalid size"):
        ops.matmul(a, a, cupy.empty((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        ops.bias_grad(a, cupy.empty((3,), dtype=np.float32))


def test_workspaces_and_dtypes(fake_gpu):
    """ops.empty allocates the model's dtype without a launch (CuPy's memory pool); the step kernels
    are offered for float32 and float64 only."""
    cupy, _ = fake_gpu
    for dtype in DTYPES:
        ops = CupyOps(kernels_cupy.build(cupy), dtype)
        fake_cupy.COUNTS.reset()
        w = ops.empty((5, 3))
        assert w.dtype == np.dtype(dtype) and w.shape == (5, 3) and w.flags.c_contiguous
        assert fake_cupy.COUNTS.snapshot() == {"launches": 0, "syncs": 0, "h2d": 0}
    with pytest.raises(ValueError, match="float32 and float64, not float16"):
        CupyOps(kernels_cupy.build(cupy), "float16")


# -- one whole step of the benchmark network, driven by hand -----------------------------------
def test_one_mnist_step_through_the_ops_is_16_launches_plus_one_update(fake_gpu):
    """784-512-512-10 ReLU, softmax cross-entropy, Adam, batch 128, float32, with preallocated
    buffers and flat parameters: forward (3 GEMMs, 2 bias+ReLU), loss (1), backward (3 dW GEMMs,
    3 bias sums, 2 dX GEMMs, 2 ReLU backward) = 16 launches through CupyOps, plus ONE fused Adam
    update over the flat buffer; no sync, no host-to-device copy. The step's parameters equal the
    reference Sequential's after one reference step (layer by layer, within float32 tolerance:
    the loss kernel's exp/log)."""
    cupy, ops = fake_gpu
    sizes, n = (784, 512, 512, 10), 128
    rng = np.random.default_rng(0)
    x0 = rng.random((n, 784), dtype=np.float32)
    y0 = rng.integers(0, 10, n).astype(np.int64)
    shapes = [s for i in range(3) for s in ((sizes[i], sizes[i + 1]), (sizes[i + 1],))]
    total = sum(int(np.prod(s)) for s in shapes)
    data0 = (0.05 * rng.normal(size=total)).astype(np.float32)

    def views(flat):
        out, at = [], 0
        for s in shapes:
            size = int(np.prod(s))
            out.append(flat[at:at + size].reshape(s))
            at += size
        return out

    backend = xpmlp.resolve("cuda")
    data, grad = cupy.asarray(data0), cupy.zeros(total, dtype=np.float32)
    P, G = views(data), views(grad)
    x, y = cupy.asarray(x0), cupy.asarray(y0)
    z = [cupy.empty((n, s), dtype=np.float32) for s in sizes[1:]]
    h = [cupy.empty((n, s), dtype=np.float32) for s in sizes[1:3]]
    dz = [cupy.empty((n, s), dtype=np.float32) for s in sizes[1:]]
    rows = cupy.empty(n, dtype=np.float32)
    relu, loss = LAYERS["relu"](), SoftmaxCrossEntropy()
    opt = xpmlp.Adam(lr=1e-3)
    update = opt.make_update(backend.xp, ops.kernels)
    update(data, grad)  # the first update allocates Adam's state (two zeros_like); a zero gradient moves nothing
    fake_cupy.COUNTS.reset()
    a = x
    for i in range(2):
        ops.matmul(a, P[2 * i], z[i])
        ops.bias_act(z[i], P[2 * i + 1], relu, h[i])
        a = h[i]
    ops.matmul(a, P[4], z[2])
    ops.loss_grad(loss, z[2], P[5], y, None, dz[2], rows)
    for i in (2, 1, 0):
        ops.matmul(x.T if i == 0 else h[i - 1].T, dz[i], G[2 * i])
        ops.bias_grad(dz[i], G[2 * i + 1])
        if i:
            ops.matmul(dz[i], P[2 * i].T, dz[i - 1])
            ops.act_backward(dz[i - 1], z[i - 1], h[i - 1], relu)
    assert fake_cupy.COUNTS.snapshot() == {"launches": 16, "syncs": 0, "h2d": 0}, dict(fake_cupy.COUNTS.by_name)
    update(data, grad)
    assert fake_cupy.COUNTS.snapshot() == {"launches": 17, "syncs": 0, "h2d": 0}, dict(fake_cupy.COUNTS.by_name)
    assert dict(fake_cupy.COUNTS.by_name) == {"matmul": 8, "xpmlp_bias_relu": 2, "xpmlp_softmax_ce_labels_bias": 1,
                                              "sum": 3, "xpmlp_relu_grad": 2, "xpmlp_adam": 1}

    # the reference: the same layers, one forward/backward and an Adam step per tensor on NumPy
    ref = [np.array(v) for v in views(data0.copy())]
    zr, hr, a = [], [], x0
    for i in range(3):
        zz = np.matmul(a, ref[2 * i])
        zz += ref[2 * i + 1]
        zr.append(zz)
        if i < 2:
            layer = _layer("relu", sizes[i + 1], "float32")
            hr.append(layer.forward(zz, training=True))
            a = hr[-1]
    rows_ref, d = _loss_reference(SoftmaxCrossEntropy(), zr[2], y0, None)
    _close(rows.get(), rows_ref, "float32", False, "row losses")
    grads_ref = [None] * 6
    for i in (2, 1, 0):
        grads_ref[2 * i] = np.matmul((x0 if i == 0 else hr[i - 1]).T, d)
        grads_ref[2 * i + 1] = np.sum(d, axis=0)
        if i:
            d = np.matmul(d, ref[2 * i].T) * (zr[i - 1] > 0).astype(np.float32)
    flat_ref = np.concatenate([g.ravel() for g in grads_ref])
    np.testing.assert_allclose(grad.get(), flat_ref, rtol=1e-5, atol=1e-6 * float(np.abs(flat_ref).max()))


# -- the whole fused step on the fake GPU, against the reference step ------------------------------------
def _models(layers_fn, loss, dtype, opt_fn, k, d=6):
    """(reference model and step, fused model and step) on the fake GPU, identical at the start."""
    from xpmlp.backend import fast_kernels
    from xpmlp.step import FusedStep, ReferenceStep, fused_plan

    out = []
    for fused in (False, True):
        model = xpmlp.Sequential(layers_fn() + [Dense(k)], device="cuda", dtype=dtype, seed=3, in_features=d)
        if not fused:
            out.append((model, ReferenceStep(model, loss, opt_fn())))
            continue
        with model.backend.activate():
            kernels = fast_kernels(model.xp)
            step = FusedStep(model, loss, opt_fn(), kernels, CupyOps(kernels, dtype), fused_plan(model, loss))
        out.append((model, step))
    return out


def _fit_steps(model, step, batches):
    """Run the step on each (x, y, w) batch: ([(z, per-row losses)] per batch as NumPy arrays,
    [(counts, launches by name)] of each step call alone)."""
    outs, counts = [], []
    with model.backend.activate():
        for xb, yb, wb in batches:
            y = step.loss.prepare_targets(yb, model.backend, model.dtype, model.out_features)
            row = model.xp.zeros(xb.shape[0], dtype=model.backend.dtype(model.dtype))
            w = None if wb is None else model.backend.from_host(wb.astype(model.dtype))
            x = model.backend.from_host(xb.astype(model.dtype))
            fake_cupy.COUNTS.reset()
            z = step(x, y, w, row)
            counts.append((fake_cupy.COUNTS.snapshot(), dict(fake_cupy.COUNTS.by_name)))
            outs.append((xpmlp.to_numpy(z).copy(), xpmlp.to_numpy(row).copy()))
    return outs, counts


STEP_CASES = {  # activation, dropout, standardize, bias, loss, label smoothing, weighted
    "relu": ("relu", 0.0, False, True, "softmax_cross_entropy", 0.0, False),
    "gelu-dropout-standardize": ("gelu", 0.3, True, True, "softmax_cross_entropy", 0.1, False),
    "elu-nobias-weighted": ("elu", 0.0, False, False, "softmax_cross_entropy", 0.0, True),
    "leaky-probs": ("leaky_relu", 0.0, False, True, "softmax_cross_entropy_probs", 0.2, False),
    "sigmoid-bce": ("sigmoid", 0.0, False, True, "sigmoid_binary_cross_entropy", 0.0, True),
    "tanh-mse": ("tanh", 0.2, False, True, "mse", 0.0, False),
    "softplus-mse": ("softplus", 0.0, False, True, "mse", 0.0, True),
    "identity-none": ("identity", 0.0, False, True, "softmax_cross_entropy", 0.0, False),
    "no-activation": (None, 0.0, False, True, "mse", 0.0, False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_fused_cupy_step_equals_the_reference_step(monkeypatch, case, dtype):
    """Three steps (the last a short batch) of FusedStep(CupyOps) and of ReferenceStep on the fake GPU:
    outputs, per-row losses, parameters and optimiser state agree to 1e-6 relative in float32 and
    1e-12 in float64 (exp/log/tanh on the host's libm against NumPy's, see the module docstring);
    Dropout counters advance alike. Launches per step: none but the ops', the gathers excepted."""
    if find_compiler() is None:
        _unavailable("g++ is not installed; tests/cuda_host.py needs it")
    from xpmlp import backend as backend_module
    from xpmlp.layers import Dropout, Standardize, get_activation

    act, dropout, standardize, bias, loss_name, smoothing, weighted = STEP_CASES[case]
    k, d = (1 if loss_name == "sigmoid_binary_cross_entropy" else 4), 6
    rng = np.random.default_rng(0)

    def layers():
        out = [Standardize()] if standardize else []
        for width in (7, 5):
            out.append(Dense(width, bias=bias))
            if act is not None:
                out.append(get_activation(act))
            if dropout:
                out.append(Dropout(dropout))
        return out

    def loss():
        if loss_name.startswith("softmax"):
            return SoftmaxCrossEntropy(label_smoothing=smoothing)
        return {"sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropy, "mse": MeanSquaredError}[loss_name]()

    batches = []
    for n in (8, 8, 3):
        x = rng.normal(size=(n, d)) * 2
        y = {"softmax_cross_entropy": lambda: rng.integers(0, k, n),
             "softmax_cross_entropy_probs": lambda: _targets("probs", n, k, "float64", rng),
             "sigmoid_binary_cross_entropy": lambda: rng.integers(0, 2, (n, k)).astype(float),
             "mse": lambda: rng.normal(size=(n, k))}[loss_name]()
        batches.append((x, y, rng.random(n) * 2 if weighted else None))
    with fake_cupy.installed(device_count=1):
        monkeypatch.setattr(backend_module, "_CUPY_KERNELS", {})
        (m_ref, s_ref), (m_fast, s_fast) = _models(layers, loss(), dtype, lambda: xpmlp.Adam(lr=0.05), k, d)
        if standardize:
            x0 = rng.normal(size=(20, d)) * 3 + 1
            for m in (m_ref, m_fast):
                m.layers[0].adapt(m.backend.from_host(x0.astype(dtype)))
        ref, _ = _fit_steps(m_ref, s_ref, batches)
        fast, counts = _fit_steps(m_fast, s_fast, batches)
        for (z1, r1), (z2, r2) in zip(ref, fast):
            _close(z2, z1, dtype, False, "outputs")
            _close(r2, r1, dtype, False, "row losses")
        _close(m_fast.flat.to_host(), m_ref.flat.to_host(), dtype, False, "parameters")
        sd_ref, sd_fast = s_ref.optimizer.state_dict(), s_fast.optimizer.state_dict()
        assert sd_ref["t"] == sd_fast["t"] == 3
        for key in sd_ref["state"]:
            _close(xpmlp.to_numpy(sd_fast["state"][key]), xpmlp.to_numpy(sd_ref["state"][key]), dtype, False, key)
        assert [l.counter for l in m_ref.layers if isinstance(l, Dropout)] == \
               [l.counter for l in m_fast.layers if isinstance(l, Dropout)]
    # each step: no sync, no copy; besides our kernels only GEMMs, bias sums, dropout products (and
    # Standardize's reference forward, two ufuncs), and from the second step on no allocation
    # (the first makes Adam's state: zeros_like)
    for i, (snapshot, by_name) in enumerate(counts):
        assert snapshot["syncs"] == 0 and snapshot["h2d"] == 0, (i, snapshot, by_name)
        others = {name for name in by_name if not name.startswith("xpmlp_")}
        allowed = {"matmul", "sum", "multiply", "subtract", "true_divide"} | ({"zeros_like"} if i == 0 else set())
        assert others <= allowed, (i, by_name)
    # three Dense layers: 3 forward + 3 weight-gradient + 2 input-gradient GEMMs; a bias sum each
    # (the output layer always has its bias here)
    assert counts[1][1]["matmul"] == 8 and counts[1][1]["sum"] == (3 if bias else 1), counts[1][1]


@pytest.mark.parametrize("case", ["dropout-standardize", "gelu-float64-weights", "tanh-class-weight-validation",
                                  "elu-label-smoothing"])
def test_fit_on_the_fake_gpu_makes_the_fused_cupy_step_and_equals_the_reference(monkeypatch, case):
    """model.fit on a CuPy model makes FusedStep(CupyOps) once, and three epochs of it end where
    XPMLP_REFERENCE=1 (the ReferenceStep) ends: weights 1e-5 relative, epoch losses 1e-6 (1e-12 in
    float64 for both), the differences being the host libm's against NumPy's in the kernels."""
    if find_compiler() is None:
        _unavailable("g++ is not installed; tests/cuda_host.py needs it")
    import xpmlp.train
    from xpmlp import backend as backend_module

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 5)), rng.integers(0, 3, 100)
    make, fit_kwargs, loss, dtype = {
        "dropout-standardize": (lambda: xpmlp.MLP([5, 8, 3], dropout=0.2, standardize=True, device="cuda", seed=0),
                                {}, "softmax_cross_entropy", "float32"),
        "gelu-float64-weights": (lambda: xpmlp.MLP([5, 8, 8, 3], activation="gelu", device="cuda", seed=0,
                                                   dtype="float64"),
                                 {"sample_weight": rng.random(100)}, "softmax_cross_entropy", "float64"),
        "tanh-class-weight-validation": (lambda: xpmlp.MLP([5, 8, 3], activation="tanh", device="cuda", seed=0),
                                         {"class_weight": {0: 2.0, 1: 1.0, 2: 0.5}, "validation_split": 0.2},
                                         "softmax_cross_entropy", "float32"),
        "elu-label-smoothing": (lambda: xpmlp.MLP([5, 8, 3], activation="elu", device="cuda", seed=0),
                                {}, SoftmaxCrossEntropy(label_smoothing=0.1), "float32"),
    }[case]
    made = []
    original = xpmlp.train.make_train_step

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(xpmlp.train, "make_train_step", recording)
    results = []
    with fake_cupy.installed(device_count=1):
        monkeypatch.setattr(backend_module, "_CUPY_KERNELS", {})
        for reference in (False, True):
            if reference:
                monkeypatch.setenv("XPMLP_REFERENCE", "1")
            model = make()
            history = model.fit(X, y, loss=loss, epochs=3, batch_size=16, **fit_kwargs)
            results.append((model.get_weights(), history.history["loss"]))
    assert [type(s).__name__ for s in made] == ["FusedStep", "ReferenceStep"] and made[0].variant == "cupy"
    tol = 10 * TOL[dtype]
    for got, want in zip(*(r[0] for r in results)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=TOL[dtype])
