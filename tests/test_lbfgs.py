"""xpmlp.LBFGS against SciPy's L-BFGS-B (same function, same start) and scikit-learn's lbfgs MLP.

The objective of ``fit(optimizer=LBFGS(l2=...))`` is rebuilt here independently from
``model.gradients`` (``_sklearn_objective``), so SciPy minimises the function scikit-learn's MLP
defines, and LBFGS must find the same minimum.
"""

import math
import warnings

import numpy as np
import pytest

import xpmlp
from xpmlp import LBFGS, to_numpy
from xpmlp.callbacks import Callback, EarlyStopping, LearningRateScheduler, TerminateOnNaN
from xpmlp.lbfgs import _objective
from xpmlp.losses import get_loss

scipy_optimize = pytest.importorskip("scipy.optimize")


def _sklearn_objective(model, X, y, loss, l2=0.0, sample_weight=None):
    """``fun(x) -> (f, g)`` on host vectors: [sum w_i loss_i + l2/2 sum ||W||^2] / sum w, from model.gradients."""
    n = X.shape[0]
    w_sum = n if sample_weight is None else float(np.sum(sample_weight))
    names = [p.name for p in model.parameters()]
    kernels = [name.endswith(".W") for name in names]  # an MLP's Dense kernels; biases end in .b

    def fun(x):
        model.flat.load_host(x)
        value, grads = model.gradients(X, y, loss=loss, sample_weight=sample_weight)
        values = dict(zip(names, model.get_weights()))
        penalty = sum(float(np.sum(values[k] ** 2)) for k, is_w in zip(names, kernels) if is_w)
        f = (value * n + 0.5 * l2 * penalty) / w_sum
        g = [(to_numpy(grads[k]) * n + (l2 * values[k] if is_w else 0.0)) / w_sum for k, is_w in zip(names, kernels)]
        order = np.argsort(model.flat.offsets)  # the flat buffer's layout: weight matrices first, then biases
        return f, np.concatenate([g[i].reshape(-1) for i in order])

    return fun


def _scipy(fun, x0, opt: LBFGS):
    return scipy_optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options={
        "maxiter": opt.max_iter, "maxfun": opt.max_fun, "gtol": opt.tol, "ftol": opt.ftol, "maxcor": opt.history_size})


