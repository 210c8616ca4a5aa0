"""model.lr_find: the learning-rate range test (Smith 2017), its suggestion, and the model put back."""

import math
import warnings

import numpy as np
import pytest

import xpmlp
from xpmlp import SGD, Adam, to_numpy
from xpmlp.lr_find import SKIP_START, LRFinderResult, suggest_lr

rng = np.random.default_rng(0)
X = rng.normal(size=(96, 4))
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8)


def _state(model):
    """Everything lr_find must put back, as host copies."""
    sd = {k: (dict(v) if isinstance(v, dict) else to_numpy(v).copy()) for k, v in model.state_dict().items()}
    opt = model.optimizer
    opt_state = None if opt is None else (opt.t, None if opt.state is None else
                                          {k: to_numpy(v).copy() for k, v in opt.state.items()})
    return {"sd": sd, "grad": to_numpy(model.flat.grad).copy(), "rng": model.get_rng_state(), "opt": opt_state,
            "attrs": (model.loss, model.optimizer, model.history, model.stop_training),
            "adapted": [layer.adapted for layer in model.layers if hasattr(layer, "adapt")]}


def _assert_same_state(a, b):
    assert a["sd"].keys() == b["sd"].keys()
    for k in a["sd"]:
        if isinstance(a["sd"][k], dict):
            assert a["sd"][k] == b["sd"][k], k  # Dropout key and counter
        else:
            np.testing.assert_array_equal(a["sd"][k], b["sd"][k], err_msg=k)  # bitwise: exact equality
    np.testing.assert_array_equal(a["grad"], b["grad"])
    assert a["rng"] == b["rng"]
    assert (a["opt"] is None) == (b["opt"] is None)
    if a["opt"] is not None:
        assert a["opt"][0] == b["opt"][0]
        assert (a["opt"][1] is None) == (b["opt"][1] is None)
        for k in a["opt"][1] or {}:
            np.testing.assert_array_equal(a["opt"][1][k], b["opt"][1][k])
    assert all(x is y for x, y in zip(a["attrs"], b["attrs"]))
    assert a["adapted"] == b["adapted"]


# -- the model is put back ---------------------------------------------------------------------------
def test_model_restored_bitwise_after_a_diverging_sweep():
    """A fitted model with Standardize and Dropout (optimiser state, history, loss, RNG states,
    Dropout counters), swept into divergence with a momentum SGD: everything is as before, bit for
    bit, and neither the model's optimiser nor the one given moved."""
    model = xpmlp.MLP([4, 16, 3], dropout=0.2, standardize=True, seed=0, dtype="float64")
    model.fit(X * 50, Y, loss="softmax_cross_entropy", epochs=2, verbose=0)
    before = _state(model)
    given = SGD(lr=0.1, momentum=0.9)
    result = model.lr_find(X * 50, Y, optimizer=given, start_lr=1e-4, end_lr=1e4, num_steps=60, batch_size=16)
    assert result.stop_reason is not None  # it did go far: the restore had something to undo
    _assert_same_state(before, _state(model))
    assert given.t == 0 and given.state is None and given.lr == 0.1


