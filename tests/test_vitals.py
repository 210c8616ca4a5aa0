"""The MLP doctor during training (xpmlp.vitals), fit(diagnose=True), the estimators' diagnose and model.inspect.

Each check fires on a run that makes its mistake, once, and all stay quiet on healthy runs
(MNIST with pixels/255 and Adam or SGD, XOR, two regressions): both directions are tested.
"""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import doctor, vitals
from xpmlp.callbacks import TerminateOnNaN
from xpmlp.datasets import make_sine, make_xor
from xpmlp.doctor import DoctorWarning, Finding, Report
from xpmlp.layers import Dense, Dropout, ReLU, Tanh
from xpmlp.optim import SGD, Adam
from xpmlp.train import DivergenceError
from xpmlp.vitals import INSPECT_COLUMNS, Vitals

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _train(model, X, y, **kw):
    """Fit with a Vitals of the data, warnings silenced; returns the Vitals."""
    v = Vitals(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, verbose=0, callbacks=[v], seed=0, **kw)
    return v


def _binary(n=512, d=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def _assert_measured(v, epochs, dense):
    """The checks had their numbers: every epoch read, with a gradient and an update per Dense layer."""
    assert len(v.records) == epochs
    for r in v.records:
        assert all(f"gW{j}" in r and f"upd{j}" in r and r[f"w0_{j}"] > 0 for j in range(dense))


@pytest.fixture(scope="module")
def mnist():
    import os

    path = os.environ.get("XPMLP_DATA")
    if not path or not (Path(path) / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    (X, y), _ = xpmlp.datasets.load_mnist(download=False, progress=False)
    return X[:2000].astype(np.float32) / 255.0, y[:2000]


# -- healthy runs: quiet ------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", [None, "sgd"], ids=["adam", "sgd"])
def test_quiet_on_healthy_mnist(mnist, optimizer):
    X, y = mnist
    opt = None if optimizer is None else SGD(lr=0.05, momentum=0.9)
    v = _train(xpmlp.MLP([784, 128, 10], seed=0), X, y, loss="softmax_cross_entropy", optimizer=opt, epochs=3)
    assert list(v.report) == []
    _assert_measured(v, 3, 2)
    assert v.chance == pytest.approx(math.log(10), rel=0.01)  # the checks that use it had it


def test_quiet_on_healthy_xor_and_regressions():
    X, y = make_xor(200, seed=0)
    v = _train(xpmlp.MLP([2, 16, 2], activation="tanh", seed=0), X, y, loss="softmax_cross_entropy",
               optimizer=Adam(lr=0.01), epochs=30)
    assert list(v.report) == [] and v.losses[-1] < 0.3  # it learned XOR, after a plateau near ln 2
    _assert_measured(v, 30, 2)
    assert max(v.losses[:10]) > 0.99 * math.log(2) > min(v.losses[:10])  # the plateau the checks waited out

    X, y = make_sine(500, high=2 * np.pi, fn=np.sin, seed=0)
    v = _train(xpmlp.MLP([1, 32, 1], activation="tanh", seed=0), (X - X.mean()) / X.std(), y, loss="mse",
               optimizer=Adam(lr=0.01), epochs=30)
    assert list(v.report) == []
    _assert_measured(v, 30, 2)

    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    y = X @ np.array([[2.0], [-1.0], [0.5]]) + 1 + 0.1 * rng.normal(size=(400, 1))
    v = _train(xpmlp.MLP([3, 16, 1], seed=0), X, y, loss="mse", optimizer=Adam(lr=0.01), epochs=20)
    assert list(v.report) == [] and v.losses[-1] < 0.1
    _assert_measured(v, 20, 2)


# -- each mistake: its check fires, once ---------------------------------------------------------------
def _once(v, check):
    """The check fired exactly once, during training, and its finding carries numbers and a fix."""
    found = [f for f in v.report if f.check == check]
    assert len(found) == 1, v.report
    f = found[0]
    assert f.when.startswith("epoch ") and f.evidence and f.fix and f.severity in ("warning", "error")
    return f


def test_vanishing_gradient_in_a_deep_sigmoid_net():
    X, y = _binary()
    v = _train(xpmlp.MLP([20] + [32] * 10 + [2], activation="sigmoid", seed=0), X, y,
               loss="softmax_cross_entropy", epochs=2)
    f = _once(v, "vanishing_gradient")
    assert f.evidence["ratio"] < vitals.VANISHING_RATIO and f.evidence["first_grad_norm"] < vitals.VANISHING_FIRST_NORM
    r = v.records[0]  # the ratio is AUTOTRAINER's: first over last weight gradient norm
    assert f.evidence["ratio"] == pytest.approx(math.sqrt(r["gW0"] / r["gW10"])) or f.when == "epoch 2"
    # the same depth with ReLU keeps its gradient
    assert "vanishing_gradient" not in _train(xpmlp.MLP([20] + [32] * 10 + [2], seed=0), X, y,
                                              loss="softmax_cross_entropy", epochs=2).report.checks()


def test_exploding_gradient_from_a_last_layer_initialised_far_too_large():
    X, y = _binary()
    model = xpmlp.MLP([20, 64, 64, 2], seed=0)
    w = model.get_weights()
    w[-2] = w[-2] * 300
    model.set_weights(w)
    v = _train(model, X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=1e-4), epochs=2)
    assert _once(v, "exploding_gradient").evidence["ratio"] > vitals.EXPLODING_RATIO


def test_dying_relu_from_a_large_negative_bias():
    X, y = _binary()
    model = xpmlp.MLP([20, 64, 2], seed=0)
    w = model.get_weights()
    w[1] = w[1] - 5.0  # the hidden biases: every pre-activation of a standard-normal input is below 0
    model.set_weights(w)
    v = _train(model, X, y, loss="softmax_cross_entropy", epochs=2)
    f = _once(v, "dying_relu")
    assert f.evidence["layer"] == 1 and f.evidence["dead_share"] >= vitals.DEAD_RELU_SHARE
    # the share is the units whose input is <= 0 on every sample row, computed here from the weights
    Xs = X[np.sort(np.random.default_rng(0).choice(len(X), 256, replace=False))]
    after = model.get_weights()
    assert v.records[-1]["dead1"] == pytest.approx(np.mean(np.all(Xs @ after[0] + after[1] <= 0, axis=0)))


def test_all_units_dead_is_not_called_a_small_learning_rate():
    """Every ReLU dead: no gradient reaches any weight matrix and every update is exactly 0. That is
    the dead units (dying_relu says so), not a learning rate to multiply by 100."""
    X, y = _binary()
    model = xpmlp.MLP([20, 64, 2], seed=0)
    w = model.get_weights()
    w[1] = w[1] - 50.0
    model.set_weights(w)
    v = _train(model, X, y, loss="softmax_cross_entropy", epochs=2)
    assert _once(v, "dying_relu").evidence["dead_share"] == 1.0
    assert all(r == 0.0 for r in (v.records[0][k] for k in v.records[0] if k.startswith("upd")))
    assert "update_ratio_too_small" not in v.report.checks()


def test_saturated_sigmoid_units_from_a_huge_init():
    X, y = _binary()
    model = xpmlp.MLP([20, 64, 2], activation="sigmoid", seed=0)
    w = model.get_weights()
    w[0] = w[0] * 30
    model.set_weights(w)
    v = _train(model, X, y, loss="softmax_cross_entropy", epochs=2)
    assert _once(v, "saturated_units").evidence["saturated_share"] >= vitals.SATURATED_SHARE
    assert "saturated_units" not in _train(xpmlp.MLP([20, 64, 2], activation="sigmoid", seed=0), X, y,
                                           loss="softmax_cross_entropy", epochs=2).report.checks()


def test_learning_rate_far_too_high_and_far_too_low():
    X, y = _binary()
    fit = dict(loss="softmax_cross_entropy", epochs=2)
    high = _train(xpmlp.MLP([20, 64, 2], seed=0), X, y, optimizer=Adam(lr=0.1), **fit)  # 100x Adam's default
    assert _once(high, "update_ratio_too_large").evidence["lr"] == 0.1
    low = _train(xpmlp.MLP([20, 64, 2], seed=0), X, y, optimizer=Adam(lr=1e-7), **fit)
    f = _once(low, "update_ratio_too_small")
    assert max(f.evidence["ratio_by_layer"].values()) < vitals.UPDATE_RATIO_LOW
    # the ratio is ||W after the epoch's first update - W before|| / ||W before||: SGD's is lr * ||dW|| / ||W||
    tiny = dict(seed=0, dtype="float64")  # float64: the difference of the weights holds the whole update
    sgd = _train(xpmlp.MLP([20, 64, 2], **tiny), X, y, optimizer=SGD(lr=1e-3), loss="softmax_cross_entropy",
                 epochs=1, batch_size=512, shuffle=False)
    w0 = xpmlp.MLP([20, 64, 2], **tiny).get_weights()[0]
    _, grads = xpmlp.MLP([20, 64, 2], **tiny).gradients(X, y, loss="softmax_cross_entropy")
    expected = 1e-3 * np.linalg.norm(np.asarray(grads["layers.0.W"])) / np.linalg.norm(w0)
    assert math.sqrt(sgd.records[0]["upd0"] / sgd.records[0]["w0_0"]) == pytest.approx(expected, rel=1e-9)
    default = _train(xpmlp.MLP([20, 64, 2], seed=0), X, y, **fit)
    assert not {"update_ratio_too_large", "update_ratio_too_small"} & set(default.report.checks())


def test_chance_plateau_and_collapsed_predictions_on_constant_inputs():
    X, y = np.ones((300, 20)), np.arange(300) % 3  # inputs that say nothing: only the class frequencies can be learnt
    v = _train(xpmlp.MLP([20, 32, 3], seed=0), X, y, loss="softmax_cross_entropy", epochs=8)
    f = _once(v, "chance_plateau")
    assert f.evidence["chance"] == pytest.approx(math.log(3))
    at = [abs(loss - math.log(3)) <= vitals.PLATEAU_TOLERANCE * math.log(3) for loss in v.losses]
    first = next(e for e in range(vitals.PLATEAU_EPOCHS, len(at) + 1) if all(at[e - vitals.PLATEAU_EPOCHS:e]))
    assert f.when == f"epoch {first}"  # the first epoch that ends 5 at chance
    c = _once(v, "collapsed_predictions")
    assert c.evidence["predicted_share"] == 1.0 and c.evidence["label_share"] == pytest.approx(1 / 3, abs=0.05)
    # chance is the entropy of the class frequencies (ln K only when balanced)
    y2 = (np.arange(300) % 10 == 0).astype(int)  # 10% / 90%
    v2 = _train(xpmlp.MLP([20, 32, 2], seed=0), X, y2, loss="softmax_cross_entropy", epochs=30)
    assert v2.chance == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)))
    assert "chance_plateau" in v2.report.checks()
    # always the 90% class: 10 points above its share of the labels, under COLLAPSE_EXCESS: not called a collapse
    assert v2.records[-1]["pred"][0] == 1.0 and "collapsed_predictions" not in v2.report.checks()