def _classes(n=80, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.argmax(X @ rng.normal(size=(d, k)) + rng.normal(0, 0.5, size=(n, k)), axis=1)
    return X, y


# -- the algorithm alone ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 10])
def test_minimize_matches_scipy_on_rosenbrock(n):
    x0 = np.full(n, -1.2)
    x0[1::2] = 1.0
    fun = lambda x: (scipy_optimize.rosen(x), scipy_optimize.rosen_der(x))  # noqa: E731
    opt = LBFGS(max_iter=1000, tol=1e-8, ftol=0.0)
    x = opt.minimize(fun, x0)
    ref = _scipy(fun, x0, opt)
    assert opt.converged_ and ref.status == 0
    np.testing.assert_allclose(x, np.ones(n), atol=1e-8)
    np.testing.assert_allclose(ref.x, np.ones(n), atol=1e-8)
    assert abs(opt.n_iter_ - ref.nit) <= 0.15 * ref.nit and abs(opt.n_fun_ - ref.nfev) <= 0.15 * ref.nfev
    np.testing.assert_array_equal(x0[:2], [-1.2, 1.0])  # the start is not modified


def _recording(fun, opt):
    """Run opt.minimize, recording after each iteration (n_fun_, f, max |g|)."""
    seen = []

    def callback(o):
        seen.append((o.n_fun_, o.loss_, float(np.max(np.abs(fun(o.x_)[1])))))
        return False

    x0 = np.full(6, -1.2)
    x0[1::2] = 1.0
    opt.minimize(lambda x: (scipy_optimize.rosen(x), scipy_optimize.rosen_der(x)), x0, callback)
    return seen


ROSEN = lambda x: (scipy_optimize.rosen(x), scipy_optimize.rosen_der(x))  # noqa: E731


def test_stops_at_max_iter_as_scipy_does():
    opt = LBFGS(max_iter=7, tol=0.0, ftol=0.0)
    seen = _recording(ROSEN, opt)
    ref = _scipy(ROSEN, np.array([-1.2, 1.0] * 3), opt)
    assert opt.n_iter_ == len(seen) == ref.nit == 7 and not opt.converged_ and ref.status == 1
    assert opt.message_ == "stopped: max_iter=7 iterations reached"


def test_stops_after_the_iteration_that_passes_max_fun():
    """Like scipy's maxfun: a line search is never cut short; the run ends with the first
    iteration after which more than max_fun evaluations were made."""
    opt = LBFGS(max_fun=20, tol=0.0, ftol=0.0)
    seen = _recording(ROSEN, opt)
    counts = [c for c, _, _ in seen]
    assert counts[-1] > 20 >= counts[-2] and opt.n_fun_ == counts[-1] and not opt.converged_
    assert opt.message_ == f"stopped: {counts[-1]} evaluations of the objective exceed max_fun=20"
    ref = _scipy(ROSEN, np.array([-1.2, 1.0] * 3), opt)
    assert ref.status == 1 and ref.nfev > 20


def test_stops_when_the_largest_gradient_entry_is_within_tol():
    opt = LBFGS(tol=1e-3, ftol=0.0)
    seen = _recording(ROSEN, opt)
    gmax = [g for _, _, g in seen]
    assert opt.converged_ and gmax[-1] <= 1e-3 and min(gmax[:-1]) > 1e-3
    assert opt.message_.startswith("converged: the largest gradient entry")
    # Already there at the start: no iteration, one evaluation.
    again = LBFGS(tol=1e-3)
    again.minimize(ROSEN, opt.x_)
    assert (again.n_iter_, again.n_fun_, again.converged_) == (0, 1, True)


def test_stops_when_the_relative_reduction_is_within_ftol():
    opt = LBFGS(tol=0.0, ftol=1e-3)
    seen = _recording(ROSEN, opt)
    f = [scipy_optimize.rosen(np.array([-1.2, 1.0] * 3))] + [v for _, v, _ in seen]
    rel = [(a - b) / max(abs(a), abs(b), 1.0) for a, b in zip(f, f[1:])]
    assert opt.converged_ and rel[-1] <= 1e-3 and min(rel[:-1]) > 1e-3
    assert opt.message_.startswith("converged: the relative reduction of the objective")


def test_max_iter_is_tested_before_convergence_as_in_scipy():
    """A run that converges at its last allowed iteration reports max_iter (scipy's status 1,
    which scikit-learn turns into a ConvergenceWarning)."""
    x0 = np.array([-1.2, 1.0] * 3)
    first = LBFGS(tol=1e-3, ftol=0.0)
    first.minimize(ROSEN, x0)
    capped = LBFGS(max_iter=first.n_iter_, tol=1e-3, ftol=0.0)
    capped.minimize(ROSEN, x0)
    assert first.converged_ and capped.n_iter_ == first.n_iter_ and not capped.converged_
    assert capped.message_ == f"stopped: max_iter={first.n_iter_} iterations reached"
    np.testing.assert_array_equal(capped.x_, first.x_)
    ref = _scipy(ROSEN, x0, first)
    ref_capped = _scipy(ROSEN, x0, LBFGS(max_iter=ref.nit, tol=1e-3, ftol=0.0))
    assert ref.status == 0 and ref_capped.status == 1 and ref_capped.nit == ref.nit


def test_bad_options():
    for kwargs, what in [({"max_iter": 0}, "max_iter must be a positive integer"),
                         ({"max_fun": 1.5}, "max_fun must be a positive integer"),
                         ({"history_size": True}, "history_size must be a positive integer"),
                         ({"tol": -1.0}, "tol must be a finite number >= 0"),
                         ({"l2": math.nan}, "l2 must be a finite number >= 0"),
                         ({"ftol": "0"}, "ftol must be a finite number >= 0")]:
        with pytest.raises(ValueError, match=what):
            LBFGS(**kwargs)


# -- on a model ------------------------------------------------------------------------------------
def test_fit_matches_scipy_on_a_convex_model():
    """Softmax regression with an L2 penalty (strictly convex: one minimum) from the same start:
    the same minimum as SciPy's L-BFGS-B on the same objective and gradient."""
    X, y = _classes()
    model = xpmlp.MLP([6, 3], seed=0, dtype="float64")
    x0 = model.flat.to_host()
    opt = LBFGS(tol=1e-9, ftol=0.0, l2=0.5)
    history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=opt)
    fun = _sklearn_objective(xpmlp.MLP([6, 3], seed=0, dtype="float64"), X, y, "softmax_cross_entropy", l2=0.5)
    ref = _scipy(fun, x0, opt)
    assert opt.converged_ and ref.status == 0
    np.testing.assert_allclose(opt.loss_, ref.fun, rtol=1e-13)
    np.testing.assert_allclose(model.flat.to_host(), ref.x, atol=1e-8)
    assert abs(opt.n_iter_ - ref.nit) <= 0.25 * ref.nit + 2
    assert len(history["loss"]) == opt.n_iter_ and history["loss"][-1] == opt.loss_
    assert all(b <= a for a, b in zip(history["loss"], history["loss"][1:]))  # every iteration decreases f