@pytest.mark.parametrize("build", ["mlp", "unbuilt"])
def test_fit_after_lr_find_equals_fit_without(build):
    """lr_find then fit gives exactly the fit without lr_find: weights and history, on a model with
    Dropout (counters, masks from the model's key) and an unadapted Standardize; an unbuilt model
    is built by lr_find from X's width as fit would build it."""
    def make():
        if build == "mlp":
            return xpmlp.MLP([4, 16, 3], dropout=0.3, standardize=True, seed=3)
        return xpmlp.Sequential([xpmlp.Standardize(), xpmlp.Dense(16), xpmlp.ReLU(), xpmlp.Dropout(0.3),
                                 xpmlp.Dense(3)], seed=3)

    a, b = make(), make()
    result = a.lr_find(X, Y, loss="softmax_cross_entropy", num_steps=30)
    assert len(result.lrs) > 2 and a.built
    assert not a.layers[0].adapted and a.optimizer is None and a.loss is None and a.history is None
    ha = a.fit(X, Y, loss="softmax_cross_entropy", epochs=3, verbose=0)
    hb = b.fit(X, Y, loss="softmax_cross_entropy", epochs=3, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert ha.history["loss"] == hb.history["loss"]


def test_every_backend_agrees_and_is_restored(case):
    """On every backend the sweep runs, leaves the weights and generators exactly as they were,
    and draws the curve NumPy draws (same dtype, same seed)."""
    kw = dict(loss="softmax_cross_entropy", start_lr=1e-4, end_lr=1.0, num_steps=24, batch_size=16, diverge=math.inf)
    model = xpmlp.MLP([4, 8, 3], activation="tanh", seed=1, **case.model_kwargs())
    weights, rng_state = model.get_weights(), model.get_rng_state()
    result = model.lr_find(X, Y, **kw)
    for w, w0 in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, w0)
    assert model.get_rng_state() == rng_state
    ref = xpmlp.MLP([4, 8, 3], activation="tanh", seed=1, device="cpu", dtype=case.dtype).lr_find(X, Y, **kw)
    assert len(result.raw_losses) == 24
    np.testing.assert_allclose(result.raw_losses, ref.raw_losses, rtol=1e-9 if case.dtype == "float64" else 1e-4)
    np.testing.assert_array_equal(result.lrs, ref.lrs)


def test_batches_follow_the_seeded_shuffle_and_cycle():
    """Step k's loss is that of fit's k-th batch: one permutation per pass from ``seed`` (or the
    model's generator), a new one each pass when the steps outlast the data, a short last batch
    included. With rates of 1e-12 the weights barely move, so each batch's loss is evaluate's."""
    n, bs = 40, 16  # three batches per pass: 16, 16 and 8 rows
    for seed in (7, None):
        model = xpmlp.MLP([4, 8, 3], seed=0, dtype="float64")
        shuffle = np.random.default_rng(seed) if seed is not None else np.random.default_rng()
        if seed is None:
            shuffle.bit_generator.state = model.get_rng_state()["shuffle"]
        result = model.lr_find(X[:n], Y[:n], loss="softmax_cross_entropy", optimizer="sgd", start_lr=1e-12,
                               end_lr=2e-12, num_steps=8, batch_size=bs, seed=seed)
        batches = [perm[a:a + bs] for perm in (shuffle.permutation(n) for _ in range(3)) for a in range(0, n, bs)]
        expected = [model.evaluate(X[:n][rows], Y[:n][rows], loss="softmax_cross_entropy") for rows in batches[:8]]
        np.testing.assert_allclose(result.raw_losses, expected, rtol=1e-9)
        assert len(set(np.round(expected, 12))) == 8  # the batches do differ: the test can tell them apart


def test_default_optimizer_is_a_fresh_copy_of_the_models():
    """optimizer=None sweeps the model's optimiser's kind and settings, from fresh state: the same
    curve as an explicit new SGD(momentum=0.9), another than Adam's."""
    kw = dict(loss="softmax_cross_entropy", num_steps=40, batch_size=16, seed=0)
    model = xpmlp.MLP([4, 8, 3], seed=0, dtype="float64")
    model.fit(X, Y, loss="softmax_cross_entropy", optimizer=SGD(lr=0.05, momentum=0.9), verbose=0)
    own = model.lr_find(X, Y, **kw)
    explicit = model.lr_find(X, Y, optimizer=SGD(momentum=0.9), **kw)
    adam = model.lr_find(X, Y, optimizer="adam", **kw)
    np.testing.assert_array_equal(own.raw_losses, explicit.raw_losses)
    n = min(len(own.lrs), len(adam.lrs))
    assert not np.allclose(own.raw_losses[20:n], adam.raw_losses[20:n], rtol=1e-3)


# -- the rates and the stop ----------------------------------------------------------------------------
def test_curve_is_exponential_in_lr():
    result = xpmlp.MLP([4, 8, 3], seed=0).lr_find(X, Y, loss="softmax_cross_entropy", start_lr=1e-6, end_lr=1e-1,
                                                  num_steps=21, diverge=math.inf)
    assert result.stop_reason is None and len(result.lrs) == 21
    assert result.lrs[0] == 1e-6 and result.lrs[-1] == 1e-1
    np.testing.assert_allclose(np.diff(np.log10(result.lrs)), 0.25, rtol=1e-12)  # five decades in 20 equal steps