def test_oscillating_loss_from_momentum_too_high():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 1))
    y = 2 * X + 1
    v = _train(xpmlp.MLP([1, 1], seed=0), X, y, loss="mse", epochs=20, batch_size=64,
               optimizer=SGD(lr=0.5, momentum=0.9))
    f = _once(v, "oscillating_loss")  # once, though it oscillates for all 20 epochs
    assert f.evidence["sign_changes"] >= vitals.OSCILLATION_SIGN_CHANGES
    quiet = _train(xpmlp.MLP([1, 1], seed=0), X, y, loss="mse", epochs=20, batch_size=64, optimizer=SGD(lr=0.05))
    assert "oscillating_loss" not in quiet.report.checks()


def test_nan_names_the_first_layer_and_fit_still_raises():
    X, y = _binary()
    model = xpmlp.MLP([20, 64, 2], seed=0)
    v = Vitals(X * 1e3, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DivergenceError):
            model.fit(X * 1e3, y, loss="softmax_cross_entropy", optimizer=SGD(lr=1e3), epochs=3, verbose=0,
                      callbacks=[v])
    f = _once(v, "nan_or_inf")
    assert f.severity == "error" and f.evidence["layer"] == 0 and f.evidence["layer_name"] == "Dense"
    assert "layers.0.W" in f.evidence["nonfinite_parameters"]
    # with TerminateOnNaN the doctor still speaks, and fit ends quietly
    v = Vitals(X * 1e3, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xpmlp.MLP([20, 64, 2], seed=0).fit(X * 1e3, y, loss="softmax_cross_entropy", optimizer=SGD(lr=1e3),
                                           epochs=3, verbose=0, callbacks=[v, TerminateOnNaN()])
    _once(v, "nan_or_inf")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_vitals_object_starts_fresh_at_each_fit():
    X, y = _binary()
    v = Vitals(X, y)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xpmlp.MLP([20, 64, 2], seed=0).fit(X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=0.1),
                                               epochs=2, verbose=0, callbacks=[v])
        _once(v, "update_ratio_too_large")
        assert len(v.records) == 2