def test_fit_matches_scipy_on_a_small_network():
    """A tanh network (not convex) with weights, from the same start: both reach the same minimum."""
    X, y = _classes(n=60, d=4, k=2, seed=1)
    y = y.astype(float)
    w = np.random.default_rng(2).uniform(0.2, 2.0, size=60)
    model = xpmlp.MLP([4, 5, 1], activation="tanh", seed=3, dtype="float64")
    x0 = model.flat.to_host()
    opt = LBFGS(tol=1e-8, ftol=0.0, l2=1.0)
    model.fit(X, y, loss="sigmoid_binary_cross_entropy", optimizer=opt, sample_weight=w)
    fun = _sklearn_objective(xpmlp.MLP([4, 5, 1], activation="tanh", seed=3, dtype="float64"), X, y,
                             "sigmoid_binary_cross_entropy", l2=1.0, sample_weight=w)
    ref = _scipy(fun, x0, opt)
    assert opt.converged_ and ref.status == 0
    np.testing.assert_allclose(opt.loss_, ref.fun, rtol=1e-10)
    np.testing.assert_allclose(model.flat.to_host(), ref.x, atol=1e-5)
    assert abs(opt.n_iter_ - ref.nit) <= 0.25 * ref.nit + 2


def test_objective_penalises_kernels_not_biases_and_its_gradient_is_right():
    """fit's objective (with l2, sample and class weights) equals the independent construction,
    its bias gradients carry no penalty, and its gradient matches central differences."""
    rng = np.random.default_rng(6)
    X, y = _classes(n=30, d=3, k=3, seed=6)
    model = xpmlp.MLP([3, 4, 3], activation="softplus", seed=4, dtype="float64")
    model.set_weights([w + rng.normal(0, 0.3, size=w.shape) for w in model.get_weights()])  # biases non-zero
    sw = rng.uniform(0.1, 2.0, size=30)
    loss = get_loss("softmax_cross_entropy")
    yd = loss.prepare_targets(y, model.backend, "float64", 3)
    class_weight = np.array([1.0, 2.0, 0.5])
    w = sw * class_weight[y]  # what fit makes of sample_weight and class_weight={0: 1, 1: 2, 2: 0.5}
    fun = _objective(model, loss, model.backend.from_host(X), yd, model.backend.from_host(w), 0.7, 4096)
    x = model.flat.to_host()
    f, g = fun(x.copy())
    ref_f, ref_g = _sklearn_objective(model, X, y, loss, l2=0.7, sample_weight=w)(x.copy())
    np.testing.assert_allclose(f, ref_f, rtol=1e-13)
    np.testing.assert_allclose(g, ref_g, rtol=1e-11, atol=1e-14)
    _, data_only = _objective(model, loss, model.backend.from_host(X), yd, model.backend.from_host(w), 0.0, 4096)(x.copy())
    for p, start in zip(model.flat.parameters, model.flat.offsets):
        part = slice(start, start + p.size)
        penalty = g[part] - data_only[part]
        expected = 0.7 / w.sum() * x[part] if p.name.endswith(".W") else np.zeros(p.size)
        np.testing.assert_allclose(penalty, expected, rtol=1e-10, atol=1e-15, err_msg=p.name)
    h = 1e-6
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        numeric = (fun(x + e)[0] - fun(x - e)[0]) / (2 * h)
        assert numeric == pytest.approx(float(g[i]), rel=1e-6, abs=1e-9), i
    # and fit with those weights minimises that same objective
    opt = LBFGS(max_iter=5, l2=0.7)
    model.fit(X, y, loss=loss, optimizer=opt, sample_weight=sw, class_weight={0: 1.0, 1: 2.0, 2: 0.5})
    assert opt.loss_ == pytest.approx(fun(model.flat.to_host())[0], rel=1e-13)