def _whitened_regression(n=256, d=5, seed=0):
    """Zero-mean, orthogonal features with X.T @ X / n = I and targets with an intercept: for the
    mse loss mean((Xw + b - y)^2) the Hessian in (w, b) is 2 I, so every direction has curvature
    L = 2 and full-batch gradient descent multiplies the loss by exactly (1 - lr L)^2 per step."""
    r = np.random.default_rng(seed)
    A = r.standard_normal((n, d))
    Q, _ = np.linalg.qr(A - A.mean(axis=0))
    X = Q * np.sqrt(n)
    return X, X @ r.standard_normal((d, 1)) + 0.5


def _curvature(X):
    """The largest eigenvalue of the mse loss's Hessian for a linear model with intercept."""
    Z = np.hstack([X, np.ones((len(X), 1))])
    return float(np.linalg.eigvalsh(2 * Z.T @ Z / len(X)).max())


def test_stop_point_at_the_largest_stable_rate():
    """Gradient descent on a quadratic is stable for lr < 2/L and diverges above. On whitened
    linear regression (every curvature L = 2, so 2/L = 1) with SGD on full batches, each recorded
    loss is the one before it times (1 - lr L)^2 (the loss pairs with the rate its step applies),
    the curve's lowest raw loss sits at the first rate above 2/L, and the sweep stops one or two
    rates later; the stop index is the one the recurrence predicts, smoothed or not."""
    Xw, yw = _whitened_regression()
    L = _curvature(Xw)
    assert L == pytest.approx(2.0, rel=1e-12)
    kw = dict(loss="mse", optimizer="sgd", start_lr=0.013, end_lr=13.0, num_steps=40, batch_size=len(Xw))
    for smoothing in (1.0, 0.05):
        result = xpmlp.MLP([5, 1], seed=0, dtype="float64").lr_find(Xw, yw, smoothing=smoothing, **kw)
        raw = result.raw_losses
        np.testing.assert_allclose(raw[1:] / raw[:-1], (1 - result.lrs[:-1] * L) ** 2, rtol=1e-6)
        # the recurrence, run to the end, and the stop rule applied to it by hand
        lrs = np.geomspace(0.013, 13.0, 40)
        predicted = raw[0] * np.concatenate([[1.0], np.cumprod((1 - lrs[:-1] * L) ** 2)])
        ema = np.array([sum(smoothing * (1 - smoothing) ** (k - j) * predicted[j] for j in range(k + 1))
                        / (1 - (1 - smoothing) ** (k + 1)) for k in range(40)])
        stop = next(k for k in range(40) if ema[k] > 4 * ema[:k + 1].min())
        assert len(raw) == stop + 1 and "exceeded 4 x" in result.stop_reason
        np.testing.assert_allclose(result.losses, ema[:stop + 1], rtol=1e-6)
        if smoothing == 1.0:
            lowest = int(np.argmin(raw))
            assert result.lrs[lowest - 1] < 2 / L <= result.lrs[lowest]
            assert 2 / L < result.lrs[-1] <= 2 * (2 / L)
        assert result.lrs[-1] > 2 / L  # never before the loss can grow
        assert result.suggestion < 2 / L


@pytest.mark.parametrize("seed", range(3))
def test_stop_and_suggestion_around_2_over_L_on_regression(seed):
    """Random correlated features with an intercept, the default smoothing: below 2/L full-batch
    descent lowers the loss at every step (and so its bias-corrected moving average), so the
    sweep cannot stop before 2/L; the direction of curvature L is almost cancelled near 1/L, so
    the climb shows a few rates later, within 10 x 2/L. The suggestion is a stable rate."""
    r = np.random.default_rng(seed)
    Xr = r.standard_normal((256, 5)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0]) + 1.0
    yr = Xr @ r.standard_normal((5, 1)) + 0.3 * r.standard_normal((256, 1))
    limit = 2 / _curvature(Xr)
    result = xpmlp.MLP([5, 1], seed=0, dtype="float64").lr_find(Xr, yr, loss="mse", optimizer="sgd", start_lr=1e-4,
                                                                end_lr=1.0, num_steps=100, batch_size=256)
    assert "exceeded" in result.stop_reason
    assert limit < result.lrs[-1] < 10 * limit
    assert limit / 100 < result.suggestion < limit / 2