def test_vitals_refuses_half_its_data():
    with pytest.raises(ValueError, match="both X and y"):
        Vitals(np.ones((3, 2)))


# -- fit(diagnose=True) and the estimators --------------------------------------------------------------
@pytest.fixture
def before_stub(monkeypatch):
    """xpmlp.doctor.diagnose replaced by a stub that records its calls and finds one thing."""
    calls = []

    def stub(model, X, y, **kw):
        calls.append((model, X, y, kw))
        return Report([Finding("stub_check", "info", "seen.", "nothing.")])

    monkeypatch.setattr(doctor, "diagnose", stub, raising=False)
    return calls


def test_fit_diagnose_warns_and_keeps_the_report(before_stub):
    X, y = _binary()
    model = xpmlp.MLP([20, 64, 2], seed=0)
    with pytest.warns(DoctorWarning) as caught:
        history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=0.1), epochs=2, verbose=0,
                            diagnose=True)
    messages = [str(w.message) for w in caught if w.category is DoctorWarning]
    assert any("stub_check" in m for m in messages) and any("update_ratio_too_large" in m for m in messages)
    assert all(w.filename == __file__ for w in caught if w.category is DoctorWarning)  # they point at the fit call
    assert isinstance(history.doctor, Report) and history.doctor.checks() == ["update_ratio_too_large", "stub_check"]
    ((m, X_seen, y_seen, kw),) = before_stub
    assert m is model and X_seen is X and y_seen is y
    assert kw["overfit"] is False and kw["shuffle"] is True and kw["validation_data"] is None
    assert kw["loss"].name == "softmax_cross_entropy"
    # without diagnose: no checks, no warnings, no report
    with warnings.catch_warnings():
        warnings.simplefilter("error", DoctorWarning)
        assert model.fit(X, y, epochs=1, verbose=0, optimizer=Adam(lr=0.1)).doctor is None
    assert len(before_stub) == 1