@pytest.mark.parametrize("interrupt", [False, True])
def test_callbacks_history_and_stop_training(interrupt):
    """One History entry and one on_epoch_begin/on_epoch_end pair per iteration, the model holding
    that iteration's weights; stop_training ends the run; an exception leaves the last iterate."""
    class Watch(Callback):
        def on_train_begin(self, logs=None):
            self.begun, self.ended, self.weights = [], [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.begun.append(epoch)

        def on_epoch_end(self, epoch, logs=None):
            self.ended.append(epoch)
            self.weights.append(self.model.flat.to_host())
            if epoch == 2:
                if interrupt:
                    raise KeyboardInterrupt
                self.model.stop_training = True

    X, y = _classes()
    model = xpmlp.MLP([6, 5, 3], seed=0, dtype="float64")
    watch, opt = Watch(), LBFGS(tol=0.0)
    if interrupt:
        with pytest.raises(KeyboardInterrupt):
            model.fit(X, y, loss="softmax_cross_entropy", optimizer=opt, callbacks=[watch])
        assert opt.message_ == "interrupted by KeyboardInterrupt" and not opt.converged_
    else:
        history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=opt, callbacks=[watch])
        assert history.epoch == [0, 1, 2] and opt.message_ == "stopped by a callback (model.stop_training)"
        assert not opt.converged_
    assert watch.begun == watch.ended == [0, 1, 2] and opt.n_iter_ == 3
    np.testing.assert_array_equal(model.flat.to_host(), watch.weights[-1])
    assert len({w.tobytes() for w in watch.weights}) == 3


def test_metrics_validation_and_early_stopping():
    X, y = _classes(n=120)
    model = xpmlp.MLP([6, 5, 3], seed=0, dtype="float64")
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS(max_iter=60, tol=0.0), metrics=["accuracy"],
                        validation_split=0.3, callbacks=[stop], seed=0, verbose=0)
    keys = set(history.history)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time", "samples_per_s"} == keys
    assert len(history.epoch) < 60 and stop.stopped_epoch is not None  # it did stop early
    best = int(np.argmin(history["val_loss"]))
    assert model.evaluate(*_val_part(X, y)) == pytest.approx(history["val_loss"][best], rel=1e-12)


def _val_part(X, y):
    from xpmlp.datasets import train_test_split

    rng = np.random.default_rng(0)  # fit(seed=0) draws its split seed from this generator
    _, val, _, _ = train_test_split(np.arange(len(y)), y, test_size=0.3, stratify=True, seed=int(rng.integers(2**63)))
    val = np.sort(val)
    return X[val], y[val]


def test_divergence_keeps_the_starting_weights():
    X = np.full((10, 2), 1e200)
    y = np.zeros(10)
    model = xpmlp.MLP([2, 3, 1], seed=0, dtype="float64")
    start = model.flat.to_host()
    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UserWarning)  # "X looks unscaled"
        with pytest.raises(xpmlp.DivergenceError, match="at the starting weights.*weights this fit started from were kept"):
            model.fit(X, y, loss="mse", optimizer=LBFGS())
        np.testing.assert_array_equal(model.flat.to_host(), start)
        with pytest.warns(RuntimeWarning, match="L-BFGS cannot start"):
            history = model.fit(X, y, loss="mse", optimizer=LBFGS(), on_divergence="warn")
        assert history.epoch == []
        model.fit(X, y, loss="mse", optimizer=LBFGS(), callbacks=[TerminateOnNaN()])  # handled: quiet
    np.testing.assert_array_equal(model.flat.to_host(), start)