def test_nonfinite_loss_ends_the_sweep_quietly():
    """Rates up to 1e6 on large targets overflow float32: the sweep ends at the first infinite or
    NaN loss (left out of the curve), without an error or NumPy overflow warnings, and the model
    keeps its finite weights."""
    model = xpmlp.MLP([4, 8, 1], seed=0)
    weights = model.get_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = model.lr_find(X, 1e6 * X[:, :1], loss="mse", optimizer="sgd", start_lr=1e-3, end_lr=1e6,
                               num_steps=50, diverge=math.inf)
    assert result.stop_reason.startswith("the loss became") and len(result.lrs) < 50
    assert np.all(np.isfinite(result.raw_losses)) and np.all(np.isfinite(result.losses))
    for w, w0 in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, w0)


# -- the suggestion ------------------------------------------------------------------------------------
def test_suggestion_rule_on_drawn_curves():
    lrs = np.geomspace(1e-6, 1.0, 61)
    x = np.log10(lrs)
    falling = 2.0 - np.tanh(2 * (x + 3))  # steepest at 1e-3
    assert suggest_lr(lrs, falling) == pytest.approx(1e-3)
    # a climb, then a steeper fall past it (a non-diverging Adam run at huge rates): the rule keeps
    # to the descent that leads to the lowest point
    bumped = falling + np.where(x > -1, np.where(x <= -0.5, 6 * (x + 1), 3 - 4 * (x + 0.5)), 0.0)
    assert np.min(np.gradient(bumped, x)) < -3.9  # steeper than the real descent (-2 per decade)
    assert suggest_lr(lrs, bumped) == pytest.approx(1e-3)
    # points before SKIP_START are left out: a steep first drop (the average settling) is ignored
    settling = falling.copy()
    settling[:SKIP_START] += np.linspace(5, 0, SKIP_START)
    assert suggest_lr(lrs, settling) == pytest.approx(1e-3)
    assert suggest_lr(lrs, 1.0 + x) is None  # never descends
    assert suggest_lr(lrs[:2], falling[:2]) is None


def test_result_repr_names_the_suggestion_and_the_stop():
    result = LRFinderResult([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.9, 1.0, 9.0], [2.0, 1.8, 0.9, 20.0], "it diverged", 10)
    text = repr(result)
    assert "suggestion=0.01" in text and "4 of 10 steps" in text and "stopped: it diverged" in text
    assert "no finite loss" in repr(LRFinderResult([], [], [], "the loss became nan at lr 1e-07", 10))


def test_plot_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    result = xpmlp.MLP([4, 8, 3], seed=0).lr_find(X, Y, loss="softmax_cross_entropy", num_steps=40)
    ax = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.get_xscale() == "log" and len(ax.lines) == 2 + (result.suggestion is not None)


def test_plot_without_matplotlib_says_so(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ImportError, match="needs matplotlib"):
        LRFinderResult([1e-3, 1e-2], [1.0, 0.5], [1.0, 0.5]).plot()


# -- healthy problems: the suggestion trains -----------------------------------------------------------
def _accuracy(model, X, y):
    return float(np.mean(np.argmax(to_numpy(model.predict(X)), axis=1) == y))


@pytest.mark.parametrize("seed", [0, 1])
def test_digits_suggestion_trains_in_one_epoch(seed):
    """scikit-learn's digits (pixels / 16), MLP([64, 64, 10]) and Adam: the suggested rate is a
    sensible one and one epoch at it reaches 80% test accuracy (one epoch at 1e-4 reaches 10-26%)."""
    datasets = pytest.importorskip("sklearn.datasets")
    Xd, yd = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(Xd))
    Xd, yd = Xd[order] / 16.0, yd[order]
    model = xpmlp.MLP([64, 64, 10], seed=seed)
    result = model.lr_find(Xd[:1200], yd[:1200], loss="softmax_cross_entropy")
    assert 1e-4 <= result.suggestion <= 1e-1
    model.fit(Xd[:1200], yd[:1200], loss="softmax_cross_entropy", optimizer=Adam(lr=result.suggestion), verbose=0)
    assert _accuracy(model, Xd[1200:], yd[1200:]) >= 0.8