def test_diagnose_changes_nothing_in_training(before_stub):
    X, y = _binary()
    runs = []
    for diagnose in (False, True):
        model = xpmlp.MLP([20, 32, 32, 2], dropout=0.2, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = model.fit(X, y, loss="softmax_cross_entropy", epochs=3, verbose=0, diagnose=diagnose,
                          validation_split=0.2)
        runs.append((model.get_weights(), h.history["loss"], h.history["val_loss"], model.get_rng_state()))
    (w0, l0, v0, r0), (w1, l1, v1, r1) = runs
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1)) and l0 == l1 and v0 == v1
    assert json.dumps(r0, default=str) == json.dumps(r1, default=str)


def test_fit_diagnose_on_an_iterable_of_batches_skips_the_checks_before(before_stub):
    X, y = _binary()
    batches = [(X[i:i + 64], y[i:i + 64]) for i in range(0, len(X), 64)]
    with pytest.warns(DoctorWarning, match="update_ratio_too_large"):
        h = xpmlp.MLP([20, 64, 2], seed=0).fit(batches, loss="softmax_cross_entropy", optimizer=Adam(lr=0.1),
                                               epochs=2, verbose=0, diagnose=True)
    assert before_stub == [] and h.doctor.checks() == ["update_ratio_too_large"]


def test_fit_diagnose_with_lbfgs(before_stub):
    X, y = _binary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = xpmlp.MLP([20, 8, 2], seed=0).fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.LBFGS(max_iter=5),
                                              verbose=0, diagnose=True)
    assert h.doctor.checks() == ["stub_check"] and len(before_stub) == 1


def test_estimators_take_diagnose(before_stub):
    pytest.importorskip("sklearn")
    from xpmlp.estimators import MLPClassifier, MLPRegressor

    X, y = _binary(200)
    est = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1.0, max_iter=3, random_state=0, diagnose=True)
    with pytest.warns(DoctorWarning, match="update_ratio_too_large"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message="(?!.*update_ratio)")
            est.fit(X, y)
    assert "update_ratio_too_large" in est.doctor_.checks() and est.get_params()["diagnose"] is True
    quiet = MLPRegressor(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    assert quiet.get_params()["diagnose"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.fit(X, X[:, 0])
    assert not hasattr(quiet, "doctor_")


# -- model.inspect ----------------------------------------------------------------------------------------
def _tiny():
    model = xpmlp.Sequential([Dense(3, in_features=2), ReLU(), Dropout(0.5), Dense(2), Tanh()], dtype="float64",
                             seed=0)
    model.set_weights([np.array([[0.5, -1.0, 0.25], [1.5, 0.5, -0.75]]), np.array([0.1, -0.2, 0.0]),
                       np.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]]), np.array([0.05, -0.05])])
    X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7], [2.0, 1.0]])
    y = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2], [0.9, 0.0]])
    return model, X, y