def test_refusals():
    X, y = _classes(n=20)
    with pytest.raises(ValueError, match=r"deterministic objective, but the model has Dropout\(rate=0.5\)"):
        xpmlp.MLP([6, 4, 3], dropout=0.5).fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS())
    model = xpmlp.MLP([6, 4, 3])
    for kwargs in ({"epochs": 5}, {"batch_size": 8}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} does not apply"):
            model.fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS(), **kwargs)
    with pytest.raises(ValueError, match="LearningRateScheduler sets a learning rate"):
        model.fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS(),
                  callbacks=[LearningRateScheduler(lambda e, lr: lr)])
    with pytest.raises(ValueError, match="sum to zero"):
        model.fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS(), sample_weight=np.zeros(20))
    assert model.optimizer is None and not model.history  # nothing was trained


def test_the_model_keeps_its_optimizer_and_saves(tmp_path):
    """L-BFGS is not kept as the model's optimiser (it has no state to resume), so the model saves,
    and a later fit without an optimiser continues with the one it had."""
    X, y = _classes(n=40)
    model = xpmlp.MLP([6, 4, 3], seed=0)
    model.fit(X, y, loss="softmax_cross_entropy", epochs=1)
    adam = model.optimizer
    model.fit(X, y, optimizer=LBFGS(max_iter=5), shuffle=False)  # shuffle is ignored
    assert model.optimizer is adam
    model.save(tmp_path / "m.safetensors")
    loaded = xpmlp.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.flat.to_host(), model.flat.to_host())


def test_runs_on_every_backend(case):
    """The same run on every backend: a convex problem, so float32 rounding cannot change where it goes."""
    X, y = _classes(n=50, d=4, k=3)
    model = xpmlp.MLP([4, 3], seed=0, **case.model_kwargs())
    reference = xpmlp.MLP([4, 3], seed=0, dtype="float64")
    opts = [LBFGS(max_iter=15, tol=0.0, ftol=0.0, l2=0.3, chunk_size=16) for _ in range(2)]
    model.fit(case.asarray(X), y, loss="softmax_cross_entropy", optimizer=opts[0])
    reference.fit(X, y, loss="softmax_cross_entropy", optimizer=opts[1])
    assert opts[0].n_iter_ == 15 and xpmlp.backend.namespace_of(opts[0].x_) is xpmlp.backend.namespace_of(model.flat.data)
    tight = case.dtype == "float64"
    np.testing.assert_allclose(opts[0].loss_, opts[1].loss_, rtol=1e-10 if tight else 1e-4)
    np.testing.assert_allclose(model.flat.to_host(), reference.flat.to_host(), rtol=0, atol=1e-8 if tight else 2e-3)


# -- against scikit-learn on the UCI heart data ----------------------------------------------------
def _heart(data_dir):
    if data_dir is None or not (data_dir / "uci-heart" / "processed.cleveland.data").is_file():
        pytest.skip("needs $XPMLP_DATA/uci-heart/processed.cleveland.data")
    from xpmlp.datasets import load_heart_disease, train_test_split

    X, y = load_heart_disease(data_dir / "uci-heart" / "processed.cleveland.data")
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, seed=0)
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    return (Xtr - mean) / std, (Xte - mean) / std, ytr, yte