def test_mnist_suggestion_trains_in_one_epoch(data_dir):
    """MNIST, 3000 training images (pixels / 255), MLP([784, 128, 10]) and Adam: the suggestion lies
    in 1e-4..1e-1 and one epoch at it reaches 80% accuracy on 2000 test images (84-87% over seeds
    0-3; at 1e-4: 52-56%, at 1e-1: 51-73%)."""
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("needs MNIST in $XPMLP_DATA/mnist")
    from xpmlp.datasets import load_mnist

    (Xtr, ytr), (Xte, yte) = load_mnist(data_dir / "mnist", download=False)
    Xm, ym = Xtr[:3000] / np.float32(255), ytr[:3000]
    model = xpmlp.MLP([784, 128, 10], seed=0)
    result = model.lr_find(Xm, ym, loss="softmax_cross_entropy")
    assert 1e-4 <= result.suggestion <= 1e-1
    model.fit(Xm, ym, loss="softmax_cross_entropy", optimizer=Adam(lr=result.suggestion), verbose=0)
    assert _accuracy(model, Xte[:2000] / np.float32(255), yte[:2000]) >= 0.8


# -- bad arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"start_lr": 0.0}, ValueError, "start_lr must be a positive finite"),
    ({"start_lr": -1e-3}, ValueError, "start_lr must be a positive finite"),
    ({"end_lr": math.inf}, ValueError, "end_lr must be a positive finite"),
    ({"start_lr": math.nan}, ValueError, "start_lr must be a positive finite"),
    ({"start_lr": "1e-3"}, TypeError, "start_lr must be a number"),
    ({"start_lr": 1e-2, "end_lr": 1e-3}, ValueError, "start_lr must be smaller than end_lr"),
    ({"start_lr": 0.1, "end_lr": 0.1}, ValueError, "start_lr must be smaller than end_lr"),
    ({"num_steps": 1}, ValueError, "num_steps must be an integer >= 2"),
    ({"num_steps": 2.5}, ValueError, "num_steps must be an integer >= 2"),
    ({"num_steps": True}, ValueError, "num_steps must be an integer >= 2"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"smoothing": 0}, ValueError, r"smoothing must be in \(0, 1\]"),
    ({"smoothing": 1.5}, ValueError, r"smoothing must be in \(0, 1\]"),
    ({"diverge": 1.0}, ValueError, "diverge must be a number > 1"),
    ({"diverge": None}, ValueError, "diverge must be a number > 1"),
    ({"optimizer": "nope"}, ValueError, "unknown optimizer"),
    ({"optimizer": xpmlp.LBFGS()}, ValueError, "LBFGS has none"),
    ({"optimizer": object()}, TypeError, "optimizer must be a name or an xpmlp Optimizer"),
    ({"loss": None}, ValueError, "lr_find needs a loss"),
])
def test_bad_arguments_are_refused_before_anything_changes(kwargs, error, match):
    model = xpmlp.MLP([4, 8, 3], seed=0)
    before = _state(model)
    Xc, Yc = X.copy(), Y.copy()
    with pytest.raises(error, match=match):
        model.lr_find(X, Y, **{"loss": "softmax_cross_entropy", **kwargs})
    _assert_same_state(before, _state(model))
    np.testing.assert_array_equal(X, Xc)
    np.testing.assert_array_equal(Y, Yc)


def test_unscaled_warning_points_at_the_caller():
    with pytest.warns(UserWarning, match="unscaled") as record:
        xpmlp.MLP([4, 8, 3], seed=0).lr_find(X * 300, Y, loss="softmax_cross_entropy", num_steps=5)
    assert record[0].filename == __file__