def test_inspect_matches_a_hand_computation():
    model, X, y = _tiny()
    W1, b1, W2, b2 = model.get_weights()
    lr = 0.1
    frame = model.inspect(X, y, loss="mse", optimizer=SGD(lr=lr))
    assert list(frame.columns) == INSPECT_COLUMNS and list(frame.index) == [0, 1, 2, 3, 4]
    assert list(frame["type"]) == ["Dense", "ReLU", "Dropout", "Dense", "Tanh"]
    # by hand: forward (Dropout off), mse = mean over rows and outputs, backward
    z1 = X @ W1 + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ W2 + b2
    out = np.tanh(z2)
    for i, h in enumerate([z1, a1, a1, z2, out]):
        assert frame.loc[i, "act_mean"] == pytest.approx(h.mean())
        assert frame.loc[i, "act_std"] == pytest.approx(h.std())
        assert frame.loc[i, "act_frac_zero"] == pytest.approx(np.mean(h == 0))
    assert frame.loc[1, "act_frac_zero"] > 0  # the ReLU zeroes some
    assert frame.loc[4, "act_frac_saturated"] == pytest.approx(np.mean(np.abs(z2) > math.atanh(0.99)))
    assert frame["act_frac_saturated"].drop(4).isna().all()
    dout = 2 * (out - y) / out.size
    dz2 = dout * (1 - out ** 2)
    gW2, gb2 = a1.T @ dz2, dz2.sum(0)
    dz1 = (dz2 @ W2.T) * (z1 > 0)
    gW1, gb1 = X.T @ dz1, dz1.sum(0)
    for i, (W, b, gW, gb) in ((0, (W1, b1, gW1, gb1)), (3, (W2, b2, gW2, gb2))):
        g, w = np.concatenate([gW.ravel(), gb]), np.concatenate([W.ravel(), b])
        assert frame.loc[i, "grad_mean"] == pytest.approx(g.mean(), abs=1e-12)
        assert frame.loc[i, "grad_std"] == pytest.approx(g.std())
        assert frame.loc[i, "grad_norm"] == pytest.approx(np.linalg.norm(g))
        assert frame.loc[i, "weight_mean"] == pytest.approx(w.mean())
        assert frame.loc[i, "weight_std"] == pytest.approx(w.std())
        assert frame.loc[i, "weight_norm"] == pytest.approx(np.linalg.norm(w))
        assert frame.loc[i, "update_ratio"] == pytest.approx(lr * np.linalg.norm(g) / np.linalg.norm(w))
    assert frame.loc[[1, 2, 4], ["grad_norm", "weight_norm", "update_ratio"]].isna().all().all()
    # and the gradient agrees with the model's own
    _, grads = model.gradients(X, y, loss="mse")
    assert np.allclose(np.asarray(grads["layers.3.W"]), gW2)


def test_inspect_leaves_the_model_bitwise_unchanged():
    model, X, y = _tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, loss="mse", optimizer=Adam(lr=0.01), epochs=3, batch_size=2, verbose=0)

    def state():
        opt = model.optimizer.state_dict()
        return ([w.copy() for w in model.get_weights()], np.asarray(model.flat.grad).copy(), opt["t"],
                {k: np.asarray(a).copy() for k, a in opt["state"].items()},
                json.dumps(model.get_rng_state(), default=str), [layer.counter for layer in model.layers
                                                                 if isinstance(layer, Dropout)])

    before = state()
    frame = model.inspect(X, y)  # the model's loss and optimiser (with its state): fit's next update
    after = state()
    assert all(np.array_equal(a, b) for a, b in zip(before[0], after[0])) and np.array_equal(before[1], after[1])
    assert before[2] == after[2] and all(np.array_equal(before[3][k], after[3][k]) for k in before[3])
    assert before[4:] == after[4:]
    assert (frame.loc[[0, 3], "update_ratio"] > 0).all()
    # Adam's next step, by hand from its state: the ratio inspect reports
    opt = model.optimizer
    _, grads = model.gradients(X, y)
    g = np.concatenate([np.asarray(grads["layers.0.W"]).ravel(), np.asarray(grads["layers.0.b"])])
    sd = opt.state_dict()
    t = sd["t"] + 1
    idx = np.r_[0:6, model.flat.offsets[1]:model.flat.offsets[1] + 3]  # layer 0's W then b in the flat buffer
    m = opt.beta_1 * np.asarray(sd["state"]["m"])[idx] + (1 - opt.beta_1) * g
    v = opt.beta_2 * np.asarray(sd["state"]["v"])[idx] + (1 - opt.beta_2) * g * g
    step = opt.lr * (m / (1 - opt.beta_1 ** t)) / (np.sqrt(v / (1 - opt.beta_2 ** t)) + opt.eps)
    w = np.concatenate([model.get_weights()[0].ravel(), model.get_weights()[1]])
    assert frame.loc[0, "update_ratio"] == pytest.approx(np.linalg.norm(step) / np.linalg.norm(w), rel=1e-6)