def _sklearn_mlp(alpha, hidden, weights, Xtr, ytr, sample_weight=None):
    """scikit-learn's lbfgs MLP started from ``weights`` (ours): a one-iteration fit sets up its
    classes, then its public coefs_ and intercepts_ take our weights and warm_start continues."""
    sk = pytest.importorskip("sklearn.neural_network")
    from sklearn.exceptions import ConvergenceWarning

    clf = sk.MLPClassifier(hidden_layer_sizes=(hidden,), activation="tanh", solver="lbfgs", alpha=alpha, max_iter=1,
                           tol=1e-6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr, sample_weight=sample_weight)
    clf.coefs_, clf.intercepts_ = [w.copy() for w in weights[0::2]], [b.copy() for b in weights[1::2]]
    clf.set_params(warm_start=True, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it converges
        clf.fit(Xtr, ytr, sample_weight=sample_weight)
    return clf


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_heart_disease_against_sklearn_lbfgs(data_dir, alpha):
    """From the same starting weights, xpmlp's LBFGS and scikit-learn's lbfgs MLP reach the same
    minimum of the same objective: final objective within 1e-6 (relative), weights within 0.02,
    iteration counts within 10%, the same test predictions."""
    Xtr, Xte, ytr, yte = _heart(data_dir)
    model = xpmlp.MLP([13, 8, 1], activation="tanh", seed=0, dtype="float64")
    clf = _sklearn_mlp(alpha, 8, model.get_weights(), Xtr, ytr)
    opt = LBFGS(max_iter=500, tol=1e-6, l2=alpha)
    model.fit(Xtr, ytr, loss="sigmoid_binary_cross_entropy", optimizer=opt)
    assert opt.converged_
    assert opt.loss_ == pytest.approx(clf.loss_, rel=1e-6)
    theirs = [a for pair in zip(clf.coefs_, clf.intercepts_) for a in pair]
    for ours, ref in zip(model.get_weights(), theirs):
        np.testing.assert_allclose(ours, ref, atol=0.02)
    assert abs(opt.n_iter_ - clf.n_iter_) <= 0.1 * clf.n_iter_
    ours = to_numpy(model.predict(Xte))[:, 0] > 0.5
    np.testing.assert_array_equal(ours, clf.predict(Xte) == 1)
    assert (ours == yte).mean() > 0.75


def test_heart_disease_sklearn_minimum_is_ours(data_dir):
    """At scikit-learn's final weights (weighted fit) our objective is scikit-learn's loss_ to
    rounding, and LBFGS started there stops within a few iterations, barely lower."""
    Xtr, _, ytr, _ = _heart(data_dir)
    sw = np.random.default_rng(0).uniform(0.5, 2.0, size=len(ytr))
    model = xpmlp.MLP([13, 6, 1], activation="tanh", seed=1, dtype="float64")
    clf = _sklearn_mlp(1.0, 6, model.get_weights(), Xtr, ytr, sample_weight=sw)
    model.set_weights([a for pair in zip(clf.coefs_, clf.intercepts_) for a in pair])
    loss = get_loss("sigmoid_binary_cross_entropy")
    yd = loss.prepare_targets(ytr, model.backend, "float64", 1)
    fun = _objective(model, loss, Xtr, yd, sw, 1.0, 4096)
    assert fun(model.flat.to_host())[0] == pytest.approx(clf.loss_, rel=1e-12)
    opt = LBFGS(tol=1e-6, l2=1.0)
    model.fit(Xtr, ytr, loss=loss, optimizer=opt, sample_weight=sw)
    assert opt.converged_ and opt.n_iter_ <= 5
    assert clf.loss_ * (1 - 1e-6) <= opt.loss_ <= clf.loss_



def test_integer_weights_equal_repeated_rows():
    """Full batch: weighting a row by k is repeating it k times (0: leaving it out), the property
    scikit-learn's check_sample_weight_equivalence tests. Same objective at every point, so the
    same run to rounding."""
    X, y = _classes(n=40, d=4, k=3, seed=7)
    w = np.random.default_rng(8).integers(0, 4, size=40)
    runs = []
    for Xi, yi, wi in ((X, y, w.astype(float)), (np.repeat(X, w, axis=0), np.repeat(y, w), None)):
        model = xpmlp.MLP([4, 5, 3], activation="tanh", seed=5, dtype="float64")
        opt = LBFGS(tol=1e-7, l2=0.1)
        model.fit(Xi, yi, loss="softmax_cross_entropy", optimizer=opt, sample_weight=wi)
        runs.append((opt, model.flat.to_host()))
    (a, wa), (b, wb) = runs
    assert a.converged_ and b.converged_ and a.n_iter_ == b.n_iter_
    assert a.loss_ == pytest.approx(b.loss_, rel=1e-12)
    np.testing.assert_allclose(wa, wb, atol=1e-9)


def test_lbfgs_refuses_the_options_of_minibatch_epochs():
    X, y = _classes()
    model = xpmlp.MLP([6, 3], seed=0, dtype="float64")
    for kwargs in ({"initial_epoch": 1}, {"steps_per_epoch": 2}, {"validation_freq": 2}):
        with pytest.raises(ValueError, match="LBFGS trains on arrays X, y, all rows at once"):
            model.fit(X, y, loss="softmax_cross_entropy", optimizer=LBFGS(), **kwargs)
    with pytest.raises(ValueError, match="no iterable of batches"):
        model.fit([(X, y)], loss="softmax_cross_entropy", optimizer=LBFGS())