def test_inspect_refuses_what_it_cannot_do():
    model = xpmlp.MLP([2, 3, 1], seed=0)
    with pytest.raises(ValueError, match="needs a loss"):
        model.inspect(np.ones((2, 2)), np.ones((2, 1)))
    with pytest.raises(ValueError, match="first-order"):
        model.inspect(np.ones((2, 2)), np.ones((2, 1)), loss="mse", optimizer=xpmlp.LBFGS())
    with pytest.raises(ValueError, match="built model"):
        xpmlp.Sequential([Dense(3), ReLU(), Dense(1)]).inspect(np.ones((2, 2)), np.ones((2, 1)), loss="mse")


# -- the cost benchmark ------------------------------------------------------------------------------------
@pytest.mark.slow  # about 5-10 s: reading MNIST and a few fits in a subprocess
def test_doctor_cost_bench_quick(tmp_path, data_dir):
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    done = subprocess.run([sys.executable, str(BENCH / "doctor_cost.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "doctor_cost.json").read_text())
    assert result["settings"]["quick"]
    for key in ("plain_s", "diagnose_s"):
        assert len(result[key]) == result["settings"]["repeats"] and all(t > 0 for t in result[key])
    assert result["overhead"] == pytest.approx(result["diagnose_median_s"] / result["plain_median_s"] - 1)
    assert len(result["hooks_s"]) == result["settings"]["repeats"] and all(t > 0 for t in result["hooks_s"])
    assert set(result["hooks_by_name_s"][0]) >= {"on_train_begin", "on_epoch_end", "on_batch_end"}
    assert (tmp_path / "doctor_cost.md").read_text().startswith("# Cost of fit(diagnose=True)")


# -- every backend ----------------------------------------------------------------------------------------
def test_vitals_and_inspect_on_every_backend(case):
    X, y = _binary(256)
    model = xpmlp.MLP([20, 16, 2], seed=0, **case.model_kwargs())
    v = Vitals(case.asarray(X), case.asarray(y))
    with pytest.warns(DoctorWarning, match="update_ratio_too_large"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message="(?!.*update_ratio)")
            model.fit(case.asarray(X), case.asarray(y), loss="softmax_cross_entropy", optimizer=Adam(lr=0.1),
                      epochs=2, verbose=0, callbacks=[v])
    assert v.report.checks() == ["update_ratio_too_large"] and len(v.records) == 2
    reference = xpmlp.MLP([20, 16, 2], seed=0, dtype=case.dtype)
    reference.set_weights(model.get_weights())
    got = model.inspect(case.asarray(X), case.asarray(y), optimizer=SGD(lr=0.1))
    want = reference.inspect(X, y, loss="softmax_cross_entropy", optimizer=SGD(lr=0.1))
    numbers = INSPECT_COLUMNS[1:]
    assert np.allclose(got[numbers].to_numpy(float), want[numbers].to_numpy(float), rtol=100 * case.rtol,
                       atol=1e-6, equal_nan=True)


def test_vitals_on_a_sparse_input(before_stub):
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _binary()
    Xs = sparse.csr_matrix(np.where(np.abs(X) > 1, X, 0))
    v = _train(xpmlp.MLP([20, 16, 2], seed=0), Xs, y, loss="softmax_cross_entropy", epochs=2)
    _assert_measured(v, 2, 2)
    dense = _train(xpmlp.MLP([20, 16, 2], seed=0), Xs.toarray(), y, loss="softmax_cross_entropy", epochs=2)
    assert v.records[1]["gW0"] == pytest.approx(dense.records[1]["gW0"], rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = xpmlp.MLP([20, 16, 2], seed=0).fit(Xs, y, loss="softmax_cross_entropy", epochs=2, verbose=0,
                                               diagnose=True)
    assert h.doctor.checks() == ["stub_check"]
